//! The plugin pipeline: APISIX's plugins, built once per snapshot from their configuration.
//!
//! A request runs the phases in APISIX's order: `rewrite` → `access` → (upstream) →
//! `header_filter`/`body_filter` → `log`; within a phase, plugins run from the highest
//! priority down. Configuration is checked when written ([`check_all`], so the Admin API refuses
//! bad plugin configs with a 400) and built into trait objects when the snapshot is compiled, so
//! nothing is parsed per request.
//!
//! Plugins here: `proxy-rewrite` (1008) and `response-rewrite` (899); [G2] adds the rest.

mod proxy_rewrite;
mod response_rewrite;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde_json::Value;

use crate::resource::Invalid;
use crate::vars;

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
    /// The path the client asked for (before any rewrite).
    pub original_path: String,
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

/// The upstream's response head, which response plugins may change; `body` replaces the
/// upstream's body when set.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
}

/// A plugin's hooks; each has a default that does nothing.
pub trait Plugin: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &'static str;
    fn priority(&self) -> i32;
    /// Changes the request before routing to the upstream, or answers it.
    fn rewrite(&self, _ctx: &mut Ctx) -> Option<Reply> {
        None
    }
    /// Authentication and traffic control: answers the request to stop it.
    fn access(&self, _ctx: &mut Ctx) -> Option<Reply> {
        None
    }
    /// Changes the response head and, through `head.body`, the body.
    fn response(&self, _ctx: &Ctx, _head: &mut ResponseHead) {}
}

type Factory = fn(&Value) -> Result<Arc<dyn Plugin>, String>;
type Check = fn(&Value) -> Result<(), String>;

/// A plugin this gateway knows: how to build it, and what else it takes part in.
struct Registered {
    name: &'static str,
    build: Factory,
    /// Authenticates consumers, so it may be configured on a consumer's credential.
    authentication: bool,
    /// Checks the plugin's `plugin_metadata` (settings shared by every instance of it); none
    /// when it has no metadata.
    metadata: Option<Check>,
}

/// Every plugin this gateway knows, by APISIX name.
const REGISTRY: &[Registered] = &[
    Registered {
        name: "proxy-rewrite",
        build: proxy_rewrite::build,
        authentication: false,
        metadata: None,
    },
    Registered {
        name: "response-rewrite",
        build: response_rewrite::build,
        authentication: false,
        metadata: None,
    },
];

fn registered(name: &str) -> Result<&'static Registered, Invalid> {
    REGISTRY
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| Invalid(format!("unknown plugin [{name}]")))
}

/// Builds the plugin `name` from its configuration.
pub fn build(name: &str, config: &Value) -> Result<Arc<dyn Plugin>, Invalid> {
    let plugin = registered(name)?;
    if !config.is_object() {
        return Err(Invalid(format!(
            "failed to check the configuration of plugin {name}: must be an object"
        )));
    }
    (plugin.build)(config).map_err(|e| {
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

/// Checks a credential's plugins: authentication plugins only.
pub fn check_credential(plugins: &BTreeMap<String, Value>) -> Result<(), Invalid> {
    for (name, config) in plugins {
        if !registered(name)?.authentication {
            return Err(Invalid(format!(
                "plugins: {name} is not an authentication plugin; only those go on a credential"
            )));
        }
        build(name, config)?;
    }
    Ok(())
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
    /// Builds the effective chain from configuration layers, lowest precedence first
    /// (service, plugin config, route): a plugin named again replaces the earlier config.
    pub fn build(layers: &[&BTreeMap<String, Value>]) -> Result<Chain, Invalid> {
        let mut merged: BTreeMap<&str, &Value> = BTreeMap::new();
        for layer in layers {
            for (name, config) in layer.iter() {
                merged.insert(name, config);
            }
        }
        let mut plugins = Vec::new();
        for (name, config) in merged {
            let disabled = config
                .pointer("/_meta/disable")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if !disabled {
                plugins.push(build(name, config)?);
            }
        }
        plugins.sort_by_key(|p| std::cmp::Reverse(p.priority()));
        Ok(Chain(plugins))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn rewrite(&self, ctx: &mut Ctx) -> Option<Reply> {
        self.0.iter().find_map(|p| p.rewrite(ctx))
    }

    pub fn access(&self, ctx: &mut Ctx) -> Option<Reply> {
        self.0.iter().find_map(|p| p.access(ctx))
    }

    pub fn response(&self, ctx: &Ctx, head: &mut ResponseHead) {
        for plugin in &self.0 {
            plugin.response(ctx, head);
        }
    }
}

/// `headers` in proxy-rewrite and response-rewrite: `{add, set, remove}`, or the older form, a
/// plain object of headers to set.
#[derive(Debug, Clone, Default)]
struct HeaderEdits {
    add: Vec<(http::HeaderName, Template)>,
    set: Vec<(http::HeaderName, Template)>,
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
        let pairs = |v: &Value, what: &str| -> Result<Vec<(http::HeaderName, Template)>, String> {
            let Value::Object(m) = v else {
                return Err(format!("headers.{what}: must be an object"));
            };
            m.iter()
                .map(|(k, v)| {
                    let name = http::HeaderName::from_bytes(k.as_bytes())
                        .map_err(|_| format!("headers: {k:?} is not a header name"))?;
                    let text = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        _ => return Err(format!("headers.{k}: must be a string")),
                    };
                    Ok((name, Template::parse(&text)?))
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
        for (name, template) in &self.add {
            if let Ok(v) = http::HeaderValue::from_str(&template.render(vars, &[])) {
                headers.append(name, v);
            }
        }
        for (name, template) in &self.set {
            let value = template.render(vars, &[]);
            if value.is_empty() {
                headers.remove(name);
            } else if let Ok(v) = http::HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

/// Text with nginx-style `$var` references (and `$1`… for regex captures).
#[derive(Debug, Clone)]
pub struct Template(Vec<Piece>);

#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    Var(vars::Var),
    Capture(usize),
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            let (before, after) = rest.split_at(at);
            let after = &after[1..];
            // `${name}` or `$name`.
            let (name, tail) = if let Some(inner) = after.strip_prefix('{') {
                match inner.split_once('}') {
                    Some((name, tail)) => (name, tail),
                    None => ("", after),
                }
            } else {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                after.split_at(end)
            };
            if !before.is_empty() {
                pieces.push(Piece::Text(before.to_string()));
            }
            if name.is_empty() {
                pieces.push(Piece::Text("$".into()));
                rest = after;
                continue;
            }
            pieces.push(match name.parse::<usize>() {
                Ok(n) => Piece::Capture(n),
                Err(_) => Piece::Var(vars::Var::parse(name)?),
            });
            rest = tail;
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(Template(pieces))
    }

    pub fn render(&self, vars: &vars::Request<'_>, captures: &[Option<&str>]) -> String {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Var(var) => {
                    if let Some(v) = var.read(vars) {
                        out.push_str(&v);
                    }
                }
                Piece::Capture(n) => {
                    if let Some(Some(c)) = captures.get(*n) {
                        out.push_str(c);
                    }
                }
            }
        }
        out
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
        let chain = Chain::build(&[&service, &route]).unwrap();
        let names: Vec<_> = chain.0.iter().map(|p| p.name()).collect();
        assert_eq!(names, ["proxy-rewrite", "response-rewrite"]);
        let disabled = BTreeMap::from([(
            "proxy-rewrite".to_string(),
            json!({"uri": "/x", "_meta": {"disable": true}}),
        )]);
        assert!(Chain::build(&[&disabled]).unwrap().is_empty());
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
        };
        let t = Template::parse("/v2$uri?x=$arg_x&$1-${host}$").unwrap();
        assert!(Template::parse("$nope").is_err());
        assert_eq!(t.render(&request, &[None, Some("c")]), "/v2/a?x=1&c-h$");
    }
}
