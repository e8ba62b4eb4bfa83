//! `limit-req` (priority 1001): nginx's leaky bucket. Requests drain at `rate` per second per
//! key; up to `burst` more may queue, each delayed until its turn (or sent at once with
//! `nodelay`), and the rest are rejected. A rejected request does not fill the bucket. With
//! `policy: redis` the bucket is `core::kv`'s, shared by every gateway on that Redis.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::{Key, KeyType, Policy, RedisFields, Rejection, SharedRedis};
use crate::plugins::{Shared, Site};
use crate::runtime::phases::{Ctx, Flow, Plugin};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    rate: f64,
    burst: f64,
    #[serde(default)]
    key_type: KeyType,
    key: String,
    #[serde(default = "super::default_code")]
    rejected_code: u16,
    rejected_msg: Option<String>,
    #[serde(default)]
    nodelay: bool,
    /// Whether requests pass while the Redis of `policy: redis` is unreachable.
    #[serde(default)]
    allow_degradation: bool,
    #[serde(default)]
    policy: Policy,
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

/// Requests per second no limit needs to go beyond.
const MAX_RATE: f64 = 1e9;

#[derive(Debug)]
struct LimitReq {
    /// The process's plugin state: its leaky buckets.
    shared: Arc<Shared>,
    rate: f64,
    burst: f64,
    key: Key,
    rejected: Rejection,
    nodelay: bool,
    redis: Option<SharedRedis>,
    /// See [`super::scope`].
    scope: String,
}

pub(crate) fn build(config: &Value, site: &Site) -> Result<Arc<dyn Plugin>, String> {
    let c: Config = crate::resource::parse(config).map_err(|e| e.0)?;
    if !(c.rate > 0.0 && c.rate <= MAX_RATE) {
        return Err(format!("rate: above 0, up to {MAX_RATE}, expected"));
    }
    if !(c.burst >= 0.0 && c.burst <= MAX_RATE) {
        return Err(format!("burst: 0 up to {MAX_RATE} expected"));
    }
    let redis = SharedRedis::of("limit-req", c.policy, c.redis(), c.allow_degradation)?;
    Ok(Arc::new(LimitReq {
        shared: site.shared.clone(),
        redis,
        scope: super::scope(site.owner, None),
        rate: c.rate,
        burst: c.burst,
        key: Key::parse(c.key_type, &c.key)?,
        rejected: Rejection::new(c.rejected_code, c.rejected_msg)?,
        nodelay: c.nodelay,
    }))
}

impl Plugin for LimitReq {
    fn name(&self) -> &'static str {
        "limit-req"
    }

    fn priority(&self) -> i32 {
        1001
    }

    fn access<'a>(&'a self, ctx: &'a mut Ctx) -> Flow<'a> {
        let key = self.key.counter(ctx, &self.scope);
        let Some(redis) = &self.redis else {
            return match self.shared.buckets.pour(key, self.rate, self.burst) {
                Some(excess) => self.queued(excess),
                None => Flow::Reply(self.rejected.reply()),
            };
        };
        Flow::Wait(Box::pin(async move {
            let key = format!("plugin-limit-req:{key}");
            let (rate, burst) = (self.rate, self.burst);
            let poured = redis
                .run(|kv| async move { kv.leak(&key, rate, burst).await })
                .await;
            match poured {
                None => redis.unreachable(),
                Some(None) => Some(self.rejected.reply()),
                Some(Some(excess)) => match self.queued(excess) {
                    Flow::Wait(wait) => wait.await,
                    _ => None,
                },
            }
        }))
    }
}

impl LimitReq {
    /// A request queued behind `excess` others, each taking 1/rate seconds to drain: it waits
    /// its turn, unless `nodelay`.
    fn queued(&self, excess: f64) -> Flow<'static> {
        if self.nodelay {
            return Flow::Next;
        }
        super::after(super::delay(excess / self.rate))
    }
}

/// The leaky buckets of every `limit-req`, per gateway process; they outlive snapshots.
#[derive(Debug, Default)]
pub struct Buckets {
    levels: Mutex<HashMap<String, Level>>,
    /// The number of buckets after the last sweep; the next sweep comes at twice as many.
    swept_at: std::sync::atomic::AtomicUsize,
}

/// A bucket: the requests in it beyond the one being served, and when it was last filled.
#[derive(Debug, Clone, Copy)]
struct Level {
    excess: f64,
    at: Instant,
}

impl Level {
    /// The bucket at `now` with one more request: what drained at `rate` since is gone.
    fn with_one_more(&self, now: Instant, rate: f64) -> f64 {
        (self.excess - rate * now.duration_since(self.at).as_secs_f64() + 1.0).max(0.0)
    }
}

impl Buckets {
    /// Adds a request to `key`'s bucket: the requests ahead of it, or None when more than
    /// `burst` are (and the request is not added).
    fn pour(&self, key: String, rate: f64, burst: f64) -> Option<f64> {
        let now = Instant::now();
        let mut levels = self.levels.lock().unwrap_or_else(|e| e.into_inner());
        let len = levels.len();
        if len > 1024 && len > 2 * self.swept_at.load(std::sync::atomic::Ordering::Relaxed) {
            // An empty bucket is the same as none. Buckets are swept at the rate of the request
            // sweeping; a slower limit's buckets may go sooner, which only forgives a little.
            levels.retain(|_, level| level.with_one_more(now, rate) > 0.0);
            self.swept_at
                .store(levels.len(), std::sync::atomic::Ordering::Relaxed);
        }
        let excess = match levels.get(&key) {
            Some(level) => level.with_one_more(now, rate),
            None => 0.0,
        };
        if excess > burst {
            return None;
        }
        levels.insert(key, Level { excess, at: now });
        Some(excess)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_queues_up_to_burst_and_drains_at_the_rate() {
        let buckets = Buckets::default();
        // rate 1/s, burst 2: the first goes at once, two queue, the fourth is refused.
        assert_eq!(buckets.pour("k".into(), 1.0, 2.0), Some(0.0));
        let second = buckets.pour("k".into(), 1.0, 2.0).unwrap();
        assert!((0.99..=1.0).contains(&second), "{second}");
        let third = buckets.pour("k".into(), 1.0, 2.0).unwrap();
        assert!((1.98..=2.0).contains(&third), "{third}");
        assert_eq!(buckets.pour("k".into(), 1.0, 2.0), None);
        // Another key has its own bucket.
        assert_eq!(buckets.pour("other".into(), 1.0, 2.0), Some(0.0));
        // A fast rate drains between requests.
        assert_eq!(buckets.pour("fast".into(), 1e9, 0.0), Some(0.0));
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(buckets.pour("fast".into(), 1e9, 0.0), Some(0.0));
    }
}
