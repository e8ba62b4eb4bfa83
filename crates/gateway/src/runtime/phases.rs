//! The phases a request runs through, as the runtime compiles them and the proxy runs them:
//! the [`Plugin`] hooks, the request's [`Ctx`], and a route's built [`Chain`].
//!
//! A request runs the phases in APISIX's order: `rewrite` → `access` → (upstream) →
//! `header_filter`/`body_filter` (here one [`Plugin::response`] hook) → `log`; within a phase,
//! plugins run from the highest priority down. The plugins themselves live a room up
//! (the `plugins` module), which hands the runtime a [`PluginFactory`] to build them with: the
//! runtime calls it when compiling a snapshot and never names a plugin.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::Value;

use crate::client::fields::Fields;
use crate::resource::Invalid;
use crate::runtime::Snapshot;
use crate::runtime::consumer::{Consumer, Credential};
use crate::runtime::upstream::Upstream;
use crate::vars;

/// Builds plugins from their configuration. The plugins room implements it; the runtime calls
/// it while compiling a snapshot, so the plugins' states and types stay theirs.
pub trait PluginFactory: Send + Sync + std::fmt::Debug {
    /// Builds the plugin `name` from its configuration, configured on the resource `owner`
    /// (`/apisix/routes/1`…, which scopes what it counts), with the snapshot's
    /// `plugin_metadata` by plugin name.
    fn build(
        &self,
        name: &str,
        config: &Value,
        owner: &str,
        metadata: &HashMap<String, Value>,
    ) -> Result<Arc<dyn Plugin>, Invalid>;
    /// Checks and compiles the authentication plugin `name`'s configuration on a consumer or
    /// credential.
    fn prepare(&self, name: &str, config: &Value) -> Result<Prepared, Invalid>;
    /// The field of `name`'s consumer-side configuration that identifies a client; none when
    /// `name` is not an authentication plugin.
    fn identity_field(&self, name: &str) -> Option<&'static str>;
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
    fn log(&self, _log: &Log) {}
    /// Whether the plugin's `vars` read the request body (`post_arg_*`), so it is read first.
    fn reads_body(&self) -> bool {
        false
    }
}

/// What an authentication plugin compiles from a credential once per snapshot (jwt-auth's
/// keys), for its requests to use.
pub type Prepared = Option<Arc<dyn Any + Send + Sync>>;

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

/// The request's span, when opentelemetry traces it; ended in the log phase.
#[derive(Debug)]
pub struct Trace(pub Mutex<opentelemetry_sdk::trace::Span>);

/// Where proxy-mirror sends a copy of the request: the mirror, and the path (with the query)
/// the copy is sent to. The proxy sends it, with the request's body, beside the request.
#[derive(Debug)]
pub struct Mirror {
    pub upstream: Arc<Upstream>,
    pub path_and_query: String,
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
        factory: &dyn PluginFactory,
        layers: &[(&str, &BTreeMap<String, Value>)],
        skip_authentication: bool,
        metadata: &HashMap<String, Value>,
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
            if disabled || (skip_authentication && factory.identity_field(name).is_some()) {
                continue;
            }
            plugins.push(factory.build(name, config, owner, metadata)?);
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chains_run_by_priority_and_later_layers_win() {
        let service =
            BTreeMap::from([("proxy-rewrite".to_string(), json!({"uri": "/from-service"}))]);
        let route = BTreeMap::from([
            ("proxy-rewrite".to_string(), json!({"uri": "/from-route"})),
            ("response-rewrite".to_string(), json!({"body": "x"})),
        ]);
        let none = Default::default();
        let plugins = crate::plugins::Factory::default();
        let chain =
            Chain::build(&plugins, &[("s", &service), ("r", &route)], false, &none).unwrap();
        let names: Vec<_> = chain.0.iter().map(|p| p.name()).collect();
        assert_eq!(names, ["proxy-rewrite", "response-rewrite"]);
        let disabled = BTreeMap::from([(
            "proxy-rewrite".to_string(),
            json!({"uri": "/x", "_meta": {"disable": true}}),
        )]);
        assert!(
            Chain::build(&plugins, &[("r", &disabled)], false, &none)
                .unwrap()
                .is_empty()
        );
    }
}
