//! `axle-gateway`: the API gateway, compatible with Apache APISIX.
//!
//! Control plane and data plane, each in its room:
//! - [`admin`]: the Admin API (APISIX v3 shapes) writing [`resource`]s to the [`store`];
//! - [`runtime`]: the store's content compiled into an immutable snapshot (router, upstreams,
//!   plugin chains), swapped atomically as the store changes;
//! - [`proxy`]: the hyper data plane serving requests from the current snapshot, running the
//!   [`plugins`] phases, with [`vars`] expressions for matching and [`tls`] both ways; its
//!   request-rate [`warnings`] are rate-limited per kind;
//! - [`client`]: the outbound HTTP client the proxy forwards over, and plugins that fetch
//!   (key sets, discovery, introspection) use too.

pub mod admin;
pub mod client;
pub mod plugins;
pub mod proxy;
pub mod resource;
pub mod runtime;
pub mod store;
pub mod tls;
pub mod vars;
pub mod warnings;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use axle_core::config::{ConfigProvider, GatewayRole};
use axle_core::db::Migrations;
use axle_core::platform::{Platform, Service, ServiceParts, StartError};
use prometheus::Registry;
use serde_json::json;

pub use proxy::{DataPlane, Listener};
use store::ConfigStore;

/// The maps looked up on every request (routes, consumers, upstream connections, counters):
/// foldhash, seeded per process, costs a fraction of the standard library's SipHash.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub const NAME: &str = "gateway";

pub fn migrations() -> Migrations {
    Migrations {
        sqlite: sqlx::migrate!("./migrations/sqlite"),
        postgres: sqlx::migrate!("./migrations/postgres"),
    }
}

/// The gateway's two halves: the Admin API (as a [`Service`], on `admin_listen`) and the data
/// plane (on `listen`), both on the same store. A `data_plane` node's Service serves only the
/// health and metrics endpoints; a `control_plane` node has no data plane.
#[derive(Debug)]
pub struct Gateway {
    pub admin: Service,
    pub data_plane: Option<DataPlane>,
    /// The Prometheus exporter of the data plane, for `prometheus_listen`.
    pub exporter: Option<axum::Router>,
}

/// Another service of this process, as the gateway's default routes reach it.
#[derive(Debug, Clone, Copy)]
pub struct LocalService<'a> {
    pub name: &'a str,
    pub addr: SocketAddr,
    /// Paths anyone may call without a token (besides `/healthz`, `/readyz` and
    /// `/openapi.json`), e.g. a public catalog.
    pub public: &'a [&'a str],
    /// The service checks every caller itself and serves pages and sign-in endpoints
    /// (identity): its route has no token check.
    pub open: bool,
    /// The service is the pages at `/` (web): browsers are signed in to it.
    pub pages: bool,
}

/// Builds the gateway: opens its store and, unless it is a control plane, compiles the first
/// snapshot and follows the store. `services` are the other services of this process, routed
/// under `/api/<name>/` when `default_routes` is on.
pub async fn build(
    platform: &Platform,
    services: &[LocalService<'_>],
) -> Result<Gateway, StartError> {
    let config = &platform.config.services.gateway;
    let dir = platform.config.data_dir.join(NAME);
    let fail = |message: String| StartError::Service {
        service: NAME,
        message,
    };
    let db = platform.open_db(NAME, &migrations()).await?;
    let store = Arc::new(match config.config_provider {
        ConfigProvider::Embedded => ConfigStore::Embedded(
            store::embedded::Embedded::open(db.clone())
                .await
                .map_err(|e| fail(e.to_string()))?,
        ),
        ConfigProvider::Etcd => ConfigStore::Etcd(
            store::etcd::Etcd::new(&config.etcd).map_err(|e| fail(e.to_string()))?,
        ),
        ConfigProvider::Yaml => ConfigStore::Yaml(store::yaml::YamlFile::new(
            config
                .yaml_file
                .clone()
                .unwrap_or_else(|| dir.join("apisix.yaml")),
        )),
    });

    let expiry = store.expire_lapsed(platform.shutdown.clone());
    let mut tasks = Vec::new();
    let mut exporter = None;
    let mut applied = None;
    let data_plane = if config.role == GatewayRole::ControlPlane {
        None
    } else {
        let plugins = plugins::Factory::default();
        let runtime = Arc::new(runtime::Runtime::new(Arc::new(plugins.clone())));
        // Writes wait for this data plane to serve them when it follows the same embedded
        // store; etcd's revisions count every writer's keys, not only the gateway's.
        if config.config_provider == ConfigProvider::Embedded {
            applied = Some(runtime.applied());
        }
        let defaults = if config.default_routes {
            let c = &platform.config;
            let discovery = c
                .auth
                .verify_tokens
                .then(|| format!("{}/.well-known/openid-configuration", c.trusted_issuer()));
            let pages = match services.iter().any(|s| s.pages) {
                true => Some(PagesSignIn {
                    site: c.site(),
                    secret: c
                        .web_session_secret()
                        .map_err(|e| fail(format!("the pages' session secret: {e}")))?,
                }),
                false => None,
            };
            default_routes(services, discovery.as_deref(), pages.as_ref())
        } else {
            BTreeMap::new()
        };
        let last_good = dir.join("last_good.json");
        tasks = runtime
            .follow(&store, defaults, last_good, platform.shutdown.clone())
            .await;
        let limits = proxy::Limits {
            max_body_bytes: config.max_body_bytes,
            head_timeout: std::time::Duration::from_secs(config.head_timeout_secs),
            max_connections_per_client: config.max_connections_per_client,
            ..proxy::Limits::default()
        };
        exporter = Some(metrics_exporter(
            runtime.clone(),
            plugins.shared.clone(),
            store.clone(),
        ));
        Some(DataPlane::new(
            runtime,
            plugins.shared,
            limits,
            config.fallback_sni.clone(),
        ))
    };

    let (api, openapi) = if config.role == GatewayRole::DataPlane {
        (axum::Router::new(), admin::openapi::health_only())
    } else {
        let key = platform
            .config
            .gateway_admin_key()
            .map_err(|e| fail(format!("admin key: {e}")))?;
        let allow = config
            .allow_admin
            .iter()
            .map(|c| vars::parse_cidr(c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(format!("allow_admin: {e}")))?;
        let openapi = admin::openapi::document();
        let router = admin::router(admin::AdminState {
            store,
            key: Arc::new(key),
            allow: Arc::new(allow),
            writing: Arc::default(),
            plugins: &plugins::Catalog,
            applied,
        });
        (router, openapi)
    };
    let mut admin = platform.assemble(ServiceParts {
        name: NAME,
        db,
        outbox: None,
        registry: Registry::new(),
        api,
        openapi,
    })?;
    admin.tasks.extend(tasks);
    admin.tasks.extend(expiry);
    Ok(Gateway {
        admin,
        data_plane,
        exporter,
    })
}

/// `/apisix/prometheus/metrics`: the data plane's metrics, with upstream health and etcd's
/// reachability read at each scrape.
fn metrics_exporter(
    runtime: Arc<runtime::Runtime>,
    shared: Arc<plugins::Shared>,
    store: Arc<ConfigStore>,
) -> axum::Router {
    let scrape = move || {
        let etcd = match &*store {
            ConfigStore::Etcd(etcd) => {
                Some(etcd.reachable.load(std::sync::atomic::Ordering::Relaxed))
            }
            _ => None,
        };
        let snapshot = runtime.snapshot();
        let routes: HashSet<&str> = snapshot
            .router
            .routes()
            .iter()
            .flat_map(|route| [Some(&*route.id), route.labels.name.as_deref()])
            .flatten()
            .collect();
        let text = shared
            .metrics
            .render(&runtime.checks.statuses(), etcd, &|route| {
                routes.contains(route)
            });
        async move { ([("content-type", prometheus::TEXT_FORMAT)], text) }
    };
    axum::Router::new().route("/apisix/prometheus/metrics", axum::routing::get(scrape))
}

/// `/api/<name>/...` → the service's own listener, with the prefix stripped. With
/// `discovery` (tokens are verified), each route but an open service's needs a bearer token of
/// that issuer (`openid-connect`, `bearer_only`, keys from its JWKS); the health, readiness and
/// OpenAPI endpoints and the paths a service declares public stay open, on a route of their
/// own.
fn default_routes(
    services: &[LocalService<'_>],
    discovery: Option<&str>,
    pages: Option<&PagesSignIn>,
) -> BTreeMap<String, serde_json::Value> {
    let mut routes = BTreeMap::new();
    for service in services {
        if service.pages {
            routes.extend(pages_routes(service, discovery, pages));
            continue;
        }
        let name = service.name;
        let rewrite = json!({"proxy-rewrite": {"regex_uri": [format!("^/api/{name}(/.*)"), "$1"]}});
        let upstream = json!({"type": "roundrobin", "nodes": {service.addr.to_string(): 1}});
        let mut plugins = rewrite.clone();
        if let (Some(discovery), false) = (discovery, service.open) {
            plugins["openid-connect"] = json!({
                "client_id": "axle-gateway",
                "discovery": discovery,
                "bearer_only": true,
                "use_jwks": true,
                "realm": "axle",
                // The services read the token itself (Authorization): nothing more to pass.
                "set_access_token_header": false,
                "set_userinfo_header": false,
            });
            let id = format!("axle-{name}-public");
            let uris: Vec<String> = ["/healthz", "/readyz", "/openapi.json"]
                .iter()
                .chain(service.public)
                .map(|path| format!("/api/{name}{path}"))
                .collect();
            routes.insert(
                resource::Kind::Routes.key(&id),
                json!({
                    "id": id,
                    "name": format!("Axle {name} service, public paths"),
                    "uris": uris,
                    "priority": 10,
                    "plugins": rewrite,
                    "upstream": upstream,
                }),
            );
        }
        let id = format!("axle-{name}");
        routes.insert(
            resource::Kind::Routes.key(&id),
            json!({
                "id": id,
                "name": format!("Axle {name} service"),
                "uri": format!("/api/{name}/*"),
                "plugins": plugins,
                "upstream": upstream,
            }),
        );
    }
    routes
}

/// How browsers are signed in to the pages: the site they reach, and the secret of their
/// session cookie.
#[derive(Debug)]
struct PagesSignIn {
    site: String,
    secret: String,
}

/// `/*` → the pages, browsers signed in first (`openid-connect`'s authorization code flow with
/// PKCE as the identity service's `axle-web` client, the session in an encrypted cookie,
/// `/logout`); the assets stay open.
fn pages_routes(
    service: &LocalService<'_>,
    discovery: Option<&str>,
    sign_in: Option<&PagesSignIn>,
) -> Vec<(String, serde_json::Value)> {
    let upstream = json!({"type": "roundrobin", "nodes": {service.addr.to_string(): 1}});
    let mut plugins = json!({});
    if let (Some(discovery), Some(sign_in)) = (discovery, sign_in) {
        let site = &sign_in.site;
        plugins["openid-connect"] = json!({
            "client_id": "axle-web",
            "discovery": discovery,
            "scope": "openid profile email",
            "use_pkce": true,
            "redirect_uri": format!("{site}/auth/callback"),
            "logout_path": "/logout",
            "post_logout_redirect_uri": format!("{site}/"),
            "set_userinfo_header": false,
            "session": {"secret": sign_in.secret, "cookie_name": "axle_session"},
        });
    }
    let (id, public) = ("axle-web".to_string(), "axle-web-public".to_string());
    vec![
        (
            resource::Kind::Routes.key(&public),
            json!({"id": public, "name": "Axle pages, assets", "uris": ["/assets/*"],
                   "priority": 10, "upstream": upstream}),
        ),
        (
            resource::Kind::Routes.key(&id),
            json!({"id": id, "name": "Axle pages", "uri": "/*", "priority": -100,
                   "plugins": plugins, "upstream": upstream}),
        ),
    ]
}
