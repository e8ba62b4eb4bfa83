//! The traffic limits: `limit-count` (requests per window), `limit-req` (a request rate, as a
//! leaky bucket) and `limit-conn` (requests in flight). Each counts per key — a variable, a
//! combination of variables, or a constant — per route, and answers the requests over its limit
//! with `rejected_code` and `rejected_msg`.
//!
//! Each counts in this gateway process (`policy: local`, the default), or in Redis
//! (`policy: redis`, with APISIX's `redis_*` fields) so that every gateway sharing that Redis
//! holds one limit: through `core::kv`, whose scripts keep the count atomic and on Redis's
//! clock. No request waits on Redis longer than `redis_timeout`; when it does not answer, the
//! request gets a 500, or passes uncounted with `allow_degradation`, and the outage is logged
//! once.

pub mod conn;
pub mod count;
pub mod req;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axle_core::kv::{Kv, KvError, RedisKv};
use http::StatusCode;
use schemars::JsonSchema;
use serde::Deserialize;

use super::Template;
use crate::runtime::phases::{Ctx, Flow, Reply};
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
            // APISIX's examples write the variable both ways: `consumer_name`, `$consumer_name`.
            KeyType::Var => Key::Var(
                Var::parse(key.strip_prefix('$').unwrap_or(key))
                    .map_err(|e| format!("key: {e}"))?,
            ),
            KeyType::VarCombination => Key::Combination(Template::parse(key)?),
            KeyType::Constant => Key::Constant(key.to_string()),
        })
    }

    /// The counter this request counts against in `scope` (see [`scope`]), for the key's value
    /// (the client address when that is empty).
    pub(super) fn counter(&self, ctx: &Ctx, scope: &str) -> String {
        let vars = ctx.vars();
        let value = match self {
            Key::Var(var) => var.read(&vars).unwrap_or_default(),
            Key::Combination(template) => template.render(&vars, &[]).into(),
            Key::Constant(c) => c.as_str().into(),
        };
        let mut counter = String::with_capacity(scope.len() + 1 + value.len());
        counter.push_str(scope);
        counter.push(':');
        match value.is_empty() {
            true => counter.push_str(&ctx.remote_addr.to_string()),
            false => counter.push_str(&value),
        }
        counter
    }
}

/// What a limit's counters are shared by: the resource it is configured on (`owner`, its key),
/// as APISIX scopes them — a route's count is the route's, a service's is shared by the
/// service's routes, a consumer's (or consumer group's) follows the consumer over every route
/// it calls, a global rule's counts every request; or, for limit-count, a `group` of limits
/// that share one count wherever they are.
pub(super) fn scope(owner: &str, group: Option<&str>) -> String {
    match group {
        Some(group) => format!("group:{group}"),
        None => owner.to_string(),
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

/// Where a limit counts (`policy`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Policy {
    #[default]
    Local,
    Redis,
    RedisCluster,
}

/// APISIX's `redis_*` fields, as a limit's configuration holds them.
#[derive(Debug)]
pub(super) struct RedisFields<'a> {
    pub host: Option<&'a str>,
    pub port: u16,
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
    pub database: u32,
    /// Milliseconds.
    pub timeout: u64,
    pub ssl: bool,
    pub ssl_verify: bool,
}

pub(super) fn default_redis_port() -> u16 {
    6379
}

pub(super) fn default_redis_timeout() -> u64 {
    1000
}

/// The Redis a limit counts in under `policy: redis`, connected on first use.
#[derive(Debug)]
pub(super) struct SharedRedis {
    plugin: &'static str,
    url: String,
    timeout: Duration,
    kv: tokio::sync::OnceCell<Kv>,
    /// Set while Redis is unreachable, so the outage is logged once.
    degraded: AtomicBool,
    /// Whether requests pass uncounted while Redis is unreachable.
    pub allow_degradation: bool,
}

impl SharedRedis {
    /// The Redis `policy` names, when it names one.
    pub(super) fn of(
        plugin: &'static str,
        policy: Policy,
        fields: RedisFields<'_>,
        allow_degradation: bool,
    ) -> Result<Option<SharedRedis>, String> {
        let host = match policy {
            Policy::Local => return Ok(None),
            Policy::RedisCluster => return Err("policy: redis-cluster is not supported yet".into()),
            Policy::Redis => fields.host.filter(|h| !h.is_empty()),
        };
        let host = host.ok_or("redis_host: required when policy is redis")?;
        if !(1..=60_000).contains(&fields.timeout) {
            return Err("redis_timeout: milliseconds within 1 and 60000 expected".into());
        }
        let scheme = if fields.ssl { "rediss" } else { "redis" };
        let auth = match (fields.username, fields.password) {
            (Some(user), Some(password)) => format!("{user}:{password}@"),
            (None, Some(password)) => format!(":{password}@"),
            _ => String::new(),
        };
        let insecure = if fields.ssl && !fields.ssl_verify {
            "#insecure"
        } else {
            ""
        };
        let url = format!(
            "{scheme}://{auth}{host}:{}/{}{insecure}",
            fields.port, fields.database
        );
        redis::Client::open(url.as_str()).map_err(|e| format!("redis_host: {e}"))?;
        Ok(Some(SharedRedis {
            plugin,
            url,
            timeout: Duration::from_millis(fields.timeout),
            kv: tokio::sync::OnceCell::new(),
            degraded: AtomicBool::new(false),
            allow_degradation,
        }))
    }

    /// What `op` gets from Redis, or None when Redis did not answer within the timeout.
    pub(super) async fn run<T, F, Fut>(&self, op: F) -> Option<T>
    where
        F: FnOnce(Kv) -> Fut,
        Fut: Future<Output = Result<T, KvError>>,
    {
        let answered = tokio::time::timeout(self.timeout, async {
            let kv = self
                .kv
                .get_or_try_init(|| async {
                    RedisKv::connect_with_timeout(&self.url, "", self.timeout)
                        .await
                        .map(Kv::Redis)
                })
                .await?
                .clone();
            op(kv).await
        })
        .await;
        match answered {
            Ok(Ok(value)) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!(plugin = self.plugin, "limit: redis reachable again");
                }
                Some(value)
            }
            failed => {
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_string(),
                    };
                    tracing::error!(
                        plugin = self.plugin,
                        error,
                        allow_degradation = self.allow_degradation,
                        "limit: redis unreachable"
                    );
                }
                None
            }
        }
    }

    /// The answer to a request Redis could not count: none (it passes) with
    /// `allow_degradation`, else a 500.
    pub(super) fn unreachable(&self) -> Option<Reply> {
        (!self.allow_degradation).then(|| {
            Reply::message(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!(
                    "failed to limit {}",
                    self.plugin.trim_start_matches("limit-")
                ),
            )
        })
    }
}
