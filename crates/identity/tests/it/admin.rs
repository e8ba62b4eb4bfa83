//! The administration API: who may use it, what it checks, and the trail it leaves.

use axle_core::on_every_backend;
use axle_core::testing::{Backends, eventually};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

async fn only_platform_admins_administer(backends: Backends) {
    let app = spawn_app(backends).await;
    let none = app.call(Method::GET, "/users", None, None).await;
    assert_eq!(none.status(), 401);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    let forged = app
        .call(
            Method::GET,
            "/users",
            Some("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."),
            None,
        )
        .await;
    assert_eq!(forged.status(), 401);
    let admin = app.admin_token().await;
    app.create_user(&admin, "dealer2", "a long dealer passphrase", &["dealer"])
        .await;
    let dealer = app
        .sign_in("dealer2", "a long dealer passphrase", "openid")
        .await;
    let dealer = dealer["access_token"].as_str().unwrap();
    let refused = app.call(Method::GET, "/users", Some(dealer), None).await;
    assert_eq!(refused.status(), 403);
    assert_eq!(refused.json::<Value>().await.unwrap()["code"], "FORBIDDEN");
    let listed: Value = app
        .call(Method::GET, "/users?limit=1", Some(&admin), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    assert!(listed["next_cursor"].is_string(), "paged");
    // Everyone signed in reads their own account.
    let me: Value = app
        .call(Method::GET, "/me", Some(dealer), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["username"], "dealer2");
    assert!(me.get("password_hash").is_none());
}
on_every_backend!(guarded, only_platform_admins_administer);

async fn users_organisations_and_clients_are_checked_audited_and_published(backends: Backends) {
    let app = spawn_app(backends).await;
    let admin = app.admin_token().await;
    let post =
        |path: &'static str, body: Value| app.call(Method::POST, path, Some(&admin), Some(body));

    let weak = post("/users", json!({"username": "weak", "password": "short"})).await;
    assert_eq!(weak.status(), 422);
    assert_eq!(
        weak.json::<Value>().await.unwrap()["code"],
        "IDENTITY_WEAK_PASSWORD"
    );
    let named = post(
        "/users",
        json!({"username": "dealer3", "password": "dealer3 is my password"}),
    )
    .await;
    assert_eq!(
        named.json::<Value>().await.unwrap()["code"],
        "IDENTITY_WEAK_PASSWORD"
    );
    let role = post(
        "/users",
        json!({"username": "x1", "password": "a long enough passphrase", "roles": ["root"]}),
    )
    .await;
    assert!(role.status().is_client_error());

    let org: Value = post(
        "/organisations",
        json!({"name": "Shanghai Motors", "deposit_account": "DEP-001"}),
    )
    .await
    .json()
    .await
    .unwrap();
    let again = post("/organisations", json!({"name": "Shanghai Motors"})).await;
    assert_eq!(again.status(), 409);
    let user = post(
        "/users",
        json!({"username": "Dealer3", "password": "a long dealer passphrase",
        "org_id": org["id"], "roles": ["dealer"]}),
    )
    .await;
    assert_eq!(user.status(), 201);
    let user: Value = user.json().await.unwrap();
    assert_eq!(user["username"], "dealer3", "lowercased");
    let duplicate = post(
        "/users",
        json!({"username": "dealer3", "password": "a long dealer passphrase"}),
    )
    .await;
    assert_eq!(duplicate.status(), 409);
    let tokens = app
        .sign_in("dealer3", "a long dealer passphrase", "openid")
        .await;
    assert_eq!(
        claims(tokens["access_token"].as_str().unwrap())["org"],
        org["id"]
    );

    let public_cc = post(
        "/clients",
        json!({"id": "spa", "name": "SPA", "kind": "public", "grants": ["client_credentials"]}),
    )
    .await;
    assert_eq!(public_cc.status(), 422);
    let open = post(
        "/clients",
        json!({"id": "portal", "name": "Portal", "kind": "confidential",
        "grants": ["authorization_code"], "redirect_uris": ["http://portal.example/cb"]}),
    )
    .await;
    assert_eq!(open.status(), 422, "http to a non-loopback host");
    let client: Value = post("/clients", json!({"id": "portal", "name": "Portal", "kind": "confidential",
        "grants": ["authorization_code", "refresh_token"], "redirect_uris": ["https://portal.example/cb"],
        "scopes": ["openid", "profile"]})).await.json().await.unwrap();
    assert!(
        client["client_secret"].as_str().unwrap().len() >= 40,
        "shown once"
    );
    let fetched: Value = app
        .call(Method::GET, "/clients/portal", Some(&admin), None)
        .await
        .json()
        .await
        .unwrap();
    assert!(fetched.get("client_secret").is_none() && fetched.get("secret_hash").is_none());

    // The trail: who did what, with no secret in it.
    let trail: Value = app
        .call(Method::GET, "/audit?limit=200", Some(&admin), None)
        .await
        .json()
        .await
        .unwrap();
    let actions: Vec<(&str, &str)> = trail["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["actor"].as_str().unwrap()))
        .collect();
    for action in ["organisation_created", "user_created", "client_created"] {
        assert!(
            actions.contains(&(action, "admin")),
            "{action} by admin in {actions:?}"
        );
    }
    let text = trail.to_string();
    assert!(!text.contains(client["client_secret"].as_str().unwrap()));
    assert!(!text.contains("a long dealer passphrase"));
    let events = eventually(10, "the events are published", || async {
        let created = app.events_of("axle.identity.user_created.v1");
        (created.len() >= 2 && !app.events_of("axle.identity.client_created.v1").is_empty())
            .then_some(created)
    })
    .await;
    assert!(
        events
            .iter()
            .any(|e| e.subject == user["id"].as_str().unwrap())
    );
}
on_every_backend!(
    administered,
    users_organisations_and_clients_are_checked_audited_and_published
);

async fn a_reset_link_sets_a_new_password_once(backends: Backends) {
    let app = spawn_app(backends).await;
    let admin = app.admin_token().await;
    app.create_user(&admin, "finance1", "the first passphrase", &["finance"])
        .await;
    let asked = app
        .call(
            Method::POST,
            "/password-reset",
            None,
            Some(json!({"username": "finance1"})),
        )
        .await;
    assert_eq!(asked.status(), 202);
    let unknown = app
        .call(
            Method::POST,
            "/password-reset",
            None,
            Some(json!({"username": "nobody"})),
        )
        .await;
    assert_eq!(unknown.status(), 202, "whether a user exists is not told");
    let event = eventually(10, "the reset notification", || async {
        app.events_of("axle.identity.password_reset_requested.v1")
            .into_iter()
            .next()
    })
    .await;
    let link = event.data["notice"]["link"].as_str().unwrap().to_string();
    assert_eq!(event.data["notice"]["to"], "finance1@dealer.example");
    assert!(link.starts_with(&format!("{}/reset?token=", app.issuer)));
    let token = link.split("token=").nth(1).unwrap();
    // The link opens a page with the form to set the new password.
    let page = app.server.client.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Set a new password"));
    let weak = app
        .call(
            Method::POST,
            "/password-reset/confirm",
            None,
            Some(json!({"token": token, "new_password": "short"})),
        )
        .await;
    assert_eq!(weak.status(), 422, "checked before the link is used up");
    let set = app
        .call(
            Method::POST,
            "/password-reset/confirm",
            None,
            Some(json!({"token": token, "new_password": "the second passphrase"})),
        )
        .await;
    assert_eq!(set.status(), 204);
    let twice = app
        .call(
            Method::POST,
            "/password-reset/confirm",
            None,
            Some(json!({"token": token, "new_password": "the third passphrase"})),
        )
        .await;
    assert_eq!(twice.status(), 400);
    app.sign_in("finance1", "the second passphrase", "openid")
        .await;
    let old = app
        .submit_sign_in(
            &browser(),
            &app.authorize_url("openid"),
            "finance1",
            "the first passphrase",
        )
        .await;
    assert_eq!(old.status(), 401);
}
on_every_backend!(reset, a_reset_link_sets_a_new_password_once);

/// Logs at every level, captured while a whole journey runs: no password, code, token or
/// secret appears in them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_password_or_token_reaches_the_logs() {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .json()
        .init();

    let app = spawn_app(Backends::embedded()).await;
    let admin = app.admin_token().await;
    app.create_user(
        &admin,
        "marketing1",
        "a secret marketing passphrase",
        &["marketing"],
    )
    .await;
    let failed = app
        .submit_sign_in(
            &browser(),
            &app.authorize_url("openid"),
            "marketing1",
            "a wrong guess of it",
        )
        .await;
    assert_eq!(failed.status(), 401);
    let tokens = app
        .sign_in(
            "marketing1",
            "a secret marketing passphrase",
            "openid offline_access",
        )
        .await;
    let refreshed: Value = app
        .refresh(tokens["refresh_token"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    let _ = app.refresh(tokens["refresh_token"].as_str().unwrap()).await; // reuse: logged as a warning
    let client: Value = app
        .call(
            Method::POST,
            "/clients",
            Some(&admin),
            Some(json!({"id": "batch", "name": "Batch",
        "kind": "confidential", "grants": ["client_credentials"]})),
        )
        .await
        .json()
        .await
        .unwrap();
    app.call(
        Method::POST,
        "/password-reset",
        None,
        Some(json!({"username": "marketing1"})),
    )
    .await;
    let reset = eventually(10, "the reset notification", || async {
        app.events_of("axle.identity.password_reset_requested.v1")
            .into_iter()
            .next()
    })
    .await;

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("signed in"),
        "the capture works: {}",
        &logs[..logs.len().min(500)]
    );
    let link = reset.data["notice"]["link"].as_str().unwrap();
    let secrets = [
        ADMIN_PASSWORD,
        "a secret marketing passphrase",
        "a wrong guess of it",
        tokens["access_token"].as_str().unwrap(),
        tokens["refresh_token"].as_str().unwrap(),
        tokens["id_token"].as_str().unwrap(),
        refreshed["refresh_token"].as_str().unwrap(),
        client["client_secret"].as_str().unwrap(),
        link.split("token=").nth(1).unwrap(),
        &admin,
    ];
    for secret in secrets {
        assert!(!logs.contains(secret), "a secret in the logs: {secret}");
    }
}
