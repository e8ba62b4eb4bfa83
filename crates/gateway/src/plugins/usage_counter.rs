//! `usage-counter` (Axle's own, priority 409): counts the requests of the routes it is on in the
//! gateway — per route, consumer, status class and minute: requests, bytes, total latency and a
//! latency histogram over `latency_buckets_ms` — and posts the counts to `uri` every
//! `interval` seconds as a JSON array. What `http-logger` does per request (an entry written
//! and sent), this does per key and second, so metering costs a request a map update.
//!
//! Counts the server does not take stay and are sent with the next ones; beyond `max_keys`
//! keys waiting, requests of new keys are dropped and counted, and every post carries
//! `X-Axle-Dropped: n`, those dropped since the last post the server took. Counts outlive
//! configuration changes (they wait per URI in the process's [`Shared`](super::Shared) state)
//! but not a restart.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Site;
use super::report::{Dropped, Target};
use crate::FastMap;
use crate::client::pool::Pool;
use crate::runtime::consumer::Consumer;
use crate::runtime::phases::{Log, Plugin};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    uri: String,
    auth_header: Option<String>,
    #[serde(default = "one")]
    interval: u64,
    #[serde(default = "three")]
    timeout: u64,
    #[serde(default = "yes")]
    ssl_verify: bool,
    /// Upper bounds of the latency histogram's buckets, ascending; one more bucket takes the
    /// rest.
    #[serde(default = "default_buckets")]
    latency_buckets_ms: Vec<u64>,
    #[serde(default = "many")]
    max_keys: usize,
}

fn one() -> u64 {
    1
}
fn three() -> u64 {
    3
}
fn yes() -> bool {
    true
}
fn many() -> usize {
    100_000
}
fn default_buckets() -> Vec<u64> {
    vec![1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000]
}

/// The most buckets a histogram may have.
const MAX_BUCKETS: usize = 32;

/// Where counts go and how.
#[derive(Debug, Clone)]
struct Settings {
    target: Target,
    interval: Duration,
    max_keys: usize,
}

/// A shared value compared and hashed by its address: routes and consumers are the
/// snapshot's, so a key costs no copy of their names.
#[derive(Debug)]
struct ByAddress<T: ?Sized>(Arc<T>);

impl<T: ?Sized> PartialEq for ByAddress<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl<T: ?Sized> Eq for ByAddress<T> {}

impl<T: ?Sized> Hash for ByAddress<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.0) as *const u8 as usize).hash(state);
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Key {
    route: ByAddress<str>,
    consumer: Option<ByAddress<Consumer>>,
    status_class: u8,
    /// Minutes since the epoch.
    minute: u64,
}

#[derive(Debug, Clone, Default)]
struct Counts {
    requests: u64,
    bytes: u64,
    latency_us: u64,
    latency: Vec<u64>,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.bytes += other.bytes;
        self.latency_us += other.latency_us;
        if self.latency.len() < other.latency.len() {
            self.latency.resize(other.latency.len(), 0);
        }
        for (mine, theirs) in self.latency.iter_mut().zip(&other.latency) {
            *mine += theirs;
        }
    }
}

/// One key's counts as posted.
#[derive(Debug, Serialize)]
struct Posted<'a> {
    route_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    consumer: Option<&'a str>,
    status_class: u8,
    /// The minute's start, in seconds since the epoch.
    minute: u64,
    requests: u64,
    bytes: u64,
    latency_ms: u64,
    latency_buckets: &'a [u64],
}

/// The process's counters, one per URI they are posted to, with the connections they are
/// posted over.
#[derive(Debug, Default)]
pub struct Counters {
    counters: Mutex<HashMap<String, Arc<Counter>>>,
    pool: Arc<Pool>,
}

#[derive(Debug)]
struct Counter {
    settings: Mutex<Settings>,
    counts: Mutex<FastMap<Key, Counts>>,
    /// Requests dropped since the last post the server took.
    dropped: Dropped,
}

impl Counters {
    /// The counter posting to `settings.target.uri`, its settings brought up to date; its sender
    /// started on the runtime building the plugin the first time.
    fn counter(&self, settings: Settings) -> Arc<Counter> {
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(counter) = counters.get(&settings.target.uri) {
            *counter.settings.lock().unwrap_or_else(|e| e.into_inner()) = settings;
            return counter.clone();
        }
        let uri = settings.target.uri.clone();
        let counter = Arc::new(Counter::new(settings));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(counter.clone().post_forever(self.pool.clone()));
        }
        counters.insert(uri, counter.clone());
        counter
    }
}

impl Counter {
    fn new(settings: Settings) -> Counter {
        Counter {
            settings: Mutex::new(settings),
            counts: Mutex::default(),
            dropped: Dropped::default(),
        }
    }

    /// Posts the counts every interval, for the life of the process.
    async fn post_forever(self: Arc<Self>, pool: Arc<Pool>) {
        loop {
            let settings = self
                .settings
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            tokio::time::sleep(settings.interval).await;
            let counts =
                std::mem::take(&mut *self.counts.lock().unwrap_or_else(|e| e.into_inner()));
            if counts.is_empty() && !self.dropped.any() {
                continue;
            }
            if let Err(e) = self.post(&pool, &settings, &counts).await {
                tracing::warn!(uri = %settings.target.uri, error = %e,
                    "usage-counter: the counts could not be posted; kept for the next try");
                self.keep(counts, settings.max_keys);
            }
        }
    }

    async fn post(
        &self,
        pool: &Arc<Pool>,
        settings: &Settings,
        counts: &FastMap<Key, Counts>,
    ) -> Result<(), String> {
        let posted: Vec<Posted<'_>> = counts
            .iter()
            .map(|(key, counts)| Posted {
                route_id: &key.route.0,
                consumer: key.consumer.as_ref().map(|c| c.0.username.as_str()),
                status_class: key.status_class,
                minute: key.minute * 60,
                requests: counts.requests,
                bytes: counts.bytes,
                latency_ms: counts.latency_us / 1000,
                latency_buckets: &counts.latency,
            })
            .collect();
        let body = serde_json::to_string(&posted).map_err(|e| e.to_string())?;
        self.dropped
            .post(pool, &settings.target, "application/json", body)
            .await
    }

    /// Puts counts that were not taken back, to go with the next post.
    fn keep(&self, counts: FastMap<Key, Counts>, max_keys: usize) {
        let mut current = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        for (key, counts) in counts {
            if let Some(existing) = current.get_mut(&key) {
                existing.add(&counts);
            } else if current.len() < max_keys {
                current.insert(key, counts);
            } else {
                self.dropped.add(counts.requests);
            }
        }
    }
}

#[derive(Debug)]
struct UsageCounter {
    counter: Arc<Counter>,
    buckets: Arc<[u64]>,
    max_keys: usize,
}

pub(crate) fn build(config: &Value, site: &Site) -> Result<Arc<dyn Plugin>, String> {
    let c: Config = crate::resource::parse(config).map_err(|e| e.0)?;
    let seconds = |field: &str, value: u64| {
        if (1..=3600).contains(&value) {
            Ok(Duration::from_secs(value))
        } else {
            Err(format!("{field}: 1 to 3600 seconds"))
        }
    };
    let buckets = &c.latency_buckets_ms;
    if buckets.is_empty()
        || buckets.len() >= MAX_BUCKETS
        || buckets.windows(2).any(|pair| pair[0] >= pair[1])
    {
        return Err(format!(
            "latency_buckets_ms: 1 to {} bounds, ascending",
            MAX_BUCKETS - 1
        ));
    }
    if c.max_keys == 0 {
        return Err("max_keys: at least 1".into());
    }
    let buckets: Arc<[u64]> = Arc::from(c.latency_buckets_ms.as_slice());
    let settings = Settings {
        target: Target::new(
            c.uri,
            c.auth_header,
            seconds("timeout", c.timeout)?,
            c.ssl_verify,
        )?,
        interval: seconds("interval", c.interval)?,
        max_keys: c.max_keys,
    };
    let max_keys = settings.max_keys;
    // A configuration being checked (no owner) serves nothing: it gets no sender.
    let counter = match site.owner.is_empty() {
        true => Arc::new(Counter::new(settings)),
        false => site.shared.usage.counter(settings),
    };
    Ok(Arc::new(UsageCounter {
        counter,
        buckets,
        max_keys,
    }))
}

impl Plugin for UsageCounter {
    fn name(&self) -> &'static str {
        "usage-counter"
    }

    fn priority(&self) -> i32 {
        409
    }

    fn logs(&self) -> bool {
        true
    }

    fn log(&self, log: &Log) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let started = now.saturating_sub(log.request_time);
        let key = Key {
            route: ByAddress(log.route.clone()),
            consumer: log.consumer.clone().map(ByAddress),
            status_class: u8::try_from(log.status / 100).unwrap_or(5),
            minute: started.as_secs() / 60,
        };
        let latency_us = u64::try_from(log.request_time.as_micros()).unwrap_or(u64::MAX);
        let bucket = self
            .buckets
            .iter()
            .position(|bound| latency_us <= bound.saturating_mul(1000))
            .unwrap_or(self.buckets.len());
        let mut counts = self
            .counter
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !counts.contains_key(&key) && counts.len() >= self.max_keys {
            drop(counts);
            self.counter.dropped.add(1);
            return;
        }
        let counts = counts.entry(key).or_default();
        counts.requests += 1;
        counts.bytes += log.request_bytes + log.response_bytes;
        counts.latency_us += latency_us;
        if counts.latency.len() <= self.buckets.len() {
            counts.latency.resize(self.buckets.len() + 1, 0);
        }
        counts.latency[bucket] += 1;
    }
}
