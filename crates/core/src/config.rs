//! Configuration: typed, layered, validated at start-up.
//!
//! Layers, later wins: built-in defaults → a TOML file (`--config`) → `AXLE__SECTION__KEY`
//! environment variables (`AXLE__DATABASE__URL=postgres://…`). Every struct denies unknown keys,
//! so a typo fails start-up with a message naming the key instead of being silently ignored.
//!
//! A backend is "scaled out" when its URL is set: no `database.url` means one SQLite file per
//! service in the data directory, no `events.amqp_url` means the embedded bus, no `kv.redis_url`
//! means in-memory counters and locks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Why a configuration could not be loaded. The message always names the offending key or file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0}: not found")]
    FileNotFound(PathBuf),
    #[error("{0}")]
    Invalid(String),
}

/// The whole runtime configuration of one `axle` process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where embedded storage lives (SQLite files, the embedded bus, generated secrets).
    pub data_dir: PathBuf,
    /// This process's name where it holds things others must not take while it lives (saga
    /// leases, idempotency claims), and gives back when it starts again. Unset: the host name.
    /// Give each process sharing a database its own.
    pub node: Option<String>,
    pub log: LogConfig,
    pub telemetry: TelemetryConfig,
    pub http: HttpConfig,
    pub database: DatabaseConfig,
    pub events: EventsConfig,
    pub kv: KvConfig,
    pub auth: AuthConfig,
    pub services: ServicesConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./axle-data"),
            node: None,
            log: LogConfig::default(),
            telemetry: TelemetryConfig::default(),
            http: HttpConfig::default(),
            database: DatabaseConfig::default(),
            events: EventsConfig::default(),
            kv: KvConfig::default(),
            auth: AuthConfig::default(),
            services: ServicesConfig::default(),
        }
    }
}

/// `[auth]`: whose tokens the services (and the gateway's default routes) accept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Verify callers' bearer tokens. Off only for development against services reached
    /// directly: every caller is then trusted with every role, named by the gateway's
    /// `X-Consumer-Username` header if it has one.
    pub verify_tokens: bool,
    /// The issuer whose tokens are accepted; unset: Axle's own identity service
    /// (`services.identity.issuer`). Set it to use Keycloak, Azure AD or any OIDC provider.
    pub issuer: Option<String>,
    /// The `aud` tokens must carry; unset: `services.identity.audience`.
    pub audience: Option<String>,
    /// Where the roles are in a token: a claim, or a dotted path into one (Keycloak:
    /// `realm_access.roles`).
    pub roles_claim: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            verify_tokens: true,
            issuer: None,
            audience: None,
            roles_claim: "roles".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, for machines (the default).
    Json,
    /// Human-readable lines, for a terminal.
    Text,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `info,axle_core=debug`; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/HTTP traces endpoint (e.g. `http://127.0.0.1:4318/v1/traces`); unset = no export.
    pub otlp_endpoint: Option<String>,
    /// Fraction of new traces sampled, 0.0 – 1.0 (parent decisions are always followed).
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sample_ratio: 1.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest request body a service accepts, in bytes.
    pub body_limit_bytes: usize,
    /// How long in-flight requests may run after a shutdown signal.
    pub shutdown_grace_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            body_limit_bytes: 1024 * 1024,
            shutdown_grace_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://…`: every service gets its own schema `<schema_prefix><service>` there.
    /// Unset: one SQLite file per service under the data directory.
    pub url: Option<SecretString>,
    pub schema_prefix: String,
    pub max_connections: u32,
    pub connect_timeout_secs: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            schema_prefix: "axle_".into(),
            max_connections: 10,
            connect_timeout_secs: 5,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// `amqp://…`: events go through RabbitMQ. Unset: the embedded, SQLite-backed bus.
    pub amqp_url: Option<SecretString>,
    /// Topic exchange events are published to.
    pub exchange: String,
    /// Deliveries of one event to one consumer before it is dead-lettered.
    pub max_attempts: u32,
    /// Seconds a RabbitMQ queue may go unused (no consumer) before the broker deletes it
    /// (`x-expires`): for short-lived environments such as test runs. Unset: queues stay.
    pub queue_expires_secs: Option<u64>,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            amqp_url: None,
            exchange: "axle.events".into(),
            max_attempts: 5,
            queue_expires_secs: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KvConfig {
    /// `redis://…`: counters, locks and hot state live in Redis. Unset: in memory.
    pub redis_url: Option<SecretString>,
    /// Prefix of every key Axle writes, so several deployments can share one Redis.
    pub key_prefix: String,
}

impl Default for KvConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            key_prefix: "axle:".into(),
        }
    }
}

/// Per-service settings. Each service Axle ships has its own table, e.g. `[services.vehicle]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServicesConfig {
    pub gateway: GatewayConfig,
    pub vehicle: ServiceConfig,
    pub masterdata: MasterdataConfig,
    pub identity: IdentityConfig,
    pub web: WebConfig,
    pub market: MarketConfig,
    pub order: OrderConfig,
    pub finance: ServiceConfig,
    pub saga: SagaConfig,
}

impl Default for ServicesConfig {
    fn default() -> Self {
        Self {
            gateway: GatewayConfig::default(),
            vehicle: ServiceConfig::on_port(9203),
            masterdata: MasterdataConfig::default(),
            identity: IdentityConfig::default(),
            web: WebConfig::default(),
            market: MarketConfig::default(),
            order: OrderConfig::default(),
            finance: ServiceConfig::on_port(9207),
            saga: SagaConfig::default(),
        }
    }
}

/// `[services.gateway]`: the API gateway (APISIX-compatible).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// The data plane (APISIX's `node_listen`).
    pub listen: SocketAddr,
    /// The data plane over TLS, with certificates from the `ssls` resources chosen by SNI
    /// (APISIX's `ssl.listen`); unset = no TLS listener.
    pub tls_listen: Option<SocketAddr>,
    /// The server name whose certificate TLS clients that send no SNI get (APISIX's
    /// `ssl.fallback_sni`); unset = such handshakes fail.
    pub fallback_sni: Option<String>,
    /// The Admin API (APISIX's `admin_listen`).
    pub admin_listen: SocketAddr,
    /// The Prometheus exporter, `/apisix/prometheus/metrics` (APISIX's
    /// `plugin_attr.prometheus.export_addr`); unset = no exporter.
    pub prometheus_listen: Option<SocketAddr>,
    /// The Admin API key (`X-API-KEY`). Unset: the `AXLE_ADMIN_KEY` environment variable, else
    /// a key generated on first start and kept in `<data_dir>/gateway/admin_key`.
    pub admin_key: Option<SecretString>,
    /// Addresses allowed to call the Admin API (APISIX's `allow_admin`).
    pub allow_admin: Vec<String>,
    /// Worker threads of the data plane; unset = shared with the rest of Axle.
    pub workers: Option<usize>,
    /// Largest request body the data plane accepts (413 beyond); 0 = no limit.
    pub max_body_bytes: u64,
    /// Seconds a client may take to send a request head, from its first byte however slowly
    /// the rest trickles in (nginx's `client_header_timeout`), and may idle between requests.
    pub head_timeout_secs: u64,
    /// Connections one client address may have open at once (more are closed as they come);
    /// 0 = no limit, as a gateway behind a load balancer sees one address for many clients.
    pub max_connections_per_client: u32,
    /// Route `/api/<service>/...` to each service running in this process.
    pub default_routes: bool,
    /// What this node does (APISIX's `deployment.role`).
    pub role: GatewayRole,
    /// Where routes, upstreams and the rest live (APISIX's `config_provider`).
    pub config_provider: ConfigProvider,
    pub etcd: EtcdConfig,
    /// The `apisix.yaml` file read with `config_provider = "yaml"`; unset:
    /// `<data_dir>/gateway/apisix.yaml`.
    pub yaml_file: Option<PathBuf>,
}

/// APISIX's deployment roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GatewayRole {
    /// Admin API and data plane in one process.
    Traditional,
    /// The data plane only: serves what the config store holds, no Admin API.
    DataPlane,
    /// The Admin API only: writes the config store, serves no traffic.
    ControlPlane,
}

/// Where the gateway's configuration lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigProvider {
    /// The gateway's database (SQLite by default, PostgreSQL when `database.url` is set).
    Embedded,
    /// etcd v3, in APISIX's key layout.
    Etcd,
    /// A standalone `apisix.yaml` file, re-read when it changes (data plane only).
    Yaml,
}

/// `[services.gateway.etcd]` (APISIX's `deployment.etcd`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdConfig {
    /// Member URLs, tried in turn (`http://127.0.0.1:2379`).
    pub endpoints: Vec<String>,
    /// The key prefix every resource lives under.
    pub prefix: String,
    /// Seconds one request may take.
    pub timeout_secs: u64,
    /// Keep the secrets APISIX's plugins list as `encrypt_fields` (key-auth's `key`,
    /// basic-auth's `password`, jwt-auth's `secret`, the limits' `redis_password`) encrypted in
    /// etcd (APISIX's `data_encryption.enable_encrypt_fields`).
    pub encrypt_fields: bool,
    /// AES keys, 16 or 32 characters each: the first encrypts, any opens (APISIX's
    /// `data_encryption.keyring`, whose default this is, so an etcd APISIX wrote reads
    /// unchanged). SSL private keys are encrypted whenever it is not empty.
    pub keyring: Vec<String>,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/apisix".into(),
            timeout_secs: 30,
            encrypt_fields: true,
            keyring: vec!["qeddd145sfvddff3".into(), "edd1c9f0985e76a2".into()],
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9080)),
            tls_listen: Some(SocketAddr::from(([0, 0, 0, 0], 9443))),
            fallback_sni: None,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9180)),
            prometheus_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9091))),
            admin_key: None,
            allow_admin: vec!["127.0.0.0/24".into(), "::1/128".into()],
            workers: None,
            max_body_bytes: 64 * 1024 * 1024,
            head_timeout_secs: 60,
            max_connections_per_client: 0,
            default_routes: true,
            role: GatewayRole::Traditional,
            config_provider: ConfigProvider::Embedded,
            etcd: EtcdConfig::default(),
            yaml_file: None,
        }
    }
}

/// `[services.masterdata]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MasterdataConfig {
    pub listen: SocketAddr,
    /// The vehicle service's API, which the consistency check compares golden records with.
    pub vehicle_url: String,
    /// The upstream model catalog to sync; unset = no sync.
    pub catalog_url: Option<String>,
    /// Seconds between catalog syncs.
    pub catalog_interval_secs: u64,
}

impl Default for MasterdataConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9204)),
            vehicle_url: "http://127.0.0.1:9203".into(),
            catalog_url: None,
            catalog_interval_secs: 300,
        }
    }
}

/// `[services.web]`: the pages, served through the gateway at `/`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    pub listen: SocketAddr,
    /// Encrypts the pages' session cookie and keys their forms' CSRF tokens; the same on every
    /// node. Unset: generated on first start and kept in `<data_dir>/web/session_secret`.
    pub session_secret: Option<SecretString>,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9201)),
            session_secret: None,
        }
    }
}

/// `[services.market]`: the API market, which writes its products' routes and its
/// applications' consumers through the gateway's Admin API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MarketConfig {
    pub listen: SocketAddr,
    /// The gateway's Admin API; unset: this process's (`services.gateway.admin_listen`). Its
    /// key is the gateway's (`services.gateway.admin_key`).
    pub gateway_admin_url: Option<String>,
    /// Whether the gateway reports each request to the market (usage, latency, errors).
    pub metering: bool,
    /// Where the gateway reports them; unset: `http://<listen>/usage/counts`.
    pub usage_url: Option<String>,
}

impl Default for MarketConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9205)),
            gateway_admin_url: None,
            metering: true,
            usage_url: None,
        }
    }
}

/// `[services.order]`: orders and their state machine.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrderConfig {
    pub listen: SocketAddr,
    /// How long an order awaits payment before it is cancelled, unless the order says.
    pub payment_deadline_secs: u64,
    /// How often overdue orders are looked for.
    pub expiry_check_secs: u64,
}

impl Default for OrderConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9206)),
            payment_deadline_secs: 30 * 60,
            expiry_check_secs: 5,
        }
    }
}

/// `[services.saga]`: the saga orchestrator (settlement), which calls the participants'
/// HTTP APIs as a client of the identity service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SagaConfig {
    pub listen: SocketAddr,
    /// The participants; unset: this process's (`services.<name>.listen`).
    pub vehicle_url: Option<String>,
    pub order_url: Option<String>,
    pub finance_url: Option<String>,
    /// The client the orchestrator calls participants as (client credentials).
    pub client_id: String,
    /// Its secret; unset: the one the identity service keeps in `<data_dir>/identity/saga_secret`.
    pub client_secret: Option<SecretString>,
    /// Instances driven at once by this process.
    pub concurrency: usize,
}

impl Default for SagaConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9208)),
            vehicle_url: None,
            order_url: None,
            finance_url: None,
            client_id: SAGA_CLIENT.into(),
            client_secret: None,
            concurrency: 64,
        }
    }
}

/// The identity client the saga orchestrator runs as, registered by the identity service.
pub const SAGA_CLIENT: &str = "axle-saga";

/// The environment variable that sets the gateway's Admin API key.
pub const ADMIN_KEY_ENV: &str = "AXLE_ADMIN_KEY";

impl Config {
    /// The gateway's Admin API key (`X-API-KEY`): configured, else from [`ADMIN_KEY_ENV`], else
    /// generated once and kept in `<data_dir>/gateway/admin_key` (printed when generated,
    /// never logged) — so the gateway and the services that call it agree.
    pub fn gateway_admin_key(&self) -> std::io::Result<SecretString> {
        if let Some(key) = &self.services.gateway.admin_key {
            return Ok(key.clone());
        }
        if let Ok(key) = std::env::var(ADMIN_KEY_ENV)
            && !key.is_empty()
        {
            return Ok(SecretString::from(key));
        }
        let path = self.data_dir.join("gateway").join("admin_key");
        let (key, made) =
            crate::files::kept_secret(&path, || uuid::Uuid::new_v4().simple().to_string())?;
        if made {
            println!(
                "gateway: generated the Admin API key {key} (kept in {}; set {ADMIN_KEY_ENV} or \
                 services.gateway.admin_key to choose one)",
                path.display()
            );
        }
        Ok(SecretString::from(key))
    }

    /// This process's name (see [`Config::node`]): configured, else the host name.
    pub fn node_name(&self) -> String {
        self.node
            .clone()
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "axle".into())
    }

    /// Where the saga orchestrator's bootstrapped client secret is kept.
    pub fn saga_secret_path(&self) -> PathBuf {
        self.data_dir.join("identity").join("saga_secret")
    }

    /// The base URL of a service this process would run, from its `listen` address (a
    /// wildcard address is reached on loopback).
    pub fn local_url(listen: SocketAddr) -> String {
        let ip = if listen.ip().is_unspecified() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            listen.ip()
        };
        format!("http://{}", SocketAddr::new(ip, listen.port()))
    }

    /// The gateway's Admin API as the market calls it.
    pub fn gateway_admin_url(&self) -> String {
        match &self.services.market.gateway_admin_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("http://{}", self.services.gateway.admin_listen),
        }
    }

    /// The pages' session secret: configured, else kept in the data directory.
    pub fn web_session_secret(&self) -> std::io::Result<String> {
        if let Some(secret) = &self.services.web.session_secret {
            return Ok(secret.expose_secret().to_string());
        }
        let path = self.data_dir.join("web").join("session_secret");
        crate::files::kept_secret(&path, || {
            use std::fmt::Write;
            let mut text = String::new();
            for byte in uuid::Uuid::new_v4()
                .as_bytes()
                .iter()
                .chain(uuid::Uuid::new_v4().as_bytes())
            {
                let _ = write!(text, "{byte:02x}");
            }
            text
        })
        .map(|(secret, _)| secret)
    }

    /// The site's origin as browsers reach it (the issuer's scheme, host and port).
    pub fn site(&self) -> String {
        let issuer = self.issuer();
        match issuer.find("://").map(|i| i + 3) {
            Some(start) => match issuer[start..].find('/') {
                Some(end) => issuer[..start + end].to_string(),
                None => issuer,
            },
            None => issuer,
        }
    }
}

/// `[services.identity]`: the OpenID Connect provider, users, organisations and clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    pub listen: SocketAddr,
    /// The issuer URL as browsers and clients reach it (through the gateway); unset:
    /// `http://127.0.0.1:<gateway port>/api/identity`.
    pub issuer: Option<String>,
    /// The `aud` of access tokens.
    pub audience: String,
    /// Lifetime of access and ID tokens.
    pub access_token_ttl_secs: u64,
    /// Lifetime of a refresh token (each use replaces it with a new one).
    pub refresh_token_ttl_secs: u64,
    /// How long a sign-on session lasts.
    pub session_ttl_secs: u64,
    /// Days a signing key signs before it is rotated (0 = only on request).
    pub key_rotation_days: u64,
    /// The first administrator's password (user `admin`, made on first start); unset: the
    /// `AXLE_ADMIN_PASSWORD` environment variable, else generated and printed once.
    pub admin_password: Option<SecretString>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9202)),
            issuer: None,
            audience: "axle".into(),
            access_token_ttl_secs: 7200,
            refresh_token_ttl_secs: 30 * 24 * 3600,
            session_ttl_secs: 12 * 3600,
            key_rotation_days: 90,
            admin_password: None,
        }
    }
}

impl Config {
    /// The issuer whose tokens are accepted (`auth.issuer`, else Axle's own).
    pub fn trusted_issuer(&self) -> String {
        match &self.auth.issuer {
            Some(issuer) => issuer.trim_end_matches('/').to_string(),
            None => self.issuer(),
        }
    }

    /// The audience accepted tokens must name.
    pub fn trusted_audience(&self) -> String {
        self.auth
            .audience
            .clone()
            .unwrap_or_else(|| self.services.identity.audience.clone())
    }

    /// The identity provider's issuer URL.
    pub fn issuer(&self) -> String {
        match &self.services.identity.issuer {
            Some(issuer) => issuer.trim_end_matches('/').to_string(),
            None => format!(
                "http://127.0.0.1:{}/api/identity",
                self.services.gateway.listen.port()
            ),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Address the service's own HTTP listener binds. Users reach it through the gateway.
    pub listen: SocketAddr,
}

impl ServiceConfig {
    fn on_port(port: u16) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Config {
    /// Loads defaults, then `file` (which must exist when given), then `AXLE__*` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, Env::prefixed("AXLE__").split("__"))
    }

    /// Loads defaults and `file` only, ignoring the environment (`axle config check`).
    pub fn load_file(file: &Path) -> Result<Self, ConfigError> {
        Self::load_from(Some(file), Figment::new())
    }

    fn load_from(file: Option<&Path>, env: impl figment::Provider) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::FileNotFound(path.to_path_buf()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let config: Config = figment.merge(env).extract().map_err(describe)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot: URL schemes, ranges, filter syntax.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn scheme(
            key: &str,
            url: &Option<SecretString>,
            schemes: &[&str],
        ) -> Result<(), ConfigError> {
            match url {
                Some(url) if !schemes.iter().any(|s| url.expose_secret().starts_with(s)) => {
                    Err(ConfigError::Invalid(format!(
                        "{key}: expected a URL starting with {}",
                        schemes.join(" or ")
                    )))
                }
                _ => Ok(()),
            }
        }
        let invalid = |msg: &str| Err(ConfigError::Invalid(msg.to_string()));
        scheme(
            "database.url",
            &self.database.url,
            &["postgres://", "postgresql://"],
        )?;
        scheme(
            "events.amqp_url",
            &self.events.amqp_url,
            &["amqp://", "amqps://"],
        )?;
        scheme(
            "kv.redis_url",
            &self.kv.redis_url,
            &["redis://", "rediss://"],
        )?;
        if self.events.max_attempts == 0 {
            return invalid("events.max_attempts: must be at least 1");
        }
        if self.database.max_connections == 0 {
            return invalid("database.max_connections: must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.telemetry.sample_ratio) {
            return invalid("telemetry.sample_ratio: must be between 0.0 and 1.0");
        }
        let schema = &self.database.schema_prefix;
        if schema.is_empty() || !schema.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            return invalid("database.schema_prefix: lowercase letters and '_' only");
        }
        let http_url = |url: &str| url.starts_with("http://") || url.starts_with("https://");
        let gw = &self.services.gateway;
        if let Some(key) = gw.etcd.keyring.iter().find(|k| !matches!(k.len(), 16 | 32)) {
            return Err(ConfigError::Invalid(format!(
                "services.gateway.etcd.keyring: a key of {} bytes is neither AES-128 (16) nor AES-256 (32)",
                key.len()
            )));
        }
        for cidr in &gw.allow_admin {
            if cidr.parse::<ipnet::IpNet>().is_err() && cidr.parse::<std::net::IpAddr>().is_err() {
                return Err(ConfigError::Invalid(format!(
                    "services.gateway.allow_admin: {cidr:?} is not an IP address or CIDR block"
                )));
            }
        }
        if gw.workers == Some(0) {
            return invalid("services.gateway.workers: must be at least 1");
        }
        if !(1..=3600).contains(&gw.head_timeout_secs) {
            return invalid("services.gateway.head_timeout_secs: must be within 1 and 3600");
        }
        if gw.config_provider == ConfigProvider::Yaml && gw.role != GatewayRole::DataPlane {
            return invalid(
                "services.gateway.config_provider: \"yaml\" needs role = \"data_plane\" \
                 (the file is the configuration; there is no Admin API to write it)",
            );
        }
        if gw.config_provider == ConfigProvider::Etcd {
            if gw.etcd.endpoints.is_empty() || !gw.etcd.endpoints.iter().all(|u| http_url(u)) {
                return invalid("services.gateway.etcd.endpoints: expected http(s) URLs");
            }
            if !gw.etcd.prefix.starts_with('/') || gw.etcd.prefix.ends_with('/') {
                return invalid(
                    "services.gateway.etcd.prefix: must start with '/' and not end with it",
                );
            }
            if gw.etcd.timeout_secs == 0 {
                return invalid("services.gateway.etcd.timeout_secs: must be at least 1");
            }
        }
        let saga = &self.services.saga;
        for (key, url) in [
            ("vehicle_url", &saga.vehicle_url),
            ("order_url", &saga.order_url),
            ("finance_url", &saga.finance_url),
        ] {
            if url.as_deref().is_some_and(|u| !http_url(u)) {
                return Err(ConfigError::Invalid(format!(
                    "services.saga.{key}: expected an http(s) URL"
                )));
            }
        }
        if saga.concurrency == 0 {
            return invalid("services.saga.concurrency: must be at least 1");
        }
        let order = &self.services.order;
        if order.payment_deadline_secs == 0 || order.expiry_check_secs == 0 {
            return invalid(
                "services.order: payment_deadline_secs and expiry_check_secs must be at least 1",
            );
        }
        if self.auth.issuer.as_deref().is_some_and(|u| !http_url(u)) {
            return invalid("auth.issuer: expected an http(s) URL");
        }
        let id = &self.services.identity;
        if id.issuer.as_deref().is_some_and(|u| !http_url(u)) {
            return invalid("services.identity.issuer: expected an http(s) URL");
        }
        if id.access_token_ttl_secs < 60 || id.access_token_ttl_secs > 86_400 {
            return invalid("services.identity.access_token_ttl_secs: must be within 60 and 86400");
        }
        if id.refresh_token_ttl_secs < id.access_token_ttl_secs {
            return invalid(
                "services.identity.refresh_token_ttl_secs: must be at least access_token_ttl_secs",
            );
        }
        if id.session_ttl_secs < 60 {
            return invalid("services.identity.session_ttl_secs: must be at least 60");
        }
        let md = &self.services.masterdata;
        if !http_url(&md.vehicle_url) {
            return invalid("services.masterdata.vehicle_url: expected an http(s) URL");
        }
        if md.catalog_url.as_deref().is_some_and(|u| !http_url(u)) {
            return invalid("services.masterdata.catalog_url: expected an http(s) URL");
        }
        if md.catalog_interval_secs == 0 {
            return invalid("services.masterdata.catalog_interval_secs: must be at least 1");
        }
        if let Err(e) = self.log.level.parse::<tracing_subscriber::EnvFilter>() {
            return invalid(&format!("log.level: {e}"));
        }
        Ok(())
    }
}

/// Turns figment's errors into one line per problem, each naming the key.
fn describe(err: figment::Error) -> ConfigError {
    let lines: Vec<String> = err
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = e.metadata.as_ref().map(|m| m.name.to_string());
            let place = match (&source, e.metadata.as_ref().and_then(|m| m.source.as_ref())) {
                (_, Some(src)) => format!(" (from {src})"),
                (Some(name), None) => format!(" (from {name})"),
                _ => String::new(),
            };
            if key.is_empty() {
                format!("{}{place}", e.kind)
            } else {
                format!("{key}: {}{place}", e.kind)
            }
        })
        .collect();
    ConfigError::Invalid(lines.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::Serialized;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn defaults_need_no_file() {
        let c = Config::load_from(None, Figment::new()).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("./axle-data"));
        assert!(c.database.url.is_none());
        assert_eq!(c.services.vehicle.listen.port(), 9203);
    }

    #[test]
    fn file_overrides_defaults_and_env_overrides_file() {
        let f = file(
            "data_dir = \"/srv/axle\"\n[events]\nmax_attempts = 3\n[services.vehicle]\nlisten = \"127.0.0.1:7000\"\n",
        );
        let env = Serialized::default("events.max_attempts", 9);
        let c = Config::load_from(Some(f.path()), env).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/axle"));
        assert_eq!(c.events.max_attempts, 9, "env wins over the file");
        assert_eq!(c.services.vehicle.listen.port(), 7000);
        assert_eq!(c.log.level, "info", "untouched keys keep their defaults");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API
    fn env_variables_use_double_underscores() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("AXLE__KV__KEY_PREFIX", "blue:");
            jail.set_env("AXLE__SERVICES__VEHICLE__LISTEN", "127.0.0.1:7001");
            let c = Config::load(None).unwrap();
            assert_eq!(c.kv.key_prefix, "blue:");
            assert_eq!(c.services.vehicle.listen.port(), 7001);
            Ok(())
        });
    }

    #[test]
    fn unknown_key_is_named() {
        let f = file("[database]\nurll = \"postgres://x\"\n");
        let err = Config::load_file(f.path()).unwrap_err().to_string();
        assert!(err.contains("database") && err.contains("urll"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let f = file("[events]\nmax_attempts = \"many\"\n");
        let err = Config::load_file(f.path()).unwrap_err().to_string();
        assert!(err.contains("events.max_attempts"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        for (text, key) in [
            ("[database]\nurl = \"mysql://x\"\n", "database.url"),
            ("[events]\nmax_attempts = 0\n", "events.max_attempts"),
            ("[kv]\nredis_url = \"http://x\"\n", "kv.redis_url"),
            (
                "[services.vehicle]\nlisten = \"nowhere\"\n",
                "services.vehicle.listen",
            ),
            ("[log]\nformat = \"xml\"\n", "log.format"),
            (
                "[telemetry]\nsample_ratio = 2.0\n",
                "telemetry.sample_ratio",
            ),
            (
                "[services.gateway]\nconfig_provider = \"yaml\"\n",
                "services.gateway.config_provider",
            ),
            (
                "[services.gateway]\nconfig_provider = \"etcd\"\n[services.gateway.etcd]\nprefix = \"apisix/\"\n",
                "services.gateway.etcd.prefix",
            ),
            (
                "[services.gateway.etcd]\nkeyring = [\"too-short\"]\n",
                "services.gateway.etcd.keyring",
            ),
            (
                "[services.gateway]\nrole = \"edge\"\n",
                "services.gateway.role",
            ),
        ] {
            let f = file(text);
            let err = Config::load_file(f.path()).unwrap_err().to_string();
            assert!(err.contains(key), "expected {key} in: {err}");
        }
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = Config::load_file(Path::new("/nonexistent/axle.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::FileNotFound(_)));
    }

    #[test]
    fn malformed_toml_is_an_error() {
        let f = file("[database\nurl = 1");
        assert!(Config::load_file(f.path()).is_err());
    }
}
