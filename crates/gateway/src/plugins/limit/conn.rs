//! `limit-conn` (priority 1003): at most `conn` requests in flight per key, per route. Up to
//! `burst` more are let through after a delay — `default_conn_delay` seconds for each `conn`
//! ahead of them, the unit adapting to how long requests take unless
//! `only_use_default_delay` — and the rest are rejected. A request holds its place until its
//! response has been sent or the client has gone away. With `policy: redis` the places are
//! `core::kv`'s, shared by every gateway on that Redis; a place a gateway never gives back (it
//! died) lapses after `key_ttl` seconds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::{Key, KeyType, Policy, RedisFields, Rejection, SharedRedis};
use crate::plugins::{Shared, Site};
use crate::runtime::phases::{Ctx, Flow, Plugin};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    conn: u64,
    burst: u64,
    default_conn_delay: f64,
    #[serde(default)]
    only_use_default_delay: bool,
    #[serde(default)]
    key_type: KeyType,
    key: String,
    #[serde(default = "super::default_code")]
    rejected_code: u16,
    rejected_msg: Option<String>,
    /// Whether requests pass while the Redis of `policy: redis` is unreachable.
    #[serde(default)]
    allow_degradation: bool,
    #[serde(default)]
    policy: Policy,
    /// Seconds a place in Redis lasts when its gateway never gives it back.
    #[serde(default = "default_key_ttl")]
    key_ttl: u64,
    redis_host: Option<String>,
    #[serde(default = "super::default_redis_port")]
    redis_port: u16,
    redis_username: Option<String>,
    redis_password: Option<String>,
    #[serde(default)]
    redis_database: u32,
    #[serde(default = "super::default_redis_timeout")]
    redis_timeout: u64,
    #[serde(default)]
    redis_ssl: bool,
    #[serde(default)]
    redis_ssl_verify: bool,
}

fn default_key_ttl() -> u64 {
    3600
}

impl Config {
    fn redis(&self) -> RedisFields<'_> {
        RedisFields {
            host: self.redis_host.as_deref(),
            port: self.redis_port,
            username: self.redis_username.as_deref(),
            password: self.redis_password.as_deref(),
            database: self.redis_database,
            timeout: self.redis_timeout,
            ssl: self.redis_ssl,
            ssl_verify: self.redis_ssl_verify,
        }
    }
}

#[derive(Debug)]
struct LimitConn {
    /// The process's plugin state: its requests in flight.
    shared: Arc<Shared>,
    conn: u64,
    burst: u64,
    key: Key,
    rejected: Rejection,
    /// The delay for each `conn` requests ahead, in seconds (as f64 bits).
    unit_delay: Arc<AtomicU64>,
    adaptive: bool,
    redis: Option<Arc<SharedRedis>>,
    key_ttl: Duration,
    /// See [`super::scope`].
    scope: String,
}

pub(crate) fn build(config: &Value, site: &Site) -> Result<Arc<dyn Plugin>, String> {
    let c: Config = crate::resource::parse(config).map_err(|e| e.0)?;
    if c.conn == 0 {
        return Err("conn: must be above 0".into());
    }
    crate::resource::seconds("default_conn_delay", c.default_conn_delay, false).map_err(|e| e.0)?;
    if !(1..=crate::resource::MAX_SECONDS).contains(&c.key_ttl) {
        return Err(format!(
            "key_ttl: seconds within 1 and {} expected",
            crate::resource::MAX_SECONDS
        ));
    }
    let redis = SharedRedis::of("limit-conn", c.policy, c.redis(), c.allow_degradation)?;
    Ok(Arc::new(LimitConn {
        shared: site.shared.clone(),
        redis: redis.map(Arc::new),
        scope: super::scope(site.owner, None),
        key_ttl: Duration::from_secs(c.key_ttl),
        conn: c.conn,
        burst: c.burst,
        key: Key::parse(c.key_type, &c.key)?,
        rejected: Rejection::new(c.rejected_code, c.rejected_msg)?,
        unit_delay: Arc::new(AtomicU64::new(c.default_conn_delay.to_bits())),
        adaptive: !c.only_use_default_delay,
    }))
}

impl Plugin for LimitConn {
    fn name(&self) -> &'static str {
        "limit-conn"
    }

    fn priority(&self) -> i32 {
        1003
    }

    fn access<'a>(&'a self, ctx: &'a mut Ctx) -> Flow<'a> {
        let key = self.key.counter(ctx, &self.scope);
        let most = self.conn.saturating_add(self.burst);
        let Some(redis) = &self.redis else {
            let Some(in_flight) = self.shared.connections.enter(&key, most) else {
                return Flow::Reply(self.rejected.reply());
            };
            let held = Held::Local(self.shared.clone(), key);
            return super::after(self.hold(ctx, held, in_flight));
        };
        Flow::Wait(Box::pin(async move {
            let key = format!("plugin-limit-conn:{key}");
            let holder = uuid::Uuid::new_v4().simple().to_string();
            let (ttl, entering) = (self.key_ttl, (key.clone(), holder.clone()));
            let entered = redis
                .run(|kv| async move { kv.enter(&entering.0, &entering.1, most, ttl).await })
                .await;
            let in_flight = match entered {
                None => return redis.unreachable(),
                Some(None) => return Some(self.rejected.reply()),
                Some(Some(in_flight)) => in_flight,
            };
            let held = Held::Redis(redis.clone(), key, holder);
            match super::after(self.hold(ctx, held, in_flight)) {
                Flow::Wait(wait) => wait.await,
                _ => None,
            }
        }))
    }
}

impl LimitConn {
    /// Holds the request's place (`held`, the `in_flight`th) until it is done; the delay it
    /// waits first: over `conn`, a unit for every `conn` requests ahead.
    fn hold(&self, ctx: &mut Ctx, held: Held, in_flight: u64) -> Duration {
        let unit = f64::from_bits(self.unit_delay.load(Ordering::Relaxed));
        let delay = if in_flight > self.conn {
            super::delay(unit * ((in_flight - 1) / self.conn) as f64)
        } else {
            Duration::ZERO
        };
        ctx.held.push(Box::new(Place {
            held: Some(held),
            entered: Instant::now(),
            delay,
            unit_delay: self.adaptive.then(|| self.unit_delay.clone()),
        }));
        delay
    }
}

/// Where a request's place is counted.
#[derive(Debug)]
enum Held {
    /// In this gateway, under the key.
    Local(Arc<Shared>, String),
    /// In Redis, under the key, by this holder.
    Redis(Arc<SharedRedis>, String, String),
}

/// A request's place in its key's count, given back when dropped.
#[derive(Debug)]
struct Place {
    /// Taken when the place is given back.
    held: Option<Held>,
    entered: Instant,
    delay: Duration,
    /// The unit delay to move halfway towards this request's latency, when adaptive.
    unit_delay: Option<Arc<AtomicU64>>,
}

impl Drop for Place {
    fn drop(&mut self) {
        match self.held.take() {
            None => {}
            Some(Held::Local(shared, key)) => shared.connections.leave(&key),
            Some(Held::Redis(redis, key, holder)) => {
                // Given back in the background; should that fail, the place lapses at key_ttl.
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        redis
                            .run(|kv| async move { kv.leave(&key, &holder).await })
                            .await;
                    });
                }
            }
        }
        if let Some(unit) = &self.unit_delay {
            let latency = self.entered.elapsed().saturating_sub(self.delay);
            let _ = unit.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(((f64::from_bits(old) + latency.as_secs_f64()) / 2.0).to_bits())
            });
        }
    }
}

/// Requests in flight per key, per gateway process.
#[derive(Debug, Default)]
pub struct Connections(Mutex<HashMap<String, u64>>);

impl Connections {
    /// Counts a request in: how many are now in flight (it included), or None when `most`
    /// already are.
    fn enter(&self, key: &str, most: u64) -> Option<u64> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(key.to_string()).or_default();
        if *count >= most {
            return None;
        }
        *count += 1;
        Some(*count)
    }

    fn leave(&self, key: &str) {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_up_to_the_most_and_given_back() {
        let connections = Connections::default();
        assert_eq!(connections.enter("k", 2), Some(1));
        assert_eq!(connections.enter("k", 2), Some(2));
        assert_eq!(connections.enter("k", 2), None);
        connections.leave("k");
        assert_eq!(connections.enter("k", 2), Some(2));
        connections.leave("k");
        connections.leave("k");
        assert!(
            connections.0.lock().unwrap().is_empty(),
            "no key is kept at 0"
        );
    }
}
