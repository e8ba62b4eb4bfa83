//! `openid-connect` for browsers: the authorization code flow (RFC 6749 §4.1, with PKCE when
//! `use_pkce`), the session it ends in, and `logout_path`.
//!
//! A request with neither a bearer token nor a session is sent to the provider's
//! authorization endpoint (`unauth_action: auth`), answered 401 (`deny`) or let through
//! (`pass`). The provider sends the browser back to `redirect_uri` (default: the request's
//! path + `/.apisix/redirect`, as APISIX), where the code is exchanged for tokens and the ID
//! token verified (signature by the provider's keys, issuer, audience, nonce). The session —
//! the access token, the ID token and its claims, and when it ends — lives in a cookie
//! encrypted and authenticated with `session.secret` (AES-256-GCM), so any gateway of a
//! cluster reads it and nothing is stored server-side. The flow's own state (state, nonce,
//! PKCE verifier, the page to return to) travels the same way for ten minutes.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::{HeaderValue, StatusCode, header};
use jsonwebtoken::Validation;
use ring::aead;
use ring::rand::{SecureRandom, SystemRandom};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Config, OpenIdConnect, UnauthAction, Verified, X_ID_TOKEN, decode};
use crate::client::fetch;
use crate::runtime::phases::{Ctx, Reply};

/// APISIX's `session` settings (those of lua-resty-session that apply to a cookie session).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SessionConfig {
    /// Encrypts and authenticates the session cookie; 16 characters or more.
    secret: String,
    cookie_name: Option<String>,
    cookie_path: Option<String>,
    cookie_domain: Option<String>,
    /// Unset: when the request came over https.
    cookie_secure: Option<bool>,
    cookie_http_only: Option<bool>,
    cookie_same_site: Option<SameSite>,
    /// The session's lifetime in seconds (default: the access token's).
    absolute_timeout: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
enum SameSite {
    Strict,
    Lax,
    None,
    Default,
}

/// How long the sign-in round trip may take.
const FLOW_TTL: i64 = 600;
const REDIRECT_SUFFIX: &str = "/.apisix/redirect";

#[derive(Debug)]
pub(super) struct Browser {
    key: aead::LessSafeKey,
    cookie: String,
    attributes: String,
    secure: Option<bool>,
    absolute_timeout: Option<u64>,
}

/// The signed-in browser's session.
#[derive(Debug, Serialize, Deserialize)]
struct Session {
    access_token: String,
    id_token: String,
    claims: Value,
    /// Unix time it ends.
    until: i64,
}

/// The sign-in round trip's state.
#[derive(Debug, Serialize, Deserialize)]
struct Flow {
    state: String,
    nonce: String,
    verifier: Option<String>,
    /// The page to return to.
    back: String,
    redirect_uri: String,
    until: i64,
}

impl Browser {
    pub(super) fn new(c: &Config) -> Result<Self, String> {
        let session = c.session.as_ref().ok_or(
            "session: required unless bearer_only (session.secret encrypts the browser's session)",
        )?;
        if session.secret.chars().count() < 16 {
            return Err("session.secret: must be 16 characters or more".into());
        }
        if let Some(uri) = &c.redirect_uri
            && !uri.starts_with('/')
        {
            super::check_url("redirect_uri", uri)?;
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, session.secret.as_bytes());
        let key = aead::UnboundKey::new(&aead::AES_256_GCM, digest.as_ref())
            .map_err(|_| "session.secret: unusable".to_string())?;
        let cookie = session
            .cookie_name
            .clone()
            .unwrap_or_else(|| "session".into());
        if cookie.is_empty()
            || !cookie
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err("session.cookie_name: letters, digits, '-', '_' and '.' only".into());
        }
        let mut attributes = format!("; Path={}", session.cookie_path.as_deref().unwrap_or("/"));
        if let Some(domain) = &session.cookie_domain {
            attributes.push_str(&format!("; Domain={domain}"));
        }
        if session.cookie_http_only.unwrap_or(true) {
            attributes.push_str("; HttpOnly");
        }
        match session.cookie_same_site.unwrap_or(SameSite::Lax) {
            SameSite::Strict => attributes.push_str("; SameSite=Strict"),
            SameSite::Lax => attributes.push_str("; SameSite=Lax"),
            SameSite::None => attributes.push_str("; SameSite=None"),
            SameSite::Default => {}
        }
        if attributes.bytes().any(|b| b.is_ascii_control()) {
            return Err("session: cookie attributes must not hold control characters".into());
        }
        Ok(Self {
            key: aead::LessSafeKey::new(key),
            cookie,
            attributes,
            secure: session.cookie_secure,
            absolute_timeout: session.absolute_timeout,
        })
    }

    /// The cookie of the sign-in round trip with `state`: one per round trip, so a second tab
    /// (or a favicon fetched meanwhile) does not spoil the first one's.
    fn flow_cookie(&self, state: &str) -> String {
        let tag: String = state.chars().take(12).collect();
        format!("{}_flow_{tag}", self.cookie)
    }

    fn seal<T: Serialize>(&self, value: &T) -> Option<String> {
        let mut nonce = [0u8; 12];
        SystemRandom::new().fill(&mut nonce).ok()?;
        let mut data = serde_json::to_vec(value).ok()?;
        self.key
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::empty(),
                &mut data,
            )
            .ok()?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&data);
        Some(URL_SAFE_NO_PAD.encode(sealed))
    }

    fn open<T: serde::de::DeserializeOwned>(&self, text: &str) -> Option<T> {
        let mut sealed = URL_SAFE_NO_PAD.decode(text).ok()?;
        if sealed.len() < 12 {
            return None;
        }
        let nonce = aead::Nonce::try_assume_unique_for_key(&sealed[..12]).ok()?;
        let data = self
            .key
            .open_in_place(nonce, aead::Aad::empty(), &mut sealed[12..])
            .ok()?;
        serde_json::from_slice(data).ok()
    }

    fn set_cookie(&self, ctx: &Ctx, name: &str, value: &str, max_age: i64) -> Option<HeaderValue> {
        let secure = self.secure.unwrap_or(ctx.scheme == "https");
        let mut cookie = format!("{name}={value}{}; Max-Age={max_age}", self.attributes);
        if secure {
            cookie.push_str("; Secure");
        }
        HeaderValue::from_str(&cookie).ok()
    }

    /// The request of a browser without a bearer token.
    pub(super) async fn handle(&self, plugin: &OpenIdConnect, ctx: &mut Ctx) -> Option<Reply> {
        let redirect_uri = self.redirect_uri(&plugin.config, ctx);
        let redirect_path = reqwest::Url::parse(&redirect_uri)
            .map(|u| u.path().to_string())
            .unwrap_or_default();
        if ctx.original_path == plugin.config.logout_path {
            return Some(self.logout(plugin, ctx).await);
        }
        if ctx.original_path == redirect_path {
            return Some(self.callback(plugin, ctx).await);
        }
        let vars = ctx.vars();
        let session: Option<Session> = vars.cookie(&self.cookie).and_then(|c| self.open(c));
        if let Some(session) = session.filter(|s| s.until > super::chrono_now()) {
            let verified = Verified::new(session.claims.clone(), &session.access_token);
            plugin.pass_on(ctx, &verified);
            if plugin.config.set_id_token_header
                && let Ok(value) =
                    HeaderValue::from_str(&STANDARD.encode(session.claims.to_string()))
            {
                ctx.headers.insert(X_ID_TOKEN, value);
            }
            return None;
        }
        match plugin.config.unauth_action {
            UnauthAction::Pass => None,
            UnauthAction::Deny => Some(plugin.unauthorized("Unauthorized", None)),
            // Only a page the browser navigates to is sent to sign in; what a page loads
            // (images, scripts, fetches) gets a 401.
            UnauthAction::Auth if !navigation(ctx) => {
                Some(plugin.unauthorized("Unauthorized", None))
            }
            UnauthAction::Auth => Some(self.start(plugin, ctx, redirect_uri).await),
        }
    }

    /// Where the provider sends the browser back (absolute).
    fn redirect_uri(&self, c: &Config, ctx: &Ctx) -> String {
        let origin = format!("{}://{}", ctx.scheme, self.authority(ctx));
        match &c.redirect_uri {
            Some(uri) if uri.starts_with('/') => format!("{origin}{uri}"),
            Some(uri) => uri.clone(),
            None if ctx.original_path.ends_with(REDIRECT_SUFFIX) => {
                format!("{origin}{}", ctx.original_path)
            }
            None => format!(
                "{origin}{}{REDIRECT_SUFFIX}",
                ctx.original_path.trim_end_matches('/')
            ),
        }
    }

    fn authority(&self, ctx: &Ctx) -> String {
        ctx.headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(String::from)
            .unwrap_or_else(|| ctx.host.clone())
    }

    /// Sends the browser to the provider to sign in.
    async fn start(&self, plugin: &OpenIdConnect, ctx: &Ctx, redirect_uri: String) -> Reply {
        let c = &plugin.config;
        let Some(doc) = plugin
            .shared
            .oidc
            .discovery(&c.discovery, c.ssl_verify, plugin.timeout)
            .await
        else {
            return Reply::message(
                StatusCode::SERVICE_UNAVAILABLE,
                "the identity provider cannot be reached",
            );
        };
        let random = || {
            let mut bytes = [0u8; 32];
            SystemRandom::new()
                .fill(&mut bytes)
                .map(|_| URL_SAFE_NO_PAD.encode(bytes))
                .unwrap_or_default()
        };
        let back = match &ctx.query {
            Some(q) => format!("{}?{q}", ctx.original_path),
            None => ctx.original_path.clone(),
        };
        let flow = Flow {
            state: random(),
            nonce: random(),
            verifier: c.use_pkce.then(random),
            back,
            redirect_uri,
            until: super::chrono_now() + FLOW_TTL,
        };
        let Ok(mut url) = reqwest::Url::parse(&doc.authorization_endpoint) else {
            return Reply::message(
                StatusCode::BAD_GATEWAY,
                "the provider's authorization endpoint is not a URL",
            );
        };
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &c.client_id)
                .append_pair("redirect_uri", &flow.redirect_uri)
                .append_pair("scope", &c.scope)
                .append_pair("state", &flow.state)
                .append_pair("nonce", &flow.nonce);
            if let Some(verifier) = &flow.verifier {
                let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
                    &ring::digest::SHA256,
                    verifier.as_bytes(),
                ));
                q.append_pair("code_challenge", &challenge)
                    .append_pair("code_challenge_method", "S256");
            }
            for (name, value) in &c.authorization_params {
                let value = value
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| value.to_string());
                q.append_pair(name, &value);
            }
        }
        let mut reply = redirect(url.as_str());
        if let Some(cookie) = self
            .seal(&flow)
            .and_then(|v| self.set_cookie(ctx, &self.flow_cookie(&flow.state), &v, FLOW_TTL))
        {
            reply.headers.append(header::SET_COOKIE, cookie);
        }
        reply
    }

    /// The provider's answer: the code exchanged, the ID token verified, the session set.
    async fn callback(&self, plugin: &OpenIdConnect, ctx: &Ctx) -> Reply {
        let c = &plugin.config;
        let vars = ctx.vars();
        let refuse = |why: &str| Reply::message(StatusCode::UNAUTHORIZED, why);
        let state = vars
            .arg("state")
            .map(|s| s.into_owned())
            .unwrap_or_default();
        let flow_cookie = self.flow_cookie(&state);
        let Some(flow) = vars.cookie(&flow_cookie).and_then(|v| self.open::<Flow>(v)) else {
            return refuse("no session state found: sign in again from the page you wanted");
        };
        if flow.until < super::chrono_now() {
            return refuse("the sign-in took too long: sign in again");
        }
        if state != flow.state {
            return refuse("state mismatch in the authorization callback");
        }
        if let Some(error) = vars.arg("error") {
            return Reply::message(
                StatusCode::FORBIDDEN,
                &format!("the identity provider refused: {error}"),
            );
        }
        let Some(code) = vars.arg("code").map(|c| c.into_owned()) else {
            return refuse("no code in the authorization callback");
        };
        let Some(doc) = plugin
            .shared
            .oidc
            .discovery(&c.discovery, c.ssl_verify, plugin.timeout)
            .await
        else {
            return Reply::message(
                StatusCode::SERVICE_UNAVAILABLE,
                "the identity provider cannot be reached",
            );
        };
        let mut fields = vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", flow.redirect_uri.as_str()),
        ];
        if let Some(verifier) = &flow.verifier {
            fields.push(("code_verifier", verifier));
        }
        let call = plugin.client_call(&doc.token_endpoint, &fields, c.token_endpoint_auth_method);
        let tokens: Value = match fetch::json(&plugin.shared.oidc.pool, call).await {
            Ok(tokens) => tokens,
            Err(e) => {
                tracing::warn!(error = %e, "openid-connect: the code could not be redeemed");
                return refuse("the authorization code could not be redeemed");
            }
        };
        let (Some(access_token), Some(id_token)) = (
            tokens.get("access_token").and_then(Value::as_str),
            tokens.get("id_token").and_then(Value::as_str),
        ) else {
            return refuse("the provider answered without an access token and an ID token");
        };
        let Some(claims) = self
            .verify_id_token(plugin, &doc, id_token, &flow.nonce)
            .await
        else {
            return refuse("the ID token is not valid");
        };
        let lifetime = self.absolute_timeout.map(|t| t as i64).unwrap_or_else(|| {
            tokens
                .get("expires_in")
                .and_then(Value::as_i64)
                .unwrap_or(3600)
        });
        let session = Session {
            access_token: access_token.to_string(),
            id_token: id_token.to_string(),
            claims,
            until: super::chrono_now() + lifetime,
        };
        let mut reply = redirect(&flow.back);
        match self
            .seal(&session)
            .and_then(|v| self.set_cookie(ctx, &self.cookie, &v, lifetime))
        {
            Some(cookie) => reply.headers.append(header::SET_COOKIE, cookie),
            None => {
                return Reply::message(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the session could not be kept",
                );
            }
        };
        if let Some(clear) = self.set_cookie(ctx, &flow_cookie, "", 0) {
            reply.headers.append(header::SET_COOKIE, clear);
        }
        reply
    }

    async fn verify_id_token(
        &self,
        plugin: &OpenIdConnect,
        doc: &super::Discovery,
        token: &str,
        nonce: &str,
    ) -> Option<Value> {
        let c = &plugin.config;
        let head = jsonwebtoken::decode_header(token).ok()?;
        let mut validation = Validation::new(head.alg);
        validation.set_issuer(&[&doc.issuer]);
        validation.set_audience(&[&c.client_id]);
        validation.leeway = c.iat_slack;
        let ttl = Duration::from_secs(c.jwk_expires_in.max(1));
        let keys = plugin
            .shared
            .key_sets
            .keys(&doc.jwks_uri, c.ssl_verify, ttl, head.kid.as_deref())
            .await
            .ok()?;
        let claims = keys
            .iter()
            .find_map(|key| decode(token, key, &validation))?;
        (claims.get("nonce").and_then(Value::as_str) == Some(nonce)).then_some(claims)
    }

    /// `logout_path`: the session cookie cleared, then the provider's sign-out (RP-initiated
    /// logout) with `post_logout_redirect_uri`.
    async fn logout(&self, plugin: &OpenIdConnect, ctx: &Ctx) -> Reply {
        let c = &plugin.config;
        let vars = ctx.vars();
        let session: Option<Session> = vars.cookie(&self.cookie).and_then(|v| self.open(v));
        let doc = plugin
            .shared
            .oidc
            .discovery(&c.discovery, c.ssl_verify, plugin.timeout)
            .await;
        let target = match (
            doc.as_ref().and_then(|d| d.end_session_endpoint.clone()),
            &c.post_logout_redirect_uri,
        ) {
            (Some(endpoint), after) => reqwest::Url::parse(&endpoint).ok().map(|mut url| {
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(session) = &session {
                        q.append_pair("id_token_hint", &session.id_token);
                    }
                    if let Some(after) = after {
                        q.append_pair("post_logout_redirect_uri", after);
                    }
                    q.append_pair("client_id", &c.client_id);
                }
                url.to_string()
            }),
            (None, Some(after)) => Some(after.clone()),
            (None, None) => None,
        };
        let mut reply = match target {
            Some(url) => redirect(&url),
            None => Reply::message(StatusCode::OK, "signed out"),
        };
        if let Some(clear) = self.set_cookie(ctx, &self.cookie, "", 0) {
            reply.headers.append(header::SET_COOKIE, clear);
        }
        reply
    }
}

/// Whether the request is the browser navigating to a page (not a page loading a resource):
/// by `Sec-Fetch-Dest` when the browser sends it, else by `Accept`.
fn navigation(ctx: &Ctx) -> bool {
    let header = |name: &str| ctx.headers.get(name).and_then(|v| v.to_str().ok());
    match header("sec-fetch-dest") {
        Some(dest) => dest == "document",
        None => header("accept")
            .is_none_or(|accept| accept.contains("text/html") || accept.contains("*/*")),
    }
}

fn redirect(location: &str) -> Reply {
    let mut reply = Reply {
        status: StatusCode::FOUND,
        headers: http::HeaderMap::new(),
        body: bytes::Bytes::new(),
    };
    if let Ok(value) = HeaderValue::from_str(location) {
        reply.headers.insert(header::LOCATION, value);
    }
    reply
}
