"""An OpenID Connect relying party built on authlib, run against Axle's identity service.

It signs in with authorization code + PKCE (S256) by filling in the real sign-in form as a
browser would, validates the ID token with the provider's published JWKS, reads userinfo,
refreshes (and sees the refresh token rotate), and gets a token with client credentials.
Run by the identity tests (tests/it/authlib.rs) with ISSUER, CLIENT_ID, CLIENT_SECRET,
REDIRECT_URI, USERNAME and PASSWORD in the environment.
"""

import html
import os
import re
import sys
from urllib.parse import urljoin

import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from authlib.jose import JsonWebKey, jwt
from authlib.oidc.core import CodeIDToken

ISSUER = os.environ["ISSUER"]
CLIENT_ID = os.environ["CLIENT_ID"]
CLIENT_SECRET = os.environ["CLIENT_SECRET"]
REDIRECT_URI = os.environ["REDIRECT_URI"]


def form_of(page):
    """The action and the hidden fields of a page's form."""
    action = re.search(r'<form method="post" action="([^"]+)"', page.text).group(1)
    fields = {
        html.unescape(name): html.unescape(value)
        for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text)
    }
    return urljoin(ISSUER + "/", html.unescape(action)), fields


def check(condition, what):
    if not condition:
        print("FAILED:", what)
        sys.exit(1)


meta = requests.get(ISSUER + "/.well-known/openid-configuration", timeout=10).json()
check(meta["issuer"] == ISSUER, "discovery names the issuer")
jwks = JsonWebKey.import_key_set(requests.get(meta["jwks_uri"], timeout=10).json())

# Authorization code with PKCE, through the sign-in form.
client = OAuth2Session(
    CLIENT_ID,
    CLIENT_SECRET,
    scope="openid profile email offline_access",
    redirect_uri=REDIRECT_URI,
    code_challenge_method="S256",
)
verifier = generate_token(48)
nonce = generate_token(20)
url, state = client.create_authorization_url(
    meta["authorization_endpoint"], code_verifier=verifier, nonce=nonce
)
browser = requests.Session()
page = browser.get(url, allow_redirects=False, timeout=10)
check(page.status_code == 200 and "Sign in" in page.text, "the sign-in form")
action, fields = form_of(page)
fields.update(username=os.environ["USERNAME"], password=os.environ["PASSWORD"])
answer = browser.post(action, data=fields, allow_redirects=False, timeout=10)
if answer.status_code == 200 and "Allow access" in answer.text:
    action, fields = form_of(answer)
    fields["decision"] = "allow"
    answer = browser.post(action, data=fields, allow_redirects=False, timeout=10)
check(answer.status_code in (302, 303), f"a redirect back to the client, got {answer.status_code}")
callback = answer.headers["Location"]
check(callback.startswith(REDIRECT_URI), "to the registered redirect URI")
token = client.fetch_token(
    meta["token_endpoint"], authorization_response=callback, code_verifier=verifier, state=state
)
print("code + PKCE: token type", token["token_type"], "expires in", token["expires_in"])

claims = jwt.decode(
    token["id_token"],
    jwks,
    claims_cls=CodeIDToken,
    claims_options={"iss": {"essential": True, "value": ISSUER}},
    claims_params={"nonce": nonce, "client_id": CLIENT_ID},
)
claims.validate()
check(claims["aud"] == CLIENT_ID, "the ID token is for this client")
print("ID token valid for", claims["sub"], claims.get("preferred_username"))

info = client.get(meta["userinfo_endpoint"], timeout=10).json()
check(info["sub"] == claims["sub"], "userinfo names the same user")

refreshed = client.refresh_token(meta["token_endpoint"], refresh_token=token["refresh_token"])
check(refreshed["refresh_token"] != token["refresh_token"], "the refresh token rotates")
check("id_token" in refreshed, "a refreshed ID token")
print("refresh: rotated")

machine = OAuth2Session(CLIENT_ID, CLIENT_SECRET, scope="profile")
granted = machine.fetch_token(meta["token_endpoint"], grant_type="client_credentials")
access = jwt.decode(granted["access_token"], jwks)
access.validate()
check(access["sub"] == CLIENT_ID and "operator" in access["roles"], "the client's own token")
print("client credentials: token for", access["sub"])
print("all flows passed")
