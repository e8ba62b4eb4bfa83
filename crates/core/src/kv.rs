//! Key-value state shared by the instances of a service: counters, locks, hot state.
//!
//! In memory by default (one process), Redis when `kv.redis_url` is set. Both give the same
//! guarantees; on Redis every compound operation is one Lua script, so it is atomic across
//! gateway nodes and service replicas.
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
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}
