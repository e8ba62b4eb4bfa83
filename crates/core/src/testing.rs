//! Test support: isolated backends per test and services on port 0.
//!
//! Real servers are chosen from the environment:
//! `AXLE_TEST_POSTGRES_URL`, `AXLE_TEST_REDIS_URL`, `AXLE_TEST_AMQP_URL`,
//! `AXLE_TEST_ETCD_ENDPOINTS`, and tools by `AXLE_TEST_<TOOL>` ([`tool`]). Set: tests needing
//! them run, and fail loudly if the server is unreachable. Unset: the part of the test that
//! needs it is skipped, and the skip reported — appended to the file `AXLE_TEST_SKIPPED` names
//! (`scripts/test` lists them in one line at the end of the run), else written to stderr past
//! the test harness's capture. Under CI (`CI=true`) a missing one fails the test instead: CI
//! runs everything. `.ci/run` sets them all.
//!
//! Each [`TestPlatform`] is isolated: a fresh temporary data directory (SQLite files, the
//! embedded bus), its own PostgreSQL schemas (dropped afterwards), its own RabbitMQ exchange and
//! its own Redis key prefix, so tests run in parallel against the same servers.

// Test support fails the test loudly when its set-up cannot be done.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::Write;
use std::net::SocketAddr;

use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::platform::{Platform, Service};

/// The URL of a test server (or a tool's path) from the environment, or `None` after the skip
/// has been reported (see the module's documentation).
fn server(var: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            skipped(var, what);
            None
        }
    }
}

/// The path of a tool a test checks its output with (`promtool`, an OpenAPI validator), from
/// `var`; `None` after the skip has been reported.
pub fn tool(var: &str, what: &str) -> Option<String> {
    server(var, what)
}

/// Reports that the running test skips its part needing `what`, as `var` is unset.
fn skipped(var: &str, what: &str) {
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!("{var} is not set, and under CI (CI=true) no test skips its {what} part");
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    let line = format!("{test} ({what}: set {var})\n");
    let recorded = std::env::var("AXLE_TEST_SKIPPED").ok().is_some_and(|file| {
        let opened = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file);
        opened
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .is_ok()
    });
    if !recorded {
        let _ = std::io::stderr().write_all(format!("skipped: {line}").as_bytes());
    }
}

pub fn postgres_url() -> Option<String> {
    server("AXLE_TEST_POSTGRES_URL", "PostgreSQL")
}

pub fn redis_url() -> Option<String> {
    server("AXLE_TEST_REDIS_URL", "Redis")
}

pub fn amqp_url() -> Option<String> {
    server("AXLE_TEST_AMQP_URL", "RabbitMQ")
}

pub fn etcd_endpoints() -> Option<String> {
    server("AXLE_TEST_ETCD_ENDPOINTS", "etcd")
}

/// Which servers a test platform uses; `None` means the embedded default.
#[derive(Debug, Clone, Default)]
pub struct Backends {
    pub postgres: Option<String>,
    pub amqp: Option<String>,
    pub redis: Option<String>,
}

impl Backends {
    /// SQLite, embedded bus, in-memory kv.
    pub fn embedded() -> Self {
        Self::default()
    }

    /// PostgreSQL and RabbitMQ, when both test servers are configured.
    pub fn scaled_out() -> Option<Self> {
        Some(Self {
            postgres: Some(postgres_url()?),
            amqp: Some(amqp_url()?),
            redis: None,
        })
    }
}

/// Runs an async test body, `async fn body(backends: Backends)`, once on the embedded backends
/// and once on PostgreSQL + RabbitMQ when those are configured: `on_every_backend!(body)` (or
/// `on_every_backend!(module, body)`) defines the tests `sqlite_embedded` and
/// `postgres_rabbitmq` in a module named after it.
#[macro_export]
macro_rules! on_every_backend {
    ($body:ident) => {
        $crate::on_every_backend!($body, $body);
    };
    ($module:ident, $body:ident) => {
        mod $module {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite_embedded() {
                super::$body($crate::testing::Backends::embedded()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres_rabbitmq() {
                let Some(backends) = $crate::testing::Backends::scaled_out() else {
                    return;
                };
                super::$body(backends).await;
            }
        }
    };
}

/// A platform on fresh, isolated storage. Dropping it removes its PostgreSQL schemas and
/// RabbitMQ exchanges.
pub struct TestPlatform {
    pub platform: Platform,
    /// Unique per test; used to name schemas, the exchange and key prefixes.
    pub tag: String,
    dir: tempfile::TempDir,
}

impl TestPlatform {
    pub async fn start(backends: Backends) -> Self {
        Self::start_with(backends, |_| {}).await
    }

    /// [`start`](Self::start), with the configuration changed by `adjust` first.
    pub async fn start_with(backends: Backends, adjust: impl FnOnce(&mut Config)) -> Self {
        let tag = format!("t{}", crate::id::new_id().simple());
        let dir = tempfile::tempdir().expect("temporary data directory");
        let mut config = Self::config(&backends, &tag, dir.path());
        adjust(&mut config);
        let platform = Platform::start(config, CancellationToken::new())
            .await
            .expect("test platform starts (is the configured test server running?)");
        Self { platform, tag, dir }
    }

    /// The configuration a test platform runs with.
    pub fn config(backends: &Backends, tag: &str, data_dir: &std::path::Path) -> Config {
        let mut config = Config {
            data_dir: data_dir.to_path_buf(),
            ..Config::default()
        };
        config.database.url = backends.postgres.clone().map(SecretString::from);
        config.database.schema_prefix = format!("{tag}_");
        config.database.max_connections = 5;
        config.events.amqp_url = backends.amqp.clone().map(SecretString::from);
        config.events.exchange = format!("axle.test.{tag}");
        config.events.max_attempts = 3;
        // The broker forgets a test's queues a minute after it ends.
        config.events.queue_expires_secs = Some(60);
        config.kv.redis_url = backends.redis.clone().map(SecretString::from);
        config.kv.key_prefix = format!("{tag}:");
        // Services under test are called directly, without tokens; the identity tests and the
        // binary's tests check verification end to end.
        config.auth.verify_tokens = false;
        config
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for TestPlatform {
    fn drop(&mut self) {
        self.platform.shutdown.cancel();
        let postgres = self.platform.config.database.url.clone();
        let events = self.platform.config.events.clone();
        let prefix = self.tag.clone();
        // Drop runs inside the test's runtime, which must not be blocked: the service's tasks
        // (an outbox relay holding row locks in an open transaction, say) have to finish on it
        // before the schema can be dropped. So the cleanup runs on a thread of its own, not
        // joined, and gives up on locks after a while; a schema left behind is harmless.
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                // A new connection: the platform's lives on the runtime this drop blocks.
                if let Some(url) = events.amqp_url.clone()
                    && let Ok(bus) = crate::events::RabbitBus::connect(url, &events).await
                {
                    let _ = bus.delete_exchanges().await;
                }
                let Some(url) = postgres else { return };
                use secrecy::ExposeSecret;
                use sqlx::{Connection, Executor};
                sqlx::any::install_default_drivers();
                let Ok(mut conn) = sqlx::AnyConnection::connect(url.expose_secret()).await else {
                    return;
                };
                let schemas: Vec<String> = sqlx::query_scalar(
                    "SELECT schema_name::text FROM information_schema.schemata WHERE schema_name LIKE $1",
                )
                .bind(format!("{prefix}_%"))
                .fetch_all(&mut conn)
                .await
                .unwrap_or_default();
                let _ = conn.execute("SET lock_timeout = '30s'").await;
                for schema in schemas {
                    let _ = conn.execute(format!("DROP SCHEMA \"{schema}\" CASCADE").as_str()).await;
                }
            });
        });
    }
}

/// A service listening on 127.0.0.1 on a free port.
pub struct TestServer {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
}

impl TestServer {
    /// Serves `service` until the returned server is dropped.
    pub async fn spawn(service: &Service) -> Self {
        Self::serve(Self::reserve().await, service)
    }

    /// A listener on a free port, for a service that must know its own URL before it is built
    /// (an OpenID issuer): reserve, build with the URL, then [`serve`](Self::serve).
    pub async fn reserve() -> tokio::net::TcpListener {
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind port 0")
    }

    /// Serves `service` on `listener` until the returned server is dropped.
    pub fn serve(listener: tokio::net::TcpListener, service: &Service) -> Self {
        let addr = listener.local_addr().expect("bound address");
        let shutdown = CancellationToken::new();
        let router = service.router.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = crate::http::serve(listener, router, stop).await;
        });
        Self {
            addr,
            client: reqwest::Client::new(),
            shutdown,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Restarts the local RabbitMQ node (`rabbitmqctl stop_app`, `start_app`) with `down` in
/// between, and waits until it serves again. The node is brought back even if this panics.
/// Run it only from a test binary of its own: every test using the broker sees it go down.
pub async fn restart_rabbitmq(down: std::time::Duration) {
    struct BringBack;
    impl Drop for BringBack {
        fn drop(&mut self) {
            let _ = std::process::Command::new("rabbitmqctl")
                .arg("start_app")
                .output();
        }
    }
    async fn rabbitmqctl(args: &[&str]) {
        let out = tokio::process::Command::new("rabbitmqctl")
            .args(args)
            .output()
            .await
            .expect("rabbitmqctl runs");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let guard = BringBack;
    rabbitmqctl(&["stop_app"]).await;
    tokio::time::sleep(down).await;
    rabbitmqctl(&["start_app"]).await;
    rabbitmqctl(&["await_startup"]).await;
    drop(guard);
}

/// Polls `check` every 20 ms until it returns `Some`, failing the test after `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
