//! `limit-count` (priority 1002): at most `count` requests per `time_window` seconds per key,
//! per route — or per `group`, shared by every route naming it. A window starts with its first request, as APISIX's do, and the next
//! follows on from it; `window_type: sliding` weighs the previous window's count by how much of
//! it still overlaps.
//!
//! `policy: local` counts in this gateway process (counters outlive configuration changes);
//! `policy: redis` counts in Redis with one atomic script per request, so every gateway node
//! sharing that Redis holds the same limit. When Redis is unreachable the request gets a 500, or
//! passes uncounted with `allow_degradation`; the outage is logged once, and no request waits
//! longer than `redis_timeout`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::{Key, KeyType, Rejection};
use crate::plugins::{Ctx, Flow, Plugin, Reply};

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
    #[serde(default = "default_redis_port")]
    redis_port: u16,
    redis_username: Option<String>,
    redis_password: Option<String>,
    #[serde(default)]
    redis_database: u32,
    #[serde(default = "default_redis_timeout")]
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

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
enum Policy {
    #[default]
    Local,
    Redis,
    RedisCluster,
}

fn default_key() -> String {
    "remote_addr".into()
}

fn yes() -> bool {
    true
}

fn default_redis_port() -> u16 {
    6379
}

fn default_redis_timeout() -> u64 {
    1000
}

#[derive(Debug)]
struct LimitCount {
    quota: Arc<Quota>,
    window: Duration,
    sliding: bool,
    key: Key,
    group: Option<String>,
    redis: Option<Arc<RedisCounter>>,
}

/// The limit, and how a request over it is answered.
#[derive(Debug)]
struct Quota {
    count: u64,
    /// `count` as the `X-RateLimit-Limit` value.
    limit: HeaderValue,
    rejected: Rejection,
    show_headers: bool,
}

pub(crate) fn build(config: &Value) -> Result<Arc<dyn Plugin>, String> {
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
    if !(1..=60_000).contains(&c.redis_timeout) {
        return Err("redis_timeout: milliseconds within 1 and 60000 expected".into());
    }
    let rejected = Rejection::new(c.rejected_code, c.rejected_msg)?;
    let key = Key::parse(c.key_type, &c.key)?;
    let redis = match c.policy {
        Policy::Local => None,
        Policy::RedisCluster => return Err("policy: redis-cluster is not supported yet".into()),
        Policy::Redis => {
            let host = c.redis_host.as_deref().filter(|h| !h.is_empty());
            let host = host.ok_or("redis_host: required when policy is redis")?;
            let scheme = if c.redis_ssl { "rediss" } else { "redis" };
            let auth = match (&c.redis_username, &c.redis_password) {
                (Some(user), Some(password)) => format!("{user}:{password}@"),
                (None, Some(password)) => format!(":{password}@"),
                _ => String::new(),
            };
            let insecure = if c.redis_ssl && !c.redis_ssl_verify {
                "#insecure"
            } else {
                ""
            };
            let url = format!(
                "{scheme}://{auth}{host}:{}/{}{insecure}",
                c.redis_port, c.redis_database
            );
            let client = redis::Client::open(url).map_err(|e| format!("redis_host: {e}"))?;
            Some(Arc::new(RedisCounter {
                client,
                timeout: Duration::from_millis(c.redis_timeout.max(1)),
                connection: tokio::sync::OnceCell::new(),
                degraded: AtomicBool::new(false),
                allow_degradation: c.allow_degradation,
            }))
        }
    };
    Ok(Arc::new(LimitCount {
        quota: Arc::new(Quota {
            count: c.count,
            limit: HeaderValue::from(c.count),
            rejected,
            show_headers: c.show_limit_quota_header,
        }),
        window: Duration::from_secs(c.time_window),
        sliding: c.window_type == WindowType::Sliding,
        key,
        group: c.group,
        redis,
    }))
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
        const LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
        const REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
        const RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
        let allowed = count.used <= self.count as f64;
        let mut reply = (!allowed).then(|| self.rejected.reply());
        if self.show_headers {
            let remaining = (self.count as f64 - count.used).max(0.0).floor() as u64;
            let reset = count.reset_ms.div_ceil(1000);
            let quota = [
                (LIMIT, self.limit.clone()),
                (REMAINING, HeaderValue::from(remaining)),
                (RESET, HeaderValue::from(reset)),
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
        let counter = self.key.counter(ctx, self.group.as_deref());
        let Some(redis) = &self.redis else {
            let count = ctx
                .shared
                .counters
                .count(counter, self.window, self.sliding);
            return match self.quota.judge(count, &mut ctx.response_headers) {
                Ok(()) => Flow::Next,
                Err(reply) => Flow::Reply(reply),
            };
        };
        Flow::Wait(Box::pin(async move {
            let judged = match redis.count(&counter, self.window, self.sliding).await {
                Some(count) => self.quota.judge(count, &mut ctx.response_headers),
                None if redis.allow_degradation => Ok(()),
                None => Err(Reply::message(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "failed to limit count",
                )),
            };
            judged.err()
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

/// Counts in Redis, as the local counters do, in one script on Redis's clock so every node
/// agrees on the windows: a hash of the window's start, its count and the previous one's.
const COUNT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local length = tonumber(ARGV[1])
local w = redis.call('HMGET', KEYS[1], 'start', 'count', 'previous')
local start, count, previous = tonumber(w[1]), tonumber(w[2]) or 0, tonumber(w[3]) or 0
if not start then
  start, count, previous = now, 0, 0
elseif now - start >= length then
  local passed = math.floor((now - start) / length)
  if passed == 1 then previous = count else previous = 0 end
  start, count = start + passed * length, 0
end
count = count + 1
redis.call('HSET', KEYS[1], 'start', start, 'count', count, 'previous', previous)
redis.call('PEXPIRE', KEYS[1], length * 2)
return {count, previous, now - start}
";

#[derive(Debug)]
struct RedisCounter {
    client: redis::Client,
    timeout: Duration,
    connection: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
    /// Set while Redis is unreachable, so the outage is logged once.
    degraded: AtomicBool,
    allow_degradation: bool,
}

impl RedisCounter {
    /// None when Redis did not answer within the timeout.
    async fn count(&self, counter: &str, window: Duration, sliding: bool) -> Option<Count> {
        let length_ms = (window.as_millis() as u64).max(1);
        let counted = tokio::time::timeout(self.timeout, async {
            let mut conn = self
                .connection
                .get_or_try_init(|| {
                    let config = redis::aio::ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(self.timeout))
                        .set_response_timeout(Some(self.timeout))
                        .set_number_of_retries(1);
                    self.client.get_connection_manager_with_config(config)
                })
                .await?
                .clone();
            redis::Script::new(COUNT_SCRIPT)
                .key(format!("plugin-limit-count:{counter}"))
                .arg(length_ms)
                .invoke_async::<(u64, u64, u64)>(&mut conn)
                .await
        })
        .await;
        match counted {
            Ok(Ok((count, previous, elapsed))) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!("limit-count: redis reachable again");
                }
                Some(weigh(count, previous, elapsed, length_ms, sliding))
            }
            failed => {
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_string(),
                    };
                    tracing::error!(
                        error,
                        allow_degradation = self.allow_degradation,
                        "limit-count: redis unreachable"
                    );
                }
                None
            }
        }
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
