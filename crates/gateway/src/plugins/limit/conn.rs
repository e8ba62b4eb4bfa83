//! `limit-conn` (priority 1003): at most `conn` requests in flight per key, per route. Up to
//! `burst` more are let through after a delay — `default_conn_delay` seconds for each `conn`
//! ahead of them, the unit adapting to how long requests take unless
//! `only_use_default_delay` — and the rest are rejected. A request holds its place until its
//! response has been sent or the client has gone away.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::{Key, KeyType, Rejection};
use crate::plugins::{Ctx, Flow, Plugin, Shared};

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
    /// For shared policies; local counts cannot be unreachable.
    #[serde(default)]
    allow_degradation: bool,
    policy: Option<String>,
    /// How long a shared policy keeps a key's count.
    key_ttl: Option<u64>,
}

#[derive(Debug)]
struct LimitConn {
    conn: u64,
    burst: u64,
    key: Key,
    rejected: Rejection,
    /// The delay for each `conn` requests ahead, in seconds (as f64 bits).
    unit_delay: Arc<AtomicU64>,
    adaptive: bool,
}

pub(crate) fn build(config: &Value) -> Result<Arc<dyn Plugin>, String> {
    let c: Config = crate::resource::parse(config).map_err(|e| e.0)?;
    if c.conn == 0 {
        return Err("conn: must be above 0".into());
    }
    crate::resource::seconds("default_conn_delay", c.default_conn_delay, false).map_err(|e| e.0)?;
    super::check_local(c.policy.as_deref())?;
    let _ = (c.allow_degradation, c.key_ttl);
    Ok(Arc::new(LimitConn {
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
        let key = self.key.counter(ctx, None);
        let most = self.conn.saturating_add(self.burst);
        let Some(in_flight) = ctx.shared.connections.enter(&key, most) else {
            return Flow::Reply(self.rejected.reply());
        };
        let unit = f64::from_bits(self.unit_delay.load(Ordering::Relaxed));
        // Over `conn`, wait a unit for every `conn` requests ahead.
        let delay = if in_flight > self.conn {
            super::delay(unit * ((in_flight - 1) / self.conn) as f64)
        } else {
            Duration::ZERO
        };
        ctx.held.push(Box::new(Place {
            shared: ctx.shared.clone(),
            key,
            entered: Instant::now(),
            delay,
            unit_delay: self.adaptive.then(|| self.unit_delay.clone()),
        }));
        super::after(delay)
    }
}

/// A request's place in its key's count, given back when dropped.
#[derive(Debug)]
struct Place {
    shared: Arc<Shared>,
    key: String,
    entered: Instant,
    delay: Duration,
    /// The unit delay to move halfway towards this request's latency, when adaptive.
    unit_delay: Option<Arc<AtomicU64>>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.shared.connections.leave(&self.key);
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
