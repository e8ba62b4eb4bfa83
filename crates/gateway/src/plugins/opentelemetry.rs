//! `opentelemetry` (priority 12009): a server span per sampled request, continuing the
//! client's W3C trace (`traceparent`) and handed on to the upstream in its own `traceparent`,
//! exported over OTLP/HTTP (protobuf) to the collector named in the plugin's metadata.
//!
//! The route chooses the sampler (`always_on`, `always_off`, `trace_id_ratio` with a
//! `fraction`, or `parent_base`: the caller's decision, else a `root` sampler's). Requests not
//! sampled pass the caller's `traceparent` on untouched. The span carries the request's method,
//! target, host, client, route and service, the `additional_attributes` (variables) and the
//! request headers starting with one of `additional_header_prefix_attributes`; it ends with
//! the response's status once the body has been sent.
//!
//! `plugin_metadata/opentelemetry` sets the collector (`address`, `request_timeout`,
//! `request_headers`), the `resource` attributes and the `batch_span_processor`; a change
//! starts a new exporter and flushes the old one. With `trace_id_source: x-request-id`, a
//! trace the request starts takes its id from the `X-Request-Id` header when that is 32
//! hexadecimal digits (as APISIX's; otherwise a random id).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanId, SpanKind, Status, TraceContextExt, TraceId, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, SdkTracer,
    SdkTracerProvider,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::{Shared, Site};
use crate::runtime::phases::{Ctx, Flow, Log, Plugin, Trace};
use crate::vars::Var;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    #[serde(default)]
    sampler: SamplerConfig,
    #[serde(default)]
    additional_attributes: Vec<String>,
    #[serde(default)]
    additional_header_prefix_attributes: Vec<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SamplerConfig {
    #[serde(default)]
    name: SamplerName,
    #[serde(default)]
    options: SamplerOptions,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum SamplerName {
    AlwaysOn,
    #[default]
    AlwaysOff,
    TraceIdRatio,
    ParentBase,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SamplerOptions {
    #[serde(default)]
    fraction: f64,
    root: Option<RootSampler>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RootSampler {
    #[serde(default)]
    name: SamplerName,
    #[serde(default)]
    options: RootOptions,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RootOptions {
    #[serde(default)]
    fraction: f64,
}

/// `plugin_metadata/opentelemetry`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Metadata {
    #[serde(default)]
    trace_id_source: TraceIdSource,
    #[serde(default)]
    resource: BTreeMap<String, Value>,
    #[serde(default)]
    collector: Collector,
    #[serde(default)]
    batch_span_processor: Batching,
    /// APISIX sets nginx variables for its access log; Axle has none.
    #[serde(default)]
    set_ngx_var: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
enum TraceIdSource {
    #[default]
    Random,
    XRequestId,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct Collector {
    /// `host:port` of an OTLP/HTTP collector; spans go to `/v1/traces`.
    address: String,
    /// Seconds.
    request_timeout: f64,
    request_headers: BTreeMap<String, String>,
}

impl Default for Collector {
    fn default() -> Self {
        Collector {
            address: "127.0.0.1:4318".into(),
            request_timeout: 3.0,
            request_headers: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct Batching {
    drop_on_queue_full: bool,
    max_queue_size: usize,
    /// Seconds between exports.
    batch_timeout: f64,
    /// Seconds; the exporter sends a batch when it is full or `batch_timeout` has passed.
    inactive_timeout: f64,
    max_export_batch_size: usize,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            drop_on_queue_full: false,
            max_queue_size: 1024,
            batch_timeout: 2.0,
            inactive_timeout: 1.0,
            max_export_batch_size: 16,
        }
    }
}

/// The most spans the exporter's queue holds (each queued span is memory held).
const MAX_QUEUE: usize = 1_000_000;

fn check_fraction(fraction: f64, at: &str) -> Result<(), String> {
    if (0.0..=1.0).contains(&fraction) {
        Ok(())
    } else {
        Err(format!("{at}: must be within 0 and 1"))
    }
}

pub(super) fn check_metadata(metadata: &Value) -> Result<(), String> {
    parse_metadata(metadata).map(|_| ())
}

fn parse_metadata(metadata: &Value) -> Result<Metadata, String> {
    if metadata.is_null() {
        return Ok(Metadata::default());
    }
    let m: Metadata = crate::resource::parse(metadata).map_err(|e| e.0)?;
    let endpoint = format!("http://{}/v1/traces", m.collector.address);
    reqwest::Url::parse(&endpoint)
        .ok()
        .filter(|u| u.path() == "/v1/traces")
        .ok_or("collector.address: host:port expected")?;
    let batching = &m.batch_span_processor;
    for (field, value) in [
        ("collector.request_timeout", m.collector.request_timeout),
        ("batch_span_processor.batch_timeout", batching.batch_timeout),
        (
            "batch_span_processor.inactive_timeout",
            batching.inactive_timeout,
        ),
    ] {
        crate::resource::seconds(field, value, false).map_err(|e| e.0)?;
    }
    if !(1..=MAX_QUEUE).contains(&batching.max_queue_size) {
        return Err(format!(
            "batch_span_processor.max_queue_size: within 1 and {MAX_QUEUE} expected"
        ));
    }
    if !(1..=batching.max_queue_size).contains(&batching.max_export_batch_size) {
        return Err(
            "batch_span_processor.max_export_batch_size: within 1 and max_queue_size expected"
                .into(),
        );
    }
    let _ = (
        m.set_ngx_var,
        m.batch_span_processor.drop_on_queue_full,
        m.batch_span_processor.inactive_timeout,
    );
    Ok(m)
}

/// Whether a request is traced.
#[derive(Debug, Clone, Copy)]
enum Sampler {
    Always(bool),
    Ratio(f64),
    /// The caller's decision when it sent one, else the root's.
    ParentBased(bool, Option<f64>),
}

impl Sampler {
    fn samples(&self, parent: Option<&opentelemetry::trace::SpanContext>) -> bool {
        let ratio = |f: f64| f > 0.0 && rand::random::<f64>() < f;
        match *self {
            Sampler::Always(on) => on,
            Sampler::Ratio(f) => ratio(f),
            Sampler::ParentBased(root_on, root_ratio) => match parent {
                Some(parent) => parent.is_sampled(),
                None => root_ratio.map_or(root_on, ratio),
            },
        }
    }
}

#[derive(Debug)]
struct OpenTelemetry {
    /// The process's plugin state: its span exporter.
    shared: Arc<Shared>,
    sampler: Sampler,
    attributes: Vec<(String, Var)>,
    header_prefixes: Vec<String>,
    /// The tracer of this snapshot's metadata, found on first use.
    tracer: OnceLock<SdkTracer>,
    /// Whether a new trace's id is the request's `X-Request-Id` (`trace_id_source`).
    from_request_id: bool,
}

thread_local! {
    /// The id the next trace started on this thread is to have, handed to [`RequestIds`].
    static NEXT_TRACE_ID: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// The exporter's ids: a trace id handed over for the span being started (the request's
/// `X-Request-Id`), else random ones.
#[derive(Debug, Default)]
struct RequestIds(RandomIdGenerator);

impl IdGenerator for RequestIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT_TRACE_ID
            .take()
            .unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        self.0.new_span_id()
    }
}

/// The request's `X-Request-Id` as a trace id: 32 hexadecimal digits, not all zero.
fn request_trace_id(ctx: &Ctx) -> Option<TraceId> {
    let id = ctx.headers.get("x-request-id")?.to_str().ok()?;
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    TraceId::from_hex(&id.to_ascii_lowercase())
        .ok()
        .filter(|t| *t != TraceId::INVALID)
}

pub(super) fn build(config: &Value, site: &Site) -> Result<Arc<dyn Plugin>, String> {
    let c: Config = crate::resource::parse(config).map_err(|e| e.0)?;
    // Checked when it was written.
    let metadata = site.metadata.get("opentelemetry").map(parse_metadata);
    let from_request_id =
        matches!(metadata, Some(Ok(m)) if m.trace_id_source == TraceIdSource::XRequestId);
    let options = &c.sampler.options;
    check_fraction(options.fraction, "sampler.options.fraction")?;
    let sampler = match c.sampler.name {
        SamplerName::AlwaysOn => Sampler::Always(true),
        SamplerName::AlwaysOff => Sampler::Always(false),
        SamplerName::TraceIdRatio => Sampler::Ratio(options.fraction),
        SamplerName::ParentBase => {
            let root = options.root.as_ref();
            let fraction = root.map_or(0.0, |r| r.options.fraction);
            check_fraction(fraction, "sampler.options.root.options.fraction")?;
            match root.map_or(SamplerName::AlwaysOff, |r| r.name) {
                SamplerName::AlwaysOn => Sampler::ParentBased(true, None),
                SamplerName::AlwaysOff => Sampler::ParentBased(false, None),
                SamplerName::TraceIdRatio => Sampler::ParentBased(false, Some(fraction)),
                SamplerName::ParentBase => {
                    return Err("sampler.options.root.name: parent_base cannot be a root".into());
                }
            }
        }
    };
    let attributes = c
        .additional_attributes
        .iter()
        .map(|name| {
            let var = Var::parse(name.trim_start_matches('$'))
                .map_err(|e| format!("additional_attributes: {e}"))?;
            Ok((name.trim_start_matches('$').to_string(), var))
        })
        .collect::<Result<_, String>>()?;
    Ok(Arc::new(OpenTelemetry {
        shared: site.shared.clone(),
        sampler,
        attributes,
        header_prefixes: c
            .additional_header_prefix_attributes
            .iter()
            .map(|p| p.to_ascii_lowercase())
            .collect(),
        tracer: OnceLock::new(),
        from_request_id,
    }))
}

impl Plugin for OpenTelemetry {
    fn name(&self) -> &'static str {
        "opentelemetry"
    }

    fn priority(&self) -> i32 {
        12009
    }

    fn rewrite<'a>(&'a self, ctx: &'a mut Ctx) -> Flow<'a> {
        let propagator = TraceContextPropagator::new();
        let parent = propagator.extract(&Headers(&ctx.headers));
        let remote = parent.span().span_context().clone();
        let remote = remote.is_valid().then_some(&remote);
        if !self.sampler.samples(remote) {
            return Flow::Next;
        }
        let tracer = self.tracer.get_or_init(|| {
            let metadata = ctx.snapshot.metadata.get("opentelemetry");
            self.shared
                .tracers
                .tracer(metadata.cloned().unwrap_or(Value::Null))
        });
        let vars = ctx.vars();
        let target = match &ctx.query {
            Some(q) => format!("{}?{q}", ctx.original_path),
            None => ctx.original_path.clone(),
        };
        let mut attributes = vec![
            KeyValue::new("http.method", ctx.method.to_string()),
            KeyValue::new("http.scheme", ctx.scheme),
            KeyValue::new("http.target", target),
            KeyValue::new("net.host.name", ctx.host.clone()),
            KeyValue::new("net.peer.ip", ctx.remote_addr.to_string()),
            KeyValue::new("apisix.route_id", ctx.route_id.to_string()),
        ];
        if let Some(agent) = ctx
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
        {
            attributes.push(KeyValue::new("http.user_agent", agent.to_string()));
        }
        if let Some(service) = &ctx.service_id {
            attributes.push(KeyValue::new("apisix.service_id", service.to_string()));
        }
        for (name, var) in &self.attributes {
            if let Some(value) = var.read(&vars) {
                attributes.push(KeyValue::new(name.clone(), value.into_owned()));
            }
        }
        for (name, value) in &ctx.headers {
            if self
                .header_prefixes
                .iter()
                .any(|p| name.as_str().starts_with(p.as_str()))
                && let Ok(value) = value.to_str()
            {
                attributes.push(KeyValue::new(name.to_string(), value.to_string()));
            }
        }
        if self.from_request_id && remote.is_none() {
            NEXT_TRACE_ID.set(request_trace_id(ctx));
        }
        let span = tracer
            .span_builder(format!("{} {}", ctx.method, ctx.original_path))
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        NEXT_TRACE_ID.set(None);
        // The upstream continues the trace from this span.
        let child = Context::new().with_remote_span_context(span.span_context().clone());
        propagator.inject_context(&child, &mut HeadersMut(&mut ctx.headers));
        ctx.trace = Some(Trace(Mutex::new(span)));
        Flow::Next
    }

    fn logs(&self) -> bool {
        true
    }

    fn log(&self, log: &Log) {
        let Some(Trace(span)) = &log.trace else {
            return;
        };
        let mut span = span.lock().unwrap_or_else(|e| e.into_inner());
        span.set_attribute(KeyValue::new("http.status_code", i64::from(log.status)));
        if let Some(node) = &log.node {
            span.set_attribute(KeyValue::new("apisix.upstream", node.clone()));
        }
        if log.status >= 500 {
            span.set_status(Status::error(format!("status {}", log.status)));
        }
        span.end();
    }
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut http::HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The span exporter of the current `plugin_metadata/opentelemetry`, per gateway process.
#[derive(Debug, Default)]
pub struct Tracers(Mutex<Option<(Value, SdkTracerProvider)>>);

impl Tracers {
    /// The tracer exporting as `metadata` says, starting its exporter when the metadata is new.
    fn tracer(&self, metadata: Value) -> SdkTracer {
        let mut current = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, provider)) = current.as_ref()
            && *seen == metadata
        {
            return provider.tracer("axle-gateway");
        }
        // Checked when written; a failing exporter still traces (and drops the spans).
        let parsed = parse_metadata(&metadata).unwrap_or_default();
        let provider = start(&parsed);
        let tracer = provider.tracer("axle-gateway");
        if let Some((_, old)) = current.replace((metadata, provider)) {
            // Flushing blocks: not on a data-plane worker.
            std::thread::spawn(move || {
                let _ = old.shutdown();
            });
        }
        tracer
    }
}

/// A tracer provider exporting to `m`'s collector. The exporter's blocking HTTP client is
/// built on a thread of its own, as it must not be made or dropped on an async worker.
fn start(m: &Metadata) -> SdkTracerProvider {
    let endpoint = format!("http://{}/v1/traces", m.collector.address);
    // Checked when the metadata was written: within (0, MAX_SECONDS].
    let timeout = Duration::try_from_secs_f64(m.collector.request_timeout).unwrap_or_default();
    let headers: std::collections::HashMap<_, _> =
        m.collector.request_headers.clone().into_iter().collect();
    let batching = &m.batch_span_processor;
    let config = BatchConfigBuilder::default()
        .with_max_queue_size(batching.max_queue_size)
        .with_max_export_batch_size(batching.max_export_batch_size)
        .with_scheduled_delay(
            Duration::try_from_secs_f64(batching.batch_timeout).unwrap_or_default(),
        )
        .build();
    let mut resource = opentelemetry_sdk::Resource::builder().with_service_name("APISIX");
    for (key, value) in &m.resource {
        let value = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        resource = resource.with_attribute(KeyValue::new(key.clone(), value));
    }
    let resource = resource.build();
    let built = std::thread::spawn(move || {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .with_timeout(timeout)
            .with_headers(headers)
            .build();
        let mut provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_id_generator(RequestIds::default());
        match exporter {
            Ok(exporter) => {
                let processor = BatchSpanProcessor::builder(exporter)
                    .with_batch_config(config)
                    .build();
                provider = provider.with_span_processor(processor);
            }
            Err(e) => tracing::error!(error = %e, "opentelemetry: the exporter could not start"),
        }
        provider.build()
    })
    .join();
    built.unwrap_or_else(|_| SdkTracerProvider::builder().build())
}
