//! `limit-req` (priority 1001): nginx's leaky bucket. Requests drain at `rate` per second per
//! key; up to `burst` more may queue, each delayed until its turn (or sent at once with
//! `nodelay`), and the rest are rejected. A rejected request does not fill the bucket.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::{Key, KeyType, Rejection};
use crate::plugins::{Ctx, Flow, Plugin};

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
    /// For shared policies; a local bucket cannot be unreachable.
    #[serde(default)]
    allow_degradation: bool,
    policy: Option<String>,
}

/// Requests per second no limit needs to go beyond.
const MAX_RATE: f64 = 1e9;

#[derive(Debug)]
struct LimitReq {
    rate: f64,
    burst: f64,
    key: Key,
    rejected: Rejection,
    nodelay: bool,
}

pub(crate) fn build(config: &Value) -> Result<std::sync::Arc<dyn Plugin>, String> {
    let c: Config = crate::resource::parse(config).map_err(|e| e.0)?;
    if !(c.rate > 0.0 && c.rate <= MAX_RATE) {
        return Err(format!("rate: above 0, up to {MAX_RATE}, expected"));
    }
    if !(c.burst >= 0.0 && c.burst <= MAX_RATE) {
        return Err(format!("burst: 0 up to {MAX_RATE} expected"));
    }
    super::check_local(c.policy.as_deref())?;
    let _ = c.allow_degradation;
    Ok(std::sync::Arc::new(LimitReq {
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
        let key = self.key.counter(ctx, None);
        let Some(excess) = ctx.shared.buckets.pour(key, self.rate, self.burst) else {
            return Flow::Reply(self.rejected.reply());
        };
        // Queued behind `excess` requests, each taking 1/rate seconds to drain.
        let delay = super::delay(excess / self.rate);
        if self.nodelay {
            return Flow::Next;
        }
        super::after(delay)
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
