//! An OpenID Connect client written by others — Python's authlib — signs in against Axle:
//! authorization code with PKCE (driving the real sign-in form), refresh, client credentials,
//! and the ID token validated with the published JWKS (`tests/authlib_client.py`).

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authlib_signs_in_refreshes_and_validates_the_id_token() {
    let Some(python) =
        axle_core::testing::tool("AXLE_TEST_AUTHLIB_PYTHON", "a Python with authlib")
    else {
        return;
    };
    let app = spawn_app(axle_core::testing::Backends::embedded()).await;
    let admin = app.admin_token().await;
    let created: Value = app
        .call(
            Method::POST,
            "/clients",
            Some(&admin),
            Some(json!({
                "id": "partner-app", "name": "Partner app", "kind": "confidential",
                "grants": ["authorization_code", "refresh_token", "client_credentials"],
                "redirect_uris": ["http://127.0.0.1:8765/callback"],
                "scopes": ["openid", "profile", "email", "offline_access"], "roles": ["operator"],
            })),
        )
        .await
        .json()
        .await
        .unwrap();
    let secret = created["client_secret"].as_str().unwrap().to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/authlib_client.py");
    let issuer = app.issuer.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .env("ISSUER", issuer)
            .env("CLIENT_ID", "partner-app")
            .env("CLIENT_SECRET", secret)
            .env("REDIRECT_URI", "http://127.0.0.1:8765/callback")
            .env("USERNAME", "admin")
            .env("PASSWORD", ADMIN_PASSWORD)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "authlib's run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all flows passed"), "{stdout}");
}
