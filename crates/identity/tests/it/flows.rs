//! The OAuth and OpenID Connect flows as a client and a browser go through them, and what
//! the provider refuses.

use axle_core::on_every_backend;
use axle_core::testing::Backends;
use reqwest::Method;
use serde_json::Value;

use crate::helpers::*;

async fn discovery_names_every_endpoint_under_the_issuer(backends: Backends) {
    let app = spawn_app(backends).await;
    let doc: Value = app
        .server
        .client
        .get(app.url("/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["issuer"], app.issuer.as_str());
    for endpoint in [
        "authorization_endpoint",
        "token_endpoint",
        "userinfo_endpoint",
        "jwks_uri",
        "revocation_endpoint",
        "introspection_endpoint",
        "end_session_endpoint",
    ] {
        assert!(
            doc[endpoint].as_str().unwrap().starts_with(&app.issuer),
            "{endpoint}"
        );
    }
    assert_eq!(
        doc["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    let jwks: Value = app
        .server
        .client
        .get(app.url("/jwks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = &jwks["keys"][0];
    assert_eq!(
        (key["kty"].as_str(), key["alg"].as_str()),
        (Some("RSA"), Some("RS256"))
    );
    assert!(
        key.get("d").is_none() && key.get("p").is_none(),
        "no private part: {key}"
    );
}
on_every_backend!(discovery, discovery_names_every_endpoint_under_the_issuer);

async fn code_with_pkce_then_rotating_refresh_and_reuse_revokes_the_family(backends: Backends) {
    let app = spawn_app(backends).await;
    let tokens = app
        .sign_in("admin", ADMIN_PASSWORD, "openid profile offline_access")
        .await;
    let access = tokens["access_token"].as_str().unwrap();
    let claims = claims(access);
    assert_eq!(claims["iss"], app.issuer.as_str());
    assert_eq!(claims["aud"], "axle");
    assert!(
        claims["roles"]
            .as_array()
            .unwrap()
            .contains(&"platform-admin".into())
    );
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        7200,
        "2 h by default"
    );
    let id_token = claims_of_id(&tokens);
    assert_eq!(id_token["aud"], "axle-web");
    assert_eq!(id_token["nonce"], "n1");
    assert_eq!(id_token["preferred_username"], "admin");

    let info: Value = app
        .call(Method::GET, "/userinfo", Some(access), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(info["sub"], claims["sub"]);
    assert_eq!(info["name"], "Administrator");

    // Refresh rotates: a new refresh token each time.
    let first = tokens["refresh_token"].as_str().unwrap().to_string();
    let refreshed: Value = app.refresh(&first).await.json().await.unwrap();
    let second = refreshed["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(first, second);
    assert!(refreshed["id_token"].is_string());
    // The first one again: refused, and the family with it — the second one too.
    let reused = app.refresh(&first).await;
    assert_eq!(reused.status(), 400);
    assert_eq!(
        reused.json::<Value>().await.unwrap()["error"],
        "invalid_grant"
    );
    let after = app.refresh(&second).await;
    assert_eq!(after.status(), 400, "the family is revoked");
}
on_every_backend!(
    refresh,
    code_with_pkce_then_rotating_refresh_and_reuse_revokes_the_family
);

fn claims_of_id(tokens: &Value) -> Value {
    claims(tokens["id_token"].as_str().expect("an ID token"))
}

async fn codes_are_single_use_bound_to_their_verifier_and_redirect(backends: Backends) {
    let app = spawn_app(backends).await;
    let browser = browser();
    let code_of = |response: &reqwest::Response| {
        param(&location_params(response), "code")
            .unwrap()
            .to_string()
    };

    let answer = app
        .submit_sign_in(
            &browser,
            &app.authorize_url("openid"),
            "admin",
            ADMIN_PASSWORD,
        )
        .await;
    let code = code_of(&answer);
    let wrong = app
        .redeem(&code, "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXj")
        .await;
    assert_eq!(wrong.status(), 400);
    assert_eq!(
        wrong.json::<Value>().await.unwrap()["error"],
        "invalid_grant",
        "bad PKCE verifier"
    );
    // Used by the failed attempt: a code is redeemed once, whatever came of it.
    assert_eq!(app.redeem(&code, VERIFIER).await.status(), 400);

    // Signed in already: the next authorization goes straight back with a code.
    let again = browser
        .get(app.authorize_url("openid offline_access"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 303, "single sign-on");
    let code = code_of(&again);
    let tokens: Value = app.redeem(&code, VERIFIER).await.json().await.unwrap();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_string();
    let replay = app.redeem(&code, VERIFIER).await;
    assert_eq!(
        replay.json::<Value>().await.unwrap()["error"],
        "invalid_grant"
    );
    assert_eq!(
        app.refresh(&refresh).await.status(),
        400,
        "a replayed code revokes what it issued"
    );

    // A wrong redirect_uri at redemption.
    let again = browser
        .get(app.authorize_url("openid"))
        .send()
        .await
        .unwrap();
    let code = code_of(&again);
    let mismatched = app
        .server
        .client
        .post(app.url("/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "http://127.0.0.1/elsewhere"),
            ("client_id", "axle-web"),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        mismatched.json::<Value>().await.unwrap()["error"],
        "invalid_grant"
    );
}
on_every_backend!(
    codes,
    codes_are_single_use_bound_to_their_verifier_and_redirect
);

async fn bad_requests_get_a_page_or_an_error_redirect_never_an_open_redirect(backends: Backends) {
    let app = spawn_app(backends).await;
    let browser = browser();
    let evil = app.authorize_url("openid").replace(
        &urlencode(&app.web_redirect()),
        &urlencode("https://evil.example/cb"),
    );
    let page = browser.get(&evil).send().await.unwrap();
    assert_eq!(page.status(), 400);
    assert!(page.headers().get("location").is_none());
    let unknown = browser
        .get(
            app.authorize_url("openid")
                .replace("client_id=axle-web", "client_id=nobody"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 400);
    assert!(unknown.headers().get("location").is_none());

    // The redirect URI is good, the rest is not: back to the client with the error.
    let no_pkce = app
        .authorize_url("openid")
        .replace(&format!("&code_challenge={CHALLENGE}"), "");
    let back = browser.get(&no_pkce).send().await.unwrap();
    assert_eq!(back.status(), 303);
    let params = location_params(&back);
    assert_eq!(
        param(&params, "error"),
        Some("invalid_request"),
        "a public client must use PKCE"
    );
    assert_eq!(param(&params, "state"), Some("s1"));
    let scope = browser
        .get(app.authorize_url("openid admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        param(&location_params(&scope), "error"),
        Some("invalid_scope")
    );

    // Unknown client and bad grants at the token endpoint: OAuth's errors, 401 and 400.
    let token = |form: Vec<(&'static str, &'static str)>| {
        app.server.client.post(app.url("/token")).form(&form).send()
    };
    let unknown = token(vec![
        ("grant_type", "client_credentials"),
        ("client_id", "nobody"),
        ("client_secret", "x"),
    ])
    .await
    .unwrap();
    assert_eq!(unknown.status(), 401);
    assert_eq!(
        unknown.json::<Value>().await.unwrap()["error"],
        "invalid_client"
    );
    let grant = token(vec![("grant_type", "password"), ("client_id", "axle-web")])
        .await
        .unwrap();
    assert_eq!(
        grant.json::<Value>().await.unwrap()["error"],
        "unsupported_grant_type"
    );
    let grant = token(vec![
        ("grant_type", "client_credentials"),
        ("client_id", "axle-web"),
    ])
    .await
    .unwrap();
    assert_eq!(
        grant.json::<Value>().await.unwrap()["error"],
        "unauthorized_client"
    );
    let code = token(vec![
        ("grant_type", "authorization_code"),
        ("client_id", "axle-web"),
        ("code", "forged"),
    ])
    .await
    .unwrap();
    assert_eq!(
        code.json::<Value>().await.unwrap()["error"],
        "invalid_grant"
    );
    let twice = app
        .server
        .client
        .post(app.url("/token"))
        .body("grant_type=a&grant_type=b&client_id=axle-web")
        .header("content-type", "application/x-www-form-urlencoded")
        .send()
        .await
        .unwrap();
    assert_eq!(
        twice.json::<Value>().await.unwrap()["error"],
        "invalid_request"
    );
}
on_every_backend!(
    refusals,
    bad_requests_get_a_page_or_an_error_redirect_never_an_open_redirect
);

async fn forms_without_this_browsers_csrf_token_are_refused(backends: Backends) {
    let app = spawn_app(backends).await;
    // Another browser's page and token, posted from this one.
    let theirs = browser();
    let html = theirs
        .get(app.authorize_url("openid"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut form = hidden_fields(&html);
    form.push(("username".into(), "admin".into()));
    form.push(("password".into(), ADMIN_PASSWORD.into()));
    let mine = browser();
    let _ = mine.get(app.authorize_url("openid")).send().await.unwrap();
    let replayed = mine
        .post(app.url("/authorize"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status(), 403, "a token from another browser");
    let without: Vec<_> = form.iter().filter(|(k, _)| k != "csrf").cloned().collect();
    let bare = mine
        .post(app.url("/authorize"))
        .form(&without)
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 403, "no token");
    // Its own browser's post goes through.
    assert_eq!(
        theirs
            .post(app.url("/authorize"))
            .form(&form)
            .send()
            .await
            .unwrap()
            .status(),
        303
    );
}
on_every_backend!(csrf, forms_without_this_browsers_csrf_token_are_refused);

async fn repeated_failures_lock_the_account_with_back_off(backends: Backends) {
    let app = spawn_app(backends).await;
    let admin = app.admin_token().await;
    let user = app
        .create_user(&admin, "dealer1", "a long dealer passphrase", &["dealer"])
        .await;
    let browser = browser();
    for attempt in 1..=4 {
        let answer = app
            .submit_sign_in(
                &browser,
                &app.authorize_url("openid"),
                "dealer1",
                "wrong password!",
            )
            .await;
        assert_eq!(answer.status(), 401, "attempt {attempt}");
        assert!(
            answer
                .text()
                .await
                .unwrap()
                .contains("wrong username or password")
        );
    }
    let fifth = app
        .submit_sign_in(
            &browser,
            &app.authorize_url("openid"),
            "dealer1",
            "wrong password!",
        )
        .await;
    assert_eq!(fifth.status(), 403);
    assert!(
        fifth
            .text()
            .await
            .unwrap()
            .contains("try again in 30 seconds")
    );
    // Locked: even the right password is refused.
    let right = app
        .submit_sign_in(
            &browser,
            &app.authorize_url("openid"),
            "dealer1",
            "a long dealer passphrase",
        )
        .await;
    assert_eq!(right.status(), 403);
    let locked: Value = app
        .call(
            Method::GET,
            &format!("/users/{}", user["id"].as_str().unwrap()),
            Some(&admin),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(locked["locked_until"].is_string());
    // An administrator lifts the lock.
    let unlocked = app
        .call(
            Method::PATCH,
            &format!("/users/{}", user["id"].as_str().unwrap()),
            Some(&admin),
            Some(serde_json::json!({"unlock": true})),
        )
        .await;
    assert_eq!(unlocked.status(), 200);
    let tokens = app
        .sign_in("dealer1", "a long dealer passphrase", "openid")
        .await;
    assert!(tokens["access_token"].is_string());
    // Unknown users fail like wrong passwords (names cannot be probed).
    let nobody = app
        .submit_sign_in(
            &browser,
            &app.authorize_url("openid"),
            "nobody",
            "wrong password!",
        )
        .await;
    assert_eq!(nobody.status(), 401);
}
on_every_backend!(lockout, repeated_failures_lock_the_account_with_back_off);

async fn after_a_rotation_old_tokens_stay_valid_and_new_ones_use_the_new_key(backends: Backends) {
    let app = spawn_app(backends).await;
    let admin = app.admin_token().await;
    let old_kid = kid(&admin);
    let rotated: Value = app
        .call(Method::POST, "/keys/rotate", Some(&admin), None)
        .await
        .json()
        .await
        .unwrap();
    let new_kid = rotated["kid"].as_str().unwrap();
    assert_ne!(new_kid, old_kid);
    let jwks: Value = app
        .server
        .client
        .get(app.url("/jwks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(
        kids.contains(&old_kid.as_str()) && kids.contains(&new_kid),
        "{kids:?}"
    );
    assert_eq!(
        app.call(Method::GET, "/userinfo", Some(&admin), None)
            .await
            .status(),
        200,
        "the old key's token"
    );
    let fresh = app.admin_token().await;
    assert_eq!(kid(&fresh), new_kid);
    // A second instance (a restart) reads the same keys.
    let jwks_again = axle_identity::build(&app._platform.platform).await.unwrap();
    drop(jwks_again);
}
on_every_backend!(
    rotation,
    after_a_rotation_old_tokens_stay_valid_and_new_ones_use_the_new_key
);

async fn sign_out_ends_the_session_and_its_refresh_tokens(backends: Backends) {
    let app = spawn_app(backends).await;
    let browser = browser();
    let answer = app
        .submit_sign_in(
            &browser,
            &app.authorize_url("openid offline_access"),
            "admin",
            ADMIN_PASSWORD,
        )
        .await;
    let code = param(&location_params(&answer), "code")
        .unwrap()
        .to_string();
    let tokens: Value = app.redeem(&code, VERIFIER).await.json().await.unwrap();
    let id_token = tokens["id_token"].as_str().unwrap();
    let back = format!("{}/", app.issuer);
    let logout = format!(
        "{}/logout?id_token_hint={id_token}&post_logout_redirect_uri={}&state=bye",
        app.issuer,
        urlencode(&back)
    );
    let page = browser.get(&logout).send().await.unwrap();
    assert_eq!(
        page.status(),
        200,
        "a confirmation page, not a sign-out by link"
    );
    let form = hidden_fields(&page.text().await.unwrap());
    let done = browser
        .post(app.url("/logout"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 303);
    assert_eq!(
        done.headers()["location"].to_str().unwrap(),
        format!("{back}?state=bye")
    );
    assert_eq!(
        app.refresh(tokens["refresh_token"].as_str().unwrap())
            .await
            .status(),
        400
    );
    let again = browser
        .get(app.authorize_url("openid"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200, "signed out: the form again");
}
on_every_backend!(sign_out, sign_out_ends_the_session_and_its_refresh_tokens);

async fn revocation_and_introspection(backends: Backends) {
    let app = spawn_app(backends).await;
    let admin = app.admin_token().await;
    let created: Value = app
        .call(
            Method::POST,
            "/clients",
            Some(&admin),
            Some(serde_json::json!({
                "id": "reporting", "name": "Reporting", "kind": "confidential",
                "grants": ["client_credentials"], "scopes": ["reports"], "roles": ["finance"],
            })),
        )
        .await
        .json()
        .await
        .unwrap();
    let secret = created["client_secret"].as_str().unwrap().to_string();
    let token: Value = app
        .server
        .client
        .post(app.url("/token"))
        .basic_auth("reporting", Some(&secret))
        .form(&[("grant_type", "client_credentials"), ("scope", "reports")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = token["access_token"].as_str().unwrap();
    assert_eq!(claims(access)["roles"], serde_json::json!(["finance"]));
    assert!(token.get("refresh_token").is_none());
    let introspect = |t: String| {
        app.server
            .client
            .post(app.url("/introspect"))
            .basic_auth("reporting", Some(secret.clone()))
            .form(&[("token", t)])
            .send()
    };
    let active: Value = introspect(access.to_string())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(active["active"], true);
    assert_eq!(active["client_id"], "reporting");
    let revoked = app
        .server
        .client
        .post(app.url("/revoke"))
        .basic_auth("reporting", Some(&secret))
        .form(&[("token", access)])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let inactive: Value = introspect(access.to_string())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(inactive, serde_json::json!({"active": false}));
    let wrong_secret = app
        .server
        .client
        .post(app.url("/introspect"))
        .basic_auth("reporting", Some("nope"))
        .form(&[("token", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_secret.status(), 401);
    assert!(wrong_secret.headers().contains_key("www-authenticate"));
}
on_every_backend!(revocation, revocation_and_introspection);
