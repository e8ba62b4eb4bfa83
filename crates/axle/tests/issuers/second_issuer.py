"""A second OpenID provider, written independently of Axle with authlib: it serves a
discovery document and a JWKS for its own RSA key, and prints (one JSON line on stdout) two
access tokens it signed, then serves until killed. Usage: second_issuer.py PORT
"""

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

from authlib.jose import JsonWebKey, jwt

port = int(sys.argv[1])
issuer = f"http://127.0.0.1:{port}"
key = JsonWebKey.generate_key("RSA", 2048, is_private=True, options={"kid": "second-1"})
public = key.as_dict(is_private=False)
public.update(use="sig", alg="RS256", kid="second-1")


def token(subject):
    now = int(time.time())
    claims = {"iss": issuer, "sub": subject, "aud": "axle", "iat": now, "exp": now + 600,
              "scope": "openid orders", "preferred_username": subject}
    return jwt.encode({"alg": "RS256", "kid": "second-1"}, claims, key).decode()


class Provider(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/.well-known/openid-configuration":
            body = {"issuer": issuer, "jwks_uri": f"{issuer}/jwks",
                    "authorization_endpoint": f"{issuer}/authorize",
                    "token_endpoint": f"{issuer}/token"}
        elif self.path == "/jwks":
            body = {"keys": [public]}
        else:
            self.send_response(404)
            self.end_headers()
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", port), Provider)
print(json.dumps({"issuer": issuer, "tokens": [token("alice"), token("bob")]}), flush=True)
server.serve_forever()
