//! The traffic limits: `limit-count` (requests per window), `limit-req` (a request rate, as a
//! leaky bucket) and `limit-conn` (requests in flight). Each counts per key — a variable, a
//! combination of variables, or a constant — per route, and answers the requests over its limit
//! with `rejected_code` and `rejected_msg`.

pub mod conn;
pub mod count;
pub mod req;

use http::StatusCode;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{Ctx, Flow, Reply, Template};
use crate::vars::Var;

#[derive(Debug, Default, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum KeyType {
    #[default]
    Var,
    VarCombination,
    Constant,
}

/// What a limit counts by.
#[derive(Debug)]
pub(super) enum Key {
    Var(Var),
    Combination(Template),
    Constant(String),
}

impl Key {
    pub(super) fn parse(key_type: KeyType, key: &str) -> Result<Key, String> {
        Ok(match key_type {
            KeyType::Var => Key::Var(Var::parse(key).map_err(|e| format!("key: {e}"))?),
            KeyType::VarCombination => Key::Combination(Template::parse(key)?),
            KeyType::Constant => Key::Constant(key.to_string()),
        })
    }

    /// The counter this request counts against: its route's, or a `group` shared by routes,
    /// for the key's value (the client address when that is empty).
    pub(super) fn counter(&self, ctx: &Ctx, group: Option<&str>) -> String {
        let vars = ctx.vars();
        let value = match self {
            Key::Var(var) => var.read(&vars).unwrap_or_default(),
            Key::Combination(template) => template.render(&vars, &[]).into(),
            Key::Constant(c) => c.as_str().into(),
        };
        let (scope, name) = match group {
            Some(group) => ("group:", group),
            None => ("route:", &*ctx.route_id),
        };
        let mut counter = String::with_capacity(scope.len() + name.len() + 1 + value.len());
        counter.push_str(scope);
        counter.push_str(name);
        counter.push(':');
        match value.is_empty() {
            true => counter.push_str(&ctx.remote_addr.to_string()),
            false => counter.push_str(&value),
        }
        counter
    }
}

/// How a request over the limit is answered: `rejected_code`, and `{"error_msg": …}` when
/// `rejected_msg` is set.
#[derive(Debug)]
pub(super) struct Rejection {
    code: StatusCode,
    msg: Option<String>,
}

impl Rejection {
    pub(super) fn new(code: u16, msg: Option<String>) -> Result<Rejection, String> {
        let code = StatusCode::from_u16(code)
            .ok()
            .filter(|s| (200..600).contains(&s.as_u16()))
            .ok_or_else(|| format!("rejected_code: {code} is not within 200-599"))?;
        Ok(Rejection { code, msg })
    }

    pub(super) fn reply(&self) -> Reply {
        match &self.msg {
            Some(msg) => Reply::json(self.code, &serde_json::json!({ "error_msg": msg })),
            None => Reply {
                status: self.code,
                headers: http::HeaderMap::new(),
                body: Default::default(),
            },
        }
    }
}

/// `seconds` as a delay: at most [`MAX_SECONDS`](crate::resource::MAX_SECONDS), whatever the
/// arithmetic behind it gave.
pub(super) fn delay(seconds: f64) -> std::time::Duration {
    let most = crate::resource::MAX_SECONDS as f64;
    std::time::Duration::from_secs_f64(if seconds.is_nan() {
        0.0
    } else {
        seconds.clamp(0.0, most)
    })
}

/// Goes on after `delay` (at once when it is under a millisecond, as nginx's limits do).
pub(super) fn after(delay: std::time::Duration) -> Flow<'static> {
    if delay < std::time::Duration::from_millis(1) {
        return Flow::Next;
    }
    Flow::Wait(Box::pin(async move {
        tokio::time::sleep(delay).await;
        None
    }))
}

/// APISIX's default `rejected_code`.
pub(super) fn default_code() -> u16 {
    503
}

/// The `policy` of limit-req and limit-conn: they count in this gateway process only, for now.
pub(super) fn check_local(policy: Option<&str>) -> Result<(), String> {
    match policy {
        None | Some("local") => Ok(()),
        Some(other) => Err(format!(
            "policy: {other:?} is not supported by this plugin yet; only \"local\" is"
        )),
    }
}
