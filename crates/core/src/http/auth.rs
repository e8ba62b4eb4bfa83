//! Who is calling, verified by the service itself: the bearer token of the trusted issuer
//! (Axle's identity service, or the provider `[auth]` names), checked against its published
//! keys, issuer, audience and expiry.
//!
//! The gateway verifies tokens too, but a service does not take its word for it: anything on
//! the host could send a bare identity header, so each service checks the token it is given
//! (`Authorization: Bearer`, or `X-Access-Token` as the gateway's `openid-connect` passes it)
//! and the roles its operations need. Keys come from the issuer's discovery document and JWKS,
//! fetched when first needed, again for a key id not seen yet (a rotation), and kept while the
//! issuer is unreachable.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{DecodingKey, Validation, jwk::JwkSet};
use serde_json::Value;

use super::ApiError;
use crate::config::Config;

/// The least time between two fetches of the key set (so made-up key ids cannot make a
/// service hammer the issuer).
const MIN_REFETCH: Duration = Duration::from_secs(5);

/// Verifies callers' tokens; one per process, shared by its services.
#[derive(Clone)]
pub struct Verifier(Arc<Inner>);

struct Inner {
    /// `None`: verification is off; every caller is trusted.
    issuer: Option<String>,
    audience: String,
    roles_claim: Vec<String>,
    http: reqwest::Client,
    keys: RwLock<Keys>,
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, Arc<DecodingKey>>,
    tried: Option<Instant>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.0.issuer)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new(config: &Config) -> Self {
        let issuer = config.auth.verify_tokens.then(|| config.trusted_issuer());
        Self(Arc::new(Inner {
            issuer,
            audience: config.trusted_audience(),
            roles_claim: config
                .auth
                .roles_claim
                .split('.')
                .map(String::from)
                .collect(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            keys: RwLock::default(),
            fetching: tokio::sync::Mutex::new(()),
        }))
    }

    /// The caller `token` names, if the token is the trusted issuer's and valid.
    pub async fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let Some(issuer) = &self.0.issuer else {
            return Ok(Caller::trusted_as(None));
        };
        let head = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        let kid = head.kid.ok_or(AuthError::Invalid)?;
        let key = match self.key(&kid) {
            Some(key) => key,
            None => {
                self.refresh(issuer).await?;
                self.key(&kid).ok_or(AuthError::Invalid)?
            }
        };
        let mut validation = Validation::new(head.alg);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[&self.0.audience]);
        validation.leeway = 30;
        let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map_err(|_| AuthError::Invalid)?
            .claims;
        Ok(self.caller(&claims))
    }

    fn key(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        let keys = self.0.keys.read().unwrap_or_else(|e| e.into_inner());
        keys.by_kid.get(kid).cloned()
    }

    /// Fetches the issuer's keys again, unless they were fetched moments ago.
    async fn refresh(&self, issuer: &str) -> Result<(), AuthError> {
        let _fetching = self.0.fetching.lock().await;
        {
            let keys = self.0.keys.read().unwrap_or_else(|e| e.into_inner());
            if keys.tried.is_some_and(|t| t.elapsed() < MIN_REFETCH) {
                return if keys.by_kid.is_empty() {
                    Err(AuthError::Unavailable)
                } else {
                    Ok(())
                };
            }
        }
        let fetched = self.fetch(issuer).await;
        let mut keys = self.0.keys.write().unwrap_or_else(|e| e.into_inner());
        keys.tried = Some(Instant::now());
        match fetched {
            Ok(found) => {
                keys.by_kid = found;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(issuer, error = %e, "cannot fetch the issuer's keys; keeping those fetched before");
                if keys.by_kid.is_empty() {
                    Err(AuthError::Unavailable)
                } else {
                    Ok(())
                }
            }
        }
    }

    async fn fetch(
        &self,
        issuer: &str,
    ) -> Result<HashMap<String, Arc<DecodingKey>>, reqwest::Error> {
        let discovery: Value = self
            .0
            .http
            .get(format!("{issuer}/.well-known/openid-configuration"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let jwks_uri = discovery["jwks_uri"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| format!("{issuer}/jwks"));
        let set: JwkSet = self
            .0
            .http
            .get(jwks_uri)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(set
            .keys
            .iter()
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                Some((kid, Arc::new(DecodingKey::from_jwk(jwk).ok()?)))
            })
            .collect())
    }

    fn caller(&self, claims: &Value) -> Caller {
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(String::from);
        let mut roles = claims;
        for step in &self.0.roles_claim {
            roles = roles.get(step).unwrap_or(&Value::Null);
        }
        let roles = roles
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        let subject = text("sub").unwrap_or_default();
        Caller {
            name: text("preferred_username")
                .or_else(|| text("client_id").map(|c| format!("client:{c}")))
                .unwrap_or_else(|| subject.clone()),
            subject,
            roles,
            org: text("org"),
            token: None,
            trusted: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the access token is invalid or expired")]
    Invalid,
    #[error("the issuer's keys cannot be fetched")]
    Unavailable,
}

/// The verified caller of an operation.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's `sub`: a user's id, or a client's.
    pub subject: String,
    /// For the audit trail: the username, or `client:<id>`.
    pub name: String,
    pub roles: Vec<String>,
    /// The organisation the user or client acts for.
    pub org: Option<String>,
    /// The token itself, to call other services on the caller's behalf.
    pub token: Option<secrecy::SecretString>,
    /// Verification is off: every role is granted.
    trusted: bool,
}

impl Caller {
    /// A caller when verification is off, named as the gateway's consumer header says.
    fn trusted_as(name: Option<&str>) -> Self {
        let name = name.filter(|n| !n.is_empty()).unwrap_or("anonymous");
        Caller {
            subject: name.into(),
            name: name.into(),
            roles: Vec::new(),
            org: None,
            token: None,
            trusted: true,
        }
    }

    /// The caller's token, to pass on (`None` when verification is off).
    pub fn bearer(&self) -> Option<&str> {
        use secrecy::ExposeSecret;
        self.token.as_ref().map(|t| t.expose_secret())
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.trusted || self.roles.iter().any(|r| r == role)
    }

    /// 403 `FORBIDDEN` unless the caller has one of `roles` (`platform-admin` has them all).
    pub fn require(&self, roles: &[&str]) -> Result<(), ApiError> {
        if self.has_role("platform-admin") || roles.iter().any(|r| self.has_role(r)) {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            format!("this operation needs the role {}", roles.join(" or ")),
        ))
    }
}

/// 401 with `WWW-Authenticate: Bearer` (RFC 6750).
fn unauthenticated(message: &str) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", message).into_response();
    response.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    response
}

/// The bearer token of a request (`Authorization: Bearer`, else `X-Access-Token`).
fn bearer_of(headers: &axum::http::HeaderMap) -> Option<String> {
    let from_authorization = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_string());
    from_authorization.or_else(|| {
        headers
            .get("x-access-token")
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    })
}

/// The subject of a request's valid token, if it has one.
pub fn verified_subject<B>(
    request: &axum::http::Request<B>,
) -> impl std::future::Future<Output = Option<String>> + Send + use<B> {
    let verifier = request.extensions().get::<Verifier>().cloned();
    let token = bearer_of(request.headers());
    async move {
        let caller = verifier?.verify(&token?).await.ok()?;
        Some(caller.subject)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(verifier) = parts.extensions.get::<Verifier>().cloned() else {
            return Err(ApiError::internal("the service has no token verifier").into_response());
        };
        let token = bearer_of(&parts.headers);
        match (token, verifier.0.issuer.is_some()) {
            (_, false) => Ok(Caller::trusted_as(
                parts
                    .headers
                    .get("x-consumer-username")
                    .and_then(|v| v.to_str().ok()),
            )),
            (None, true) => Err(unauthenticated("a bearer access token is required")),
            (Some(token), true) => match verifier.verify(&token).await {
                Ok(caller) => Ok(Caller {
                    token: Some(token.into()),
                    ..caller
                }),
                Err(AuthError::Invalid) => {
                    Err(unauthenticated("the access token is invalid or expired"))
                }
                Err(e @ AuthError::Unavailable) => Err(ApiError::unavailable(e).into_response()),
            },
        }
    }
}
