//! APISIX resources as the Admin API accepts them and the config stores keep them.
//!
//! Stores hold each resource as the JSON document APISIX keeps in etcd, under
//! `/apisix/<kind>/<id>`. On every write the document is checked here by reading it into the
//! typed structs below (unknown fields are rejected, as APISIX's schemas do) and then by the
//! checks serde cannot express (one of `uri`/`uris`, regexes in `vars`, CIDRs, known plugins).
//! The runtime compiles the same typed structs into its snapshot.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::vars::{Request, Template, Var, Vars, parse_cidr};

/// The resource kinds of the Admin API, in the order APISIX documents them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Routes,
    Services,
    Upstreams,
    Consumers,
    ConsumerGroups,
    PluginConfigs,
    GlobalRules,
    Ssls,
    PluginMetadata,
    /// A consumer's credentials, stored under it: `/apisix/consumers/<username>/credentials/<id>`.
    Credentials,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Routes,
        Kind::Services,
        Kind::Upstreams,
        Kind::Consumers,
        Kind::ConsumerGroups,
        Kind::PluginConfigs,
        Kind::GlobalRules,
        Kind::Ssls,
        Kind::PluginMetadata,
        Kind::Credentials,
    ];

    /// The path segment: `/apisix/admin/<segment>` and `/apisix/<segment>/<id>`.
    pub fn segment(self) -> &'static str {
        match self {
            Kind::Routes => "routes",
            Kind::Services => "services",
            Kind::Upstreams => "upstreams",
            Kind::Consumers => "consumers",
            Kind::ConsumerGroups => "consumer_groups",
            Kind::PluginConfigs => "plugin_configs",
            Kind::GlobalRules => "global_rules",
            Kind::Ssls => "ssls",
            Kind::PluginMetadata => "plugin_metadata",
            Kind::Credentials => "credentials",
        }
    }

    /// The kind at `/apisix/admin/<segment>` (credentials sit under their consumer).
    pub fn from_segment(segment: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| *k != Kind::Credentials && k.segment() == segment)
    }

    /// The singular noun APISIX uses in messages ("upstream", "plugin config").
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Routes => "route",
            Kind::Services => "service",
            Kind::Upstreams => "upstream",
            Kind::Consumers => "consumer",
            Kind::ConsumerGroups => "consumer group",
            Kind::PluginConfigs => "plugin config",
            Kind::GlobalRules => "global rule",
            Kind::Ssls => "ssl",
            Kind::PluginMetadata => "plugin metadata",
            Kind::Credentials => "credential",
        }
    }

    /// The key APISIX uses in etcd and in Admin API responses, e.g. `/apisix/routes/1`. A
    /// credential's id is its path under the consumers: `<username>/credentials/<id>`.
    pub fn key(self, id: &str) -> String {
        match self {
            Kind::Credentials => format!("/apisix/consumers/{id}"),
            _ => format!("/apisix/{}/{id}", self.segment()),
        }
    }

    /// Consumers are named by `username`; every other kind by `id`.
    pub fn id_field(self) -> &'static str {
        match self {
            Kind::Consumers => "username",
            _ => "id",
        }
    }
}

/// Splits a key (`/apisix/routes/1`) into its kind and id.
pub fn parse_key(key: &str) -> Option<(Kind, &str)> {
    let rest = key.strip_prefix("/apisix/")?;
    let (segment, id) = rest.split_once('/')?;
    let kind = Kind::from_segment(segment)?;
    if !id.contains('/') {
        return Some((kind, id));
    }
    let (username, credential) = id.split_once("/credentials/")?;
    let single = |s: &str| !s.is_empty() && !s.contains('/');
    (kind == Kind::Consumers && single(username) && single(credential))
        .then_some((Kind::Credentials, id))
}

/// Why a resource was refused; the message names the field, as APISIX's `error_msg` does.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct Invalid(pub String);

impl Invalid {
    pub fn new(message: impl Into<String>) -> Self {
        Invalid(message.into())
    }
}

/// What resources and the Admin API know of the plugins: their configurations' checks and
/// schemas. The plugins' registry provides it (`plugins::Catalog`), handed down by whoever
/// validates; resources never name the plugins themselves.
pub trait PluginCatalog: Send + Sync {
    /// The names of the plugins there are.
    fn names(&self) -> Vec<&'static str>;
    /// The JSON Schema of the plugin `name`'s configuration on `side`; none for an unknown
    /// plugin, or for the consumer side of one that has none.
    fn schema(&self, name: &str, side: SchemaType) -> Option<Value>;
    /// Every plugin of a route, service, plugin config, consumer group or global rule.
    fn check_all(&self, plugins: Option<&BTreeMap<String, Value>>) -> Result<(), Invalid>;
    /// A consumer's plugins (authentication plugins take their consumer-side fields).
    fn check_consumer(&self, plugins: Option<&BTreeMap<String, Value>>) -> Result<(), Invalid>;
    /// A credential's one authentication plugin.
    fn check_credential(&self, plugins: &BTreeMap<String, Value>) -> Result<(), Invalid>;
    /// A plugin's `plugin_metadata`.
    fn check_metadata(&self, name: &str, metadata: &Value) -> Result<(), Invalid>;
    /// The field that identifies a client to an authentication plugin (key-auth's `key`).
    fn identity_field(&self, name: &str) -> Option<&'static str>;
}

/// Where a plugin's configuration sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaType {
    /// On a route, service, plugin config or global rule.
    Route,
    /// On a consumer or credential (authentication plugins).
    Consumer,
}

/// Checks a whole resource document of `kind`, its plugins by `catalog`.
pub fn validate(kind: Kind, value: &Value, catalog: &dyn PluginCatalog) -> Result<(), Invalid> {
    if !value.is_object() {
        return Err(Invalid::new("the body must be a JSON object"));
    }
    match kind {
        Kind::Routes => parse::<Route>(value)?.check(catalog),
        Kind::Services => parse::<Service>(value)?.check(catalog),
        Kind::Upstreams => parse::<Upstream>(value)?.check(),
        Kind::Consumers => parse::<Consumer>(value)?.check(catalog),
        Kind::ConsumerGroups | Kind::PluginConfigs | Kind::GlobalRules => {
            parse::<PluginSet>(value)?.check(catalog)
        }
        Kind::Ssls => parse::<Ssl>(value)?.check(),
        Kind::PluginMetadata => {
            let mut metadata = value.clone();
            let name = metadata
                .as_object_mut()
                .and_then(|m| {
                    m.remove("create_time");
                    m.remove("update_time");
                    m.remove("id")
                })
                .and_then(|id| id_text(&id))
                .unwrap_or_default();
            catalog.check_metadata(&name, &metadata)
        }
        Kind::Credentials => parse::<Credential>(value)?.check(catalog),
    }
}

/// Fills in the defaults APISIX's schemas give the fields a document leaves out, as APISIX
/// stores it (a route's `priority` and `status`; an upstream's `type`, `hash_on`, `scheme`,
/// `pass_host` and, when it has one, its keepalive pool's settings; an SSL's `type` and
/// `status`), so what the Admin API answers and the store holds is what APISIX's would.
pub fn with_defaults(kind: Kind, value: &mut Value) {
    fn fill(value: &mut Value, defaults: &[(&str, Value)]) {
        if let Some(fields) = value.as_object_mut() {
            for (field, default) in defaults {
                fields
                    .entry(field.to_string())
                    .or_insert_with(|| default.clone());
            }
        }
    }
    fn upstream(value: &mut Value) {
        fill(
            value,
            &[
                ("type", "roundrobin".into()),
                ("hash_on", "vars".into()),
                ("scheme", "http".into()),
                ("pass_host", "pass".into()),
            ],
        );
        if let Some(pool) = value.get_mut("keepalive_pool") {
            fill(
                pool,
                &[
                    ("size", 320.into()),
                    ("idle_timeout", 60.into()),
                    ("requests", 1000.into()),
                ],
            );
        }
    }
    match kind {
        Kind::Routes => fill(value, &[("priority", 0.into()), ("status", 1.into())]),
        Kind::Ssls => fill(value, &[("type", "server".into()), ("status", 1.into())]),
        Kind::Upstreams => upstream(value),
        _ => {}
    }
    if matches!(kind, Kind::Routes | Kind::Services)
        && let Some(inline) = value.get_mut("upstream")
    {
        upstream(inline);
    }
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

/// Reads a stored document into its typed form.
/// Errors name the field's path (`upstream.nodes`).
pub fn parse<T: serde::de::DeserializeOwned>(value: &Value) -> Result<T, Invalid> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            Invalid::new(e.into_inner().to_string())
        } else {
            Invalid::new(format!("{path}: {}", e.into_inner()))
        }
    })
}

/// The other resources a document refers to, for referential checks.
pub fn references(kind: Kind, value: &Value) -> Vec<(Kind, String)> {
    let mut refs = Vec::new();
    let mut add = |field: &str, target: Kind| {
        if let Some(id) = value.get(field).and_then(id_text) {
            refs.push((target, id));
        }
    };
    match kind {
        Kind::Routes => {
            add("upstream_id", Kind::Upstreams);
            add("service_id", Kind::Services);
            add("plugin_config_id", Kind::PluginConfigs);
        }
        Kind::Services => add("upstream_id", Kind::Upstreams),
        Kind::Consumers => add("group_id", Kind::ConsumerGroups),
        _ => {}
    }
    refs
}

/// The clients a consumer or credential document identifies: (authentication plugin, the value
/// of its identifying field), such as `("key-auth", "auth-one")`. Two documents naming the same
/// pair would make the client ambiguous.
pub fn identities(kind: Kind, value: &Value, catalog: &dyn PluginCatalog) -> Vec<(String, String)> {
    if !matches!(kind, Kind::Consumers | Kind::Credentials) {
        return Vec::new();
    }
    let Some(plugins) = value.get("plugins").and_then(Value::as_object) else {
        return Vec::new();
    };
    plugins
        .iter()
        .filter_map(|(name, config)| {
            let field = catalog.identity_field(name)?;
            let identity = config.get(field)?.as_str()?;
            Some((name.clone(), identity.to_string()))
        })
        .collect()
}

/// `value` as the Admin API shows it: an SSL's private keys are never returned, as in APISIX.
pub fn redacted(kind: Kind, value: &Value) -> Value {
    let mut value = value.clone();
    if kind == Kind::Ssls
        && let Some(fields) = value.as_object_mut()
    {
        fields.remove("key");
        fields.remove("keys");
    }
    value
}

/// An id as text: APISIX accepts ids as strings or integers.
pub fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Whether `id` is one APISIX accepts: 1–64 characters of `[a-zA-Z0-9-_.]`, but not `.` or
/// `..` (a key segment that names its parent directory).
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A resource id, written as a string or an integer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Id(pub String);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        match id_text(&value) {
            Some(id) if valid_id(&id) => Ok(Id(id)),
            _ => Err(serde::de::Error::custom(format!(
                "invalid id {value}: expected 1-64 characters of [a-zA-Z0-9-_.]"
            ))),
        }
    }
}

impl schemars::JsonSchema for Id {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Id".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "anyOf": [
                {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[a-zA-Z0-9-_.]+$"},
                {"type": "integer", "minimum": 1}
            ]
        })
    }
}

/// The longest any duration setting may be (a year): beyond it a setting is a mistake, and
/// adding it to a clock could overflow.
pub const MAX_SECONDS: u64 = 365 * 24 * 3600;

/// Checks a duration setting in seconds: finite, not negative (above 0 unless `zero` is
/// allowed), and at most [`MAX_SECONDS`].
pub fn seconds(field: &str, value: f64, zero: bool) -> Result<(), Invalid> {
    let low_ok = if zero { value >= 0.0 } else { value > 0.0 };
    if low_ok && value <= MAX_SECONDS as f64 {
        return Ok(());
    }
    let low = if zero { "0" } else { "above 0" };
    Err(Invalid::new(format!(
        "{field}: seconds {low} up to {MAX_SECONDS} expected"
    )))
}

pub type Labels = BTreeMap<String, String>;
/// Plugin name → its configuration, checked against the plugin's own schema.
pub type Plugins = BTreeMap<String, Value>;

/// `timeout` on routes and upstreams, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Timeout {
    pub connect: f64,
    pub send: f64,
    pub read: f64,
}

impl Timeout {
    fn check(&self) -> Result<(), Invalid> {
        seconds("timeout.connect", self.connect, false)?;
        seconds("timeout.send", self.send, false)?;
        seconds("timeout.read", self.read, false)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub id: Option<Id>,
    pub name: Option<String>,
    pub desc: Option<String>,
    pub labels: Option<Labels>,
    pub uri: Option<String>,
    pub uris: Option<Vec<String>>,
    pub host: Option<String>,
    pub hosts: Option<Vec<String>>,
    pub remote_addr: Option<String>,
    pub remote_addrs: Option<Vec<String>>,
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub priority: i64,
    pub vars: Option<Value>,
    pub plugins: Option<Plugins>,
    pub upstream: Option<Upstream>,
    pub upstream_id: Option<Id>,
    pub service_id: Option<Id>,
    pub plugin_config_id: Option<Id>,
    pub timeout: Option<Timeout>,
    pub enable_websocket: Option<bool>,
    pub status: Option<u8>,
    pub create_time: Option<i64>,
    pub update_time: Option<i64>,
}

const METHODS: [&str; 9] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
];

impl Route {
    pub fn check(&self, catalog: &dyn PluginCatalog) -> Result<(), Invalid> {
        match (&self.uri, &self.uris) {
            (Some(_), Some(_)) => return Err(Invalid::new("only one of uri and uris may be set")),
            (None, None) => return Err(Invalid::new("uri or uris is required")),
            (None, Some(uris)) if uris.is_empty() => {
                return Err(Invalid::new("uris: at least one uri is required"));
            }
            _ => {}
        }
        for uri in self.uris() {
            if !uri.starts_with('/') {
                return Err(Invalid::new(format!("uri {uri:?}: must start with /")));
            }
        }
        if self.host.is_some() && self.hosts.is_some() {
            return Err(Invalid::new("only one of host and hosts may be set"));
        }
        for host in self.hosts() {
            check_host(host)?;
        }
        if self.remote_addr.is_some() && self.remote_addrs.is_some() {
            return Err(Invalid::new(
                "only one of remote_addr and remote_addrs may be set",
            ));
        }
        for addr in self.remote_addrs() {
            parse_cidr(addr).map_err(|e| Invalid::new(format!("remote_addrs: {e}")))?;
        }
        for method in self.methods.iter().flatten() {
            if !METHODS.contains(&method.as_str()) {
                return Err(Invalid::new(format!(
                    "methods: {method:?} is not one of {}",
                    METHODS.join(", ")
                )));
            }
        }
        if let Some(vars) = &self.vars {
            Vars::compile(vars).map_err(|e| Invalid::new(format!("vars: {e}")))?;
        }
        if let Some(status) = self.status
            && status > 1
        {
            return Err(Invalid::new("status: must be 0 or 1"));
        }
        check_upstream_choice(self.upstream.as_ref(), self.upstream_id.as_ref())?;
        if self.plugins.is_none()
            && self.upstream.is_none()
            && self.upstream_id.is_none()
            && self.service_id.is_none()
        {
            return Err(Invalid::new(
                "one of plugins, upstream, upstream_id or service_id is required",
            ));
        }
        if let Some(t) = &self.timeout {
            t.check()?;
        }
        catalog.check_all(self.plugins.as_ref())
    }

    pub fn uris(&self) -> impl Iterator<Item = &String> {
        self.uri.iter().chain(self.uris.iter().flatten())
    }

    pub fn hosts(&self) -> impl Iterator<Item = &String> {
        self.host.iter().chain(self.hosts.iter().flatten())
    }

    pub fn remote_addrs(&self) -> impl Iterator<Item = &String> {
        self.remote_addr
            .iter()
            .chain(self.remote_addrs.iter().flatten())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub id: Option<Id>,
    pub name: Option<String>,
    pub desc: Option<String>,
    pub labels: Option<Labels>,
    pub hosts: Option<Vec<String>>,
    pub plugins: Option<Plugins>,
    pub upstream: Option<Upstream>,
    pub upstream_id: Option<Id>,
    pub enable_websocket: Option<bool>,
    pub create_time: Option<i64>,
    pub update_time: Option<i64>,
}

impl Service {
    pub fn check(&self, catalog: &dyn PluginCatalog) -> Result<(), Invalid> {
        check_upstream_choice(self.upstream.as_ref(), self.upstream_id.as_ref())?;
        for host in self.hosts.iter().flatten() {
            check_host(host)?;
        }
        catalog.check_all(self.plugins.as_ref())
    }
}

/// Load-balancing algorithms (`type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balancer {
    #[default]
    Roundrobin,
    Chash,
    LeastConn,
    Ewma,
}

/// What `chash` hashes (`hash_on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashOn {
    #[default]
    Vars,
    Header,
    Cookie,
    Consumer,
    VarsCombinations,
}

/// Which `Host` the upstream sees (`pass_host`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PassHost {
    /// The client's Host.
    #[default]
    Pass,
    /// The chosen node's host.
    Node,
    /// `upstream_host`.
    Rewrite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    #[default]
    Http,
    Https,
    Grpc,
    Grpcs,
}

/// `nodes`: `{"host:port": weight}` or `[{"host", "port", "weight"}]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Nodes {
    Map(BTreeMap<String, u32>),
    List(Vec<Node>),
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub host: String,
    pub port: Option<u16>,
    pub weight: u32,
    #[serde(default)]
    pub priority: i64,
    pub metadata: Option<Value>,
}

impl Nodes {
    /// Every node as (host, port, weight, priority); a port missing from the list form defaults
    /// to the scheme's.
    pub fn list(&self, scheme: Scheme) -> Result<Vec<(String, u16, u32, i64)>, Invalid> {
        let default_port = match scheme {
            Scheme::Http | Scheme::Grpc => 80,
            Scheme::Https | Scheme::Grpcs => 443,
        };
        match self {
            Nodes::Map(map) => map
                .iter()
                .map(|(addr, weight)| {
                    let (host, port) = split_host_port(addr, default_port)
                        .ok_or_else(|| Invalid::new(format!("nodes: bad address {addr:?}")))?;
                    Ok((host, port, *weight, 0))
                })
                .collect(),
            Nodes::List(list) => list
                .iter()
                .map(|n| {
                    if n.host.is_empty() {
                        return Err(Invalid::new("nodes: host must not be empty"));
                    }
                    Ok((
                        n.host.clone(),
                        n.port.unwrap_or(default_port),
                        n.weight,
                        n.priority,
                    ))
                })
                .collect(),
        }
    }
}

/// `host:port`, `host`, `[v6]:port`.
fn split_host_port(addr: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = addr.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.contains(':') => {
            Some((host.to_string(), port.parse().ok()?))
        }
        None if !addr.is_empty() => Some((addr.to_string(), default_port)),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeepalivePool {
    #[serde(default = "KeepalivePool::default_size")]
    pub size: usize,
    #[serde(default = "KeepalivePool::default_idle_timeout")]
    pub idle_timeout: f64,
    #[serde(default = "KeepalivePool::default_requests")]
    pub requests: u64,
}

impl Default for KeepalivePool {
    fn default() -> Self {
        KeepalivePool {
            size: Self::default_size(),
            idle_timeout: Self::default_idle_timeout(),
            requests: Self::default_requests(),
        }
    }
}

impl KeepalivePool {
    fn check(&self) -> Result<(), Invalid> {
        if self.size > 1_000_000 {
            return Err(Invalid::new("keepalive_pool.size: at most 1000000"));
        }
        if self.requests == 0 {
            return Err(Invalid::new("keepalive_pool.requests: at least 1"));
        }
        seconds("keepalive_pool.idle_timeout", self.idle_timeout, true)
    }

    fn default_size() -> usize {
        320
    }
    fn default_idle_timeout() -> f64 {
        60.0
    }
    fn default_requests() -> u64 {
        1000
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub id: Option<Id>,
    pub name: Option<String>,
    pub desc: Option<String>,
    pub labels: Option<Labels>,
    #[serde(rename = "type", default)]
    pub balancer: Balancer,
    pub nodes: Option<Nodes>,
    #[serde(default)]
    pub hash_on: HashOn,
    pub key: Option<String>,
    pub retries: Option<u32>,
    pub retry_timeout: Option<f64>,
    pub timeout: Option<Timeout>,
    #[serde(default)]
    pub pass_host: PassHost,
    pub upstream_host: Option<String>,
    #[serde(default)]
    pub scheme: Scheme,
    pub keepalive_pool: Option<KeepalivePool>,
    pub checks: Option<Checks>,
    pub tls: Option<UpstreamTls>,
    pub create_time: Option<i64>,
    pub update_time: Option<i64>,
}

impl Upstream {
    pub fn check(&self) -> Result<(), Invalid> {
        let Some(nodes) = &self.nodes else {
            return Err(Invalid::new("nodes is required"));
        };
        let nodes = nodes.list(self.scheme)?;
        if self.balancer == Balancer::Chash {
            HashKey::parse(self.hash_on, self.key.as_deref())?;
            let weights: Vec<(u32, i64)> = nodes.iter().map(|n| (n.2, n.3)).collect();
            check_chash(&weights)?;
        }
        if matches!(self.scheme, Scheme::Grpc | Scheme::Grpcs) {
            return Err(Invalid::new(format!(
                "scheme: {:?} upstreams are not supported yet (http and https are)",
                self.scheme
            )));
        }
        if let Some(tls) = &self.tls {
            tls.check()?;
        }
        if self.pass_host == PassHost::Rewrite && self.upstream_host.is_none() {
            return Err(Invalid::new(
                "upstream_host is required when pass_host is rewrite",
            ));
        }
        if let Some(t) = self.retry_timeout {
            seconds("retry_timeout", t, true)?;
        }
        if let Some(t) = &self.timeout {
            t.check()?;
        }
        if let Some(pool) = &self.keepalive_pool {
            pool.check()?;
        }
        if let Some(checks) = &self.checks {
            checks.check()?;
        }
        Ok(())
    }
}

/// A consumer's credential (APISIX 3.x): the configuration of one authentication plugin, so
/// a consumer can hold several keys and rotate them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub id: Option<Id>,
    pub name: Option<String>,
    pub desc: Option<String>,
    pub labels: Option<Labels>,
    #[serde(default)]
    pub plugins: Plugins,
    pub create_time: Option<i64>,
    pub update_time: Option<i64>,
}

impl Credential {
    pub fn check(&self, catalog: &dyn PluginCatalog) -> Result<(), Invalid> {
        catalog.check_credential(&self.plugins)
    }
}

/// `tls` of an `https` upstream: whether to verify the node's certificate (off by default, as
/// in APISIX) and the client certificate to present.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    #[serde(default)]
    pub verify: bool,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    pub client_cert_id: Option<Id>,
}

impl UpstreamTls {
    /// The client certificate and key, checked to match.
    pub fn client(&self) -> Result<Option<rustls::sign::CertifiedKey>, Invalid> {
        match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => crate::tls::certified_key(cert, key)
                .map(Some)
                .map_err(|e| Invalid::new(format!("tls.client_{e}"))),
            (None, None) => Ok(None),
            _ => Err(Invalid::new("tls: client_cert and client_key go together")),
        }
    }

    fn check(&self) -> Result<(), Invalid> {
        if self.client_cert_id.is_some() {
            return Err(Invalid::new(
                "tls.client_cert_id: not supported yet (set client_cert and client_key)",
            ));
        }
        self.client().map(|_| ())
    }
}

/// An SSL certificate the data plane serves to clients asking for one of its `snis` (APISIX's
/// `ssls`). `certs`/`keys` add pairs of other key types (say ECDSA beside RSA); the client's
/// supported signature schemes choose among them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ssl {
    pub id: Option<Id>,
    pub cert: String,
    pub key: String,
    #[serde(default)]
    pub certs: Vec<String>,
    #[serde(default)]
    pub keys: Vec<String>,
    #[serde(default)]
    pub snis: Vec<String>,
    #[serde(rename = "type", default)]
    pub kind: SslType,
    pub client: Option<Value>,
    pub ssl_protocols: Option<Vec<String>>,
    pub labels: Option<Labels>,
    pub status: Option<u8>,
    pub validity_start: Option<i64>,
    pub validity_end: Option<i64>,
    pub create_time: Option<i64>,
    pub update_time: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SslType {
    #[default]
    Server,
    Client,
}

impl Ssl {
    pub fn check(&self) -> Result<(), Invalid> {
        self.certified_keys()?;
        if self.kind == SslType::Server && self.snis.is_empty() {
            return Err(Invalid::new("snis: at least one name is required"));
        }
        for sni in &self.snis {
            let name = sni.strip_prefix("*.").unwrap_or(sni);
            if name.is_empty() || name.contains('*') || crate::tls::server_name(name).is_none() {
                return Err(Invalid::new(format!(
                    "snis: {sni:?} is not a host name or *.wildcard"
                )));
            }
        }
        if self.client.is_some() {
            return Err(Invalid::new(
                "client: verifying client certificates (mTLS) is not supported yet",
            ));
        }
        if let Some(status) = self.status
            && status > 1
        {
            return Err(Invalid::new("status: must be 0 or 1"));
        }
        self.protocol_versions().map(|_| ())
    }

    /// `cert`/`key`, then each of `certs`/`keys`, checked to match.
    pub fn certified_keys(&self) -> Result<Vec<rustls::sign::CertifiedKey>, Invalid> {
        if self.certs.len() != self.keys.len() {
            return Err(Invalid::new("certs and keys must have the same length"));
        }
        let mut pairs =
            vec![crate::tls::certified_key(&self.cert, &self.key).map_err(Invalid::new)?];
        for (i, (cert, key)) in self.certs.iter().zip(&self.keys).enumerate() {
            let pair = crate::tls::certified_key(cert, key)
                .map_err(|e| Invalid::new(format!("certs/keys[{i}]: {e}")))?;
            pairs.push(pair);
        }
        Ok(pairs)
    }

    /// `ssl_protocols`: TLSv1.2 and TLSv1.3 (the older ones are not offered); unset, both.
    pub fn protocol_versions(
        &self,
    ) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, Invalid> {
        let Some(names) = &self.ssl_protocols else {
            return Ok(rustls::DEFAULT_VERSIONS.to_vec());
        };
        let mut versions = Vec::new();
        for name in names {
            versions.push(match name.as_str() {
                "TLSv1.2" => &rustls::version::TLS12,
                "TLSv1.3" => &rustls::version::TLS13,
                other => {
                    return Err(Invalid::new(format!(
                        "ssl_protocols: {other:?} is not supported (TLSv1.2 and TLSv1.3 are)"
                    )));
                }
            });
        }
        if versions.is_empty() {
            return Err(Invalid::new(
                "ssl_protocols: at least one version is required",
            ));
        }
        Ok(versions)
    }
}

/// An upstream's health checks (APISIX's `checks`, lua-resty-healthcheck's fields and
/// defaults). Counters are consecutive; a threshold of 0 never trips.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Checks {
    pub active: Option<ActiveCheck>,
    pub passive: Option<PassiveCheck>,
}

impl Checks {
    fn check(&self) -> Result<(), Invalid> {
        let Some(active) = &self.active else {
            return Err(Invalid::new(
                "checks: passive checks need active ones too (only active checks bring an \
                 ejected node back)",
            ));
        };
        seconds("checks.active.timeout", active.timeout, false)?;
        for (field, interval) in [
            ("checks.active.healthy.interval", active.healthy.interval),
            (
                "checks.active.unhealthy.interval",
                active.unhealthy.interval,
            ),
        ] {
            seconds(field, interval as f64, true)?;
        }
        if !(1..=1000).contains(&active.concurrency) {
            return Err(Invalid::new(
                "checks.active.concurrency: within 1 and 1000 expected",
            ));
        }
        if !active.http_path.starts_with('/') {
            return Err(Invalid::new("checks.active.http_path: must start with '/'"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckType {
    #[default]
    Http,
    Https,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActiveCheck {
    #[serde(rename = "type")]
    pub kind: CheckType,
    /// Seconds a probe may take.
    pub timeout: f64,
    /// Nodes probed at once.
    pub concurrency: usize,
    pub host: Option<String>,
    /// Probe this port instead of the node's.
    pub port: Option<u16>,
    pub http_path: String,
    pub https_verify_certificate: bool,
    pub req_headers: Vec<String>,
    pub healthy: ActiveHealthy,
    pub unhealthy: ActiveUnhealthy,
}

impl Default for ActiveCheck {
    fn default() -> Self {
        ActiveCheck {
            kind: CheckType::Http,
            timeout: 1.0,
            concurrency: 10,
            host: None,
            port: None,
            http_path: "/".into(),
            https_verify_certificate: true,
            req_headers: Vec::new(),
            healthy: ActiveHealthy::default(),
            unhealthy: ActiveUnhealthy::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActiveHealthy {
    /// Seconds between probes of a healthy node; 0 = none.
    pub interval: u64,
    pub http_statuses: Vec<u16>,
    pub successes: u32,
}

impl Default for ActiveHealthy {
    fn default() -> Self {
        ActiveHealthy {
            interval: 1,
            http_statuses: vec![200, 302],
            successes: 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActiveUnhealthy {
    /// Seconds between probes of an unhealthy node; 0 = none.
    pub interval: u64,
    pub http_statuses: Vec<u16>,
    pub http_failures: u32,
    pub tcp_failures: u32,
    pub timeouts: u32,
}

impl Default for ActiveUnhealthy {
    fn default() -> Self {
        ActiveUnhealthy {
            interval: 1,
            http_statuses: vec![429, 404, 500, 501, 502, 503, 504, 505],
            http_failures: 5,
            tcp_failures: 2,
            timeouts: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveCheck {
    #[serde(rename = "type")]
    pub kind: CheckType,
    pub healthy: PassiveHealthy,
    pub unhealthy: PassiveUnhealthy,
}

impl Default for PassiveCheck {
    fn default() -> Self {
        PassiveCheck {
            kind: CheckType::Http,
            healthy: PassiveHealthy::default(),
            unhealthy: PassiveUnhealthy::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveHealthy {
    pub http_statuses: Vec<u16>,
    pub successes: u32,
}

impl Default for PassiveHealthy {
    fn default() -> Self {
        PassiveHealthy {
            http_statuses: (200..=206).chain(300..=308).collect(),
            successes: 5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveUnhealthy {
    pub http_statuses: Vec<u16>,
    pub http_failures: u32,
    pub tcp_failures: u32,
    pub timeouts: u32,
}

impl Default for PassiveUnhealthy {
    fn default() -> Self {
        PassiveUnhealthy {
            http_statuses: vec![429, 500, 503],
            http_failures: 5,
            tcp_failures: 2,
            timeouts: 7,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    pub username: String,
    pub desc: Option<String>,
    pub labels: Option<Labels>,
    pub plugins: Option<Plugins>,
    pub group_id: Option<Id>,
    pub create_time: Option<i64>,
    pub update_time: Option<i64>,
}

impl Consumer {
    pub fn check(&self, catalog: &dyn PluginCatalog) -> Result<(), Invalid> {
        let ok = !self.username.is_empty()
            && self.username.len() <= 100
            && self
                .username
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(Invalid::new(
                "username: 1-100 characters of [a-zA-Z0-9_] expected",
            ));
        }
        catalog.check_consumer(self.plugins.as_ref())
    }
}

/// Consumer groups, plugin configs and global rules: a named set of plugins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSet {
    pub id: Option<Id>,
    pub name: Option<String>,
    pub desc: Option<String>,
    pub labels: Option<Labels>,
    pub plugins: Plugins,
    pub create_time: Option<i64>,
    pub update_time: Option<i64>,
}

impl PluginSet {
    pub fn check(&self, catalog: &dyn PluginCatalog) -> Result<(), Invalid> {
        catalog.check_all(Some(&self.plugins))
    }
}

/// Routes and services name their upstream inline or by id, not both.
fn check_upstream_choice(upstream: Option<&Upstream>, id: Option<&Id>) -> Result<(), Invalid> {
    match (upstream, id) {
        (Some(_), Some(_)) => Err(Invalid::new(
            "only one of upstream and upstream_id may be set",
        )),
        (Some(inline), None) => {
            let empty = match &inline.nodes {
                Some(Nodes::Map(map)) => map.is_empty(),
                Some(Nodes::List(list)) => list.is_empty(),
                None => false,
            };
            if empty {
                return Err(Invalid::new(
                    "upstream.nodes: at least one node is required",
                ));
            }
            inline.check().map_err(|e| nested("upstream", e))
        }
        _ => Ok(()),
    }
}

fn nested(field: &str, e: Invalid) -> Invalid {
    Invalid(format!("{field}: {}", e.0))
}

/// Hosts as APISIX accepts them: a name, optionally starting with the `*` wildcard.
fn check_host(host: &str) -> Result<(), Invalid> {
    let name = host.strip_prefix('*').unwrap_or(host);
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(format!(
            "host {host:?} is not a valid host name"
        )))
    }
}

/// What `chash` hashes.
#[derive(Debug)]
pub enum HashKey {
    Var(Var),
    Header(http::HeaderName),
    Cookie(String),
    /// `hash_on: consumer`: the authenticated consumer's username (the client address when
    /// no consumer was authenticated).
    Consumer,
    Combination(Template),
}

impl HashKey {
    pub fn parse(on: HashOn, key: Option<&str>) -> Result<HashKey, Invalid> {
        let key = || {
            key.filter(|k| !k.is_empty())
                .ok_or_else(|| Invalid::new("key is required when type is chash"))
        };
        Ok(match on {
            HashOn::Vars => {
                HashKey::Var(Var::parse(key()?).map_err(|e| Invalid(format!("key: {e}")))?)
            }
            HashOn::Header => HashKey::Header(
                http::HeaderName::from_bytes(key()?.as_bytes())
                    .map_err(|_| Invalid::new("key: not a header name"))?,
            ),
            HashOn::Cookie => HashKey::Cookie(key()?.to_string()),
            HashOn::Consumer => HashKey::Consumer,
            HashOn::VarsCombinations => HashKey::Combination(
                Template::parse(key()?).map_err(|e| Invalid(format!("key: {e}")))?,
            ),
        })
    }

    /// The request's value of the key; None when it has none.
    pub fn value(&self, r: &Request<'_>) -> Option<String> {
        let value = match self {
            HashKey::Var(var) => var.read(r).map(|v| v.into_owned()),
            HashKey::Header(name) => {
                let value = r.headers.get(name)?.to_str().ok()?;
                Some(value.to_string())
            }
            HashKey::Cookie(name) => Var::Cookie(name.clone()).read(r).map(|v| v.into_owned()),
            HashKey::Consumer => r.consumer_name.map(str::to_string),
            HashKey::Combination(template) => Some(template.render(r, &[])),
        };
        value.filter(|v| !v.is_empty())
    }
}

/// Points per unit of weight on a `chash` ring (`resty.chash`'s `CONSISTENT_POINTS`).
pub const POINTS_PER_WEIGHT: u64 = 160;
/// The most points one ring may have: 10,000 units of weight after dividing by the weights'
/// greatest common divisor (APISIX would allocate them all, however many).
const MAX_RING_POINTS: u64 = 10_000 * POINTS_PER_WEIGHT;

/// The greatest common divisor of a ring's weights and the sum of the weights divided by it;
/// refused when the ring would hold more than [`MAX_RING_POINTS`].
pub fn ring_weights(weights: impl Iterator<Item = u32> + Clone) -> Result<(u64, u64), Invalid> {
    let divisor = weights.clone().fold(0, |d, w| gcd(d, u64::from(w))).max(1);
    let total: u64 = weights.map(|w| u64::from(w) / divisor).sum();
    if total * POINTS_PER_WEIGHT > MAX_RING_POINTS {
        return Err(Invalid(format!(
            "nodes: chash weights divided by their greatest common divisor must add up to at \
             most {} for each priority (these add up to {total})",
            MAX_RING_POINTS / POINTS_PER_WEIGHT
        )));
    }
    Ok((divisor, total))
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Checks that `chash` can build its rings from nodes of these `(weight, priority)`.
pub fn check_chash(nodes: &[(u32, i64)]) -> Result<(), Invalid> {
    for &(_, priority) in nodes {
        let weights = nodes.iter().filter(|n| n.1 == priority).map(|n| n.0);
        ring_weights(weights)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn error(kind: Kind, value: Value) -> String {
        validate(kind, &value, &crate::plugins::Catalog)
            .unwrap_err()
            .0
    }

    #[test]
    fn apisix_examples_are_valid() {
        let route = json!({"uri": "/index.html", "upstream": {"type": "roundrobin",
            "nodes": {"127.0.0.1:1980": 1}}});
        validate(Kind::Routes, &route, &crate::plugins::Catalog).unwrap();
        let upstream = json!({"type": "roundrobin", "nodes": [{"host": "127.0.0.1",
            "port": 1980, "weight": 1}], "retries": 1, "timeout": {"connect": 1,
            "send": 1, "read": 1}});
        validate(Kind::Upstreams, &upstream, &crate::plugins::Catalog).unwrap();
        validate(
            Kind::Consumers,
            &json!({"username": "jack"}),
            &crate::plugins::Catalog,
        )
        .unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let e = error(
            Kind::Routes,
            json!({"uri": "/a", "upstream_id": "1", "urii": 1}),
        );
        assert!(e.contains("unknown field `urii`"), "{e}");
        let e = error(Kind::Routes, json!({"upstream_id": "1"}));
        assert!(e.contains("uri or uris"), "{e}");
        let e = error(
            Kind::Routes,
            json!({"uri": "/a", "upstream_id": "1", "remote_addrs": ["10.0.0.0/33"]}),
        );
        assert!(e.contains("remote_addrs"), "{e}");
        let e = error(
            Kind::Routes,
            json!({"uri": "/a", "upstream_id": "1", "vars": [["arg_x", "~~", "("]]}),
        );
        assert!(e.starts_with("vars:"), "{e}");
        let e = error(
            Kind::Routes,
            json!({"uri": "/a", "plugins": {"no-such-plugin": {}}}),
        );
        assert!(e.contains("unknown plugin [no-such-plugin]"), "{e}");
        let e = error(Kind::Upstreams, json!({"nodes": {"127.0.0.1:x": 1}}));
        assert!(e.contains("nodes"), "{e}");
        let e = error(Kind::Routes, json!({"uri": "/a", "upstream_id": "a b"}));
        assert!(e.contains("invalid id"), "{e}");
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("a:80", 1), Some(("a".into(), 80)));
        assert_eq!(split_host_port("a", 1), Some(("a".into(), 1)));
        assert_eq!(split_host_port("[::1]:8", 1), Some(("::1".into(), 8)));
        assert_eq!(split_host_port("a:", 1), None);
        assert_eq!(split_host_port(":80", 1), None);
    }

    #[test]
    fn keys_round_trip() {
        for kind in Kind::ALL {
            let id = match kind {
                Kind::Credentials => "jack/credentials/7",
                _ => "7",
            };
            assert_eq!(parse_key(&kind.key(id)), Some((kind, id)));
        }
        assert_eq!(parse_key("/apisix/protos/1"), None);
        assert_eq!(parse_key("/apisix/consumers/jack/other/1"), None);
        assert_eq!(parse_key("/apisix/consumers/jack/credentials/"), None);
        assert_eq!(parse_key("/apisix/routes/a/credentials/1"), None);
    }
}
