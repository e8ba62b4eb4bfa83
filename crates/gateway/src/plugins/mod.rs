//! APISIX's plugins, built once per snapshot from their configuration.
//!
//! Each plugin implements the phase hooks of [`crate::runtime::phases`]. Authentication
//! plugins run in `rewrite` and name the consumer; the consumer's own plugins (over its
//! group's) then join the route's, replacing those of the same name, so precedence is
//! consumer > consumer group > route > plugin config > service. Configuration is checked when
//! written ([`Catalog`], so the Admin API refuses bad plugin configs with a 400) and built into
//! trait objects when the snapshot is compiled ([`Factory`], which the runtime calls), so
//! nothing is parsed per request. State that outlives snapshots (counters, key sets, metrics)
//! is the [`Shared`] a plugin takes when it is built.

mod api_breaker;
mod basic_auth;
mod consumer_restriction;
mod cors;
mod fault_injection;
mod http_logger;
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
mod report;
mod request_id;
mod response_rewrite;
mod traffic_split;
mod usage_counter;
mod workflow;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};

use http::HeaderMap;
use serde_json::Value;

use crate::resource::{self, Invalid, SchemaType};
use crate::runtime::phases::{Plugin, PluginFactory, Prepared};
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
    /// `http-logger`'s batches waiting to be sent.
    pub loggers: http_logger::Batches,
    /// `usage-counter`'s counts waiting to be posted.
    pub usage: usage_counter::Counters,
    /// `opentelemetry`'s span exporter.
    pub tracers: opentelemetry::Tracers,
    /// Fetched JWKS key sets (`jwt-auth`, `openid-connect`).
    pub key_sets: jwks::KeySets,
    /// `openid-connect`'s discovery documents and verified tokens.
    pub oidc: Arc<openid_connect::State>,
    /// The gateway's Prometheus metrics, `prometheus`'s among them.
    pub metrics: Metrics,
}

pub use prometheus::Metrics;

/// Builds a plugin from its configuration at its [`Site`].
type Build = fn(&Value, &Site) -> Result<Arc<dyn Plugin>, String>;

/// Where a plugin is built: the resource it is configured on (its key, `/apisix/routes/1`,
/// `/apisix/consumers/jack`…, which scopes what it counts), the snapshot's `plugin_metadata`
/// by plugin name (settings every instance shares, read once here rather than per request),
/// and the process's [`Shared`] state, which a plugin keeps what it needs of.
#[derive(Debug, Clone, Copy)]
pub struct Site<'a> {
    pub owner: &'a str,
    pub metadata: &'a HashMap<String, Value>,
    pub shared: &'a Arc<Shared>,
}

impl Site<'_> {
    /// A site with no owner and no metadata, for checking a configuration: what it builds
    /// never serves, so its shared state is one set aside for checks.
    pub fn checking() -> Site<'static> {
        static NONE: LazyLock<HashMap<String, Value>> = LazyLock::new(Default::default);
        static CHECKS: LazyLock<Arc<Shared>> = LazyLock::new(Default::default);
        Site {
            owner: "",
            metadata: &NONE,
            shared: &CHECKS,
        }
    }
}

type Check = fn(&Value) -> Result<(), String>;
/// A plugin this gateway knows: how to build it, and what else it takes part in.
struct Registered {
    name: &'static str,
    build: Build,
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
        name: "http-logger",
        build: http_logger::build,
        schema: schema_of::<http_logger::Config>,
        authentication: None,
        metadata: None,
    },
    Registered {
        name: "usage-counter",
        build: usage_counter::build,
        schema: schema_of::<usage_counter::Config>,
        authentication: None,
        metadata: None,
    },
    Registered {
        name: "workflow",
        build: workflow::build,
        schema: schema_of::<workflow::Config>,
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

/// The plugins as the runtime builds them (see [`PluginFactory`]), with the process's
/// [`Shared`] state.
#[derive(Debug, Default, Clone)]
pub struct Factory {
    pub shared: Arc<Shared>,
}

impl PluginFactory for Factory {
    fn build(
        &self,
        name: &str,
        config: &Value,
        owner: &str,
        metadata: &HashMap<String, Value>,
    ) -> Result<Arc<dyn Plugin>, Invalid> {
        let site = Site {
            owner,
            metadata,
            shared: &self.shared,
        };
        build_at(name, config, &site)
    }

    fn prepare(&self, name: &str, config: &Value) -> Result<Prepared, Invalid> {
        prepare(name, config)
    }

    fn identity_field(&self, name: &str) -> Option<&'static str> {
        identity_field(name)
    }
}

/// The field of `name`'s consumer-side configuration that identifies a client; none when
/// `name` is not an authentication plugin.
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
    let config = resource::with_secrets(&config);
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
    (auth.prepare)(&resource::with_secrets(config)).map_err(|e| {
        Invalid(format!(
            "failed to check the configuration of plugin {name} err: {e}"
        ))
    })
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
