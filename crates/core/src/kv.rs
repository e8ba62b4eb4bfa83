//! Key-value state shared by the instances of a service: counters, locks, hot state, and the
//! three shapes of rate limit (events per window, a leaky bucket, places held at once).
//!
//! In memory by default (one process), Redis when `kv.redis_url` is set. Both give the same
//! guarantees; on Redis every compound operation is one Lua script, so it is atomic across
//! gateway nodes and service replicas, and the limits keep time by Redis's clock, so the nodes
//! agree on it.
//!
//! Locks carry a **fencing token**: a number that grows with every acquisition of the same lock.
//! A lock can expire while its holder is paused (GC, network), and a second holder can then
//! acquire it; the fencing token lets the protected resource reject the late writes of the first
//! holder. [`Kv::fenced_set`] is such a resource: it refuses a token older than one it has seen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use secrecy::ExposeSecret;

use crate::config::KvConfig;

#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// One more event counted in a window (see [`Kv::count_in_window`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowCount {
    /// Events in the current window, this one included.
    pub count: u64,
    /// Events in the window just before (0 when it was longer ago).
    pub previous: u64,
    /// Milliseconds since the current window began.
    pub elapsed_ms: u64,
}

/// A held lock. Release it with [`Kv::unlock`]; it also expires after its TTL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    pub name: String,
    /// Identifies this holder; only it can release or extend the lock.
    pub token: String,
    /// Grows with every acquisition of `name`; pass it to fenced writes.
    pub fence: u64,
}

#[derive(Clone)]
pub enum Kv {
    Memory(MemoryKv),
    Redis(RedisKv),
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kv::Memory(_) => "Kv::Memory",
            Kv::Redis(_) => "Kv::Redis",
        })
    }
}

impl Kv {
    /// Opens the store the configuration names; fails if a configured Redis is unreachable.
    pub async fn connect(config: &KvConfig) -> Result<Self, KvError> {
        Ok(match &config.redis_url {
            None => Kv::Memory(MemoryKv::default()),
            Some(url) => {
                Kv::Redis(RedisKv::connect(url.expose_secret(), &config.key_prefix).await?)
            }
        })
    }

    pub async fn get(&self, key: &str) -> Result<Option<String>, KvError> {
        match self {
            Kv::Memory(m) => Ok(m.get(key)),
            Kv::Redis(r) => r.get(key).await,
        }
    }

    /// Sets `key`, expiring after `ttl` if given.
    pub async fn set(&self, key: &str, value: &str, ttl: Option<Duration>) -> Result<(), KvError> {
        match self {
            Kv::Memory(m) => {
                m.set(key, value, ttl);
                Ok(())
            }
            Kv::Redis(r) => r.set(key, value, ttl).await,
        }
    }

    /// Adds `delta` to the integer at `key` (0 if absent) and returns the new value. A key
    /// created by this call expires after `ttl` (fixed-window counters).
    pub async fn incr_by(
        &self,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, KvError> {
        match self {
            Kv::Memory(m) => Ok(m.incr_by(key, delta, ttl)),
            Kv::Redis(r) => r.incr_by(key, delta, ttl).await,
        }
    }

    /// Removes `key`; true if it existed.
    pub async fn delete(&self, key: &str) -> Result<bool, KvError> {
        match self {
            Kv::Memory(m) => Ok(m.delete(key)),
            Kv::Redis(r) => r.delete(key).await,
        }
    }

    /// Takes the lock `name` for `ttl` unless someone holds it.
    pub async fn lock(&self, name: &str, ttl: Duration) -> Result<Option<Lock>, KvError> {
        let token = crate::id::new_id().to_string();
        let fence = match self {
            Kv::Memory(m) => m.lock(name, &token, ttl),
            Kv::Redis(r) => r.lock(name, &token, ttl).await?,
        };
        Ok(fence.map(|fence| Lock {
            name: name.to_string(),
            token,
            fence,
        }))
    }

    /// Releases `lock` if it is still held by its holder; false if it had expired or was taken.
    pub async fn unlock(&self, lock: &Lock) -> Result<bool, KvError> {
        match self {
            Kv::Memory(m) => Ok(m.unlock(&lock.name, &lock.token)),
            Kv::Redis(r) => r.unlock(&lock.name, &lock.token).await,
        }
    }

    /// Writes `value` to `key` unless a write with a newer fencing token already happened.
    pub async fn fenced_set(&self, key: &str, value: &str, fence: u64) -> Result<bool, KvError> {
        match self {
            Kv::Memory(m) => Ok(m.fenced_set(key, value, fence)),
            Kv::Redis(r) => r.fenced_set(key, value, fence).await,
        }
    }

    pub async fn ping(&self) -> Result<(), KvError> {
        match self {
            Kv::Memory(_) => Ok(()),
            Kv::Redis(r) => r.ping().await,
        }
    }

    /// Counts one more event at `key` in windows of `length`: a window begins with its first
    /// event and the next follows on from it; the count of the window just before is kept
    /// (for sliding windows). The key lives two windows.
    pub async fn count_in_window(
        &self,
        key: &str,
        length: Duration,
    ) -> Result<WindowCount, KvError> {
        let length_ms = ttl_ms(length);
        match self {
            Kv::Memory(m) => Ok(m.count_in_window(key, length_ms)),
            Kv::Redis(r) => r.count_in_window(key, length_ms).await,
        }
    }

    /// Pours one request into the leaky bucket at `key`, which drains `rate` requests a second:
    /// the requests ahead of this one, or None when more than `burst` are (and this one is not
    /// added). The first request of an empty bucket has none ahead.
    pub async fn leak(&self, key: &str, rate: f64, burst: f64) -> Result<Option<f64>, KvError> {
        // An untouched bucket has drained by the time this passes.
        let ttl = Duration::try_from_secs_f64((burst + 1.0) / rate + 1.0).unwrap_or(Duration::MAX);
        match self {
            Kv::Memory(m) => Ok(m.leak(key, rate, burst, ttl)),
            Kv::Redis(r) => r.leak(key, rate, burst, ttl).await,
        }
    }

    /// Takes a place at `key` for `holder`, of `most` places, for at most `ttl` (so the places
    /// of a holder that dies come back): how many are taken, this one included, or None when
    /// all are.
    pub async fn enter(
        &self,
        key: &str,
        holder: &str,
        most: u64,
        ttl: Duration,
    ) -> Result<Option<u64>, KvError> {
        match self {
            Kv::Memory(m) => Ok(m.enter(key, holder, most, ttl)),
            Kv::Redis(r) => r.enter(key, holder, most, ttl).await,
        }
    }

    /// Gives `holder`'s place at `key` back.
    pub async fn leave(&self, key: &str, holder: &str) -> Result<(), KvError> {
        match self {
            Kv::Memory(m) => {
                m.leave(key, holder);
                Ok(())
            }
            Kv::Redis(r) => r.leave(key, holder).await,
        }
    }
}

/// Milliseconds since the epoch, the in-memory store's clock for limits.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The number in a field of a stored `a,b,c` value; 0 when absent.
fn field<T: std::str::FromStr + Default>(fields: &[&str], at: usize) -> T {
    fields
        .get(at)
        .and_then(|f| f.parse().ok())
        .unwrap_or_default()
}

fn lock_key(name: &str) -> String {
    format!("lock:{name}")
}
fn fence_key(name: &str) -> String {
    format!("lock:{name}:fence")
}
fn guard_key(key: &str) -> String {
    format!("{key}:fence")
}

/// Values and their expiry instants.
type Entries = HashMap<String, (String, Option<Instant>)>;

/// In-process store with Redis' semantics (expiry checked on access).
#[derive(Clone, Default)]
pub struct MemoryKv {
    entries: Arc<Mutex<Entries>>,
}

impl MemoryKv {
    fn with<T>(&self, f: impl FnOnce(&mut MemoryMap<'_>) -> T) -> T {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut MemoryMap(&mut entries))
    }

    fn get(&self, key: &str) -> Option<String> {
        self.with(|m| m.get(key))
    }

    fn set(&self, key: &str, value: &str, ttl: Option<Duration>) {
        self.with(|m| m.set(key, value.to_string(), ttl));
    }

    fn incr_by(&self, key: &str, delta: i64, ttl: Option<Duration>) -> i64 {
        self.with(|m| {
            let (current, expires) = match m.live(key) {
                Some((v, exp)) => (v.parse::<i64>().unwrap_or(0), exp),
                None => (0, ttl.map(|t| Instant::now() + t)),
            };
            let next = current + delta;
            m.0.insert(key.to_string(), (next.to_string(), expires));
            next
        })
    }

    fn delete(&self, key: &str) -> bool {
        self.with(|m| m.live(key).is_some() && m.0.remove(key).is_some())
    }

    fn lock(&self, name: &str, token: &str, ttl: Duration) -> Option<u64> {
        self.with(|m| {
            if m.live(&lock_key(name)).is_some() {
                return None;
            }
            m.set(&lock_key(name), token.to_string(), Some(ttl));
            let fence = m
                .get(&fence_key(name))
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
                + 1;
            m.set(&fence_key(name), fence.to_string(), None);
            Some(fence)
        })
    }

    fn unlock(&self, name: &str, token: &str) -> bool {
        self.with(|m| match m.get(&lock_key(name)) {
            Some(holder) if holder == token => m.0.remove(&lock_key(name)).is_some(),
            _ => false,
        })
    }

    fn count_in_window(&self, key: &str, length_ms: u64) -> WindowCount {
        let now = now_ms();
        self.with(|m| {
            let stored = m.get(key).unwrap_or_default();
            let fields: Vec<&str> = stored.split(',').collect();
            let (mut start, mut count, mut previous): (u64, u64, u64) =
                (field(&fields, 0), field(&fields, 1), field(&fields, 2));
            if stored.is_empty() {
                (start, count, previous) = (now, 0, 0);
            } else if now.saturating_sub(start) >= length_ms {
                let passed = (now - start) / length_ms;
                previous = if passed == 1 { count } else { 0 };
                start += passed * length_ms;
                count = 0;
            }
            count += 1;
            let ttl = Duration::from_millis(length_ms.saturating_mul(2));
            m.set(key, format!("{start},{count},{previous}"), Some(ttl));
            WindowCount {
                count,
                previous,
                elapsed_ms: now.saturating_sub(start),
            }
        })
    }

    fn leak(&self, key: &str, rate: f64, burst: f64, ttl: Duration) -> Option<f64> {
        let now = now_ms();
        self.with(|m| {
            let excess = match m.get(key) {
                Some(stored) => {
                    let fields: Vec<&str> = stored.split(',').collect();
                    let (excess, last): (f64, u64) = (field(&fields, 0), field(&fields, 1));
                    let drained = rate * now.saturating_sub(last) as f64 / 1000.0;
                    (excess - drained + 1.0).max(0.0)
                }
                None => 0.0,
            };
            if excess > burst {
                return None;
            }
            m.set(key, format!("{excess},{now}"), Some(ttl));
            Some(excess)
        })
    }

    fn enter(&self, key: &str, holder: &str, most: u64, ttl: Duration) -> Option<u64> {
        let now = now_ms();
        self.with(|m| {
            let stored = m.get(key).unwrap_or_default();
            let mut places: Vec<(String, u64)> = stored
                .split(';')
                .filter_map(|p| p.rsplit_once('='))
                .map(|(h, until)| (h.to_string(), until.parse().unwrap_or(0)))
                .filter(|(_, until)| *until > now)
                .collect();
            if places.len() as u64 >= most {
                return None;
            }
            places.push((holder.to_string(), now.saturating_add(ttl_ms(ttl))));
            let text: Vec<String> = places.iter().map(|(h, u)| format!("{h}={u}")).collect();
            m.set(key, text.join(";"), Some(ttl));
            Some(places.len() as u64)
        })
    }

    fn leave(&self, key: &str, holder: &str) {
        self.with(|m| {
            let Some(stored) = m.get(key) else { return };
            let kept: Vec<&str> = stored
                .split(';')
                .filter(|p| p.rsplit_once('=').is_some_and(|(h, _)| h != holder))
                .collect();
            match kept.is_empty() {
                true => drop(m.0.remove(key)),
                false => m.set(key, kept.join(";"), None),
            }
        });
    }

    fn fenced_set(&self, key: &str, value: &str, fence: u64) -> bool {
        self.with(|m| {
            let seen = m
                .get(&guard_key(key))
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0);
            if fence < seen {
                return false;
            }
            m.set(&guard_key(key), fence.to_string(), None);
            m.set(key, value.to_string(), None);
            true
        })
    }
}

struct MemoryMap<'a>(&'a mut Entries);

impl MemoryMap<'_> {
    /// The entry if it has not expired (an expired one is removed).
    fn live(&mut self, key: &str) -> Option<(String, Option<Instant>)> {
        match self.0.get(key) {
            Some((_, Some(exp))) if *exp <= Instant::now() => {
                self.0.remove(key);
                None
            }
            other => other.cloned(),
        }
    }

    fn get(&mut self, key: &str) -> Option<String> {
        self.live(key).map(|(v, _)| v)
    }

    fn set(&mut self, key: &str, value: String, ttl: Option<Duration>) {
        self.0
            .insert(key.to_string(), (value, ttl.map(|t| Instant::now() + t)));
    }
}

/// Events in a window, on Redis's clock: a hash of the window's start, its count and the
/// previous window's.
const WINDOW_SCRIPT: &str = r"
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
return {count, previous, now - start}";

/// A leaky bucket, on Redis's clock: a hash of the requests in it (beyond the one being
/// served) and when it was last poured into. The level goes back as a string: Redis would
/// make a number an integer.
const LEAK_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'excess', 'last')
local excess = 0
if b[1] and b[2] then
  excess = math.max(tonumber(b[1]) - rate * (now - tonumber(b[2])) / 1000 + 1, 0)
  if excess > burst then
    return {0, tostring(excess)}
  end
end
redis.call('HSET', KEYS[1], 'excess', tostring(excess), 'last', now)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, tostring(excess)}";

/// Places held at once: a sorted set of holders by when their place lapses.
const ENTER_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local taken = redis.call('ZCARD', KEYS[1])
if taken >= tonumber(ARGV[1]) then
  return {0, taken}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, taken + 1}";

/// Redis-backed store. Every key is prefixed with `kv.key_prefix`.
#[derive(Clone)]
pub struct RedisKv {
    conn: ConnectionManager,
    prefix: String,
}

/// INCRBY, setting the TTL only when the key was created by this call.
const INCR_SCRIPT: &str = r"
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if v == tonumber(ARGV[1]) and tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return v";

/// SET NX PX on the lock, then bump its fence; nil when the lock is held.
const LOCK_SCRIPT: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return false";

/// DEL only if the caller still holds the lock.
const UNLOCK_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// SET only if no newer fence has written the key.
const FENCED_SET_SCRIPT: &str = r"
local seen = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[2]) < seen then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[1], ARGV[1])
return 1";

impl RedisKv {
    /// Connects to the Redis at `url` with `timeout` for connecting and for each answer, for
    /// callers that must not wait longer (a request's rate limit); not checked at once.
    pub async fn connect_with_timeout(
        url: &str,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, KvError> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        let client = redis::Client::open(url)?;
        Ok(Self {
            conn: client.get_connection_manager_with_config(config).await?,
            prefix: prefix.to_string(),
        })
    }

    pub async fn connect(url: &str, prefix: &str) -> Result<Self, KvError> {
        let client = redis::Client::open(url)?;
        // Fail at start-up rather than on first use when Redis is unreachable.
        let mut probe = client.get_multiplexed_async_connection().await?;
        let _: String = redis::cmd("PING").query_async(&mut probe).await?;
        let conn = client.get_connection_manager().await?;
        Ok(Self {
            conn,
            prefix: prefix.to_string(),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    async fn get(&self, key: &str) -> Result<Option<String>, KvError> {
        Ok(self.conn.clone().get(self.key(key)).await?)
    }

    async fn set(&self, key: &str, value: &str, ttl: Option<Duration>) -> Result<(), KvError> {
        let mut conn = self.conn.clone();
        match ttl {
            Some(ttl) => {
                conn.pset_ex::<_, _, ()>(self.key(key), value, ttl_ms(ttl))
                    .await?
            }
            None => conn.set::<_, _, ()>(self.key(key), value).await?,
        }
        Ok(())
    }

    async fn incr_by(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        Ok(Script::new(INCR_SCRIPT)
            .key(self.key(key))
            .arg(delta)
            .arg(ttl.map(ttl_ms).unwrap_or(0))
            .invoke_async(&mut self.conn.clone())
            .await?)
    }

    async fn delete(&self, key: &str) -> Result<bool, KvError> {
        let n: i64 = self.conn.clone().del(self.key(key)).await?;
        Ok(n > 0)
    }

    async fn lock(&self, name: &str, token: &str, ttl: Duration) -> Result<Option<u64>, KvError> {
        Ok(Script::new(LOCK_SCRIPT)
            .key(self.key(&lock_key(name)))
            .key(self.key(&fence_key(name)))
            .arg(token)
            .arg(ttl_ms(ttl))
            .invoke_async(&mut self.conn.clone())
            .await?)
    }

    async fn unlock(&self, name: &str, token: &str) -> Result<bool, KvError> {
        let n: i64 = Script::new(UNLOCK_SCRIPT)
            .key(self.key(&lock_key(name)))
            .arg(token)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(n == 1)
    }

    async fn fenced_set(&self, key: &str, value: &str, fence: u64) -> Result<bool, KvError> {
        let n: i64 = Script::new(FENCED_SET_SCRIPT)
            .key(self.key(key))
            .key(self.key(&guard_key(key)))
            .arg(value)
            .arg(fence)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(n == 1)
    }

    async fn ping(&self) -> Result<(), KvError> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    async fn count_in_window(&self, key: &str, length_ms: u64) -> Result<WindowCount, KvError> {
        let (count, previous, elapsed_ms): (u64, u64, u64) = Script::new(WINDOW_SCRIPT)
            .key(self.key(key))
            .arg(length_ms)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(WindowCount {
            count,
            previous,
            elapsed_ms,
        })
    }

    async fn leak(
        &self,
        key: &str,
        rate: f64,
        burst: f64,
        ttl: Duration,
    ) -> Result<Option<f64>, KvError> {
        let (poured, excess): (u8, String) = Script::new(LEAK_SCRIPT)
            .key(self.key(key))
            .arg(rate)
            .arg(burst)
            .arg(ttl_ms(ttl))
            .invoke_async(&mut self.conn.clone())
            .await?;
        let excess = excess.parse().unwrap_or(0.0);
        Ok((poured == 1).then_some(excess))
    }

    async fn enter(
        &self,
        key: &str,
        holder: &str,
        most: u64,
        ttl: Duration,
    ) -> Result<Option<u64>, KvError> {
        let (entered, taken): (u8, u64) = Script::new(ENTER_SCRIPT)
            .key(self.key(key))
            .arg(most)
            .arg(ttl_ms(ttl))
            .arg(holder)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok((entered == 1).then_some(taken))
    }

    async fn leave(&self, key: &str, holder: &str) -> Result<(), KvError> {
        let _: i64 = self.conn.clone().zrem(self.key(key), holder).await?;
        Ok(())
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}
