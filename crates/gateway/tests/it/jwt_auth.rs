//! jwt-auth through the real data plane: APISIX's example, each algorithm family, the classic
//! attacks, and JWKS key sets with rotation and an identity provider that goes down.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axle_core::testing::Backends;
use axum::http::StatusCode;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::helpers::{Gateway, get, spawn_gateway, spawn_upstream};

const RSA_PRIVATE: &str = include_str!("../fixtures/jwt-rs256.key");
const RSA_PUBLIC: &str = include_str!("../fixtures/jwt-rs256.pub");

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A token with any header and signature, as an attacker writes it.
fn forge(header: Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(signature)
    )
}

async fn status_and_message(gw: &Gateway, path: &str, token: &str) -> (u16, Value) {
    let (status, body, _) = get(gw, path, &[("Authorization", token)]).await;
    (status, body.get("message").cloned().unwrap_or(Value::Null))
}

#[tokio::test]
async fn jwt_auth_verifies_each_algorithm_and_refuses_the_classic_attacks() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let up = spawn_upstream("up").await;
    // APISIX's jwt-auth example: a consumer, its HS256 credential, a route.
    gw.put("/apisix/admin/consumers", json!({"username": "jack"}))
        .await;
    gw.put(
        "/apisix/admin/consumers/jack/credentials",
        json!({"id": "cred-jack-jwt-auth",
               "plugins": {"jwt-auth": {"key": "jack-key", "secret": "jack-hs256-secret"}}}),
    )
    .await;
    let es = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    for (user, alg, public, grace) in [
        ("rsa", "RS256", RSA_PUBLIC.to_string(), 0),
        ("ec", "ES256", es.public_key_pem(), 0),
        ("ed", "EdDSA", ed.public_key_pem(), 300),
    ] {
        gw.put(
            "/apisix/admin/consumers",
            json!({"username": user, "plugins": {"jwt-auth": {
                "key": format!("{user}-key"), "algorithm": alg, "public_key": public,
                "lifetime_grace_period": grace}}}),
        )
        .await;
    }
    gw.put(
        "/apisix/admin/routes/jwt-route",
        json!({"uri": "/anything", "plugins": {"jwt-auth": {}},
               "upstream": {"type": "roundrobin", "nodes": {up.to_string(): 1}}}),
    )
    .await;
    gw.wait_for("/anything", 401).await;

    let hs = EncodingKey::from_secret(b"jack-hs256-secret");
    let jack = json!({"key": "jack-key", "exp": now() + 3600});
    let token = sign(Algorithm::HS256, &hs, None, jack.clone());
    let (status, seen, _) = get(&gw, "/anything", &[("Authorization", &token)]).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["headers"]["x-consumer-username"], "jack");
    assert_eq!(
        seen["headers"]["x-credential-identifier"],
        "cred-jack-jwt-auth"
    );
    // `Bearer `, the query argument and the cookie work too.
    let bearer = format!("Bearer {token}");
    assert_eq!(status_and_message(&gw, "/anything", &bearer).await.0, 200);
    let (status, _, _) = get(&gw, &format!("/anything?jwt={token}"), &[]).await;
    assert_eq!(status, 200);
    let cookie = format!("a=1; jwt={token}");
    let (status, _, _) = get(&gw, "/anything", &[("Cookie", &cookie)]).await;
    assert_eq!(status, 200);

    // Each asymmetric family, with its public key on the consumer.
    let rs = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    let ec = EncodingKey::from_ec_pem(es.serialize_pem().as_bytes()).unwrap();
    let edk = EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).unwrap();
    for (alg, key, user) in [
        (Algorithm::RS256, &rs, "rsa"),
        (Algorithm::ES256, &ec, "ec"),
        (Algorithm::EdDSA, &edk, "ed"),
    ] {
        let claims = json!({"key": format!("{user}-key"), "exp": now() + 60});
        let (status, seen, _) = get(
            &gw,
            "/anything",
            &[("Authorization", &sign(alg, key, None, claims))],
        )
        .await;
        assert_eq!(
            (status, &seen["headers"]["x-consumer-username"]),
            (200, &json!(user))
        );
    }

    // What gets a 401, and with which message.
    let refused = "failed to verify jwt";
    let cases: Vec<(&str, String, &str)> = vec![
        ("no token", String::new(), "Missing JWT token in request"),
        (
            "not a token",
            "garbage".into(),
            "JWT token invalid: not three dot-separated parts",
        ),
        (
            "no key claim",
            sign(
                Algorithm::HS256,
                &hs,
                None,
                json!({"exp": now() + 60, "sub": "x"}),
            ),
            "missing user key in JWT token",
        ),
        (
            "unknown key",
            sign(
                Algorithm::HS256,
                &hs,
                None,
                json!({"key": "nobody", "exp": now() + 60}),
            ),
            "Invalid user key in JWT token",
        ),
        (
            "bad signature",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"guessed"),
                None,
                jack.clone(),
            ),
            refused,
        ),
        (
            "expired",
            sign(
                Algorithm::HS256,
                &hs,
                None,
                json!({"key": "jack-key", "exp": now() - 100}),
            ),
            refused,
        ),
        (
            "not yet valid",
            sign(
                Algorithm::HS256,
                &hs,
                None,
                json!({"key": "jack-key", "exp": now() + 600, "nbf": now() + 300}),
            ),
            refused,
        ),
        (
            "another HMAC size than the credential's",
            sign(Algorithm::HS512, &hs, None, jack.clone()),
            refused,
        ),
        (
            // The attacker signs with the RSA public key as an HMAC secret.
            "HS/RS confusion",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
                None,
                json!({"key": "rsa-key", "exp": now() + 60}),
            ),
            refused,
        ),
        (
            "alg none",
            forge(json!({"alg": "none", "typ": "JWT"}), &jack, b""),
            "JWT token invalid: the header is malformed or names an unknown algorithm",
        ),
    ];
    for (what, token, message) in &cases {
        let (status, got) = if token.is_empty() {
            let (s, b, _) = get(&gw, "/anything", &[]).await;
            (s, b["message"].clone())
        } else {
            status_and_message(&gw, "/anything", token).await
        };
        assert_eq!((status, got), (401, json!(message)), "{what}");
    }
    // The grace period covers clock skew: ed's credential allows 300 s.
    let late = json!({"key": "ed-key", "exp": now() - 100});
    let token = sign(Algorithm::EdDSA, &edk, None, late.clone());
    assert_eq!(status_and_message(&gw, "/anything", &token).await.0, 200);
    let (status, _) = status_and_message(
        &gw,
        "/anything",
        &sign(
            Algorithm::EdDSA,
            &edk,
            None,
            json!({"key": "ed-key", "exp": now() - 400}),
        ),
    )
    .await;
    assert_eq!(status, 401);

    // A route that checks no claims takes an expired token; hide_credentials drops it.
    gw.put(
        "/apisix/admin/routes/lenient",
        json!({"uri": "/lenient", "plugins": {"jwt-auth": {"claims_to_verify": [], "hide_credentials": true}},
               "upstream": {"nodes": {up.to_string(): 1}}}),
    )
    .await;
    gw.wait_for("/lenient", 401).await;
    let expired = sign(
        Algorithm::HS256,
        &hs,
        None,
        json!({"key": "jack-key", "exp": now() - 100}),
    );
    let (status, seen, _) = get(&gw, "/lenient", &[("Authorization", &expired)]).await;
    assert_eq!(
        (status, &seen["headers"]["authorization"]),
        (200, &Value::Null)
    );
    let (status, seen, _) = get(
        &gw,
        "/lenient",
        &[("Cookie", &format!("a=1; jwt={expired}"))],
    )
    .await;
    assert_eq!((status, &seen["headers"]["cookie"]), (200, &json!("a=1")));

    // Bad credentials are refused on write, naming the field.
    for (config, field) in [
        (json!({"key": "k"}), "secret"),
        (
            json!({"key": "k", "algorithm": "RS256", "public_key": "-----BEGIN nonsense"}),
            "public_key",
        ),
        (json!({"key": "k", "algorithm": "none"}), "algorithm"),
    ] {
        let consumer = json!({"username": "bad", "plugins": {"jwt-auth": config}});
        gw.refused_naming("/apisix/admin/consumers", consumer, field)
            .await;
    }
}

/// An identity provider's JWKS endpoint: the served key set can be replaced, the endpoint
/// taken down, and its fetches counted.
#[derive(Clone, Default)]
struct Idp {
    keys: Arc<Mutex<Value>>,
    down: Arc<AtomicBool>,
    fetches: Arc<AtomicUsize>,
}

impl Idp {
    async fn spawn(&self) -> SocketAddr {
        let app = self.app();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    /// The endpoint over TLS, with a self-signed certificate for 127.0.0.1.
    async fn spawn_tls(&self) -> SocketAddr {
        use tower::Service;
        let certified = rcgen::generate_simple_self_signed(["127.0.0.1".to_string()]).unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = self.app();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |r| app.clone().call(r));
                    let io = hyper_util::rt::TokioIo::new(tls);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        addr
    }

    fn app(&self) -> axum::Router {
        let idp = self.clone();
        axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let idp = idp.clone();
                async move {
                    idp.fetches.fetch_add(1, Ordering::SeqCst);
                    if idp.down.load(Ordering::SeqCst) {
                        return Err(StatusCode::SERVICE_UNAVAILABLE);
                    }
                    Ok(axum::Json(idp.keys.lock().unwrap().clone()))
                }
            }),
        )
    }

    fn serve(&self, keys: &[(&str, &rcgen::KeyPair)]) {
        let keys: Vec<Value> = keys
            .iter()
            .map(|(kid, key)| {
                // An uncompressed P-256 point: 0x04, x, y.
                let point = key.public_key_raw();
                json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                       "x": b64(&point[1..33]), "y": b64(&point[33..65])})
            })
            .collect();
        *self.keys.lock().unwrap() = json!({ "keys": keys });
    }
}

#[tokio::test]
async fn jwt_auth_follows_a_jwks_through_rotation_and_outage() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let up = spawn_upstream("up").await;
    let idp = Idp::default();
    let idp_addr = idp.spawn().await;
    let (k1, k2) = (
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
    );
    idp.serve(&[("k1", &k1)]);
    let issuer = "https://id.axle.test";
    // Tokens name their issuer; the issuer names the consumer.
    gw.put(
        "/apisix/admin/consumers",
        json!({"username": "customers_app", "plugins": {"jwt-auth": {
            "key": issuer, "algorithm": "ES256", "jwks_uri": format!("http://{idp_addr}/jwks"),
            "issuer": issuer, "audience": ["axle-api"], "jwks_cache_ttl": 1}}}),
    )
    .await;
    gw.put(
        "/apisix/admin/routes/oidc",
        json!({"uri": "/me", "plugins": {"jwt-auth": {"key_claim_name": "iss"}},
               "upstream": {"nodes": {up.to_string(): 1}}}),
    )
    .await;
    gw.wait_for("/me", 401).await;
    let key = |k: &rcgen::KeyPair| EncodingKey::from_ec_pem(k.serialize_pem().as_bytes()).unwrap();
    let token = |k: &rcgen::KeyPair, kid: &str, aud: &str| {
        sign(
            Algorithm::ES256,
            &key(k),
            Some(kid),
            json!({"iss": issuer, "aud": aud, "sub": "u-1", "exp": now() + 600}),
        )
    };

    let (status, seen, _) = get(
        &gw,
        "/me",
        &[("Authorization", &token(&k1, "k1", "axle-api"))],
    )
    .await;
    assert_eq!(
        (status, &seen["headers"]["x-consumer-username"]),
        (200, &json!("customers_app"))
    );
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 1);
    // Cached: more requests fetch nothing.
    for _ in 0..5 {
        let (status, _) = status_and_message(&gw, "/me", &token(&k1, "k1", "axle-api")).await;
        assert_eq!(status, 200);
    }
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 1);
    // Another audience, or none, is refused; so is a key the provider never published.
    for refused in [
        token(&k1, "k1", "another-api"),
        sign(
            Algorithm::ES256,
            &key(&k1),
            Some("k1"),
            json!({"iss": issuer, "exp": now() + 600}),
        ),
        token(&k2, "k1", "axle-api"),
    ] {
        assert_eq!(
            status_and_message(&gw, "/me", &refused).await,
            (401, json!("failed to verify jwt"))
        );
    }

    // The provider rotates to k2: a token with the new key id makes the gateway fetch again,
    // once the 5 s between fetches for unknown key ids have passed.
    idp.serve(&[("k2", &k2)]);
    let (status, _) = status_and_message(&gw, "/me", &token(&k2, "k2", "axle-api")).await;
    assert_eq!(status, 401, "fetched again within 5 s of the last fetch");
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 1);
    tokio::time::sleep(std::time::Duration::from_millis(5100)).await;
    let (status, _) = status_and_message(&gw, "/me", &token(&k2, "k2", "axle-api")).await;
    assert_eq!(status, 200);
    let fetched = idp.fetches.load(Ordering::SeqCst);
    assert_eq!(fetched, 2);
    // k1 is gone from the set, and made-up key ids do not make the gateway fetch again.
    for kid in ["k1", "k3", "k4", "k5"] {
        let (status, _) = status_and_message(&gw, "/me", &token(&k1, kid, "axle-api")).await;
        assert_eq!(status, 401, "{kid}");
    }
    assert_eq!(idp.fetches.load(Ordering::SeqCst), fetched);

    // The provider goes down: the keys fetched before keep working, also once they are older
    // than jwks_cache_ttl and the refresh behind the request fails.
    idp.down.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let (status, _) = status_and_message(&gw, "/me", &token(&k2, "k2", "axle-api")).await;
        assert_eq!(status, 200);
    }
    tokio::time::sleep(std::time::Duration::from_millis(5100)).await;
    let (status, _) = status_and_message(&gw, "/me", &token(&k2, "k2", "axle-api")).await;
    assert_eq!(status, 200);
    axle_core::testing::eventually(10, "a refresh behind the request", || async {
        (idp.fetches.load(Ordering::SeqCst) == fetched + 1).then_some(())
    })
    .await;
    let (status, _) = status_and_message(&gw, "/me", &token(&k2, "k2", "axle-api")).await;
    assert_eq!(status, 200);

    // A key set never fetched while its provider is down: 503, not a client error.
    gw.put(
        "/apisix/admin/consumers",
        json!({"username": "partner", "plugins": {"jwt-auth": {
            "key": "partner-key", "algorithm": "ES256",
            "jwks_uri": format!("http://{idp_addr}/partner/jwks")}}}),
    )
    .await;
    let partner = sign(
        Algorithm::ES256,
        &key(&k1),
        Some("p1"),
        json!({"key": "partner-key", "exp": now() + 600}),
    );
    gw.put(
        "/apisix/admin/routes/partner",
        json!({"uri": "/partner", "plugins": {"jwt-auth": {}},
               "upstream": {"nodes": {up.to_string(): 1}}}),
    )
    .await;
    gw.wait_for("/partner", 401).await;
    let (status, body, _) = get(&gw, "/partner", &[("Authorization", &partner)]).await;
    assert_eq!(status, 503, "{body}");
}

/// Key sets served over https: fetched when `jwks_ssl_verify` is off; by default the
/// certificate must chain to a trusted root, and a self-signed one gets no keys.
#[tokio::test]
async fn jwt_auth_fetches_key_sets_over_https() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let up = spawn_upstream("up").await;
    let idp = Idp::default();
    let idp_addr = idp.spawn_tls().await;
    let signer = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    idp.serve(&[("k1", &signer)]);
    let jwks_uri = format!("https://{idp_addr}/jwks");
    for (username, verify) in [("lenient", false), ("strict", true)] {
        let mut credential = json!({"key": username, "algorithm": "ES256", "jwks_uri": jwks_uri});
        if !verify {
            credential["jwks_ssl_verify"] = json!(false);
        }
        gw.put(
            "/apisix/admin/consumers",
            json!({"username": username, "plugins": {"jwt-auth": credential}}),
        )
        .await;
    }
    gw.put(
        "/apisix/admin/routes/tls-idp",
        json!({"uri": "/me", "plugins": {"jwt-auth": {}},
               "upstream": {"nodes": {up.to_string(): 1}}}),
    )
    .await;
    gw.wait_for("/me", 401).await;
    let key = EncodingKey::from_ec_pem(signer.serialize_pem().as_bytes()).unwrap();
    let token = |consumer: &str| {
        sign(
            Algorithm::ES256,
            &key,
            Some("k1"),
            json!({"key": consumer, "exp": now() + 600}),
        )
    };

    let (status, seen, _) = get(&gw, "/me", &[("Authorization", &token("lenient"))]).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["headers"]["x-consumer-username"], "lenient");
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 1);

    let (status, body, _) = get(&gw, "/me", &[("Authorization", &token("strict"))]).await;
    assert_eq!(
        status, 503,
        "the untrusted certificate yields no key set: {body}"
    );
    assert_eq!(
        idp.fetches.load(Ordering::SeqCst),
        1,
        "refused in the handshake"
    );
}

/// `store_in_ctx` keeps the verified payload for the plugins after jwt-auth (here
/// proxy-rewrite, through `$jwt_claim_*`); a 401 challenges the client with the realm, as
/// APISIX's jwt-auth and key-auth do.
#[tokio::test]
async fn the_payload_is_kept_when_asked_and_refusals_name_their_realm() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let up = spawn_upstream("up").await;
    gw.put(
        "/apisix/admin/consumers",
        json!({"username": "jack", "plugins": {
            "jwt-auth": {"key": "jack-key", "secret": "jack-hs256-secret"},
            "key-auth": {"key": "jack-api-key"}}}),
    )
    .await;
    let rewrite =
        json!({"headers": {"set": {"x-sub": "$jwt_claim_sub", "x-tier": "$jwt_claim_tier"}}});
    for (uri, store) in [("/kept", true), ("/dropped", false)] {
        gw.put(
            &format!("/apisix/admin/routes{uri}"),
            json!({"uri": uri, "upstream": {"nodes": {up.to_string(): 1}},
                   "plugins": {"jwt-auth": {"store_in_ctx": store}, "proxy-rewrite": rewrite}}),
        )
        .await;
    }
    gw.put(
        "/apisix/admin/routes/keyed",
        json!({"uri": "/keyed", "upstream": {"nodes": {up.to_string(): 1}},
               "plugins": {"key-auth": {"realm": "vehicles"}}}),
    )
    .await;
    gw.wait_for("/keyed", 401).await;

    let key = EncodingKey::from_secret(b"jack-hs256-secret");
    let claims = json!({"key": "jack-key", "sub": "user-7", "tier": 2, "exp": now() + 60});
    let token = format!("Bearer {}", sign(Algorithm::HS256, &key, None, claims));
    let (status, seen, _) = get(&gw, "/kept", &[("Authorization", &token)]).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(
        (&seen["headers"]["x-sub"], &seen["headers"]["x-tier"]),
        (&json!("user-7"), &json!("2"))
    );
    let (_, seen, _) = get(&gw, "/dropped", &[("Authorization", &token)]).await;
    assert!(seen["headers"].get("x-sub").is_none(), "{seen}");

    let (status, _, headers) = get(&gw, "/kept", &[]).await;
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"jwt\"");
    let (status, _, headers) = get(&gw, "/keyed", &[("apikey", "wrong")]).await;
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "apikey realm=\"vehicles\"");
    let (status, _, _) = get(&gw, "/keyed", &[("apikey", "jack-api-key")]).await;
    assert_eq!(status, 200);
}
