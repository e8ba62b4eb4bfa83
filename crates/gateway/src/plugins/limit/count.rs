//! `limit-count` (priority 1002): at most `count` requests per `time_window` seconds per key,
//! counted where the plugin is configured (see [`super::scope`]) — or per `group`, shared by
//! every limit naming it. A window starts with its first request, as APISIX's do, and the next
//! follows on from it; `window_type: sliding` weighs the previous window's count by how much of
//! it still overlaps. The quota headers' names come from `plugin_metadata` (APISIX's
//! `limit_header`, `remaining_header`, `reset_header`).
//!
//! Local counters outlive configuration changes; `policy: redis` counts with `core::kv`'s
//! windows (see [`super`]).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::{Key, KeyType, Policy, RedisFields, Rejection, SharedRedis};
use crate::plugins::{Shared, Site};
use crate::runtime::phases::{Ctx, Flow, Plugin, Reply};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    count: u64,
    time_window: u64,
    #[serde(default)]
    window_type: WindowType,
    #[serde(default)]
    key_type: KeyType,
    #[serde(default = "default_key")]
    key: String,
    #[serde(default = "super::default_code")]
    rejected_code: u16,
    rejected_msg: Option<String>,
    #[serde(default)]
    policy: Policy,
    #[serde(default)]
    allow_degradation: bool,
    #[serde(default = "yes")]
    show_limit_quota_header: bool,
    group: Option<String>,
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

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum WindowType {
    #[default]
    Fixed,
    Sliding,
}

fn default_key() -> String {
    "remote_addr".into()
}

fn yes() -> bool {
    true
}

#[derive(Debug)]
struct LimitCount {
    /// The process's plugin state: its counters.
    shared: Arc<Shared>,
    quota: Arc<Quota>,
    window: Duration,
    sliding: bool,
    key: Key,
    /// See [`super::scope`].
    scope: String,
    redis: Option<SharedRedis>,
}

/// The limit, and how a request over it is answered.
#[derive(Debug)]
struct Quota {
    count: u64,
    /// `count` as the `X-RateLimit-Limit` value.
    limit: HeaderValue,
    rejected: Rejection,
    show_headers: bool,
    names: HeaderNames,
}

/// The quota headers' names: APISIX's, or those `plugin_metadata/limit-count` sets.
#[derive(Debug, Clone)]
struct HeaderNames {
    limit: HeaderName,
    remaining: HeaderName,
    reset: HeaderName,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct Metadata {
    limit_header: String,
    remaining_header: String,
    reset_header: String,
}

impl Default for Metadata {
    fn default() -> Self {
        Metadata {
            limit_header: "X-RateLimit-Limit".into(),
            remaining_header: "X-RateLimit-Remaining".into(),
            reset_header: "X-RateLimit-Reset".into(),
        }
    }
}

impl HeaderNames {
    /// APISIX's names, made once (a name made from static text costs nothing to copy).
    const DEFAULT: HeaderNames = HeaderNames {
        limit: HeaderName::from_static("x-ratelimit-limit"),
        remaining: HeaderName::from_static("x-ratelimit-remaining"),
        reset: HeaderName::from_static("x-ratelimit-reset"),
    };

    fn of(metadata: Option<&Value>) -> Result<HeaderNames, String> {
        let Some(metadata) = metadata else {
            return Ok(HeaderNames::DEFAULT);
        };
        let m: Metadata = crate::resource::parse(metadata).map_err(|e| e.0)?;
        let name = |field: &str, text: &str| {
            HeaderName::from_bytes(text.as_bytes())
                .map_err(|_| format!("{field}: {text:?} is not a header name"))
        };
        Ok(HeaderNames {
            limit: name("limit_header", &m.limit_header)?,
            remaining: name("remaining_header", &m.remaining_header)?,
            reset: name("reset_header", &m.reset_header)?,
        })
    }
}

/// Checks `plugin_metadata/limit-count`.
pub(crate) fn check_metadata(metadata: &Value) -> Result<(), String> {
    HeaderNames::of(Some(metadata)).map(|_| ())
}

pub(crate) fn build(config: &Value, site: &Site) -> Result<Arc<dyn Plugin>, String> {
    let c: Config = crate::resource::parse(config).map_err(|e| e.0)?;
    if c.count == 0 {
        return Err("count: must be above 0".into());
    }
    if !(1..=crate::resource::MAX_SECONDS).contains(&c.time_window) {
        return Err(format!(
            "time_window: seconds within 1 and {} expected",
            crate::resource::MAX_SECONDS
        ));
    }
    let redis = SharedRedis::of("limit-count", c.policy, c.redis(), c.allow_degradation)?;
    let rejected = Rejection::new(c.rejected_code, c.rejected_msg)?;
    let key = Key::parse(c.key_type, &c.key)?;
    Ok(Arc::new(LimitCount {
        shared: site.shared.clone(),
        quota: Arc::new(Quota {
            count: c.count,
            limit: HeaderValue::from(c.count),
            rejected,
            show_headers: c.show_limit_quota_header,
            // Checked when the metadata was written; the defaults should it not read now.
            names: HeaderNames::of(site.metadata.get("limit-count"))
                .unwrap_or(HeaderNames::DEFAULT),
        }),
        window: Duration::from_secs(c.time_window),
        sliding: c.window_type == WindowType::Sliding,
        key,
        scope: super::scope(site.owner, c.group.as_deref()),
        redis,
    }))
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

/// What counting one more request found.
#[derive(Debug, Clone, Copy)]
struct Count {
    /// Requests in this window (sliding: with the overlapping share of the previous one).
    used: f64,
    /// Milliseconds until this window ends.
    reset_ms: u64,
}

impl Quota {
    /// Whether `count` is within the quota; the quota headers go on the response (`headers`)
    /// or on the refusal.
    #[allow(clippy::result_large_err)] // a refusal is the plugin's reply, built once
    fn judge(
        &self,
        count: Count,
        headers: &mut Vec<(HeaderName, HeaderValue)>,
    ) -> Result<(), Reply> {
        let allowed = count.used <= self.count as f64;
        let mut reply = (!allowed).then(|| self.rejected.reply());
        if self.show_headers {
            let remaining = (self.count as f64 - count.used).max(0.0).floor() as u64;
            let reset = count.reset_ms.div_ceil(1000);
            let quota = [
                (self.names.limit.clone(), self.limit.clone()),
                (self.names.remaining.clone(), HeaderValue::from(remaining)),
                (self.names.reset.clone(), HeaderValue::from(reset)),
            ];
            match reply.as_mut() {
                Some(reply) => reply.headers.extend(quota),
                None => headers.extend(quota),
            }
        }
        reply.map_or(Ok(()), Err)
    }
}

impl Plugin for LimitCount {
    fn name(&self) -> &'static str {
        "limit-count"
    }

    fn priority(&self) -> i32 {
        1002
    }

    fn access<'a>(&'a self, ctx: &'a mut Ctx) -> Flow<'a> {
        let counter = self.key.counter(ctx, &self.scope);
        let Some(redis) = &self.redis else {
            let count = self
                .shared
                .counters
                .count(counter, self.window, self.sliding);
            return match self.quota.judge(count, &mut ctx.response_headers) {
                Ok(()) => Flow::Next,
                Err(reply) => Flow::Reply(reply),
            };
        };
        Flow::Wait(Box::pin(async move {
            let key = format!("plugin-limit-count:{counter}");
            let counted = redis
                .run(|kv| async move { kv.count_in_window(&key, self.window).await })
                .await;
            let Some(w) = counted else {
                return redis.unreachable();
            };
            let length_ms = (self.window.as_millis() as u64).max(1);
            let count = weigh(w.count, w.previous, w.elapsed_ms, length_ms, self.sliding);
            self.quota.judge(count, &mut ctx.response_headers).err()
        }))
    }
}

/// Local counters, per gateway process; they outlive snapshots.
#[derive(Debug, Default)]
pub struct Counters {
    windows: Mutex<crate::FastMap<String, Window>>,
    /// The number of counters after the last sweep; the next sweep comes at twice as many.
    swept_at: std::sync::atomic::AtomicUsize,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    /// When this window started, in milliseconds since the epoch.
    start: u64,
    length_ms: u64,
    count: u64,
    previous: u64,
}

impl Window {
    /// Moves on to the window `now` falls in, keeping the count of the one just before it.
    fn advance(&mut self, now: u64) {
        let passed = now.saturating_sub(self.start) / self.length_ms;
        if passed > 0 {
            self.previous = if passed == 1 { self.count } else { 0 };
            self.count = 0;
            self.start += passed * self.length_ms;
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Counters {
    fn count(&self, counter: String, window: Duration, sliding: bool) -> Count {
        let length_ms = (window.as_millis() as u64).max(1);
        let now = now_ms();
        let fresh = Window {
            start: now,
            length_ms,
            count: 0,
            previous: 0,
        };
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let len = windows.len();
        if len > 1024 && len > 2 * self.swept_at.load(Ordering::Relaxed) {
            windows.retain(|_, w| w.start + 2 * w.length_ms > now);
            self.swept_at.store(windows.len(), Ordering::Relaxed);
        }
        let w = windows.entry(counter).or_insert(fresh);
        if w.length_ms != length_ms {
            *w = fresh;
        }
        w.advance(now);
        w.count += 1;
        weigh(w.count, w.previous, now - w.start, length_ms, sliding)
    }
}

/// The count of a window `elapsed_ms` in, with the previous window's share when sliding.
fn weigh(count: u64, previous: u64, elapsed_ms: u64, length_ms: u64, sliding: bool) -> Count {
    let overlap = if sliding {
        previous as f64 * (length_ms.saturating_sub(elapsed_ms)) as f64 / length_ms as f64
    } else {
        0.0
    };
    Count {
        used: count as f64 + overlap,
        reset_ms: length_ms.saturating_sub(elapsed_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_windows_weigh_the_previous_one_by_its_overlap() {
        let fixed = weigh(3, 10, 250, 1000, false);
        assert_eq!((fixed.used, fixed.reset_ms), (3.0, 750));
        let sliding = weigh(3, 10, 250, 1000, true);
        assert_eq!(sliding.used, 3.0 + 7.5);
    }

    #[test]
    fn windows_follow_on_and_keep_only_the_one_just_before() {
        let mut w = Window {
            start: 1_000,
            length_ms: 100,
            count: 7,
            previous: 0,
        };
        w.advance(1_050);
        assert_eq!((w.start, w.count), (1_000, 7));
        w.advance(1_150);
        assert_eq!((w.start, w.count, w.previous), (1_100, 0, 7));
        w.advance(1_420);
        assert_eq!((w.start, w.previous), (1_400, 0));
    }

    #[test]
    fn local_counters_count_per_key_and_window() {
        let counters = Counters::default();
        let hour = Duration::from_secs(3600);
        for expected in 1..=3 {
            assert_eq!(
                counters.count("a".into(), hour, false).used,
                expected as f64
            );
        }
        assert_eq!(counters.count("b".into(), hour, false).used, 1.0);
    }
}
