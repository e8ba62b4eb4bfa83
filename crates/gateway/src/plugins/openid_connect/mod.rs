//! `openid-connect` (priority 2599): APISIX's OpenID Connect relying party, with its field
//! names, against any provider's discovery document — Axle's identity service, Keycloak,
//! Azure AD.
//!
//! Two ways in, as in APISIX:
//! - **Bearer tokens** (`bearer_only`, or `use_jwks` / `public_key` / `introspection_endpoint`
//!   set): the token in `Authorization: Bearer` (or `X-Access-Token`) is verified — a JWT by
//!   its signature with the provider's JWKS (`use_jwks`) or a fixed `public_key`, its issuer
//!   (`claim_validator.issuer.valid_issuers`, else the discovery document's) and expiry; any
//!   other token by the provider's introspection endpoint. Missing or bad: 401 with
//!   `WWW-Authenticate: Bearer realm=…`; `required_scopes` or audience not met: 403.
//!   Verified tokens are remembered until they expire (a revoked token may pass until then when
//!   verified by signature, as with any JWT; introspection asks the provider each time), so the
//!   signature is checked once per token, not per request.
//! - **Browsers** ([`browser`]): without a token, the authorization code flow (with PKCE when
//!   `use_pkce`), a session in an encrypted cookie, and `logout_path`.
//!
//! What passes upstream: `X-Access-Token` (or `Authorization` with
//! `access_token_in_authorization_header`), `X-Userinfo` (base64 of the token's claims or the
//! introspection answer), `X-ID-Token` for browser sessions; copies the client sent of these
//! are removed first, so they cannot be forged.

mod browser;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use http::{HeaderName, HeaderValue, StatusCode, header};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::jwks::{Key, KeySetError};
use super::{Shared, Site};
use crate::client::fetch;
use crate::client::pool::Pool;
use crate::runtime::phases::{Ctx, Flow, Plugin, Reply};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    client_id: String,
    /// Required to introspect tokens and for the browser flow (APISIX always requires it;
    /// Axle not for `bearer_only` with `use_jwks` or `public_key`, which never use it).
    client_secret: Option<String>,
    /// The provider's `.well-known/openid-configuration` URL.
    discovery: String,
    #[serde(default = "default_scope")]
    scope: String,
    required_scopes: Option<Vec<String>>,
    #[serde(default = "default_realm")]
    realm: String,
    #[serde(default)]
    bearer_only: bool,
    #[serde(default = "default_logout_path")]
    logout_path: String,
    post_logout_redirect_uri: Option<String>,
    redirect_uri: Option<String>,
    /// Seconds each call to the provider may take.
    #[serde(default = "default_timeout")]
    timeout: u64,
    #[serde(default = "default_true")]
    ssl_verify: bool,
    introspection_endpoint: Option<String>,
    #[serde(default)]
    introspection_endpoint_auth_method: AuthMethod,
    #[serde(default)]
    token_endpoint_auth_method: AuthMethod,
    public_key: Option<String>,
    #[serde(default)]
    use_jwks: bool,
    #[serde(default)]
    use_pkce: bool,
    /// A nonce is always sent (and checked in the ID token); accepted for APISIX's configs.
    #[serde(default, rename = "use_nonce")]
    _use_nonce: bool,
    #[serde(default = "default_true")]
    set_access_token_header: bool,
    #[serde(default)]
    access_token_in_authorization_header: bool,
    #[serde(default = "default_true")]
    set_id_token_header: bool,
    #[serde(default = "default_true")]
    set_userinfo_header: bool,
    /// Sessions keep no refresh token (an expired session signs in again, silently while the
    /// provider's own session lasts); accepted for APISIX's configs.
    #[serde(default, rename = "set_refresh_token_header")]
    _set_refresh_token_header: bool,
    session: Option<browser::SessionConfig>,
    #[serde(default)]
    unauth_action: UnauthAction,
    claim_validator: Option<ClaimValidator>,
    /// Seconds a fetched key set is used before it is fetched again.
    #[serde(default = "default_jwk_expires_in")]
    jwk_expires_in: u64,
    /// Extra parameters for the authorization endpoint.
    #[serde(default)]
    authorization_params: serde_json::Map<String, Value>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    #[serde(default = "default_iat_slack")]
    iat_slack: u64,
}

fn default_scope() -> String {
    "openid".into()
}
fn default_realm() -> String {
    "apisix".into()
}
fn default_logout_path() -> String {
    "/logout".into()
}
fn default_timeout() -> u64 {
    3
}
fn default_true() -> bool {
    true
}
fn default_jwk_expires_in() -> u64 {
    86400
}
fn default_iat_slack() -> u64 {
    120
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AuthMethod {
    #[default]
    ClientSecretBasic,
    ClientSecretPost,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum UnauthAction {
    /// Send the browser to the provider to sign in.
    #[default]
    Auth,
    /// 401.
    Deny,
    /// Let the request through without identity.
    Pass,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClaimValidator {
    issuer: Option<IssuerValidator>,
    audience: Option<AudienceValidator>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct IssuerValidator {
    valid_issuers: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AudienceValidator {
    #[serde(default = "default_aud_claim")]
    claim: String,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    match_with_client_id: bool,
}

fn default_aud_claim() -> String {
    "aud".into()
}

/// How bearer tokens are verified.
#[derive(Debug)]
enum Verify {
    /// By signature with the provider's key set (`use_jwks`).
    Jwks,
    /// By signature with this key (`public_key`).
    PublicKey(Key),
    /// By the provider's introspection endpoint.
    Introspection,
}

#[derive(Debug)]
struct OpenIdConnect {
    /// The process's plugin state: its discovery documents, verified tokens and key sets.
    shared: Arc<Shared>,
    config: Config,
    /// Bearer tokens are looked for (else only the browser flow runs).
    bearer: bool,
    verify: Verify,
    challenge: HeaderValue,
    timeout: Duration,
    browser: Option<browser::Browser>,
    /// The verified tokens of this plugin's provider, found in [`State`] on first use.
    cache: std::sync::OnceLock<Arc<ScopeCache>>,
    /// What a remembered token was verified against (discovery, issuers, key): a token
    /// verified for one provider is never taken from the cache for another.
    scope: Box<str>,
}

const X_ACCESS_TOKEN: HeaderName = HeaderName::from_static("x-access-token");
const X_USERINFO: HeaderName = HeaderName::from_static("x-userinfo");
const X_ID_TOKEN: HeaderName = HeaderName::from_static("x-id-token");
const X_REFRESH_TOKEN: HeaderName = HeaderName::from_static("x-refresh-token");

pub(super) fn build(config: &Value, site: &Site) -> Result<Arc<dyn Plugin>, String> {
    let c: Config = crate::resource::parse(config).map_err(|e| e.0)?;
    check_url("discovery", &c.discovery)?;
    if let Some(url) = &c.introspection_endpoint {
        check_url("introspection_endpoint", url)?;
    }
    if c.timeout == 0 {
        return Err("timeout: must be at least 1".into());
    }
    let verify = match (&c.public_key, c.use_jwks) {
        (Some(pem), _) => Verify::PublicKey(Key(DecodingKey::from_rsa_pem(pem.as_bytes())
            .or_else(|_| DecodingKey::from_ec_pem(pem.as_bytes()))
            .map_err(|_| "public_key: not a PEM RSA or EC public key".to_string())?)),
        (None, true) => Verify::Jwks,
        (None, false) => Verify::Introspection,
    };
    let bearer =
        c.bearer_only || c.introspection_endpoint.is_some() || c.public_key.is_some() || c.use_jwks;
    let browser = if c.bearer_only {
        None
    } else {
        Some(browser::Browser::new(&c)?)
    };
    // A public client (the browser flow with PKCE) has no secret; introspection needs one.
    let needs_secret =
        matches!(verify, Verify::Introspection) && bearer || (!c.bearer_only && !c.use_pkce);
    if needs_secret && c.client_secret.as_deref().is_none_or(str::is_empty) {
        return Err(
            "client_secret: required to introspect tokens and for the browser flow without use_pkce".into(),
        );
    }
    let challenge = HeaderValue::from_str(&format!("Bearer realm=\"{}\"", c.realm))
        .map_err(|_| "realm: not valid in a header".to_string())?;
    let scope = format!(
        "{}\n{:?}\n{}",
        c.discovery,
        c.claim_validator
            .as_ref()
            .and_then(|v| v.issuer.as_ref())
            .map(|i| &i.valid_issuers),
        c.public_key.as_deref().unwrap_or_default()
    )
    .into();
    Ok(Arc::new(OpenIdConnect {
        shared: site.shared.clone(),
        cache: std::sync::OnceLock::new(),
        scope,
        bearer,
        verify,
        challenge,
        timeout: Duration::from_secs(c.timeout),
        browser,
        config: c,
    }))
}

fn check_url(field: &str, url: &str) -> Result<(), String> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        _ => Err(format!("{field}: must be an http or https URL")),
    }
}

impl Plugin for OpenIdConnect {
    fn name(&self) -> &'static str {
        "openid-connect"
    }

    fn priority(&self) -> i32 {
        2599
    }

    fn rewrite<'a>(&'a self, ctx: &'a mut Ctx) -> Flow<'a> {
        // What the client sent under the names this plugin answers with cannot pass.
        let sent_access_token = ctx.headers.remove(X_ACCESS_TOKEN);
        for name in [X_USERINFO, X_ID_TOKEN, X_REFRESH_TOKEN] {
            ctx.headers.remove(name);
        }
        if self.bearer {
            let cache = self.cache(&self.shared.oidc);
            let found = bearer_token(ctx, sent_access_token.as_ref()).map(|t| (cache.get(t), t));
            match found {
                // Verified before: no future, no allocation.
                Some((Some(verified), _)) => {
                    return match self.refusal(&verified.claims) {
                        Some(refused) => Flow::Reply(refused),
                        None => {
                            self.pass_on(ctx, &verified);
                            Flow::Next
                        }
                    };
                }
                Some((None, token)) => {
                    let token = token.to_string();
                    return Flow::Wait(Box::pin(async move {
                        self.verify_bearer(ctx, &token).await.err()
                    }));
                }
                None if self.config.bearer_only => {
                    return Flow::Reply(
                        self.unauthorized("No bearer token found in request.", None),
                    );
                }
                None => {}
            }
        }
        Flow::Wait(Box::pin(async move {
            match &self.browser {
                Some(browser) => browser.handle(self, ctx).await,
                None => Some(self.unauthorized("No bearer token found in request.", None)),
            }
        }))
    }
}

/// The token of `Authorization: Bearer …`, else of `X-Access-Token`.
fn bearer_token<'h>(ctx: &'h Ctx, sent_access_token: Option<&'h HeaderValue>) -> Option<&'h str> {
    match ctx.headers.get(header::AUTHORIZATION) {
        Some(value) => {
            let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        }
        None => sent_access_token.and_then(|v| v.to_str().ok()),
    }
}

impl OpenIdConnect {
    /// 401 with the `WWW-Authenticate` challenge (with `error="invalid_token"` for a bad one).
    fn unauthorized(&self, message: &str, invalid: Option<&str>) -> Reply {
        let challenge = match invalid {
            Some(why) => {
                let why: String = why
                    .chars()
                    .filter(|c| *c != '"' && !c.is_control())
                    .collect();
                HeaderValue::from_str(&format!(
                    "Bearer realm=\"{}\", error=\"invalid_token\", error_description=\"{why}\"",
                    self.config.realm
                ))
                .unwrap_or_else(|_| self.challenge.clone())
            }
            None => self.challenge.clone(),
        };
        Reply::message(StatusCode::UNAUTHORIZED, message).challenging(&challenge)
    }

    /// Verifies a token not verified before, remembering a JWT until it expires.
    async fn verify_bearer(&self, ctx: &mut Ctx, token: &str) -> Result<(), Reply> {
        let state = self.shared.oidc.clone();
        let claims = match self.verify {
            Verify::Introspection => self.introspect(&state, token).await?,
            _ => self.verify_jwt(&state, token).await?,
        };
        let verified = Arc::new(Verified::new(claims, token));
        if !matches!(self.verify, Verify::Introspection) {
            self.cache(&state).insert(&verified);
        }
        if let Some(refused) = self.refusal(&verified.claims) {
            return Err(refused);
        }
        self.pass_on(ctx, &verified);
        Ok(())
    }

    /// The verified tokens of this plugin's provider (found once, then kept).
    fn cache(&self, state: &State) -> Arc<ScopeCache> {
        self.cache.get_or_init(|| state.scope(&self.scope)).clone()
    }

    async fn verify_jwt(&self, state: &State, token: &str) -> Result<Value, Reply> {
        let invalid = |why: &str| self.unauthorized(why, Some(why));
        let head = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed token"))?;
        if matches!(
            head.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return Err(invalid("a symmetric algorithm is not accepted"));
        }
        let issuers = match self
            .config
            .claim_validator
            .as_ref()
            .and_then(|c| c.issuer.as_ref())
            .and_then(|i| i.valid_issuers.clone())
        {
            Some(issuers) => issuers,
            None => match state
                .discovery(&self.config.discovery, self.config.ssl_verify, self.timeout)
                .await
            {
                Some(doc) => vec![doc.issuer.clone()],
                None => {
                    return Err(self.unauthorized(
                        "issuer validation unavailable",
                        Some("issuer validation unavailable"),
                    ));
                }
            },
        };
        let mut validation = Validation::new(head.alg);
        validation.set_issuer(&issuers);
        validation.validate_aud = false;
        validation.leeway = self.config.iat_slack;
        let keys: Vec<Arc<Key>> = match &self.verify {
            Verify::PublicKey(key) => {
                return decode(token, key, &validation)
                    .ok_or_else(|| invalid("invalid signature or claims"));
            }
            _ => {
                let Some(doc) = state
                    .discovery(&self.config.discovery, self.config.ssl_verify, self.timeout)
                    .await
                else {
                    return Err(Reply::message(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the identity provider cannot be reached",
                    ));
                };
                let ttl = Duration::from_secs(self.config.jwk_expires_in.max(1));
                self.shared
                    .key_sets
                    .keys(
                        &doc.jwks_uri,
                        self.config.ssl_verify,
                        ttl,
                        head.kid.as_deref(),
                    )
                    .await
                    .map_err(|e| match e {
                        KeySetError::Unavailable => Reply::message(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the identity provider's keys cannot be fetched",
                        ),
                        KeySetError::NoSuchKey => invalid("signed by an unknown key"),
                    })?
            }
        };
        keys.iter()
            .find_map(|key| decode(token, key, &validation))
            .ok_or_else(|| invalid("invalid signature or claims"))
    }

    /// RFC 7662 against the provider: the answer's claims when the token is active.
    async fn introspect(&self, state: &State, token: &str) -> Result<Value, Reply> {
        let endpoint = match &self.config.introspection_endpoint {
            Some(url) => url.clone(),
            None => match state
                .discovery(&self.config.discovery, self.config.ssl_verify, self.timeout)
                .await
            {
                Some(doc) => doc.introspection_endpoint.clone().ok_or_else(|| {
                    Reply::message(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the provider has no introspection endpoint; set use_jwks",
                    )
                })?,
                None => {
                    return Err(Reply::message(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the identity provider cannot be reached",
                    ));
                }
            },
        };
        let call = self.client_call(
            &endpoint,
            &[("token", token)],
            self.config.introspection_endpoint_auth_method,
        );
        let answer: Value = fetch::json(&state.pool, call).await.map_err(|e| {
            tracing::warn!(error = %e, "openid-connect: introspection failed");
            Reply::message(
                StatusCode::SERVICE_UNAVAILABLE,
                "the identity provider cannot be reached",
            )
        })?;
        if answer.get("active") != Some(&Value::Bool(true)) {
            return Err(self.unauthorized("invalid token", Some("the token is not active")));
        }
        Ok(answer)
    }

    /// A POST to the provider authenticated as this client.
    fn client_call<'u>(
        &self,
        url: &'u str,
        fields: &[(&str, &str)],
        method: AuthMethod,
    ) -> fetch::Call<'u> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.extend_pairs(fields);
        let secret = self
            .config
            .client_secret
            .as_deref()
            .filter(|s| !s.is_empty());
        let authorization = match (secret, method) {
            // A public client (PKCE, no secret) names itself.
            (None, _) => {
                form.append_pair("client_id", &self.config.client_id);
                None
            }
            (Some(secret), AuthMethod::ClientSecretBasic) => {
                let encode =
                    |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let pair = format!("{}:{}", encode(&self.config.client_id), encode(secret));
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
            }
            (Some(secret), AuthMethod::ClientSecretPost) => {
                form.append_pair("client_id", &self.config.client_id);
                form.append_pair("client_secret", secret);
                None
            }
        };
        let mut call = fetch::Call::post_form(url, self.config.ssl_verify, form.finish());
        call.authorization = authorization;
        call.timeout = self.timeout;
        call
    }

    /// `required_scopes` and the audience rules: a 403 when unmet.
    fn refusal(&self, claims: &Value) -> Option<Reply> {
        if let Some(required) = &self.config.required_scopes {
            let granted: Vec<&str> = claims
                .get("scope")
                .and_then(Value::as_str)
                .unwrap_or("")
                .split_whitespace()
                .collect();
            if !required.iter().all(|s| granted.contains(&s.as_str())) {
                let error = format!("required scopes {} not present", required.join(", "));
                return Some(Reply::json(
                    StatusCode::FORBIDDEN,
                    &serde_json::json!({ "error": error }),
                ));
            }
        }
        if let Some(aud) = self
            .config
            .claim_validator
            .as_ref()
            .and_then(|c| c.audience.as_ref())
        {
            let value = claims.get(&aud.claim);
            if (aud.required || aud.match_with_client_id) && value.is_none() {
                return Some(Reply::json(
                    StatusCode::FORBIDDEN,
                    &serde_json::json!({ "error": "required audience claim not present" }),
                ));
            }
            if aud.match_with_client_id {
                let id = self.config.client_id.as_str();
                let matched = match value {
                    Some(Value::String(s)) => s == id,
                    Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(id)),
                    _ => false,
                };
                if !matched {
                    return Some(Reply::json(
                        StatusCode::FORBIDDEN,
                        &serde_json::json!({ "error": "mismatched audience" }),
                    ));
                }
            }
        }
        None
    }

    /// The headers the upstream gets for a verified token.
    fn pass_on(&self, ctx: &mut Ctx, verified: &Verified) {
        if self.config.set_access_token_header {
            let (name, value) = if self.config.access_token_in_authorization_header {
                (header::AUTHORIZATION, &verified.bearer)
            } else {
                (X_ACCESS_TOKEN, &verified.access)
            };
            if let Some(value) = value {
                ctx.headers.insert(name, value.clone());
            }
        }
        if self.config.set_userinfo_header
            && let Some(info) = &verified.userinfo
        {
            ctx.headers.insert(X_USERINFO, info.clone());
        }
    }
}

fn decode(token: &str, key: &Key, validation: &Validation) -> Option<Value> {
    jsonwebtoken::decode::<Value>(token, &key.0, validation)
        .map(|data| data.claims)
        .map_err(|e| tracing::debug!(error = %e, "openid-connect: token refused"))
        .ok()
}

/// A verified token's claims, and the header values made of them once.
#[derive(Debug)]
struct Verified {
    claims: Value,
    /// The token (`X-Access-Token`) and `Bearer <token>` (`Authorization`).
    token: Box<str>,
    access: Option<HeaderValue>,
    bearer: Option<HeaderValue>,
    userinfo: Option<HeaderValue>,
    /// Until when it may be taken from the cache (its `exp`).
    until: Option<Instant>,
}

impl Verified {
    fn new(claims: Value, token: &str) -> Self {
        let userinfo = HeaderValue::from_str(
            &base64::engine::general_purpose::STANDARD.encode(claims.to_string()),
        )
        .ok();
        let until = claims.get("exp").and_then(Value::as_i64).map(|exp| {
            let left = exp - chrono_now();
            Instant::now() + Duration::from_secs(u64::try_from(left).unwrap_or(0))
        });
        Self {
            access: HeaderValue::from_str(token).ok(),
            bearer: HeaderValue::from_str(&format!("Bearer {token}")).ok(),
            token: token.into(),
            claims,
            userinfo,
            until,
        }
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A provider's discovery document (the fields used).
#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    introspection_endpoint: Option<String>,
    end_session_endpoint: Option<String>,
}

/// How long a discovery document is used before it is fetched again.
const DISCOVERY_TTL: Duration = Duration::from_secs(300);
/// The least time between two failed fetches of a discovery document.
const DISCOVERY_RETRY: Duration = Duration::from_secs(5);
/// Verified tokens remembered at most (the cache starts over when full).
const MAX_REMEMBERED: usize = 100_000;

/// What `openid-connect` keeps across requests and snapshots: discovery documents, verified
/// tokens, and the connections to the providers.
#[derive(Debug, Default)]
pub struct State {
    pool: Arc<Pool>,
    documents: Mutex<HashMap<(String, bool), Arc<Document>>>,
    /// By scope (see [`OpenIdConnect::scope`]).
    verified: Mutex<HashMap<Box<str>, Arc<ScopeCache>>>,
}

#[derive(Debug, Default)]
struct Document {
    fetched: RwLock<Option<(Arc<Discovery>, Instant)>>,
    tried: Mutex<Option<Instant>>,
    fetching: tokio::sync::Mutex<()>,
}

impl State {
    /// The discovery document at `url`: cached for five minutes, kept when the provider is
    /// down; `None` when it was never fetched.
    async fn discovery(
        &self,
        url: &str,
        verify: bool,
        timeout: Duration,
    ) -> Option<Arc<Discovery>> {
        let doc = {
            let mut docs = self.documents.lock().unwrap_or_else(|e| e.into_inner());
            docs.entry((url.to_string(), verify)).or_default().clone()
        };
        let current = doc
            .fetched
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some((found, at)) = &current
            && at.elapsed() < DISCOVERY_TTL
        {
            return Some(found.clone());
        }
        let recently = doc
            .tried
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| t.elapsed() < DISCOVERY_RETRY);
        if recently {
            return current.map(|(d, _)| d);
        }
        let _fetching = doc.fetching.lock().await;
        if let Some((found, at)) = doc
            .fetched
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            && at.elapsed() < DISCOVERY_TTL
        {
            return Some(found);
        }
        let mut call = fetch::Call::get(url, verify);
        call.timeout = timeout;
        *doc.tried.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        match fetch::json::<Discovery>(&self.pool, call).await {
            Ok(found) => {
                let found = Arc::new(found);
                *doc.fetched.write().unwrap_or_else(|e| e.into_inner()) =
                    Some((found.clone(), Instant::now()));
                Some(found)
            }
            Err(e) => {
                tracing::warn!(url, error = %e, "openid-connect: cannot fetch the discovery document");
                current.map(|(d, _)| d)
            }
        }
    }

    /// The verified tokens of one scope.
    fn scope(&self, scope: &str) -> Arc<ScopeCache> {
        let mut scopes = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        scopes.entry(scope.into()).or_default().clone()
    }
}

/// Verified tokens of one provider (scope), by their signature (the part that is unique to each
/// token, and shorter to hash than the whole), the whole token compared on a hit.
#[derive(Debug, Default)]
pub struct ScopeCache {
    tokens: RwLock<crate::FastMap<Box<str>, Arc<Verified>>>,
}

fn signature(token: &str) -> &str {
    token.rsplit('.').next().unwrap_or(token)
}

impl ScopeCache {
    fn get(&self, token: &str) -> Option<Arc<Verified>> {
        let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
        let found = tokens.get(signature(token))?;
        (*found.token == *token && found.until.is_some_and(|t| t > Instant::now()))
            .then(|| found.clone())
    }

    fn insert(&self, verified: &Arc<Verified>) {
        if verified.until.is_none() {
            return;
        }
        let mut tokens = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        if tokens.len() >= MAX_REMEMBERED {
            tokens.retain(|_, v| v.until.is_some_and(|t| t > Instant::now()));
            if tokens.len() >= MAX_REMEMBERED {
                tokens.clear();
            }
        }
        tokens.insert(signature(&verified.token).into(), verified.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn apisix_doc_configs_build_and_bad_ones_are_refused() {
        let site = Site::checking();
        let bearer = json!({"client_id": "apisix", "client_secret": "s", "discovery":
            "http://keycloak:8080/realms/master/.well-known/openid-configuration",
            "bearer_only": true, "use_jwks": true});
        assert!(build(&bearer, &site).is_ok());
        let browser = json!({"client_id": "apisix", "client_secret": "your-client-secret",
            "discovery": "http://keycloak:8080/realms/master/.well-known/openid-configuration",
            "scope": "openid email profile", "redirect_uri": "http://127.0.0.1:9080/api/v1/redirect",
            "ssl_verify": false, "session": {"secret": "your-session-secret-min-16-chars"}});
        assert!(build(&browser, &site).is_ok());
        let err = |v: Value| build(&v, &site).unwrap_err();
        assert!(err(json!({"client_id": "a", "client_secret": "s", "discovery": "file:///x", "bearer_only": true})).contains("discovery"));
        assert!(
            err(json!({"client_id": "a", "client_secret": "s", "discovery": "http://idp/d"}))
                .contains("session")
        );
        assert!(err(json!({"client_id": "a", "client_secret": "s", "discovery": "http://idp/d", "session": {"secret": "short"}})).contains("16"));
        assert!(err(json!({"client_id": "a", "client_secret": "s", "discovery": "http://idp/d", "bearer_only": true, "unknown": 1})).contains("unknown"));
        assert!(
            err(json!({"client_id": "a", "discovery": "http://idp/d", "bearer_only": true}))
                .contains("client_secret"),
            "introspection needs it"
        );
        assert!(build(&json!({"client_id": "a", "discovery": "http://idp/d", "bearer_only": true, "use_jwks": true}), &site).is_ok());
    }
}
