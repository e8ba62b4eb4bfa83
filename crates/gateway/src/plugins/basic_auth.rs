//! `basic-auth` (priority 2520): HTTP Basic credentials (`Authorization: Basic
//! base64(username:password)`) checked against the consumers' basic-auth credentials.

use std::sync::Arc;

use base64::Engine;
use http::{HeaderValue, StatusCode, header};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::Site;
use crate::runtime::phases::{Ctx, Flow, Plugin, Reply};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    #[serde(default)]
    hide_credentials: bool,
    anonymous_consumer: Option<String>,
    realm: Option<String>,
}

#[derive(Debug)]
struct BasicAuth {
    hide_credentials: bool,
    anonymous_consumer: Option<String>,
    challenge: HeaderValue,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct OnConsumer {
    username: String,
    password: String,
}

/// The consumer side: `{"username": "...", "password": "..."}`.
pub(super) fn check_consumer(config: &Value) -> Result<super::Prepared, String> {
    let c: OnConsumer = crate::resource::parse(config).map_err(|e| e.0)?;
    if c.username.is_empty() || c.password.is_empty() {
        return Err("username and password must not be empty".into());
    }
    Ok(None)
}

pub(super) fn build(config: &Value, _site: &Site) -> Result<Arc<dyn Plugin>, String> {
    let c: Config = crate::resource::parse(config).map_err(|e| e.0)?;
    let realm = c.realm.as_deref().unwrap_or("basic");
    Ok(Arc::new(BasicAuth {
        hide_credentials: c.hide_credentials,
        anonymous_consumer: c.anonymous_consumer,
        challenge: HeaderValue::from_str(&format!("Basic realm=\"{realm}\""))
            .map_err(|_| "realm: not valid in a header".to_string())?,
    }))
}

impl Plugin for BasicAuth {
    fn name(&self) -> &'static str {
        "basic-auth"
    }

    fn priority(&self) -> i32 {
        2520
    }

    fn rewrite<'a>(&'a self, ctx: &'a mut Ctx) -> Flow<'a> {
        let failure = match self.check(ctx) {
            Ok(()) => {
                if self.hide_credentials {
                    ctx.headers.remove(header::AUTHORIZATION);
                }
                return Flow::Next;
            }
            Err(failure) => failure,
        };
        if let Some(name) = &self.anonymous_consumer {
            return ctx.authenticate_anonymous(name);
        }
        let mut reply = Reply::message(StatusCode::UNAUTHORIZED, failure);
        reply
            .headers
            .insert(header::WWW_AUTHENTICATE, self.challenge.clone());
        Flow::Reply(reply)
    }
}

impl BasicAuth {
    /// Authenticates the request's consumer, or says why not.
    fn check(&self, ctx: &mut Ctx) -> Result<(), &'static str> {
        let value = ctx
            .headers
            .get(header::AUTHORIZATION)
            .ok_or("Missing authorization in request")?;
        let invalid = "Invalid authorization in request";
        let encoded = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("basic").then_some(rest.trim())
            })
            .ok_or(invalid)?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .ok_or(invalid)?;
        let (username, password) = decoded.split_once(':').ok_or(invalid)?;
        let snapshot = ctx.snapshot.clone();
        let credential = snapshot
            .consumers
            .find("basic-auth", username)
            .filter(|c| {
                let expected = c.config.get("password").and_then(Value::as_str);
                expected.is_some_and(|e| same(e.as_bytes(), password.as_bytes()))
            })
            .ok_or("Invalid user authorization")?;
        ctx.authenticate(credential);
        Ok(())
    }
}

/// Compares secrets in time independent of where they differ.
pub(super) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
