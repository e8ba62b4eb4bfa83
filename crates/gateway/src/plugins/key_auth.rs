//! `key-auth` (priority 2500): the client names itself by a key in a header (`apikey` by
//! default) or, failing that, a query argument; the key is looked up among the consumers'
//! key-auth credentials. A 401 carries the challenge `WWW-Authenticate: apikey realm="key"`
//! (`realm`, as APISIX 3.15).

use std::sync::Arc;

use http::{HeaderName, HeaderValue, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::Site;
use crate::runtime::phases::{Ctx, Flow, Plugin, Reply};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    #[serde(default = "default_name")]
    header: String,
    #[serde(default = "default_name")]
    query: String,
    #[serde(default)]
    hide_credentials: bool,
    anonymous_consumer: Option<String>,
    #[serde(default = "default_realm")]
    realm: String,
}

fn default_name() -> String {
    "apikey".into()
}

fn default_realm() -> String {
    "key".into()
}

#[derive(Debug)]
struct KeyAuth {
    header: HeaderName,
    query: String,
    hide_credentials: bool,
    anonymous_consumer: Option<String>,
    /// `WWW-Authenticate` on a 401: `apikey realm="<realm>"`.
    challenge: HeaderValue,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct OnConsumer {
    key: String,
}

/// The consumer side: `{"key": "..."}`.
pub(super) fn check_consumer(config: &Value) -> Result<super::Prepared, String> {
    let c: OnConsumer = crate::resource::parse(config).map_err(|e| e.0)?;
    if c.key.is_empty() {
        return Err("key: must not be empty".into());
    }
    Ok(None)
}

pub(super) fn build(config: &Value, _site: &Site) -> Result<Arc<dyn Plugin>, String> {
    let c: Config = crate::resource::parse(config).map_err(|e| e.0)?;
    Ok(Arc::new(KeyAuth {
        challenge: HeaderValue::from_str(&format!("apikey realm=\"{}\"", c.realm))
            .map_err(|_| "realm: not valid in a header".to_string())?,
        header: HeaderName::from_bytes(c.header.as_bytes())
            .map_err(|_| format!("header: {:?} is not a header name", c.header))?,
        query: c.query,
        hide_credentials: c.hide_credentials,
        anonymous_consumer: c.anonymous_consumer,
    }))
}

impl Plugin for KeyAuth {
    fn name(&self) -> &'static str {
        "key-auth"
    }

    fn priority(&self) -> i32 {
        2500
    }

    fn rewrite<'a>(&'a self, ctx: &'a mut Ctx) -> Flow<'a> {
        let in_header = ctx.headers.get(&self.header).cloned();
        let key = match &in_header {
            Some(v) => v.to_str().ok().map(std::borrow::Cow::Borrowed),
            None => ctx.vars().arg(&self.query).map(|k| k.into_owned().into()),
        };
        let in_header = in_header.is_some();
        let failure = match &key {
            None => "Missing API key in request",
            Some(key) => match ctx.snapshot.clone().consumers.find("key-auth", key) {
                Some(credential) => {
                    ctx.authenticate(credential);
                    if self.hide_credentials && in_header {
                        ctx.headers.remove(&self.header);
                    } else if self.hide_credentials {
                        ctx.remove_arg(&self.query);
                    }
                    return Flow::Next;
                }
                None => "Invalid API key in request",
            },
        };
        let refused = match &self.anonymous_consumer {
            Some(name) => match ctx.authenticate_anonymous(name) {
                Flow::Reply(reply) => reply,
                flow => return flow,
            },
            None => Reply::message(StatusCode::UNAUTHORIZED, failure),
        };
        Flow::Reply(refused.challenging(&self.challenge))
    }
}
