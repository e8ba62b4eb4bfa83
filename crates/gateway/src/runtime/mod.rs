//! The runtime: configuration compiled into an immutable [`Snapshot`] that the data plane reads
//! without locks, swapped atomically when the store changes.
//!
//! A follower task takes the store's updates (see [`crate::store::Update`]), applies them to
//! its copy of the configuration, compiles a new snapshot and keeps a copy of the
//! configuration on disk for starting while the store is down. Requests in flight keep the
//! snapshot they started with. A resource that does not compile (possible only
//! when written to a store behind the Admin API's back) is logged and left out; the rest serve.

pub mod consumer;
pub mod health;
pub mod phases;
pub mod router;
pub mod upstream;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::resource::{self, Invalid, Kind, Plugins};
use crate::store::{ConfigStore, Update};
use crate::tls::Certificates;
use consumer::Consumers;
use health::HealthChecks;
use phases::{Chain, PluginFactory};
use router::{HostPattern, Labels, Route, Router, UriPattern};
use upstream::Upstream;

/// One consistent view of the configuration.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub revision: i64,
    pub router: Router,
    /// The plugins of every global rule, run before the route's.
    pub global: Chain,
    /// The certificates served on the TLS listener, by SNI.
    pub certificates: Certificates,
    pub consumers: Arc<Consumers>,
    /// The `upstreams` resources by id, for plugins that choose one (traffic-split).
    pub upstreams: HashMap<String, Arc<Upstream>>,
    /// `plugin_metadata` by plugin name: settings shared by every instance of a plugin.
    pub metadata: HashMap<String, Value>,
}

/// Compiles the configuration (key → document) into a snapshot, building plugins with
/// `plugins`; upstream health is kept in `checks` across compiles.
pub fn compile(
    revision: i64,
    config: &BTreeMap<String, Value>,
    checks: &HealthChecks,
    plugins: &dyn PluginFactory,
) -> Snapshot {
    let mut by_kind: HashMap<Kind, Vec<(&str, &Value)>> = HashMap::new();
    for (key, value) in config {
        if let Some((kind, id)) = resource::parse_key(key) {
            by_kind.entry(kind).or_default().push((id, value));
        }
    }
    let of = |kind| by_kind.get(&kind).map(Vec::as_slice).unwrap_or_default();
    let skip = |kind: Kind, id: &str, e: Invalid| {
        tracing::warn!(key = kind.key(id), error = %e, "configuration left out");
    };

    // Stored metadata carries its id and times beside the plugin's settings.
    let metadata: HashMap<String, Value> = of(Kind::PluginMetadata)
        .iter()
        .map(|(name, value)| {
            let mut settings = (*value).clone();
            if let Some(fields) = settings.as_object_mut() {
                for field in ["id", "create_time", "update_time"] {
                    fields.remove(field);
                }
            }
            (name.to_string(), settings)
        })
        .collect();

    let mut upstreams: HashMap<&str, Arc<Upstream>> = HashMap::new();
    for (id, value) in of(Kind::Upstreams) {
        let owner = Kind::Upstreams.key(id);
        match resource::parse(value).and_then(|u| Upstream::build(&u, &owner, checks)) {
            Ok(u) => {
                upstreams.insert(id, Arc::new(u));
            }
            Err(e) => skip(Kind::Upstreams, id, e),
        }
    }
    let mut services: HashMap<&str, (resource::Service, Option<Arc<Upstream>>)> = HashMap::new();
    for (id, value) in of(Kind::Services) {
        let compiled = resource::parse::<resource::Service>(value).and_then(|s| {
            let owner = Kind::Services.key(id);
            let upstream =
                resolve_upstream(&s.upstream, &s.upstream_id, &owner, &upstreams, checks)?;
            Ok((s, upstream))
        });
        match compiled {
            Ok(s) => {
                services.insert(id, s);
            }
            Err(e) => skip(Kind::Services, id, e),
        }
    }
    let mut plugin_configs: HashMap<&str, Plugins> = HashMap::new();
    for (id, value) in of(Kind::PluginConfigs) {
        match resource::parse::<resource::PluginSet>(value) {
            Ok(p) => {
                plugin_configs.insert(id, p.plugins);
            }
            Err(e) => skip(Kind::PluginConfigs, id, e),
        }
    }
    let mut global_rules = Vec::new();
    for (id, value) in of(Kind::GlobalRules) {
        match resource::parse::<resource::PluginSet>(value) {
            Ok(rule) => global_rules.push((Kind::GlobalRules.key(id), rule.plugins)),
            Err(e) => skip(Kind::GlobalRules, id, e),
        }
    }
    let layers: Vec<(&str, &Plugins)> = global_rules.iter().map(|(k, p)| (k.as_str(), p)).collect();
    let global = Chain::build(plugins, &layers, false, &metadata).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "global rules left out");
        Chain::default()
    });

    let mut routes = Vec::new();
    for (id, value) in of(Kind::Routes) {
        let route = resource::parse::<resource::Route>(value).and_then(|r| {
            let layers = Layers {
                plugins,
                services: &services,
                plugin_configs: &plugin_configs,
                metadata: &metadata,
            };
            compile_route(id, &r, &upstreams, &layers, checks)
        });
        match route {
            Ok(Some(route)) => routes.push(route),
            Ok(None) => {}
            Err(e) => skip(Kind::Routes, id, e),
        }
    }
    let mut certificates = Certificates::default();
    for (id, value) in of(Kind::Ssls) {
        let added = resource::parse::<resource::Ssl>(value).and_then(|ssl| {
            if ssl.kind != resource::SslType::Server || ssl.status == Some(0) {
                return Ok(());
            }
            let versions = ssl.protocol_versions()?;
            certificates
                .insert(&ssl.snis, ssl.certified_keys()?, &versions)
                .map_err(Invalid)
        });
        if let Err(e) = added {
            skip(Kind::Ssls, id, e);
        }
    }
    let consumers = Consumers::compile(
        of(Kind::ConsumerGroups),
        of(Kind::Consumers),
        of(Kind::Credentials),
        &metadata,
        plugins,
        &skip,
    );
    Snapshot {
        revision,
        router: Router::new(routes),
        global,
        certificates,
        consumers: Arc::new(consumers),
        upstreams: upstreams
            .into_iter()
            .map(|(id, u)| (id.to_string(), u))
            .collect(),
        metadata,
    }
}

fn find<'a, T>(map: &'a HashMap<&str, T>, kind: Kind, id: &str) -> Result<&'a T, Invalid> {
    map.get(id)
        .ok_or_else(|| Invalid(format!("{} [{id}] does not exist", kind.noun())))
}

/// The upstream a route or service names, inline or by id; None when it names none.
fn resolve_upstream(
    inline: &Option<resource::Upstream>,
    id: &Option<resource::Id>,
    owner: &str,
    upstreams: &HashMap<&str, Arc<Upstream>>,
    checks: &HealthChecks,
) -> Result<Option<Arc<Upstream>>, Invalid> {
    match (inline, id) {
        (Some(inline), _) => Ok(Some(Arc::new(Upstream::build(inline, owner, checks)?))),
        (None, Some(id)) => Ok(Some(find(upstreams, Kind::Upstreams, &id.0)?.clone())),
        (None, None) => Ok(None),
    }
}

/// The route as it serves; None when it is disabled (`status: 0`).
/// What a route's plugins are built from besides its own: its service's and plugin config's,
/// and the plugins' metadata.
struct Layers<'a> {
    plugins: &'a dyn PluginFactory,
    services: &'a HashMap<&'a str, (resource::Service, Option<Arc<Upstream>>)>,
    plugin_configs: &'a HashMap<&'a str, Plugins>,
    metadata: &'a HashMap<String, Value>,
}

fn compile_route(
    id: &str,
    r: &resource::Route,
    upstreams: &HashMap<&str, Arc<Upstream>>,
    layers: &Layers<'_>,
    checks: &HealthChecks,
) -> Result<Option<Route>, Invalid> {
    let Layers {
        plugins: factory,
        services,
        plugin_configs,
        metadata,
    } = layers;
    if r.status == Some(0) {
        return Ok(None);
    }
    let service = r
        .service_id
        .as_ref()
        .map(|sid| find(services, Kind::Services, &sid.0))
        .transpose()?;
    let owner = Kind::Routes.key(id);
    let upstream = match resolve_upstream(&r.upstream, &r.upstream_id, &owner, upstreams, checks)? {
        Some(own) => Some(own),
        None => service.and_then(|(_, u)| u.clone()),
    };
    let empty = Plugins::new();
    let plugin_config = r
        .plugin_config_id
        .as_ref()
        .map(|pid| find(plugin_configs, Kind::PluginConfigs, &pid.0))
        .transpose()?;
    let service_key = r.service_id.as_ref().map(|s| Kind::Services.key(&s.0));
    let config_key = r
        .plugin_config_id
        .as_ref()
        .map(|p| Kind::PluginConfigs.key(&p.0));
    let plugins = Chain::build(
        *factory,
        &[
            (
                service_key.as_deref().unwrap_or_default(),
                service
                    .and_then(|(s, _)| s.plugins.as_ref())
                    .unwrap_or(&empty),
            ),
            (
                config_key.as_deref().unwrap_or_default(),
                plugin_config.unwrap_or(&empty),
            ),
            (&owner, r.plugins.as_ref().unwrap_or(&empty)),
        ],
        false,
        metadata,
    )?;
    let mut host_texts: Vec<&String> = r.hosts().collect();
    if host_texts.is_empty()
        && let Some((s, _)) = service
    {
        host_texts = s.hosts.iter().flatten().collect();
    }
    let hosts = host_texts.iter().map(|h| HostPattern::parse(h)).collect();
    let remote_addrs = r
        .remote_addrs()
        .map(|a| crate::vars::parse_cidr(a).map_err(Invalid))
        .collect::<Result<_, _>>()?;
    let vars = r
        .vars
        .as_ref()
        .map(crate::vars::Vars::compile)
        .transpose()
        .map_err(|e| Invalid(format!("vars: {e}")))?;
    let methods = r
        .methods
        .as_ref()
        .map(|ms| {
            ms.iter()
                .map(|m| http::Method::from_bytes(m.as_bytes()))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()
        .map_err(|e| Invalid(format!("methods: {e}")))?;
    let enable_websocket = r
        .enable_websocket
        .or_else(|| service.and_then(|(s, _)| s.enable_websocket))
        .unwrap_or(false);
    Ok(Some(Route {
        id: Arc::from(id),
        service_id: r.service_id.as_ref().map(|s| Arc::from(s.0.as_str())),
        uris: r.uris().map(|u| UriPattern::parse(u)).collect(),
        hosts,
        methods,
        remote_addrs,
        vars,
        priority: r.priority,
        upstream,
        plugins,
        timeout: r.timeout,
        enable_websocket,
        labels: Labels {
            name: r.name.as_deref().map(Arc::from),
            uris: r.uris().map(|u| Arc::from(u.as_str())).collect(),
            hosts: host_texts.iter().map(|h| Arc::from(h.as_str())).collect(),
        },
    }))
}

/// The current snapshot, shared by the data plane's workers.
#[derive(Debug)]
pub struct Runtime {
    current: ArcSwap<Snapshot>,
    /// What builds the snapshots' plugins.
    plugins: Arc<dyn PluginFactory>,
    /// Upstream health, kept across snapshots.
    pub checks: Arc<HealthChecks>,
    /// The revision of the snapshot serving, for whoever waits for a change to serve.
    applied: tokio::sync::watch::Sender<i64>,
}

impl Runtime {
    /// A runtime serving an empty snapshot until it follows a store.
    pub fn new(plugins: Arc<dyn PluginFactory>) -> Runtime {
        Runtime {
            current: ArcSwap::default(),
            plugins,
            checks: Arc::default(),
            applied: tokio::sync::watch::channel(0).0,
        }
    }

    /// Follows the revision of the snapshot serving.
    pub fn applied(&self) -> tokio::sync::watch::Receiver<i64> {
        self.applied.subscribe()
    }

    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    pub fn install(&self, snapshot: Snapshot) {
        let revision = snapshot.revision;
        self.current.store(Arc::new(snapshot));
        self.applied.send_replace(revision);
    }

    /// Follows the store until `shutdown`, installing a new snapshot after each change.
    ///
    /// Waits up to [`FIRST_READ`] for the store's first answer; a store that does not answer
    /// in time (etcd down at start) is caught up with later, and meanwhile the last-known-good
    /// configuration persisted at `last_good` serves. `defaults` are resources present unless
    /// the store has the same key (the built-in routes to Axle's own services).
    pub async fn follow(
        self: &Arc<Self>,
        store: &Arc<ConfigStore>,
        defaults: BTreeMap<String, Value>,
        last_good: PathBuf,
        shutdown: CancellationToken,
    ) -> Vec<JoinHandle<()>> {
        let (mut updates, feeder) = store.follow(shutdown.clone());
        let mut follower = Follower {
            runtime: self.clone(),
            defaults: Arc::new(defaults),
            stored: Arc::default(),
            revision: 0,
            last_good,
            checks: self.checks.clone(),
        };
        match tokio::time::timeout(FIRST_READ, updates.recv()).await {
            Ok(Some(update)) => follower.apply(vec![update]).await,
            _ => follower.start_from_last_good().await,
        }
        let task = tokio::spawn(async move {
            loop {
                let first = tokio::select! {
                    update = updates.recv() => update,
                    _ = shutdown.cancelled() => return,
                };
                let Some(first) = first else { return };
                // Everything already waiting goes into one snapshot.
                let mut batch = vec![first];
                while let Ok(update) = updates.try_recv() {
                    batch.push(update);
                }
                follower.apply(batch).await;
            }
        });
        vec![feeder, task]
    }
}

/// How long start-up waits for the config store before serving the last-known-good copy.
pub const FIRST_READ: Duration = Duration::from_secs(3);

/// The follower's copy of the store's configuration.
struct Follower {
    runtime: Arc<Runtime>,
    defaults: Arc<BTreeMap<String, Value>>,
    stored: Arc<BTreeMap<String, Value>>,
    revision: i64,
    /// Where the last configuration read from the store is kept for a cold start.
    last_good: PathBuf,
    checks: Arc<HealthChecks>,
}

/// The file format of the last-known-good copy: written from a borrowed configuration, read
/// into an owned one.
#[derive(serde::Serialize, serde::Deserialize)]
struct LastGood<C> {
    revision: i64,
    config: C,
}

impl Follower {
    async fn apply(&mut self, updates: Vec<Update>) {
        for update in updates {
            match update {
                Update::Reset { revision, config } => {
                    self.revision = revision;
                    self.stored = Arc::new(config);
                }
                Update::Changes { revision, changes } => {
                    self.revision = revision;
                    let stored = Arc::make_mut(&mut self.stored);
                    for (key, value) in changes {
                        match value {
                            Some(value) => stored.insert(key, value),
                            None => stored.remove(&key),
                        };
                    }
                }
            }
        }
        self.install().await;
        tracing::debug!(revision = self.revision, "gateway configuration applied");
        self.persist().await;
    }

    /// Compiles and installs a snapshot. Compiling 100k routes takes a few hundred
    /// milliseconds, so it runs off the async workers, which keep serving the old snapshot.
    async fn install(&self) {
        let (defaults, stored) = (self.defaults.clone(), self.stored.clone());
        let (revision, checks, runtime) =
            (self.revision, self.checks.clone(), self.runtime.clone());
        let compiled = tokio::task::spawn_blocking(move || {
            let mut all = (*defaults).clone();
            all.extend(stored.iter().map(|(k, v)| (k.clone(), v.clone())));
            runtime.install(compile(revision, &all, &checks, &*runtime.plugins));
        })
        .await;
        if let Err(e) = compiled {
            tracing::error!(error = %e, revision, "gateway: compiling the configuration failed; serving the previous one");
        }
    }

    /// Writes the configuration next to the data (whole file replaced atomically).
    async fn persist(&self) {
        let (revision, stored) = (self.revision, self.stored.clone());
        let path = self.last_good.clone();
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                axle_core::files::private_dir(dir)?;
            }
            let copy = LastGood {
                revision,
                config: &*stored,
            };
            // It holds the certificates' private keys and the consumers' credentials.
            axle_core::files::write_private(&path, &serde_json::to_vec(&copy)?)
        })
        .await;
        if let Ok(Err(e)) = written {
            tracing::warn!(file = %self.last_good.display(), error = %e, "gateway: last-known-good configuration not saved");
        }
    }

    /// The store did not answer in time: serve the persisted copy (or only the defaults).
    async fn start_from_last_good(&mut self) {
        let path = self.last_good.clone();
        let read = tokio::task::spawn_blocking(
            move || -> Result<LastGood<BTreeMap<String, Value>>, String> {
                let bytes = std::fs::read(&path).map_err(|e| e.to_string())?;
                serde_json::from_slice(&bytes).map_err(|e| e.to_string())
            },
        )
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match read {
            Ok(copy) => {
                tracing::warn!(
                    revision = copy.revision,
                    "gateway: the config store does not answer; serving the last-known-good configuration until it does"
                );
                self.revision = copy.revision;
                self.stored = Arc::new(copy.config);
            }
            Err(e) => {
                tracing::warn!(error = %e, "gateway: the config store does not answer and there is no last-known-good configuration; serving the defaults until it does");
            }
        }
        self.install().await;
    }
}
