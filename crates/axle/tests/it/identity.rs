//! Identity end to end through the gateway: the default routes need a token and services check
//! roles; `openid-connect` as APISIX's documentation configures it — bearer tokens against
//! Axle's issuer and against a second, independently written one (authlib), and the browser
//! flow with a session — and the gateway verifying with cached keys while the issuer is down.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::helpers::*;

/// An upstream that answers with the request's headers as JSON.
async fn echo() -> u16 {
    let app = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
        let map: HashMap<String, String> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect();
        axum::Json(map)
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_routes_need_a_token_and_services_check_roles() {
    let axle = start().await;
    let operator = axle.server.token(axle.dir.path());
    let created = axle
        .client
        .post(format!("{}/api/identity/users", axle.site))
        .bearer_auth(&operator)
        .json(&json!({"username": "dealer9", "password": "a long dealer passphrase", "roles": ["dealer"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    let dealer = axle.sign_in("dealer9", "a long dealer passphrase").await;

    let replay = |token: Option<String>| {
        let mut r = axle
            .client
            .post(format!("{}/api/masterdata/replay", axle.site));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(replay(None).await.unwrap().status(), 401, "no token");
    assert_eq!(
        replay(Some("not-a-token".into())).await.unwrap().status(),
        401
    );
    let refused = replay(Some(dealer.clone())).await.unwrap();
    assert_eq!(
        refused.status(),
        403,
        "a dealer on an operator-only operation"
    );
    assert_eq!(refused.json::<Value>().await.unwrap()["code"], "FORBIDDEN");
    assert_eq!(
        replay(Some(operator.clone())).await.unwrap().status(),
        200,
        "the right role"
    );
    // The rotate command: the new key signs, the old token still works.
    let mut rotate = axle.server.command(axle.dir.path());
    rotate.args(["identity", "rotate-keys"]);
    let out = run_to_end(rotate, std::time::Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("signs with the key"));
    assert_eq!(
        replay(Some(operator.clone())).await.unwrap().status(),
        200,
        "after the rotation"
    );
    // Reads need a signed-in caller, not a role; the catalog is public.
    assert_eq!(
        axle.get("/api/masterdata/vehicles", Some(&dealer))
            .await
            .status(),
        200
    );
    assert_eq!(axle.get("/api/masterdata/models", None).await.status(), 200);
    assert_eq!(
        axle.get("/api/vehicle/openapi.json", None).await.status(),
        200
    );
    // The dealer may read vehicles but not register one.
    let register = axle
        .client
        .post(format!("{}/api/vehicle/vehicles", axle.site))
        .bearer_auth(&dealer)
        .json(
            &json!({"vin": "1HGCM82633A004352", "make": "Honda", "model": "Accord", "year": 2003}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(register.status(), 403);
    assert!(axle.server.terminate().status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_connect_verifies_bearer_tokens_of_axle_and_of_another_issuer() {
    let python = axle_core::testing::tool("AXLE_TEST_AUTHLIB_PYTHON", "a Python with authlib");
    let axle = start().await;
    let upstream = echo().await;
    let token = axle.server.token(axle.dir.path());
    // APISIX's documented bearer-only example, pointed at Axle's issuer.
    let discovery = format!(
        "{}/api/identity/.well-known/openid-configuration",
        axle.site
    );
    axle.put_route(
        "oidc",
        &json!({
            "uri": "/anything/*",
            "plugins": {"openid-connect": {
                "client_id": "apisix", "client_secret": "unused-here",
                "discovery": discovery, "scope": "openid profile",
                "bearer_only": true, "use_jwks": true, "realm": "axle",
            }},
            "upstream": {"type": "roundrobin", "nodes": {format!("127.0.0.1:{upstream}"): 1}},
        }),
    )
    .await;
    let refused = axle.until("/anything/x", None, 401).await;
    assert_eq!(
        refused.headers()["www-authenticate"],
        "Bearer realm=\"axle\""
    );
    let bad = axle
        .get(
            "/anything/x",
            Some("eyJhbGciOiJSUzI1NiIsImtpZCI6IngifQ.e30.c2ln"),
        )
        .await;
    assert_eq!(bad.status(), 401);
    assert!(
        bad.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    let passed = axle.get("/anything/x", Some(&token)).await;
    assert_eq!(passed.status(), 200);
    let seen: HashMap<String, String> = passed.json().await.unwrap();
    let userinfo = base64_json(&seen["x-userinfo"]);
    assert_eq!(userinfo["client_id"], "axle-cli");
    assert_eq!(seen["x-access-token"], token);
    // A forged X-Userinfo from the client does not pass.
    let forged = axle
        .client
        .get(format!("{}/anything/x", axle.site))
        .bearer_auth(&token)
        .header("x-userinfo", "forged")
        .send()
        .await
        .unwrap()
        .json::<HashMap<String, String>>()
        .await
        .unwrap();
    assert_ne!(forged["x-userinfo"], "forged");
    // required_scopes: 403 when the token lacks one.
    axle.put_route(
        "scoped",
        &json!({
            "uri": "/scoped",
            "plugins": {"openid-connect": {"client_id": "apisix", "discovery": discovery,
                "bearer_only": true, "use_jwks": true, "required_scopes": ["orders"]}},
            "upstream": {"type": "roundrobin", "nodes": {format!("127.0.0.1:{upstream}"): 1}},
        }),
    )
    .await;
    axle.until("/scoped", Some(&token), 403).await;

    // A second provider, written by others: its tokens pass on its route, Axle's do not.
    let Some(python) = python else {
        assert!(axle.server.terminate().status.success());
        return;
    };
    let port = free_port();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/issuers/second_issuer.py"
    );
    let mut issuer = Killed(
        Command::new(python)
            .arg(script)
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let line = {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(issuer.0.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        line
    };
    let minted: Value = serde_json::from_str(&line).unwrap();
    let (alice, bob) = (
        minted["tokens"][0].as_str().unwrap(),
        minted["tokens"][1].as_str().unwrap(),
    );
    axle.put_route(
        "second",
        &json!({
            "uri": "/second",
            "plugins": {"openid-connect": {"client_id": "apisix", "client_secret": "s",
                "discovery": format!("http://127.0.0.1:{port}/.well-known/openid-configuration"),
                "bearer_only": true, "use_jwks": true}},
            "upstream": {"type": "roundrobin", "nodes": {format!("127.0.0.1:{upstream}"): 1}},
        }),
    )
    .await;
    let answer = axle.until("/second", Some(alice), 200).await;
    let seen: HashMap<String, String> = answer.json().await.unwrap();
    assert_eq!(base64_json(&seen["x-userinfo"])["sub"], "alice");
    assert_eq!(
        axle.get("/second", Some(&token)).await.status(),
        401,
        "another issuer's token"
    );
    // The issuer goes down: the gateway keeps verifying with the keys it fetched.
    drop(issuer);
    assert_eq!(
        axle.get("/second", Some(bob)).await.status(),
        200,
        "verified with the cached key set"
    );
    assert!(axle.server.terminate().status.success());
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn base64_json(text: &str) -> Value {
    use base64::Engine;
    serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_connect_signs_browsers_in_with_a_session() {
    let axle = start().await;
    let upstream = echo().await;
    let operator = axle.server.token(axle.dir.path());
    let redirect = format!("{}/portal/callback", axle.site);
    let client: Value = axle
        .client
        .post(format!("{}/api/identity/clients", axle.site))
        .bearer_auth(&operator)
        .json(
            &json!({"id": "portal", "name": "Portal", "kind": "confidential", "first_party": true,
            "grants": ["authorization_code"], "redirect_uris": [redirect],
            "post_logout_redirect_uris": [format!("{}/portal/bye", axle.site)],
            "scopes": ["openid", "profile"]}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // APISIX's authorization code example, with PKCE.
    axle.put_route("portal", &json!({
        "uri": "/portal/*",
        "plugins": {"openid-connect": {
            "client_id": "portal", "client_secret": client["client_secret"],
            "discovery": format!("{}/api/identity/.well-known/openid-configuration", axle.site),
            "scope": "openid profile", "redirect_uri": redirect, "use_pkce": true,
            "logout_path": "/portal/logout", "post_logout_redirect_uri": format!("{}/portal/bye", axle.site),
            "session": {"secret": "a-session-secret-of-32-characters"},
        }},
        "upstream": {"type": "roundrobin", "nodes": {format!("127.0.0.1:{upstream}"): 1}},
    })).await;
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut to_provider = None;
    for _ in 0..100 {
        let r = browser
            .get(format!("{}/portal/page?x=1", axle.site))
            .send()
            .await
            .unwrap();
        // (Until the route reaches the data plane, the pages' own sign-in answers.)
        let location = r.headers().get("location").and_then(|l| l.to_str().ok());
        if location.is_some_and(|l| l.contains("client_id=portal")) {
            to_provider = Some(r.headers()["location"].to_str().unwrap().to_string());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let to_provider = to_provider.expect("sent to the provider");
    assert!(
        to_provider.contains("code_challenge="),
        "PKCE: {to_provider}"
    );
    let action = format!("{}/api/identity/authorize", axle.site);
    let back =
        axle_identity::testing::submit_sign_in(&browser, &to_provider, &action, "admin", PASSWORD)
            .await;
    let callback = back.headers()["location"].to_str().unwrap().to_string();
    assert!(callback.starts_with(&redirect), "{callback}");
    let landed = browser.get(&callback).send().await.unwrap();
    assert_eq!(landed.status(), 302);
    assert_eq!(
        landed.headers()["location"],
        "/portal/page?x=1",
        "back to the page asked for"
    );
    let page = browser
        .get(format!("{}/portal/page?x=1", axle.site))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let seen: HashMap<String, String> = page.json().await.unwrap();
    assert_eq!(
        base64_json(&seen["x-id-token"])["preferred_username"],
        "admin"
    );
    assert!(seen.contains_key("x-access-token"));
    // A forged state, or none, at the callback: refused.
    let forged = browser
        .get(format!("{redirect}?code=x&state=forged"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    // Logout: the session is gone, and the browser goes to the provider's sign-out.
    let out = browser
        .get(format!("{}/portal/logout", axle.site))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 302);
    assert!(
        out.headers()["location"]
            .to_str()
            .unwrap()
            .contains("/api/identity/logout")
    );
    let again = browser
        .get(format!("{}/portal/page", axle.site))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 302, "signed out of the route");
    assert!(axle.server.terminate().status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_adds_dealers_staff_and_vehicles_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::serve_with(dir.path(), free_port(), &["--demo"], &[]).await;
    let site = format!("http://127.0.0.1:{}", server.gateway_port);
    let token = server.token(dir.path());
    let client = reqwest::Client::new();
    let mut vehicles = Value::Null;
    for _ in 0..200 {
        vehicles = client
            .get(format!("{site}/api/vehicle/vehicles"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        // The two vehicles taken all the way are listed (one of them sold at auction soon).
        let listed = vehicles["items"].as_array().map(|v| {
            let listed = v
                .iter()
                .filter(|v| v["state"] == "listed" || v["state"] == "sold")
                .count();
            (v.len(), listed)
        });
        if listed == Some((5, 2)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let states: Vec<&str> = vehicles["items"]
        .as_array()
        .expect("five vehicles")
        .iter()
        .map(|v| v["state"].as_str().unwrap())
        .collect();
    assert!(
        states.contains(&"listed") && states.contains(&"received"),
        "{states:?}"
    );
    let users: Value = client
        .get(format!("{site}/api/identity/users?limit=200"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = users["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"li.wei") && names.contains(&"wang.finance"),
        "{names:?}"
    );
    // The market has master data's model catalog, callable with a key.
    let market = |path: &str| {
        client
            .get(format!("{site}/api/market{path}"))
            .bearer_auth(&token)
            .send()
    };
    let products: Value = market("/products").await.unwrap().json().await.unwrap();
    assert_eq!(products[0]["slug"], "vehicle-models", "{products}");
    let view: Value = market(&format!(
        "/products/{}",
        products[0]["id"].as_str().unwrap()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(view["versions"][0]["status"], "published", "{view}");
    assert_eq!(view["plans"][0]["name"], "Open");
    // Seeding ends with a settled lot, and says so.
    for _ in 0..300 {
        if server.stdout_so_far().contains("demo: dealers li.wei") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let out = server.terminate();
    assert!(String::from_utf8_lossy(&out.stdout).contains("demo: dealers li.wei"));
}
