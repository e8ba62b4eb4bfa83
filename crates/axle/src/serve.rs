//! `axle serve`: start the platform, the selected services, and stop them cleanly.
//!
//! Start-up order: configuration → logging → platform (data dir, bus, kv) → each service
//! (database, migrations) → every listener bound → serving. Any failure before serving is one
//! line on stderr and exit code 1.
//!
//! SIGINT or SIGTERM stops in the reverse order of a request's path: the gateway stops
//! accepting and finishes the requests it has in flight, then the services it routes to stop
//! (finishing theirs), then their background tasks (the outboxes flush) — each stage within
//! `http.shutdown_grace_secs` — and the process exits 0. So no request the gateway accepted
//! meets a service that has already gone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use axle_core::config::Config;
use axle_core::platform::{Platform, Service, StartError};
use axle_gateway::Listener;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Every service this binary can run, in start order.
const SERVICES: &[&str] = &[
    axle_identity::NAME,
    axle_web::NAME,
    axle_vehicle::NAME,
    axle_masterdata::NAME,
    axle_market::NAME,
    axle_order::NAME,
    axle_finance::NAME,
    axle_saga::NAME,
    axle_gateway::NAME,
];

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file (defaults apply without one).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Where embedded storage lives (overrides `data_dir`; default ./axle-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Run only these services, comma-separated (e.g. `--only vehicle`).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Threads of the gateway's data plane (overrides `services.gateway.workers`).
    #[arg(long)]
    workers: Option<usize>,
    /// Add sample dealers, staff and vehicles to click through (once; again adds nothing).
    #[arg(long)]
    demo: bool,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref()).context("configuration")?;
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(workers) = args.workers {
        if workers == 0 {
            bail!("--workers: must be at least 1");
        }
        config.services.gateway.workers = Some(workers);
    }
    let selected = select(&args.only)?;
    let _telemetry = axle_core::telemetry::init(&config.log, &config.telemetry)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(config, selected, args.demo))
}

fn select(only: &[String]) -> anyhow::Result<Vec<&'static str>> {
    if only.is_empty() {
        return Ok(SERVICES.to_vec());
    }
    let mut selected = Vec::new();
    for name in only {
        match SERVICES.iter().find(|s| **s == name.as_str()) {
            Some(s) if !selected.contains(s) => selected.push(*s),
            Some(_) => {}
            None => bail!(
                "--only: unknown service {name:?} (known: {})",
                SERVICES.join(", ")
            ),
        }
    }
    Ok(selected)
}

async fn build(name: &str, platform: &Platform) -> Result<Service, StartError> {
    match name {
        axle_identity::NAME => axle_identity::build(platform).await,
        axle_web::NAME => axle_web::build(platform).await,
        axle_vehicle::NAME => axle_vehicle::build(platform).await,
        axle_masterdata::NAME => axle_masterdata::build(platform).await,
        axle_market::NAME => axle_market::build(platform).await,
        axle_order::NAME => axle_order::build(platform).await,
        axle_finance::NAME => axle_finance::build(platform).await,
        axle_saga::NAME => axle_saga::build(platform).await,
        _ => unreachable!("select() only returns names from SERVICES; the gateway is built apart"),
    }
}

/// The paths of a service anyone may call through the gateway without a token.
fn public_paths(name: &str) -> &'static [&'static str] {
    match name {
        axle_masterdata::NAME => axle_masterdata::PUBLIC_PATHS,
        _ => &[],
    }
}

/// Where a service's HTTP API listens (the gateway's: its Admin API).
fn listen_addr(config: &Config, name: &str) -> SocketAddr {
    match name {
        axle_identity::NAME => config.services.identity.listen,
        axle_web::NAME => config.services.web.listen,
        axle_vehicle::NAME => config.services.vehicle.listen,
        axle_masterdata::NAME => config.services.masterdata.listen,
        axle_market::NAME => config.services.market.listen,
        axle_order::NAME => config.services.order.listen,
        axle_finance::NAME => config.services.finance.listen,
        axle_saga::NAME => config.services.saga.listen,
        axle_gateway::NAME => config.services.gateway.admin_listen,
        _ => unreachable!("select() only returns names from SERVICES"),
    }
}

/// Runs the data plane until `shutdown`: on `workers` threads of its own when set, so its share
/// of the machine is fixed, else on the main runtime. Each worker is a single-threaded runtime
/// accepting from the shared listener (nginx's worker model): a request is served start to end
/// on one thread, without the work-stealing scheduler's hand-offs.
async fn run_data_plane(
    plane: axle_gateway::DataPlane,
    listeners: Vec<Listener>,
    workers: Option<usize>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let Some(workers) = workers else {
        plane.serve(listeners, shutdown).await;
        return Ok(());
    };
    let listeners = listeners
        .into_iter()
        .map(|l| Ok((l.tcp.into_std()?, l.tls)))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut threads = Vec::with_capacity(workers);
    for worker in 0..workers {
        let own = listeners
            .iter()
            .map(|(tcp, tls)| Ok((tcp.try_clone()?, *tls)))
            .collect::<std::io::Result<Vec<_>>>()?;
        let (plane, shutdown) = (plane.clone(), shutdown.clone());
        let thread = std::thread::Builder::new()
            .name(format!("gateway-{worker}"))
            .spawn(move || -> std::io::Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let listeners = own
                        .into_iter()
                        .map(|(tcp, tls)| {
                            Ok(Listener {
                                tcp: TcpListener::from_std(tcp)?,
                                tls,
                            })
                        })
                        .collect::<std::io::Result<Vec<_>>>()?;
                    plane.serve(listeners, shutdown).await;
                    Ok(())
                })
            })?;
        threads.push(thread);
    }
    tokio::task::spawn_blocking(move || {
        for thread in threads {
            thread
                .join()
                .map_err(|_| std::io::Error::other("a gateway worker panicked"))??;
        }
        Ok(())
    })
    .await
    .map_err(std::io::Error::other)?
}

async fn serve(config: Config, selected: Vec<&'static str>, demo: bool) -> anyhow::Result<()> {
    // Cancelled in turn when stopping: the gateway's data plane, the services' listeners, and
    // the platform's background tasks.
    let stop_gateway = CancellationToken::new();
    let stop_services = CancellationToken::new();
    let shutdown = CancellationToken::new();
    let grace = Duration::from_secs(config.http.shutdown_grace_secs);
    let platform = Platform::start(config, shutdown.clone()).await?;

    let mut running = Vec::new();
    let mut data_plane = None;
    let mut exporters = Vec::new();
    for &name in &selected {
        let service = if name == axle_gateway::NAME {
            let others: Vec<axle_gateway::LocalService> = selected
                .iter()
                .filter(|s| **s != name)
                .map(|s| axle_gateway::LocalService {
                    name: s,
                    addr: listen_addr(&platform.config, s),
                    public: public_paths(s),
                    open: *s == axle_identity::NAME,
                    pages: *s == axle_web::NAME,
                })
                .collect();
            let gateway = axle_gateway::build(&platform, &others).await?;
            if let (Some(exporter), Some(addr)) = (
                gateway.exporter,
                platform.config.services.gateway.prometheus_listen,
            ) {
                let listener = TcpListener::bind(addr).await.with_context(|| {
                    format!("gateway: cannot listen on {addr} (prometheus_listen)")
                })?;
                exporters.push((exporter, listener));
            }
            if let Some(plane) = gateway.data_plane {
                let config = &platform.config.services.gateway;
                let mut listeners = Vec::new();
                for (addr, tls) in [(Some(config.listen), false), (config.tls_listen, true)] {
                    let Some(addr) = addr else { continue };
                    let tcp = TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("gateway: cannot listen on {addr}"))?;
                    listeners.push(Listener { tcp, tls });
                }
                data_plane = Some((plane, listeners));
            }
            gateway.admin
        } else {
            build(name, &platform).await?
        };
        let addr = listen_addr(&platform.config, name);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("{name}: cannot listen on {addr}"))?;
        running.push((service, listener));
    }
    print_banner(
        &platform,
        &running,
        data_plane.as_ref().map(|(plane, l)| (plane, l.as_slice())),
        &exporters
            .iter()
            .filter_map(|(_, l)| l.local_addr().ok())
            .collect::<Vec<_>>(),
    );

    if demo {
        let config = (*platform.config).clone();
        tokio::spawn(async move {
            match crate::demo::seed(config).await {
                Ok(()) => println!(
                    "demo: dealers li.wei and zhang.min, auctioneer chen.auction, finance wang.finance \
                     and operator zhao.ops, each with the password \"{}\"; five sample vehicles, \
                     one sold at auction and settled; both dealers' deposits; the API \"Vehicle \
                     models\" in the market",
                    crate::demo::PASSWORD
                ),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "demo data could not be added")
                }
            }
        });
    }
    tokio::spawn(stop_on_signal(stop_gateway.clone()));
    let mut servers = tokio::task::JoinSet::new();
    let mut services = Vec::new();
    for (service, listener) in running {
        let (router, stop) = (service.router.clone(), stop_services.clone());
        servers.spawn(async move { axle_core::http::serve(listener, router, stop).await });
        services.push(service);
    }
    for (router, listener) in exporters {
        let stop = stop_services.clone();
        servers.spawn(async move { axle_core::http::serve(listener, router, stop).await });
    }
    let mut gateway = tokio::task::JoinSet::new();
    if let Some((plane, listeners)) = data_plane {
        let workers = platform.config.services.gateway.workers;
        let plane = plane.with_grace(grace);
        gateway.spawn(run_data_plane(
            plane,
            listeners,
            workers,
            stop_gateway.clone(),
        ));
    }

    // Serve until a signal (or a listener failing), then stop stage by stage.
    tokio::select! {
        _ = stop_gateway.cancelled() => {}
        Some(result) = servers.join_next() => report(result),
        Some(result) = gateway.join_next() => report(result),
    }
    stop_gateway.cancel();
    drain("the gateway's requests", grace, &mut gateway).await;
    stop_services.cancel();
    drain("the services' requests", grace, &mut servers).await;
    shutdown.cancel();
    for service in services {
        service.stop().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// A listener that ended before it was asked to.
fn report(result: Result<std::io::Result<()>, tokio::task::JoinError>) {
    match result {
        Ok(Err(e)) => tracing::error!(error = %e, "a listener failed; stopping"),
        Err(e) => tracing::error!(error = %e, "a listener's task failed; stopping"),
        Ok(Ok(())) => {}
    }
}

/// Waits up to `grace` for `servers` to finish what they are serving.
async fn drain(
    what: &str,
    grace: Duration,
    servers: &mut tokio::task::JoinSet<std::io::Result<()>>,
) {
    let finished = tokio::time::timeout(grace, async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "{what} still running after the grace period; stopping anyway"
        );
    }
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested");
    shutdown.cancel();
}

fn print_banner(
    platform: &Platform,
    running: &[(Service, TcpListener)],
    data_plane: Option<(&axle_gateway::DataPlane, &[Listener])>,
    exporters: &[SocketAddr],
) {
    let c = &platform.config;
    let storage = if c.database.url.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    let events = if c.events.amqp_url.is_some() {
        "RabbitMQ"
    } else {
        "embedded"
    };
    let kv = if c.kv.redis_url.is_some() {
        "Redis"
    } else {
        "in-memory"
    };
    println!("Axle {} is running.", env!("CARGO_PKG_VERSION"));
    println!(
        "  data:    {} (storage: {storage}, events: {events}, kv: {kv})",
        c.data_dir.display()
    );
    if let Some((plane, listeners)) = data_plane {
        for listener in listeners {
            let Ok(addr) = listener.tcp.local_addr() else {
                continue;
            };
            match listener.tls {
                false => println!(
                    "  gateway  http://{addr}  (routes /api/<service>/ to the services below)"
                ),
                true if plane.has_certificates() => {
                    println!("  gateway  https://{addr}  (certificates by SNI from the ssls)")
                }
                true => println!(
                    "  gateway  https://{addr}  (no certificate yet: add one with \
                     PUT /apisix/admin/ssls/<id>; until then TLS handshakes fail)"
                ),
            }
        }
    }
    for addr in exporters {
        println!(
            "  metrics  http://{addr}/apisix/prometheus/metrics  (the gateway's, for Prometheus)"
        );
    }
    for (service, listener) in running {
        if let Ok(addr) = listener.local_addr() {
            if service.name == axle_gateway::NAME {
                println!("  admin    http://{addr}  (APISIX Admin API: /apisix/admin/...)");
            } else if service.name == axle_web::NAME {
                println!(
                    "  pages    {}/  (sign in as \"admin\"; served by http://{addr} through the gateway)",
                    platform.config.site()
                );
            } else if service.name == axle_identity::NAME {
                println!(
                    "  identity http://{addr}  (OpenID issuer {}, sign in as \"admin\")",
                    platform.config.issuer()
                );
            } else {
                println!(
                    "  {:<8} http://{addr}  (health: /healthz, API: /openapi.json)",
                    service.name
                );
            }
        }
    }
    println!("Stop with Ctrl-C.");
}
