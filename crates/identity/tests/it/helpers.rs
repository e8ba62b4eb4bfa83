//! `spawn_app`: the identity service on fresh storage, its issuer URL its own address; and a
//! browser-like client that signs in through the form.

use std::sync::{Arc, Mutex};

use axle_core::events::{CloudEvent, Subscription};
use axle_core::platform::Service;
use axle_core::testing::{Backends, TestPlatform, TestServer};
use serde_json::{Value, json};

pub const ADMIN_PASSWORD: &str = "correct horse battery staple";
/// The PKCE pair of RFC 7636's appendix B.
pub const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
pub const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

pub struct TestApp {
    pub server: TestServer,
    /// The issuer URL (the server's own address).
    pub issuer: String,
    pub events: Arc<Mutex<Vec<CloudEvent>>>,
    /// Kept alive for the test's duration (its tasks).
    pub _service: Service,
    pub _platform: TestPlatform,
}

pub async fn spawn_app(backends: Backends) -> TestApp {
    let listener = TestServer::reserve().await;
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let platform = TestPlatform::start_with(backends, |config| {
        config.services.identity.issuer = Some(issuer.clone());
        config.services.identity.admin_password = Some(ADMIN_PASSWORD.to_string().into());
    })
    .await;
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    platform
        .platform
        .bus
        .subscribe(
            Subscription::new(format!("{}.watcher", platform.tag), &["axle.identity.#"]),
            move |event: CloudEvent| {
                sink.lock().unwrap().push(event);
                async { Ok(()) }
            },
            platform.platform.shutdown.clone(),
        )
        .await
        .unwrap();
    let service = axle_identity::build(&platform.platform)
        .await
        .expect("identity builds");
    let server = TestServer::serve(listener, &service);
    TestApp {
        server,
        issuer,
        events,
        _service: service,
        _platform: platform,
    }
}

/// A browser: keeps cookies, does not follow redirects (the test reads where they go).
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The query parameters of a redirect's `Location`.
pub fn location_params(response: &reqwest::Response) -> Vec<(String, String)> {
    let location = response
        .headers()
        .get("location")
        .expect("a redirect")
        .to_str()
        .unwrap();
    url::Url::parse(location)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// `/authorize` for the web client with PKCE, `scope` and `state`.
    pub fn authorize_url(&self, scope: &str) -> String {
        format!(
            "{}/authorize?response_type=code&client_id=axle-web&redirect_uri={}&scope={}&state=s1&nonce=n1&code_challenge={CHALLENGE}&code_challenge_method=S256",
            self.issuer,
            urlencode(&self.web_redirect()),
            urlencode(scope),
        )
    }

    pub fn web_redirect(&self) -> String {
        format!("{}/auth/callback", self.issuer)
    }

    /// Posts the sign-in form of `authorize_url` in `browser`; answers the form's response.
    pub async fn submit_sign_in(
        &self,
        browser: &reqwest::Client,
        authorize_url: &str,
        username: &str,
        password: &str,
    ) -> reqwest::Response {
        let action = self.url("/authorize");
        axle_identity::testing::submit_sign_in(browser, authorize_url, &action, username, password)
            .await
    }

    /// Signs `username` in through the form and redeems the code: the token response.
    pub async fn sign_in(&self, username: &str, password: &str, scope: &str) -> Value {
        let browser = browser();
        let answer = self
            .submit_sign_in(&browser, &self.authorize_url(scope), username, password)
            .await;
        assert_eq!(answer.status(), 303, "{}", answer.text().await.unwrap());
        let params = location_params(&answer);
        assert_eq!(param(&params, "state"), Some("s1"));
        let code = param(&params, "code").expect("a code").to_string();
        let tokens = self.redeem(&code, VERIFIER).await;
        assert_eq!(tokens.status(), 200);
        tokens.json().await.unwrap()
    }

    pub async fn redeem(&self, code: &str, verifier: &str) -> reqwest::Response {
        self.server
            .client
            .post(self.url("/token"))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", &self.web_redirect()),
                ("client_id", "axle-web"),
                ("code_verifier", verifier),
            ])
            .send()
            .await
            .unwrap()
    }

    pub async fn refresh(&self, refresh_token: &str) -> reqwest::Response {
        self.server
            .client
            .post(self.url("/token"))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
                ("client_id", "axle-web"),
            ])
            .send()
            .await
            .unwrap()
    }

    /// An access token of the administrator.
    pub async fn admin_token(&self) -> String {
        let tokens = self
            .sign_in("admin", ADMIN_PASSWORD, "openid profile")
            .await;
        tokens["access_token"].as_str().unwrap().to_string()
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut request = self.server.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    /// Creates a user with `roles` (as the administrator).
    pub async fn create_user(
        &self,
        admin: &str,
        username: &str,
        password: &str,
        roles: &[&str],
    ) -> Value {
        let created = self
            .call(
                reqwest::Method::POST,
                "/users",
                Some(admin),
                Some(json!({
                    "username": username, "password": password, "roles": roles,
                    "email": format!("{username}@dealer.example"),
                })),
            )
            .await;
        assert_eq!(created.status(), 201);
        created.json().await.unwrap()
    }

    /// The events of `ty` received so far.
    pub fn events_of(&self, ty: &str) -> Vec<CloudEvent> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.ty == ty)
            .cloned()
            .collect()
    }
}

pub use axle_identity::testing::hidden_fields;

pub fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The payload of a JWT, unverified (the tests read what a token says; authlib verifies).
pub fn claims(jwt: &str) -> Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

pub fn kid(jwt: &str) -> String {
    use base64::Engine;
    let header = jwt.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap().to_string()
}
