//! `http-logger` (priority 410): sends each request's log entry — APISIX's fields: `route_id`,
//! `service_id`, `consumer.username`, `request` (`uri`, `host`, `size`), `response` (`status`,
//! `size`), `upstream` (the node's address; APISIX adds its port), `latency`,
//! `upstream_latency`, `apisix_latency`, `start_time` — to `uri` as a JSON array
//! (or lines, `concat_method: new_line`), in batches, off the request's path.
//!
//! APISIX's batch processor: entries wait until `batch_max_size` of them are pending or
//! `inactive_timeout` seconds have passed; a batch the server refuses (not 2xx) or that cannot be
//! sent is tried again `max_retry_count` times, `retry_delay` seconds apart, then dropped. At most
//! `max_pending_entries` wait (100,000 unless set); more are dropped as they come. Every batch
//! carries `X-Axle-Dropped: n`, the entries dropped since the last batch the server took, so the
//! receiver can show what it missed. Pending entries outlive configuration changes (they wait
//! per route and URI, in the process's [`Shared`](super::Shared) state) but not a restart.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Notify;

use super::Site;
use super::report::{Dropped, Target};
use crate::client::pool::Pool;
use crate::runtime::consumer::Consumer;
use crate::runtime::phases::{Log, Plugin};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    uri: String,
    auth_header: Option<String>,
    #[serde(default = "three")]
    timeout: u64,
    #[serde(default)]
    concat_method: Concat,
    #[serde(default = "yes")]
    ssl_verify: bool,
    name: Option<String>,
    #[serde(default = "thousand")]
    batch_max_size: usize,
    #[serde(default = "five")]
    inactive_timeout: u64,
    #[serde(default = "sixty")]
    buffer_duration: u64,
    #[serde(default)]
    max_retry_count: u32,
    #[serde(default = "one")]
    retry_delay: u64,
    max_pending_entries: Option<usize>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Concat {
    #[default]
    Json,
    NewLine,
}

fn three() -> u64 {
    3
}
fn yes() -> bool {
    true
}
fn thousand() -> usize {
    1000
}
fn five() -> u64 {
    5
}
fn sixty() -> u64 {
    60
}
fn one() -> u64 {
    1
}

/// The most entries that wait unless `max_pending_entries` says otherwise.
const MAX_PENDING: usize = 100_000;

/// How a batch is sent, as the latest configuration says.
#[derive(Debug, Clone)]
struct Settings {
    /// The batch processor's name, in its log lines.
    name: String,
    target: Target,
    concat: Concat,
    batch_max_size: usize,
    inactive: Duration,
    retries: u32,
    retry_delay: Duration,
    max_pending: usize,
}

/// One request's entry, as the log phase leaves it (written as JSON when sent).
#[derive(Debug)]
struct Entry {
    route: Arc<str>,
    service: Option<Arc<str>>,
    consumer: Option<Arc<Consumer>>,
    host: String,
    uri: String,
    request_bytes: u64,
    status: u16,
    response_bytes: u64,
    node: Option<Arc<str>>,
    latency: Duration,
    upstream_latency: Option<Duration>,
    /// When the request came, in milliseconds since the epoch.
    start_time: u64,
}

impl Entry {
    /// Writes the entry in APISIX's shape as JSON to `out` — by hand: the sender writes
    /// thousands a second, and a serializer spent more on each than the request itself did
    /// (`bench/market.sh`).
    fn write_json(&self, out: &mut String) {
        out.push_str("{\"route_id\":");
        string(out, &self.route);
        if let Some(service) = &self.service {
            out.push_str(",\"service_id\":");
            string(out, service);
        }
        if let Some(consumer) = &self.consumer {
            out.push_str(",\"consumer\":{\"username\":");
            string(out, &consumer.username);
            out.push('}');
        }
        out.push_str(",\"request\":{\"uri\":");
        string(out, &self.uri);
        out.push_str(",\"host\":");
        string(out, &self.host);
        out.push_str(",\"size\":");
        number(out, self.request_bytes);
        out.push_str("},\"response\":{\"status\":");
        number(out, u64::from(self.status));
        out.push_str(",\"size\":");
        number(out, self.response_bytes);
        out.push('}');
        if let Some(node) = &self.node {
            out.push_str(",\"upstream\":");
            string(out, node);
        }
        out.push_str(",\"latency\":");
        millis(out, self.latency);
        if let Some(upstream) = self.upstream_latency {
            out.push_str(",\"upstream_latency\":");
            millis(out, upstream);
            out.push_str(",\"apisix_latency\":");
            millis(out, self.latency.saturating_sub(upstream));
        }
        out.push_str(",\"start_time\":");
        number(out, self.start_time);
        out.push('}');
    }
}

/// The bytes a JSON string must escape: controls, `"` and `\`.
const ESCAPED: [bool; 256] = {
    let mut escaped = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        escaped[b] = true;
        b += 1;
    }
    escaped[b'"' as usize] = true;
    escaped[b'\\' as usize] = true;
    escaped
};

/// `text` as a JSON string.
fn string(out: &mut String, text: &str) {
    let plain = !text.bytes().any(|b| ESCAPED[usize::from(b)]);
    match plain {
        true => {
            out.push('"');
            out.push_str(text);
            out.push('"');
        }
        false => out.push_str(&Value::from(text).to_string()),
    }
}

fn number(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// `d` in milliseconds, to the microsecond (`12.345`).
fn millis(out: &mut String, d: Duration) {
    let micros = d.as_micros();
    out.push_str(itoa::Buffer::new().format(micros / 1000));
    out.push('.');
    let fraction = micros % 1000;
    let mut buffer = itoa::Buffer::new();
    let digits = buffer.format(fraction);
    for _ in digits.len()..3 {
        out.push('0');
    }
    out.push_str(digits);
}

/// The process's batches, one per route (or other owner) and URI, with the connections they
/// are sent over.
#[derive(Debug, Default)]
pub struct Batches {
    batches: Mutex<HashMap<(String, String), Arc<Batch>>>,
    pool: Arc<Pool>,
}

#[derive(Debug)]
struct Batch {
    settings: Mutex<Settings>,
    pending: Mutex<VecDeque<Entry>>,
    /// Rung when a full batch is pending.
    full: Notify,
    /// Dropped since the last batch the server took.
    dropped: Dropped,
}

impl Batches {
    /// The batch of `owner` to `settings.target.uri`, its settings brought up to date; its sender
    /// started on the runtime building the plugin the first time.
    fn batch(&self, owner: &str, settings: Settings) -> Arc<Batch> {
        let key = (owner.to_string(), settings.target.uri.clone());
        let mut batches = self.batches.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(batch) = batches.get(&key) {
            *batch.settings.lock().unwrap_or_else(|e| e.into_inner()) = settings;
            return batch.clone();
        }
        let batch = Arc::new(Batch::new(settings));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(batch.clone().send_forever(self.pool.clone()));
        }
        batches.insert(key, batch.clone());
        batch
    }
}

impl Batch {
    fn new(settings: Settings) -> Batch {
        Batch {
            settings: Mutex::new(settings),
            pending: Mutex::default(),
            full: Notify::new(),
            dropped: Dropped::default(),
        }
    }

    fn settings(&self) -> Settings {
        self.settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn push(&self, entry: Entry, max_pending: usize, batch_max_size: usize) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.len() >= max_pending {
            self.dropped.add(1);
            return;
        }
        pending.push_back(entry);
        if pending.len() == batch_max_size {
            self.full.notify_one();
        }
    }

    /// Sends batches as they fill or time out, for the life of the process.
    async fn send_forever(self: Arc<Self>, pool: Arc<Pool>) {
        loop {
            let settings = self.settings();
            let _ = tokio::time::timeout(settings.inactive, self.full.notified()).await;
            loop {
                let batch: Vec<Entry> = {
                    let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                    let n = pending.len().min(settings.batch_max_size);
                    pending.drain(..n).collect()
                };
                if batch.is_empty() {
                    break;
                }
                let full = batch.len() == settings.batch_max_size;
                self.send(&pool, &settings, &batch).await;
                if !full {
                    break;
                }
            }
        }
    }

    /// Sends one batch, retrying as configured; counts it dropped when it never gets through.
    async fn send(&self, pool: &Arc<Pool>, settings: &Settings, batch: &[Entry]) {
        let (open, between, close) = match settings.concat {
            Concat::Json => ("[", ",", "]"),
            Concat::NewLine => ("", "\n", ""),
        };
        let mut body = String::with_capacity(batch.len() * 320 + 2);
        body.push_str(open);
        for (i, entry) in batch.iter().enumerate() {
            if i > 0 {
                body.push_str(between);
            }
            entry.write_json(&mut body);
        }
        body.push_str(close);
        let content_type = match settings.concat {
            Concat::Json => "application/json",
            Concat::NewLine => "text/plain",
        };
        let mut last_error = String::new();
        for attempt in 0..=settings.retries {
            if attempt > 0 {
                tokio::time::sleep(settings.retry_delay).await;
            }
            let target = &settings.target;
            match self
                .dropped
                .post(pool, target, content_type, body.clone())
                .await
            {
                Ok(()) => return,
                Err(e) => last_error = e,
            }
        }
        self.dropped.add(batch.len() as u64);
        tracing::warn!(name = %settings.name, uri = %settings.target.uri, entries = batch.len(),
            error = %last_error, "http-logger: a batch of log entries could not be sent; dropped");
    }
}

#[derive(Debug)]
struct HttpLogger {
    batch: Arc<Batch>,
    /// The batch's bounds as this configuration sets them (read per request without a lock).
    max_pending: usize,
    batch_max_size: usize,
}

pub(crate) fn build(config: &Value, site: &Site) -> Result<Arc<dyn Plugin>, String> {
    let c: Config = crate::resource::parse(config).map_err(|e| e.0)?;
    let seconds = |field: &str, value: u64| {
        if (1..=crate::resource::MAX_SECONDS).contains(&value) {
            Ok(Duration::from_secs(value))
        } else {
            Err(format!(
                "{field}: 1 to {} seconds",
                crate::resource::MAX_SECONDS
            ))
        }
    };
    if c.batch_max_size == 0 || c.max_pending_entries == Some(0) {
        return Err("batch_max_size and max_pending_entries: at least 1".into());
    }
    seconds("buffer_duration", c.buffer_duration)?;
    let timeout = seconds("timeout", c.timeout)?;
    let settings = Settings {
        name: c.name.unwrap_or_else(|| "http logger".into()),
        target: Target::new(c.uri, c.auth_header, timeout, c.ssl_verify)?,
        concat: c.concat_method,
        batch_max_size: c.batch_max_size,
        inactive: seconds("inactive_timeout", c.inactive_timeout)?,
        retries: c.max_retry_count.min(1_000),
        retry_delay: Duration::from_secs(c.retry_delay.min(crate::resource::MAX_SECONDS)),
        max_pending: c.max_pending_entries.unwrap_or(MAX_PENDING),
    };
    let (max_pending, batch_max_size) = (settings.max_pending, settings.batch_max_size);
    // A configuration being checked (no owner) serves nothing: it gets no sender.
    let batch = match site.owner.is_empty() {
        true => Arc::new(Batch::new(settings)),
        false => site.shared.loggers.batch(site.owner, settings),
    };
    Ok(Arc::new(HttpLogger {
        batch,
        max_pending,
        batch_max_size,
    }))
}

impl Plugin for HttpLogger {
    fn name(&self) -> &'static str {
        "http-logger"
    }

    fn priority(&self) -> i32 {
        410
    }

    fn logs(&self) -> bool {
        true
    }

    fn log(&self, log: &Log) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.batch.push(
            Entry {
                route: log.route.clone(),
                service: log.service.clone(),
                consumer: log.consumer.clone(),
                host: log.host.clone(),
                uri: log.uri.clone(),
                request_bytes: log.request_bytes,
                status: log.status,
                response_bytes: log.response_bytes,
                node: log.node.clone(),
                latency: log.request_time,
                upstream_latency: log.upstream_time,
                start_time: now.saturating_sub(log.request_time).as_millis() as u64,
            },
            self.max_pending,
            self.batch_max_size,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_apisix_json_with_text_escaped_and_milliseconds_to_the_microsecond() {
        let entry = Entry {
            route: Arc::from("r1"),
            service: None,
            consumer: None,
            host: "example.com".into(),
            uri: "/say \"hi\"\\\n".into(),
            request_bytes: 120,
            status: 200,
            response_bytes: 42,
            node: Some(Arc::from("127.0.0.1")),
            latency: Duration::from_micros(12_045),
            upstream_latency: Some(Duration::from_micros(10_000)),
            start_time: 1_796_083_200_000,
        };
        let mut out = String::new();
        entry.write_json(&mut out);
        let parsed: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({
                "route_id": "r1",
                "request": {"uri": "/say \"hi\"\\\n", "host": "example.com", "size": 120},
                "response": {"status": 200, "size": 42},
                "upstream": "127.0.0.1",
                "latency": 12.045,
                "upstream_latency": 10.0,
                "apisix_latency": 2.045,
                "start_time": 1_796_083_200_000_u64,
            })
        );
    }
}
