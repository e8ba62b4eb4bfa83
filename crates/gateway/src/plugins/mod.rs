//! The plugin pipeline: APISIX's plugins, built once per snapshot from their configuration.
//!
//! A request runs the phases in APISIX's order: `rewrite` → `access` → (upstream) →
//! `header_filter`/`body_filter` → `log`; within a phase, plugins run from the highest
//! priority down. Authentication plugins run in `rewrite` and name the consumer; the consumer's
//! own plugins (over its group's) then join the route's, replacing those of the same name, so
//! precedence is consumer > consumer group > route > plugin config > service. Configuration is
//! checked when written ([`check_all`], so the Admin API refuses bad plugin configs with a 400)
//! and built into trait objects when the snapshot is compiled, so nothing is parsed per request.

mod api_breaker;
mod basic_auth;
mod consumer_restriction;
mod cors;
mod fault_injection;
mod ip_restriction;
mod jwks;
mod jwt_auth;
mod key_auth;
mod limit;
mod openid_connect;
mod opentelemetry;
mod prometheus;
mod proxy_mirror;
mod proxy_rewrite;
mod request_id;
mod response_rewrite;
mod traffic_split;

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::Value;

use crate::client::fields::Fields;
use crate::resource::Invalid;
pub use crate::resource::SchemaType;
use crate::runtime::Snapshot;
use crate::runtime::consumer::{Consumer, Credential};
use crate::runtime::upstream::Upstream;
use crate::vars;
pub use crate::vars::Template;

/// Plugin state that outlives configuration snapshots, one per gateway process.
#[derive(Debug, Default)]
pub struct Shared {
    /// `limit-count`'s local counters.
    pub counters: limit::count::Counters,
    /// `limit-req`'s leaky buckets.
    pub buckets: limit::req::Buckets,
    /// `limit-conn`'s requests in flight.
    pub connections: limit::conn::Connections,
    /// `api-breaker`'s circuit breakers.
    pub breakers: api_breaker::Breakers,
    /// `opentelemetry`'s span exporter.
    pub tracers: opentelemetry::Tracers,
    /// Fetched JWKS key sets (`jwt-auth`, `openid-connect`).
    pub key_sets: jwks::KeySets,
    /// `openid-connect`'s discovery documents and verified tokens.
    pub oidc: Arc<openid_connect::State>,
    /// The gateway's Prometheus metrics, `prometheus`'s among them.
    pub metrics: Metrics,
}

pub use opentelemetry::Trace;
pub use prometheus::Metrics;
pub use proxy_mirror::Mirror;

/// What the log phase knows of a finished request.
#[derive(Debug)]
pub struct Log {
    pub route: Arc<str>,
    pub route_name: Option<Arc<str>>,
    pub service: Option<Arc<str>>,
    pub consumer: Option<Arc<Consumer>>,
    /// The request's host (without port) and path, as the client sent them.
    pub host: String,
    pub uri: String,
    /// The route's `uris` and `hosts` entries the request matched.
    pub matched_uri: Arc<str>,
    pub matched_host: Arc<str>,
    /// The upstream node that answered, its status, and how long it took to answer.
    pub node: Option<Arc<str>>,
    pub upstream_status: Option<u16>,
    pub upstream_time: Option<std::time::Duration>,
    pub status: u16,
    /// From the request's arrival to the last byte of the response.
    pub request_time: std::time::Duration,
    /// The request's size (request line, headers, body as declared) and the response's.
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// The request's span, when opentelemetry traces it.
    pub trace: Option<Trace>,
}

/// One request's state as it moves through the phases.
#[derive(Debug)]
pub struct Ctx {
    pub method: Method,
    /// The path sent upstream; `proxy-rewrite` may change it.
    pub path: String,
    pub query: Option<String>,
    /// The request headers sent upstream.
    pub headers: HeaderMap,
    /// The client's `Host`, without a port.
    pub host: String,
    /// The `Host` to send upstream when a plugin chose one.
    pub upstream_host: Option<String>,
    pub remote_addr: IpAddr,
    pub server_port: u16,
    pub scheme: &'static str,
    /// The path the client asked for (before any rewrite), normalized.
    pub original_path: String,
    /// The path as the client wrote it, when that is not its normal form (for proxy-rewrite's
    /// `use_real_request_uri_unsafe`).
    pub raw_path: Option<String>,
    pub route_id: Arc<str>,
    pub service_id: Option<Arc<str>>,
    /// The configuration this request runs on (its consumers, its upstreams).
    pub snapshot: Arc<Snapshot>,
    /// The upstream a plugin chose instead of the route's (traffic-split).
    pub upstream: Option<Arc<Upstream>>,
    /// Who an authentication plugin found the client to be, and by which credential.
    pub consumer: Option<(Arc<Consumer>, Option<Arc<str>>)>,
    /// State the plugins keep across requests and snapshots.
    pub shared: Arc<Shared>,
    /// Headers request plugins set on the response, whoever answers (rate-limit quotas).
    pub response_headers: Vec<(http::HeaderName, HeaderValue)>,
    /// What the request holds until its response has been sent or the client has gone away
    /// (limit-conn's place); dropping it gives it back.
    pub held: Vec<Box<dyn Any + Send + Sync>>,
    /// Where proxy-mirror sends a copy of this request.
    pub mirror: Option<Mirror>,
    /// The request's span, when opentelemetry traces it.
    pub trace: Option<Trace>,
    /// The payload of the token jwt-auth verified, kept for the plugins after it when the
    /// route asks (`store_in_ctx`; APISIX's `ctx.jwt_auth_payload`), as `$jwt_claim_<name>`.
    pub jwt_payload: Option<Box<serde_json::Map<String, Value>>>,
    /// The route's `:name` segments in `original_path` (`$uri_param_<name>`).
    pub uri_params: Vec<(Arc<str>, std::ops::Range<usize>)>,
    /// The upstream node that answered (host, port), for the response phase.
    pub answered_by: Option<(Arc<str>, u16)>,
    /// The body's fields (`$post_arg_*`), read when the route or its plugins ask for them.
    pub post: Option<Box<vars::PostArgs>>,
}

impl Ctx {
    pub fn vars(&self) -> vars::Request<'_> {
        vars::Request {
            method: self.method.as_str(),
            path: &self.original_path,
            query: self.query.as_deref(),
            host: &self.host,
            headers: &self.headers,
            remote_addr: self.remote_addr,
            scheme: self.scheme,
            server_port: self.server_port,
            consumer_name: self.consumer.as_ref().map(|(c, _)| c.username.as_str()),
            jwt_payload: self.jwt_payload.as_deref(),
            uri_params: &self.uri_params,
            post: self.post.as_deref(),
            response: None,
        }
    }

    /// The variables of the response phase: the request's, with `head`'s status and the node
    /// that answered.
    pub fn response_vars(&self, head: &ResponseHead) -> vars::Request<'_> {
        let node = self
            .answered_by
            .as_ref()
            .map(|(host, port)| (&**host, *port));
        vars::Request {
            response: Some(vars::Response {
                status: head.status.as_u16(),
                node,
            }),
            ..self.vars()
        }
    }

    /// Names the consumer `credential` belongs to as the client.
    pub fn authenticate(&mut self, credential: &Credential) {
        self.consumer = Some((credential.consumer.clone(), credential.id.clone()));
    }

    /// Drops the query argument `name` (credentials the upstream must not see).
    pub fn remove_arg(&mut self, name: &str) {
        let kept: Vec<&str> = self
            .query
            .as_deref()
            .unwrap_or_default()
            .split('&')
            .filter(|pair| {
                let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
                !pair.is_empty() && key != name
            })
            .collect();
        self.query = (!kept.is_empty()).then(|| kept.join("&"));
    }

    /// The consumer `name` as the client, for `anonymous_consumer`; a 401 when it does not
    /// exist.
    pub fn authenticate_anonymous(&mut self, name: &str) -> Flow<'static> {
        match self.snapshot.consumers.get(name) {
            Some(consumer) => {
                self.consumer = Some((consumer, None));
                Flow::Next
            }
            None => {
                if let Some(suppressed) = crate::warnings::NO_ANONYMOUS_CONSUMER.admit() {
                    tracing::warn!(
                        consumer = name,
                        suppressed,
                        "anonymous_consumer does not exist"
                    );
                }
                Flow::Reply(Reply::message(
                    StatusCode::UNAUTHORIZED,
                    "Invalid user authorization",
                ))
            }
        }
    }
}

/// A response a plugin makes instead of proxying (status, headers, body).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// APISIX plugins' error body: `{"message": "..."}`.
    pub fn message(status: StatusCode, message: &str) -> Reply {
        Reply::json(status, &serde_json::json!({ "message": message }))
    }

    /// This reply with an authentication plugin's `WWW-Authenticate` challenge (RFC 9110
    /// §11.6.1), as a 401 carries.
    pub fn challenging(mut self, challenge: &HeaderValue) -> Reply {
        self.headers
            .insert(http::header::WWW_AUTHENTICATE, challenge.clone());
        self
    }

    pub fn json(status: StatusCode, body: &Value) -> Reply {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Reply {
            status,
            headers,
            body: Bytes::from(body.to_string()),
        }
    }
}

/// What a plugin's request hook decides.
pub enum Flow<'a> {
    /// Go on with the next plugin.
    Next,
    /// Answer with this reply; later plugins and the upstream do not run.
    Reply(Reply),
    /// Wait for this (a delay, a shared counter, a key set), which may go on working on the
    /// request; then answer with its reply, or go on when it has none.
    Wait(Pin<Box<dyn Future<Output = Option<Reply>> + Send + 'a>>),
}

/// The upstream's response head, which response plugins may change; `body` replaces the
/// upstream's body when set, else `rewrite` rewrites it whole (read up to its `limit`).
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    /// Kept where they came from until a plugin reads them.
    pub fields: Fields,
    pub body: Option<Bytes>,
    pub rewrite: Option<BodyRewrite>,
}

/// A change to a whole response body (response-rewrite's `filters`): the body, read up to
/// `limit` bytes (the rest cut off), goes through `apply`.
pub struct BodyRewrite {
    pub limit: usize,
    pub apply: Box<dyn FnOnce(Bytes) -> Bytes + Send + Sync>,
}

impl std::fmt::Debug for BodyRewrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyRewrite")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl ResponseHead {
    /// The response's headers, all in one map.
    pub fn headers(&mut self) -> &mut HeaderMap {
        self.fields.merged()
    }
}

/// A plugin's hooks; each has a default that does nothing.
pub trait Plugin: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &'static str;
    fn priority(&self) -> i32;
    /// Changes the request before routing to the upstream, authenticates, or answers.
    fn rewrite<'a>(&'a self, _ctx: &'a mut Ctx) -> Flow<'a> {
        Flow::Next
    }
    /// Authorisation and traffic control: answers the request to stop it.
    fn access<'a>(&'a self, _ctx: &'a mut Ctx) -> Flow<'a> {
        Flow::Next
    }
    /// Changes the response head and, through `head.body`, the body.
    fn response(&self, _ctx: &Ctx, _head: &mut ResponseHead) {}
    /// Whether the plugin has a log phase (so requests without one skip the accounting).
    fn logs(&self) -> bool {
        false
    }
    /// Records the finished request (after the last byte of the response, or the client
    /// going away).
    fn log(&self, _log: &Log, _shared: &Shared) {}
    /// Whether the plugin's `vars` read the request body (`post_arg_*`), so it is read first.
    fn reads_body(&self) -> bool {
        false
    }
}

/// Builds a plugin from its configuration at its [`Site`].
type Factory = fn(&Value, &Site) -> Result<Arc<dyn Plugin>, String>;

/// Where a plugin is built: the resource it is configured on (its key, `/apisix/routes/1`,
/// `/apisix/consumers/jack`…, which scopes what it counts), and the snapshot's
/// `plugin_metadata` by plugin name (settings every instance shares, read once here rather than
/// per request).
#[derive(Debug, Clone, Copy)]
pub struct Site<'a> {
    pub owner: &'a str,
    pub metadata: &'a std::collections::HashMap<String, Value>,
}

impl Site<'_> {
    /// A site with no owner and no metadata, for checking a configuration.
    pub fn checking() -> Site<'static> {
        static NONE: std::sync::LazyLock<std::collections::HashMap<String, Value>> =
            std::sync::LazyLock::new(Default::default);
        Site {
            owner: "",
            metadata: &NONE,
        }
    }
}
type Check = fn(&Value) -> Result<(), String>;
/// What an authentication plugin compiles from a credential once per snapshot (jwt-auth's
/// keys), for its requests to use.
pub type Prepared = Option<Arc<dyn Any + Send + Sync>>;

/// A plugin this gateway knows: how to build it, and what else it takes part in.
struct Registered {
    name: &'static str,
    build: Factory,
    /// The JSON Schema of the plugin's configuration on a route, service or consumer.
    schema: fn() -> schemars::Schema,
    /// For authentication plugins, the consumer side of their configuration.
    authentication: Option<Authentication>,
    /// Checks the plugin's `plugin_metadata` (settings shared by every instance of it); none
    /// when it has no metadata.
    metadata: Option<Check>,
}

/// How an authentication plugin's configuration on a consumer or credential is checked and
/// compiled, and which of its fields identifies the client (key-auth's `key`, basic-auth's
/// `username`).
struct Authentication {
    prepare: fn(&Value) -> Result<Prepared, String>,
    /// The JSON Schema of the consumer side.
    schema: fn() -> schemars::Schema,
    identity: &'static str,
}

/// Every plugin this gateway knows, by APISIX name.
const REGISTRY: &[Registered] = &[
    Registered {
        name: "api-breaker",
        build: api_breaker::build,
        schema: schema_of::<api_breaker::Config>,
        authentication: None,
        metadata: None,
    },
    Registered {
        name: "openid-connect",
        build: openid_connect::build,
        schema: schema_of::<openid_connect::Config>,
        authentication: None,
        metadata: None,
    },
    Registered {
        name: "request-id",
        build: request_id::build,
        schema: schema_of::<request_id::Config>,
        authentication: None,
        metadata: None,
    },
    Registered {
        name: "fault-injection",
        build: fault_injection::build,
        schema: schema_of::<fault_injection::Config>,
        authentication: None,
        metadata: None,
    },
    Registered {
        name: "cors",
        build: cors::build,
        schema: schema_of::<cors::Config>,
        authentication: None,
        metadata: Some(cors::check_metadata),
    },
    Registered {
        name: "ip-restriction",
        build: ip_restriction::build,
        schema: schema_of::<ip_restriction::Config>,
        authentication: None,
        metadata: None,
    },
    Registered {
        name: "basic-auth",
        build: basic_auth::build,
        schema: schema_of::<basic_auth::Config>,
        authentication: Some(Authentication {
            prepare: basic_auth::check_consumer,
            schema: schema_of::<basic_auth::OnConsumer>,
            identity: "username",
        }),
        metadata: None,
    },
    Registered {
        name: "jwt-auth",
        build: jwt_auth::build,
        schema: schema_of::<jwt_auth::Config>,
        authentication: Some(Authentication {
            prepare: jwt_auth::prepare,
            schema: schema_of::<jwt_auth::OnConsumer>,
            identity: "key",
        }),
        metadata: None,
    },
    Registered {
        name: "key-auth",
        build: key_auth::build,
        schema: schema_of::<key_auth::Config>,
        authentication: Some(Authentication {
            prepare: key_auth::check_consumer,
            schema: schema_of::<key_auth::OnConsumer>,
            identity: "key",
        }),
        metadata: None,
    },
    Registered {
        name: "consumer-restriction",
        build: consumer_restriction::build,
        schema: schema_of::<consumer_restriction::Config>,
        authentication: None,
        metadata: None,
    },
    Registered {
        name: "limit-conn",
        build: limit::conn::build,
        schema: schema_of::<limit::conn::Config>,
        authentication: None,
        metadata: None,
    },
    Registered {
        name: "limit-count",
        build: limit::count::build,
        schema: schema_of::<limit::count::Config>,
        authentication: None,
        metadata: Some(limit::count::check_metadata),
    },
    Registered {
        name: "limit-req",
        build: limit::req::build,
        schema: schema_of::<limit::req::Config>,
        authentication: None,
        metadata: None,
    },
    Registered {
        name: "opentelemetry",
        build: opentelemetry::build,
        schema: schema_of::<opentelemetry::Config>,
        authentication: None,
        metadata: Some(opentelemetry::check_metadata),
    },
    Registered {
        name: "prometheus",
        build: prometheus::build,
        schema: schema_of::<prometheus::Config>,
        authentication: None,
        metadata: None,
    },
    Registered {
        name: "traffic-split",
        build: traffic_split::build,
        schema: schema_of::<traffic_split::Config>,
        authentication: None,
        metadata: None,
    },
    Registered {
        name: "proxy-mirror",
        build: proxy_mirror::build,
        schema: schema_of::<proxy_mirror::Config>,
        authentication: None,
        metadata: None,
    },
    Registered {
        name: "proxy-rewrite",
        build: proxy_rewrite::build,
        schema: schema_of::<proxy_rewrite::Config>,
        authentication: None,
        metadata: None,
    },
    Registered {
        name: "response-rewrite",
        build: response_rewrite::build,
        schema: schema_of::<response_rewrite::Config>,
        authentication: None,
        metadata: None,
    },
];

/// Every plugin this gateway knows, by name.
pub fn names() -> Vec<&'static str> {
    let mut names: Vec<_> = REGISTRY.iter().map(|r| r.name).collect();
    names.sort_unstable();
    names
}

/// The JSON Schema of the plugin `name`'s configuration; none for an unknown plugin, or for
/// the consumer side of a plugin that has none.
pub fn schema(name: &str, side: SchemaType) -> Option<Value> {
    let plugin = registered(name).ok()?;
    let schema = match side {
        SchemaType::Route => (plugin.schema)(),
        SchemaType::Consumer => (plugin.authentication.as_ref()?.schema)(),
    };
    serde_json::to_value(schema).ok()
}

/// `T`'s schema, whole: nested types inline, as APISIX's schemas are.
fn schema_of<T: schemars::JsonSchema>() -> schemars::Schema {
    schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator()
        .into_root_schema_for::<T>()
}

fn registered(name: &str) -> Result<&'static Registered, Invalid> {
    REGISTRY
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| Invalid(format!("unknown plugin [{name}]")))
}

/// The field of `name`'s consumer-side configuration that identifies a client; none when
/// `name` is not an authentication plugin.
/// The plugins as resources and the Admin API know them (see
/// [`crate::resource::PluginCatalog`]).
#[derive(Debug, Clone, Copy)]
pub struct Catalog;

impl crate::resource::PluginCatalog for Catalog {
    fn names(&self) -> Vec<&'static str> {
        names()
    }

    fn schema(&self, name: &str, side: SchemaType) -> Option<Value> {
        schema(name, side)
    }

    fn check_all(&self, plugins: Option<&BTreeMap<String, Value>>) -> Result<(), Invalid> {
        check_all(plugins)
    }

    fn check_consumer(&self, plugins: Option<&BTreeMap<String, Value>>) -> Result<(), Invalid> {
        check_consumer(plugins)
    }

    fn check_credential(&self, plugins: &BTreeMap<String, Value>) -> Result<(), Invalid> {
        check_credential(plugins)
    }

    fn check_metadata(&self, name: &str, metadata: &Value) -> Result<(), Invalid> {
        check_metadata(name, metadata)
    }

    fn identity_field(&self, name: &str) -> Option<&'static str> {
        identity_field(name)
    }
}

pub fn identity_field(name: &str) -> Option<&'static str> {
    registered(name)
        .ok()?
        .authentication
        .as_ref()
        .map(|a| a.identity)
}

fn must_be_object(name: &str, config: &Value) -> Result<(), Invalid> {
    if config.is_object() {
        Ok(())
    } else {
        Err(Invalid(format!(
            "failed to check the configuration of plugin {name}: must be an object"
        )))
    }
}

/// Checks the plugin `name`'s configuration by building it.
pub fn build(name: &str, config: &Value) -> Result<Arc<dyn Plugin>, Invalid> {
    build_at(name, config, &Site::checking())
}

/// Builds the plugin `name` from its configuration at `site`.
pub fn build_at(name: &str, config: &Value, site: &Site) -> Result<Arc<dyn Plugin>, Invalid> {
    let plugin = registered(name)?;
    must_be_object(name, config)?;
    // `_meta` (disable, priority, filter) belongs to the pipeline, not to the plugin.
    let config = match config.as_object() {
        Some(fields) if fields.contains_key("_meta") => {
            let mut fields = fields.clone();
            fields.remove("_meta");
            std::borrow::Cow::Owned(Value::Object(fields))
        }
        _ => std::borrow::Cow::Borrowed(config),
    };
    let config = with_secrets(&config);
    (plugin.build)(&config, site).map_err(|e| {
        Invalid(format!(
            "failed to check the configuration of plugin {name} err: {e}"
        ))
    })
}

/// Checks a `plugins` object as written through the Admin API.
pub fn check_all(plugins: Option<&BTreeMap<String, Value>>) -> Result<(), Invalid> {
    for (name, config) in plugins.into_iter().flatten() {
        build(name, config)?;
    }
    Ok(())
}

/// Checks a consumer's plugins: authentication plugins by their consumer side, the rest as
/// on a route.
pub fn check_consumer(plugins: Option<&BTreeMap<String, Value>>) -> Result<(), Invalid> {
    for (name, config) in plugins.into_iter().flatten() {
        match &registered(name)?.authentication {
            Some(_) => {
                prepare(name, config)?;
            }
            None => {
                build(name, config)?;
            }
        }
    }
    Ok(())
}

/// Checks and compiles the authentication plugin `name`'s configuration on a consumer or
/// credential.
pub fn prepare(name: &str, config: &Value) -> Result<Prepared, Invalid> {
    let Some(auth) = &registered(name)?.authentication else {
        return Ok(None);
    };
    must_be_object(name, config)?;
    (auth.prepare)(&with_secrets(config)).map_err(|e| {
        Invalid(format!(
            "failed to check the configuration of plugin {name} err: {e}"
        ))
    })
}

/// `config` with its secret references resolved, as APISIX resolves them in every plugin's
/// configuration: a text `$env://NAME` is the environment variable `NAME`, and
/// `$env://NAME/field` the field of the JSON object `NAME` holds. A reference that does not
/// resolve is left as it is (and so fails as the key or secret it stands for).
pub fn with_secrets(config: &Value) -> std::borrow::Cow<'_, Value> {
    fn refers(value: &Value) -> bool {
        match value {
            Value::String(text) => text
                .get(..7)
                .is_some_and(|p| p.eq_ignore_ascii_case("$env://")),
            Value::Array(items) => items.iter().any(refers),
            Value::Object(fields) => fields.values().any(refers),
            _ => false,
        }
    }
    fn resolve(value: &mut Value) {
        match value {
            Value::String(text) => {
                if let Some(found) = env_secret(text) {
                    *text = found;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(resolve),
            Value::Object(fields) => fields.values_mut().for_each(resolve),
            _ => {}
        }
    }
    if !refers(config) {
        return std::borrow::Cow::Borrowed(config);
    }
    let mut resolved = config.clone();
    resolve(&mut resolved);
    std::borrow::Cow::Owned(resolved)
}

/// The value `$env://NAME[/field]` refers to.
fn env_secret(reference: &str) -> Option<String> {
    let path = reference
        .get(7..)
        .filter(|_| reference[..7].eq_ignore_ascii_case("$env://"))?;
    let (name, field) = match path.split_once('/') {
        Some((name, field)) => (name, Some(field)),
        None => (path, None),
    };
    let value = std::env::var(name).ok()?;
    match field {
        None => Some(value),
        Some(field) => match serde_json::from_str::<Value>(&value).ok()?.get(field)? {
            Value::String(text) => Some(text.clone()),
            other => Some(other.to_string()),
        },
    }
}

/// Checks a credential's plugins: authentication plugins only.
pub fn check_credential(plugins: &BTreeMap<String, Value>) -> Result<(), Invalid> {
    for name in plugins.keys() {
        if registered(name)?.authentication.is_none() {
            return Err(Invalid(format!(
                "plugins: {name} is not an authentication plugin; only those go on a credential"
            )));
        }
    }
    check_consumer(Some(plugins))
}

/// Checks `plugin_metadata` for the plugin `name`.
pub fn check_metadata(name: &str, metadata: &Value) -> Result<(), Invalid> {
    let plugin = registered(name).map_err(|_| Invalid(format!("invalid plugin name [{name}]")))?;
    let Some(check) = plugin.metadata else {
        return Err(Invalid(format!("no metadata schema for plugin {name}")));
    };
    check(metadata).map_err(|e| Invalid(format!("plugin metadata of {name}: {e}")))
}

/// A built chain, highest priority first. Plugins with `"_meta": {"disable": true}` are left out.
#[derive(Debug, Clone, Default)]
pub struct Chain(Vec<Arc<dyn Plugin>>);

impl Chain {
    /// Builds the effective chain from configuration layers — each the key of the resource
    /// holding them and its plugins — lowest precedence first (service, plugin config, route):
    /// a plugin named again replaces the earlier config. Authentication plugins are left out
    /// when `skip_authentication` (a consumer's layers, where they hold credentials).
    pub fn build(
        layers: &[(&str, &BTreeMap<String, Value>)],
        skip_authentication: bool,
        metadata: &std::collections::HashMap<String, Value>,
    ) -> Result<Chain, Invalid> {
        let mut merged: BTreeMap<&str, (&str, &Value)> = BTreeMap::new();
        for (owner, layer) in layers {
            for (name, config) in layer.iter() {
                merged.insert(name, (owner, config));
            }
        }
        let mut plugins = Vec::new();
        for (name, (owner, config)) in merged {
            let disabled = config
                .pointer("/_meta/disable")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if disabled || (skip_authentication && identity_field(name).is_some()) {
                continue;
            }
            plugins.push(build_at(name, config, &Site { owner, metadata })?);
        }
        plugins.sort_by_key(|p| std::cmp::Reverse(p.priority()));
        Ok(Chain(plugins))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// This chain with `over`'s plugins in place of the ones of the same name.
    pub fn overlaid(&self, over: &Chain) -> Chain {
        let mut plugins: Vec<Arc<dyn Plugin>> = self
            .0
            .iter()
            .filter(|p| over.0.iter().all(|o| o.name() != p.name()))
            .cloned()
            .collect();
        plugins.extend(over.0.iter().cloned());
        plugins.sort_by_key(|p| std::cmp::Reverse(p.priority()));
        Chain(plugins)
    }

    pub async fn rewrite(&self, ctx: &mut Ctx) -> Option<Reply> {
        run(&self.0, ctx, |p, ctx| p.rewrite(ctx)).await
    }

    pub async fn access(&self, ctx: &mut Ctx) -> Option<Reply> {
        run(&self.0, ctx, |p, ctx| p.access(ctx)).await
    }

    pub fn response(&self, ctx: &Ctx, head: &mut ResponseHead) {
        for plugin in &self.0 {
            plugin.response(ctx, head);
        }
    }

    /// Whether a plugin reads the request body's fields.
    pub fn reads_body(&self) -> bool {
        self.0.iter().any(|p| p.reads_body())
    }

    /// The plugins with a log phase.
    pub fn loggers(&self) -> impl Iterator<Item = &Arc<dyn Plugin>> {
        self.0.iter().filter(|p| p.logs())
    }
}

/// Runs one request phase over `plugins`, up to the first that answers.
async fn run(
    plugins: &[Arc<dyn Plugin>],
    ctx: &mut Ctx,
    hook: for<'a> fn(&'a dyn Plugin, &'a mut Ctx) -> Flow<'a>,
) -> Option<Reply> {
    for plugin in plugins {
        let reply = match hook(plugin.as_ref(), ctx) {
            Flow::Next => None,
            Flow::Reply(reply) => Some(reply),
            Flow::Wait(wait) => wait.await,
        };
        if reply.is_some() {
            return reply;
        }
    }
    None
}

/// Refuses text bound for a request or response head that a control character would break: a
/// CR or LF ends the line early (a header injected, a request smuggled), the others are not
/// allowed there. A tab is.
pub(crate) fn head_text(field: &str, text: &str) -> Result<(), String> {
    match text
        .bytes()
        .find(|&b| (b < b' ' && b != b'\t') || b == 0x7f)
    {
        Some(b) => Err(format!(
            "{field}: control character {b:#04x} is not allowed"
        )),
        None => Ok(()),
    }
}

/// `headers` in proxy-rewrite and response-rewrite: `{add, set, remove}`, or the older form, a
/// plain object of headers to set. A value may be a list: the header once for each.
#[derive(Debug, Clone, Default)]
struct HeaderEdits {
    add: Vec<(http::HeaderName, Vec<Template>)>,
    set: Vec<(http::HeaderName, Vec<Template>)>,
    remove: Vec<http::HeaderName>,
}

impl HeaderEdits {
    fn parse(value: &Value) -> Result<HeaderEdits, String> {
        let Value::Object(map) = value else {
            return Err("headers: must be an object".into());
        };
        let structured = map
            .keys()
            .all(|k| matches!(k.as_str(), "add" | "set" | "remove"));
        let mut edits = HeaderEdits::default();
        type Pairs = Vec<(http::HeaderName, Vec<Template>)>;
        let pairs = |v: &Value, what: &str| -> Result<Pairs, String> {
            let Value::Object(m) = v else {
                return Err(format!("headers.{what}: must be an object"));
            };
            let template = |k: &str, v: &Value| {
                let text = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => return Err(format!("headers.{k}: must be a string or a list of them")),
                };
                head_text(&format!("headers.{what}.{k}"), &text)?;
                Template::parse(&text)
            };
            m.iter()
                .map(|(k, v)| {
                    let name = http::HeaderName::from_bytes(k.as_bytes())
                        .map_err(|_| format!("headers: {k:?} is not a header name"))?;
                    let templates = match v {
                        Value::Array(values) => values
                            .iter()
                            .map(|v| template(k, v))
                            .collect::<Result<_, _>>()?,
                        one => vec![template(k, one)?],
                    };
                    Ok((name, templates))
                })
                .collect()
        };
        if structured {
            if let Some(v) = map.get("add") {
                edits.add = pairs(v, "add")?;
            }
            if let Some(v) = map.get("set") {
                edits.set = pairs(v, "set")?;
            }
            if let Some(v) = map.get("remove") {
                let Value::Array(names) = v else {
                    return Err("headers.remove: must be an array".into());
                };
                for n in names {
                    let name = n
                        .as_str()
                        .and_then(|s| http::HeaderName::from_bytes(s.as_bytes()).ok())
                        .ok_or_else(|| format!("headers.remove: {n} is not a header name"))?;
                    edits.remove.push(name);
                }
            }
        } else {
            edits.set = pairs(value, "set")?;
        }
        Ok(edits)
    }

    fn apply(&self, headers: &mut HeaderMap, vars: &vars::Request<'_>) {
        let values = |templates: &'_ [Template]| {
            templates
                .iter()
                .map(|t| t.render(vars, &[]))
                .filter(|v| !v.is_empty())
                .filter_map(|v| http::HeaderValue::from_str(&v).ok())
                .collect::<Vec<_>>()
        };
        for (name, templates) in &self.add {
            for value in values(templates) {
                headers.append(name, value);
            }
        }
        // An empty value removes the header.
        for (name, templates) in &self.set {
            headers.remove(name);
            for value in values(templates) {
                headers.append(name, value);
            }
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_and_bad_plugins_are_named() {
        let e = build("nope", &json!({})).unwrap_err();
        assert_eq!(e.0, "unknown plugin [nope]");
        let e = build("proxy-rewrite", &json!({"uri": 7})).unwrap_err();
        assert!(
            e.0.contains("proxy-rewrite") && e.0.contains("uri"),
            "{}",
            e.0
        );
    }

    #[test]
    fn chains_run_by_priority_and_later_layers_win() {
        let service =
            BTreeMap::from([("proxy-rewrite".to_string(), json!({"uri": "/from-service"}))]);
        let route = BTreeMap::from([
            ("proxy-rewrite".to_string(), json!({"uri": "/from-route"})),
            ("response-rewrite".to_string(), json!({"body": "x"})),
        ]);
        let none = Default::default();
        let chain = Chain::build(&[("s", &service), ("r", &route)], false, &none).unwrap();
        let names: Vec<_> = chain.0.iter().map(|p| p.name()).collect();
        assert_eq!(names, ["proxy-rewrite", "response-rewrite"]);
        let disabled = BTreeMap::from([(
            "proxy-rewrite".to_string(),
            json!({"uri": "/x", "_meta": {"disable": true}}),
        )]);
        assert!(
            Chain::build(&[("r", &disabled)], false, &none)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn templates() {
        let headers = HeaderMap::new();
        let request = vars::Request {
            method: "GET",
            path: "/a",
            query: Some("x=1"),
            host: "h",
            headers: &headers,
            remote_addr: "127.0.0.1".parse().unwrap(),
            scheme: "http",
            server_port: 1,
            consumer_name: None,
            jwt_payload: None,
            uri_params: &[],
            post: None,
            response: None,
        };
        let t = Template::parse("/v2$uri?x=$arg_x&$1-${host}$").unwrap();
        assert!(Template::parse("$nope").is_err());
        assert_eq!(t.render(&request, &[None, Some("c")]), "/v2/a?x=1&c-h$");
    }
}
