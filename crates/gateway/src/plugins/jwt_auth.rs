//! `jwt-auth` (priority 2510): the client presents a JSON Web Token in a header
//! (`Authorization`, with or without `Bearer `), else a query argument, else a cookie. The
//! token's key claim (`key` by default) names the consumer's jwt-auth credential, whose secret
//! or public key must verify the token's signature with the credential's `algorithm` (a token
//! naming another algorithm is refused, which rules out `alg: none` and HS/RS confusion), and
//! `exp`/`nbf` must hold within the credential's `lifetime_grace_period`.
//!
//! Beyond APISIX, a credential may take its keys from a JWKS URL (`jwks_uri`) — Axle's identity
//! service or any OIDC provider — and check `issuer` and `audience`. Key sets are cached for
//! the whole process (they outlive configuration changes), refreshed in the background once
//! older than `jwks_cache_ttl`, fetched at once for a key id not yet seen (a rotation), and kept
//! when the endpoint is down. An `https` key set's certificate must chain to the system's roots
//! unless `jwks_ssl_verify` is false; fetches go over the gateway's own upstream client.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::{HeaderName, HeaderValue, StatusCode, header};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::jwks::{Key, KeySetError};
use super::{Shared, Site};
use crate::runtime::phases::{Ctx, Flow, Plugin, Prepared, Reply};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    #[serde(default = "default_header")]
    header: String,
    #[serde(default = "default_jwt")]
    query: String,
    #[serde(default = "default_jwt")]
    cookie: String,
    #[serde(default)]
    hide_credentials: bool,
    #[serde(default = "default_key_claim")]
    key_claim_name: String,
    /// Keeps the verified token's payload for the plugins after this one (`$jwt_claim_*`).
    #[serde(default)]
    store_in_ctx: bool,
    /// The realm of the `WWW-Authenticate` challenge on a 401.
    #[serde(default = "default_jwt")]
    realm: String,
    anonymous_consumer: Option<String>,
    #[serde(default = "default_claims")]
    claims_to_verify: Vec<Claim>,
}

fn default_header() -> String {
    "authorization".into()
}

fn default_jwt() -> String {
    "jwt".into()
}

fn default_key_claim() -> String {
    "key".into()
}

fn default_claims() -> Vec<Claim> {
    vec![Claim::Exp, Claim::Nbf]
}

#[derive(Debug, Deserialize, PartialEq, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Claim {
    Exp,
    Nbf,
}

#[derive(Debug)]
struct JwtAuth {
    /// The process's plugin state: its key sets.
    shared: Arc<Shared>,
    header: HeaderName,
    query: String,
    cookie: String,
    hide_credentials: bool,
    key_claim_name: String,
    anonymous_consumer: Option<String>,
    verify_exp: bool,
    verify_nbf: bool,
    store_in_ctx: bool,
    /// `WWW-Authenticate` on a 401: `Bearer realm="<realm>"`.
    challenge: HeaderValue,
}

/// The consumer side, as APISIX has it, plus the JWKS fields.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct OnConsumer {
    key: String,
    secret: Option<String>,
    public_key: Option<String>,
    /// Only APISIX's old token-signing endpoint used it; accepted so its configs load.
    #[serde(default, rename = "private_key")]
    _private_key: Option<String>,
    #[serde(default = "default_algorithm")]
    algorithm: String,
    /// The lifetime APISIX's old signing endpoint gave tokens; tokens carry their own `exp`.
    #[serde(default, rename = "exp")]
    _exp: Option<u64>,
    #[serde(default)]
    base64_secret: bool,
    #[serde(default)]
    lifetime_grace_period: u64,
    jwks_uri: Option<String>,
    #[serde(default = "default_jwks_ttl")]
    jwks_cache_ttl: u64,
    /// Whether an `https` key set's certificate is verified (system roots, host name).
    #[serde(default = "default_true")]
    jwks_ssl_verify: bool,
    issuer: Option<String>,
    audience: Option<OneOrMany>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

fn default_algorithm() -> String {
    "HS256".into()
}

fn default_jwks_ttl() -> u64 {
    300
}

fn default_true() -> bool {
    true
}

/// A credential's compiled verification: the algorithm it insists on, its key or key set, and
/// the claims it checks — one validation for each choice of a route's `claims_to_verify`,
/// indexed by [`Verifier::validation`].
#[derive(Debug)]
struct Verifier {
    validations: [Validation; 4],
    keys: Keys,
}

impl Verifier {
    fn validation(&self, exp: bool, nbf: bool) -> &Validation {
        &self.validations[usize::from(exp) * 2 + usize::from(nbf)]
    }
}

#[derive(Debug)]
enum Keys {
    Fixed(Key),
    Jwks {
        uri: String,
        ttl: Duration,
        verify: bool,
    },
}

/// Checks and compiles a consumer's or credential's jwt-auth configuration.
pub(super) fn prepare(config: &Value) -> Result<Prepared, String> {
    let c: OnConsumer = crate::resource::parse(config).map_err(|e| e.0)?;
    if c.key.is_empty() {
        return Err("key: must not be empty".into());
    }
    let algorithm: Algorithm = c.algorithm.parse().map_err(|_| {
        format!(
            "algorithm: {:?} is not one of HS256, HS384, HS512, RS256, RS384, RS512, ES256, \
             ES384, PS256, PS384, PS512, EdDSA",
            c.algorithm
        )
    })?;
    let symmetric = matches!(
        algorithm,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    );
    let keys = match (&c.jwks_uri, symmetric) {
        (Some(_), true) => {
            return Err(format!(
                "jwks_uri: a key set holds public keys; algorithm {} needs a secret",
                c.algorithm
            ));
        }
        (Some(uri), false) => {
            let parsed = url_is_http(uri).ok_or("jwks_uri: must be an http or https URL")?;
            if c.jwks_cache_ttl == 0 {
                return Err("jwks_cache_ttl: must be at least 1".into());
            }
            Keys::Jwks {
                uri: parsed.to_string(),
                ttl: Duration::from_secs(c.jwks_cache_ttl),
                verify: c.jwks_ssl_verify,
            }
        }
        (None, true) => {
            let secret = c
                .secret
                .as_deref()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| format!("secret: required when algorithm is {}", c.algorithm))?;
            Keys::Fixed(Key(if c.base64_secret {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(secret)
                    .map_err(|_| "secret: base64_secret is set but it is not base64")?;
                DecodingKey::from_secret(&bytes)
            } else {
                DecodingKey::from_secret(secret.as_bytes())
            }))
        }
        (None, false) => {
            let pem = c.public_key.as_deref().ok_or_else(|| {
                format!(
                    "public_key: required when algorithm is {} (or give jwks_uri)",
                    c.algorithm
                )
            })?;
            let key = match algorithm {
                Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem.as_bytes()),
                Algorithm::EdDSA => DecodingKey::from_ed_pem(pem.as_bytes()),
                _ => DecodingKey::from_rsa_pem(pem.as_bytes()),
            };
            Keys::Fixed(Key(key.map_err(|e| {
                format!("public_key: not a PEM public key for {}: {e}", c.algorithm)
            })?))
        }
    };
    let mut validation = Validation::new(algorithm);
    validation.leeway = c.lifetime_grace_period;
    // As APISIX: a claim is checked when the token has it; `exp` is not required.
    validation.required_spec_claims.clear();
    validation.validate_aud = false;
    if let Some(issuer) = &c.issuer {
        validation.set_issuer(&[issuer]);
        validation.required_spec_claims.insert("iss".into());
    }
    if let Some(audience) = &c.audience {
        let audience = match audience {
            OneOrMany::One(a) => vec![a.clone()],
            OneOrMany::Many(a) if !a.is_empty() => a.clone(),
            OneOrMany::Many(_) => return Err("audience: must not be empty".into()),
        };
        validation.set_audience(&audience);
        validation.validate_aud = true;
        validation.required_spec_claims.insert("aud".into());
    }
    let checking = |exp: bool, nbf: bool| {
        let mut v = validation.clone();
        v.validate_exp = exp;
        v.validate_nbf = nbf;
        v
    };
    let validations = [
        checking(false, false),
        checking(false, true),
        checking(true, false),
        checking(true, true),
    ];
    Ok(Some(Arc::new(Verifier { validations, keys })))
}

fn url_is_http(uri: &str) -> Option<reqwest::Url> {
    reqwest::Url::parse(uri)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
}

pub(super) fn build(config: &Value, site: &Site) -> Result<Arc<dyn Plugin>, String> {
    let c: Config = crate::resource::parse(config).map_err(|e| e.0)?;
    Ok(Arc::new(JwtAuth {
        shared: site.shared.clone(),
        store_in_ctx: c.store_in_ctx,
        challenge: HeaderValue::from_str(&format!("Bearer realm=\"{}\"", c.realm))
            .map_err(|_| "realm: not valid in a header".to_string())?,
        header: HeaderName::from_bytes(c.header.as_bytes())
            .map_err(|_| format!("header: {:?} is not a header name", c.header))?,
        query: c.query,
        cookie: c.cookie,
        hide_credentials: c.hide_credentials,
        key_claim_name: c.key_claim_name,
        anonymous_consumer: c.anonymous_consumer,
        verify_exp: c.claims_to_verify.contains(&Claim::Exp),
        verify_nbf: c.claims_to_verify.contains(&Claim::Nbf),
    }))
}

impl Plugin for JwtAuth {
    fn name(&self) -> &'static str {
        "jwt-auth"
    }

    fn priority(&self) -> i32 {
        2510
    }

    fn rewrite<'a>(&'a self, ctx: &'a mut Ctx) -> Flow<'a> {
        Flow::Wait(Box::pin(async move {
            match self.authenticate(ctx).await {
                Ok(()) => None,
                Err(Failure::Unavailable) => Some(Reply::message(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "failed to fetch the key set to verify jwt",
                )),
                Err(Failure::Unauthorized(message)) => {
                    let refused = match &self.anonymous_consumer {
                        Some(name) => match ctx.authenticate_anonymous(name) {
                            Flow::Reply(reply) => reply,
                            _ => return None,
                        },
                        None => Reply::message(StatusCode::UNAUTHORIZED, &message),
                    };
                    Some(refused.challenging(&self.challenge))
                }
            }
        }))
    }
}

enum Failure {
    Unauthorized(String),
    /// No key set could be fetched to verify the token with.
    Unavailable,
}

impl From<&str> for Failure {
    fn from(message: &str) -> Failure {
        Failure::Unauthorized(message.into())
    }
}

/// Where the token was found, for `hide_credentials`.
enum Source {
    Header,
    Query,
    Cookie,
}

impl JwtAuth {
    async fn authenticate(&self, ctx: &mut Ctx) -> Result<(), Failure> {
        let (token, source) = self.token(ctx).ok_or("Missing JWT token in request")?;
        let invalid = |why: &str| Failure::Unauthorized(format!("JWT token invalid: {why}"));
        let payload = payload(&token).map_err(invalid)?;
        // `alg: none` and algorithms this gateway does not verify fail here.
        let head = jsonwebtoken::decode_header(&token)
            .map_err(|_| invalid("the header is malformed or names an unknown algorithm"))?;
        let user_key = payload
            .get(&self.key_claim_name)
            .and_then(Value::as_str)
            .ok_or("missing user key in JWT token")?;
        let snapshot = ctx.snapshot.clone();
        let credential = snapshot
            .consumers
            .find("jwt-auth", user_key)
            .ok_or("Invalid user key in JWT token")?;
        let verifier = credential
            .prepared
            .as_deref()
            .and_then(|p| (p as &dyn Any).downcast_ref::<Verifier>())
            .ok_or("Invalid user key in JWT token")?;
        let validation = verifier.validation(self.verify_exp, self.verify_nbf);
        let verified = match &verifier.keys {
            Keys::Fixed(key) => check(&token, key, validation),
            Keys::Jwks { uri, ttl, verify } => {
                let keys = self
                    .shared
                    .key_sets
                    .keys(uri, *verify, *ttl, head.kid.as_deref())
                    .await
                    .map_err(|e| match e {
                        KeySetError::Unavailable => Failure::Unavailable,
                        KeySetError::NoSuchKey => "failed to verify jwt".into(),
                    })?;
                keys.iter().any(|key| check(&token, key, validation))
            }
        };
        if !verified {
            return Err("failed to verify jwt".into());
        }
        ctx.authenticate(credential);
        if self.store_in_ctx {
            ctx.jwt_payload = Some(Box::new(payload));
        }
        if self.hide_credentials {
            match source {
                Source::Header => {
                    ctx.headers.remove(&self.header);
                }
                Source::Query => ctx.remove_arg(&self.query),
                Source::Cookie => remove_cookie(&mut ctx.headers, &self.cookie),
            }
        }
        Ok(())
    }

    fn token(&self, ctx: &Ctx) -> Option<(String, Source)> {
        if let Some(value) = ctx.headers.get(&self.header) {
            let value = value.to_str().ok()?;
            let token = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .unwrap_or(value);
            return Some((token.to_string(), Source::Header));
        }
        let vars = ctx.vars();
        if let Some(token) = vars.arg(&self.query) {
            return Some((token.into_owned(), Source::Query));
        }
        vars.cookie(&self.cookie)
            .map(|token| (token.to_string(), Source::Cookie))
    }
}

/// Whether `key` verifies the token's signature and the token's claims hold.
fn check(token: &str, key: &Key, validation: &Validation) -> bool {
    match jsonwebtoken::decode::<Value>(token, &key.0, validation) {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(error = %e, "jwt-auth: token refused");
            false
        }
    }
}

/// The token's payload, read before it is verified to find whose key verifies it.
fn payload(token: &str) -> Result<serde_json::Map<String, Value>, &'static str> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not three dot-separated parts");
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| "the payload is not base64url")?;
    serde_json::from_slice(&bytes).map_err(|_| "the payload is not a JSON object")
}

/// Drops the cookie `name` from the request's `Cookie` headers.
fn remove_cookie(headers: &mut http::HeaderMap, name: &str) {
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && pair.split('=').next() != Some(name))
        .map(str::to_string)
        .collect();
    headers.remove(header::COOKIE);
    if let Ok(value) = HeaderValue::from_str(&kept.join("; "))
        && !kept.is_empty()
    {
        headers.insert(header::COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn consumer_configs_are_checked() {
        let err = |v: Value| prepare(&v).unwrap_err();
        assert!(err(json!({"key": "k"})).contains("secret"));
        assert!(err(json!({"key": "k", "algorithm": "none", "secret": "s"})).contains("algorithm"));
        assert!(err(json!({"key": "k", "algorithm": "RS256"})).contains("public_key"));
        assert!(
            err(json!({"key": "k", "algorithm": "RS256", "public_key": "nope"}))
                .contains("public_key")
        );
        assert!(
            err(json!({"key": "k", "algorithm": "HS256", "jwks_uri": "http://idp/jwks"}))
                .contains("jwks_uri")
        );
        assert!(
            err(json!({"key": "k", "algorithm": "RS256", "jwks_uri": "file:///etc/passwd"}))
                .contains("jwks_uri")
        );
        assert!(
            err(json!({"key": "k", "secret": "Zm9v!", "base64_secret": true})).contains("base64")
        );
        assert!(prepare(&json!({"key": "k", "secret": "s", "exp": 60})).is_ok());
        assert!(
            prepare(&json!({"key": "k", "algorithm": "ES256", "jwks_uri": "https://idp/jwks"}))
                .is_ok()
        );
    }

    #[test]
    fn payloads_are_read_from_the_middle_part() {
        let body = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"key":"k"}"#);
        let token = format!("e30.{body}.sig");
        assert_eq!(payload(&token).unwrap()["key"], "k");
        assert!(payload("a.b").is_err());
        assert!(payload("a.b.c.d").is_err());
        assert!(payload("e30.!!!.x").is_err());
    }

    #[test]
    fn hidden_cookies_leave_the_others() {
        let mut headers = http::HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; jwt=t; b=2"));
        remove_cookie(&mut headers, "jwt");
        assert_eq!(headers[header::COOKIE], "a=1; b=2");
        remove_cookie(&mut headers, "a");
        remove_cookie(&mut headers, "b");
        assert!(headers.get(header::COOKIE).is_none());
    }
}
