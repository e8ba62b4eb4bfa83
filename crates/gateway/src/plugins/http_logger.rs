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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;

use super::Site;
use crate::client::fetch::{self, Call};
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
    uri: String,
    authorization: Option<String>,
    timeout: Duration,
    concat: Concat,
    verify: bool,
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
    /// The entry in APISIX's shape, written straight to JSON (no intermediate values: the
    /// sender writes thousands a second).
    fn json(&self) -> impl Serialize + '_ {
        #[derive(Serialize)]
        struct Json<'a> {
            route_id: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            service_id: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            consumer: Option<Named<'a>>,
            request: Request<'a>,
            response: Response,
            #[serde(skip_serializing_if = "Option::is_none")]
            upstream: Option<&'a str>,
            latency: f64,
            #[serde(skip_serializing_if = "Option::is_none")]
            upstream_latency: Option<f64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            apisix_latency: Option<f64>,
            start_time: u64,
        }
        #[derive(Serialize)]
        struct Named<'a> {
            username: &'a str,
        }
        #[derive(Serialize)]
        struct Request<'a> {
            uri: &'a str,
            host: &'a str,
            size: u64,
        }
        #[derive(Serialize)]
        struct Response {
            status: u16,
            size: u64,
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        Json {
            route_id: &self.route,
            service_id: self.service.as_deref(),
            consumer: self.consumer.as_ref().map(|c| Named {
                username: &c.username,
            }),
            request: Request {
                uri: &self.uri,
                host: &self.host,
                size: self.request_bytes,
            },
            response: Response {
                status: self.status,
                size: self.response_bytes,
            },
            upstream: self.node.as_deref(),
            latency: ms(self.latency),
            upstream_latency: self.upstream_latency.map(ms),
            apisix_latency: self
                .upstream_latency
                .map(|upstream| ms(self.latency.saturating_sub(upstream))),
            start_time: self.start_time,
        }
    }
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
    dropped: AtomicU64,
}

impl Batches {
    /// The batch of `owner` to `settings.uri`, its settings brought up to date; its sender
    /// started on the runtime building the plugin the first time.
    fn batch(&self, owner: &str, settings: Settings) -> Arc<Batch> {
        let key = (owner.to_string(), settings.uri.clone());
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
            dropped: AtomicU64::new(0),
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
            self.dropped.fetch_add(1, Ordering::Relaxed);
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
        let entries: Vec<_> = batch.iter().map(Entry::json).collect();
        let body = match settings.concat {
            Concat::Json => serde_json::to_string(&entries).unwrap_or_default(),
            Concat::NewLine => entries
                .iter()
                .filter_map(|e| serde_json::to_string(e).ok())
                .collect::<Vec<_>>()
                .join("\n"),
        };
        let content_type = match settings.concat {
            Concat::Json => "application/json",
            Concat::NewLine => "text/plain",
        };
        let mut last_error = String::new();
        for attempt in 0..=settings.retries {
            if attempt > 0 {
                tokio::time::sleep(settings.retry_delay).await;
            }
            let dropped = self.dropped.load(Ordering::Relaxed);
            let mut call = Call::post(&settings.uri, settings.verify, content_type, body.clone());
            call.authorization = settings.authorization.clone();
            call.timeout = settings.timeout;
            call.headers = vec![("x-axle-dropped", dropped.to_string())];
            match fetch::send(pool, call).await {
                Ok((status, _)) if status.is_success() => {
                    self.dropped.fetch_sub(dropped, Ordering::Relaxed);
                    return;
                }
                Ok((status, _)) => last_error = format!("status {status}"),
                Err(e) => last_error = e,
            }
        }
        self.dropped
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        tracing::warn!(name = %settings.name, uri = %settings.uri, entries = batch.len(),
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
    let url = reqwest::Url::parse(&c.uri).map_err(|e| format!("uri: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("uri: an http or https URL expected".into());
    }
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
    if let Some(auth) = &c.auth_header
        && http::HeaderValue::from_str(auth).is_err()
    {
        return Err("auth_header: not a header value".into());
    }
    seconds("buffer_duration", c.buffer_duration)?;
    let settings = Settings {
        name: c.name.unwrap_or_else(|| "http logger".into()),
        uri: c.uri,
        authorization: c.auth_header,
        timeout: seconds("timeout", c.timeout)?,
        concat: c.concat_method,
        verify: c.ssl_verify,
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
