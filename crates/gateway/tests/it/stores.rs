//! The etcd and YAML config stores: changes made with `etcdctl` and by editing `apisix.yaml`
//! apply under load; etcd outages, restarts with etcd down, and etcd's revision going back.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use axle_core::config::{Config, ConfigProvider, GatewayRole};
use axle_core::testing::{Backends, TestPlatform, eventually};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Gateway, Load, metric, scrape, spawn_gateway_with, spawn_upstream};

/// The CI's etcd, or None (with a note) when the environment has none.
fn etcd() -> Option<String> {
    axle_core::testing::etcd_endpoints()
}

/// Runs `etcdctl` (v3 API) against `endpoint`.
fn etcdctl_output(endpoint: &str, args: &[&str]) -> std::process::Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .output()
        .expect("etcdctl runs")
}

/// Runs `etcdctl`, which must succeed; returns its stdout.
fn etcdctl(endpoint: &str, args: &[&str]) -> String {
    let out = etcdctl_output(endpoint, args);
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A gateway configuration on SQLite in `dir`, reading etcd under a prefix of its own.
fn etcd_config(dir: &Path, endpoint: &str, prefix: &str) -> Config {
    let mut config = TestPlatform::config(&Backends::embedded(), "etcd", dir);
    let gw = &mut config.services.gateway;
    gw.config_provider = ConfigProvider::Etcd;
    gw.etcd.endpoints = vec![endpoint.to_string()];
    gw.etcd.prefix = prefix.to_string();
    config
}

fn route_to(uri: &str, node: std::net::SocketAddr) -> String {
    json!({"uri": uri, "upstream": {"type": "roundrobin", "nodes": {node.to_string(): 1}}})
        .to_string()
}

#[tokio::test]
async fn etcdctl_changes_apply_under_load_and_the_admin_api_writes_apisix_keys() {
    let Some(endpoint) = etcd() else { return };
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("/axle-test-{}", axle_core::id::new_id().simple());
    let gw = Arc::new(spawn_gateway_with(etcd_config(dir.path(), &endpoint, &prefix)).await);
    let (a, b) = (spawn_upstream("a").await, spawn_upstream("b").await);

    // The Admin API writes APISIX's layout, readable with etcdctl.
    gw.put(
        "/apisix/admin/upstreams/1",
        json!({"type": "roundrobin", "nodes": {a.to_string(): 1}}),
    )
    .await;
    let stored = etcdctl(
        &endpoint,
        &[
            "get",
            &format!("{prefix}/upstreams/1"),
            "--print-value-only",
        ],
    );
    let stored: Value = serde_json::from_str(stored.trim()).unwrap();
    assert_eq!(stored["nodes"][a.to_string()], 1);
    gw.put(
        "/apisix/admin/routes/live",
        json!({"uri": "/live", "upstream_id": "1"}),
    )
    .await;
    gw.wait_for("/live", 200).await;
    let (status, listed) = gw.admin(Method::GET, "/apisix/admin/routes", None).await;
    assert_eq!(status, 200);
    assert_eq!(listed["total"], 1);
    assert!(listed["list"][0]["modifiedIndex"].as_i64().unwrap() > 0);

    // etcdctl put under the prefix takes effect while requests run, none failing.
    let load = Load::start(&gw, "/live");
    let key = format!("{prefix}/routes/live");
    for i in 0..10 {
        let node = if i % 2 == 0 { b } else { a };
        etcdctl(&endpoint, &["put", &key, &route_to("/live", node)]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (served, seen) = load.finish().await;
    assert!(served > 10);
    assert_eq!(seen.len(), 2, "both upstreams served: {seen:?}");

    // The history replays etcd's revisions; a delete applies.
    let (_, history) = gw
        .admin(Method::GET, "/axle/admin/history?limit=5", None)
        .await;
    let changes = history["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 5);
    assert_eq!(changes[0]["key"], "/apisix/routes/live");
    assert_eq!(
        changes[0]["value"]["upstream"]["nodes"][a.to_string()],
        1,
        "newest first"
    );
    etcdctl(&endpoint, &["del", &key]);
    gw.wait_for("/live", 404).await;
    etcdctl(&endpoint, &["del", "--prefix", &format!("{prefix}/")]);
}

/// An etcd APISIX has written: the `init_dir` markers it puts at start, a consumer whose
/// key-auth key is encrypted with its keyring (t/node/data_encrypt.t's value), an SSL whose
/// private key is. Axle reads them as APISIX does, and encrypts what it writes the same way.
#[tokio::test]
async fn an_etcd_apisix_wrote_reads_the_same_and_secrets_stay_encrypted() {
    let Some(endpoint) = etcd() else { return };
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("/axle-test-{}", axle_core::id::new_id().simple());
    for directory in [
        "routes",
        "upstreams",
        "services",
        "consumers",
        "ssls",
        "global_rules",
        "plugin_configs",
        "plugin_metadata",
        "consumer_groups",
        "protos",
        "secrets",
        "stream_routes",
        "plugins",
    ] {
        etcdctl(
            &endpoint,
            &["put", &format!("{prefix}/{directory}/"), "init_dir"],
        );
    }
    let consumer = json!({"username": "jack",
                          "plugins": {"key-auth": {"key": "vU/ZHVJw7b0XscDJ1Fhtig=="}}});
    etcdctl(
        &endpoint,
        &[
            "put",
            &format!("{prefix}/consumers/jack"),
            &consumer.to_string(),
        ],
    );
    let up = spawn_upstream("up").await;
    let route = json!({"uri": "/get", "plugins": {"key-auth": {}},
                       "upstream": {"nodes": {up.to_string(): 1}}});
    etcdctl(
        &endpoint,
        &["put", &format!("{prefix}/routes/1"), &route.to_string()],
    );

    let mut config = etcd_config(dir.path(), &endpoint, &prefix);
    config.services.gateway.etcd.keyring = vec!["edd1c9f0985e76a2".into()];
    let gw = spawn_gateway_with(config).await;
    gw.wait_for("/get", 401).await;
    let with_key = |key: &str| {
        let request = gw.client.get(gw.url("/get")).header("apikey", key);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(with_key("auth-two").await, 200, "the decrypted key opens");
    assert_eq!(with_key("vU/ZHVJw7b0XscDJ1Fhtig==").await, 401);

    // The Admin API lists past the markers and shows the key decrypted, as APISIX's does.
    let (status, routes) = gw.admin(Method::GET, "/apisix/admin/routes", None).await;
    assert_eq!(
        (status, routes["total"].clone()),
        (200, json!(1)),
        "{routes}"
    );
    let (_, jack) = gw
        .admin(Method::GET, "/apisix/admin/consumers/jack", None)
        .await;
    assert_eq!(jack["value"]["plugins"]["key-auth"]["key"], "auth-two");

    // What Axle writes is encrypted as APISIX would (the same value in its test), and opens.
    let bar = json!({"username": "bar", "plugins": {"key-auth": {"key": "bar"}}});
    gw.put("/apisix/admin/consumers/bar", bar).await;
    let stored = etcdctl(
        &endpoint,
        &[
            "get",
            &format!("{prefix}/consumers/bar"),
            "--print-value-only",
        ],
    );
    let stored: Value = serde_json::from_str(stored.trim()).unwrap();
    assert_eq!(
        stored["plugins"]["key-auth"]["key"],
        "77+NmbYqNfN+oLm0aX5akg=="
    );
    eventually(10, "the new consumer to authenticate", || async {
        (with_key("bar").await == 200).then_some(())
    })
    .await;

    // An SSL's private key is kept encrypted, and the certificate still served.
    let ca = crate::tls::Ca::new();
    let (cert, key) = ca.issue(&["test.com"]);
    gw.put(
        "/apisix/admin/ssls/1",
        json!({"cert": cert, "key": key, "snis": ["test.com"]}),
    )
    .await;
    let stored = etcdctl(
        &endpoint,
        &["get", &format!("{prefix}/ssls/1"), "--print-value-only"],
    );
    let stored: Value = serde_json::from_str(stored.trim()).unwrap();
    assert!(stored["cert"].as_str().unwrap().starts_with("-----BEGIN"));
    assert!(
        !stored["key"].as_str().unwrap().contains("PRIVATE KEY"),
        "{stored}"
    );
    let served = eventually(10, "the certificate to be served", || async {
        crate::tls::https_get(gw.tls_proxy, "test.com", &ca, &[], "/get")
            .await
            .ok()
    })
    .await;
    assert_eq!(
        served.status, 401,
        "served over TLS, key-auth still asked for"
    );
    etcdctl(&endpoint, &["del", "--prefix", &format!("{prefix}/")]);
}

#[tokio::test]
async fn a_control_plane_and_a_data_plane_share_etcd() {
    let Some(endpoint) = etcd() else { return };
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("/axle-test-{}", axle_core::id::new_id().simple());
    let node = |role, name| {
        let mut config = etcd_config(&dir.path().join(name), &endpoint, &prefix);
        config.services.gateway.role = role;
        spawn_gateway_with(config)
    };
    let cp = node(GatewayRole::ControlPlane, "cp").await;
    let dp = node(GatewayRole::DataPlane, "dp").await;
    let up = spawn_upstream("up").await;
    cp.put(
        "/apisix/admin/routes/1",
        json!({"uri": "/hi", "upstream": {"nodes": {up.to_string(): 1}}}),
    )
    .await;
    dp.wait_for("/hi", 200).await;
    let (status, _) = dp.admin(Method::GET, "/apisix/admin/routes", None).await;
    assert_eq!(status, 404, "a data plane has no Admin API");
    assert!(
        cp.client.get(cp.url("/hi")).send().await.is_err(),
        "a control plane serves no traffic"
    );
    etcdctl(&endpoint, &["del", "--prefix", &format!("{prefix}/")]);
}

/// An etcd server of the test's own, which it may stop and start.
struct OwnEtcd {
    client: String,
    peer: String,
    child: Option<Child>,
}

impl OwnEtcd {
    fn start(data_dir: &Path) -> OwnEtcd {
        let free = || {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let mut etcd = OwnEtcd {
            client: free(),
            peer: free(),
            child: None,
        };
        etcd.restart(data_dir);
        etcd
    }

    fn restart(&mut self, data_dir: &Path) {
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(data_dir)
            .args([
                "--listen-client-urls",
                &self.client,
                "--advertise-client-urls",
                &self.client,
            ])
            .args([
                "--listen-peer-urls",
                &self.peer,
                "--initial-advertise-peer-urls",
                &self.peer,
            ])
            .arg(format!("--initial-cluster=t={}", self.peer))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd runs");
        self.child = Some(child);
        for _ in 0..75 {
            let healthy = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args([
                    &format!("--endpoints={}", self.client),
                    "endpoint",
                    "health",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if healthy {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("the test's etcd did not come up");
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnEtcd {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn get_status(gw: &Gateway, path: &str) -> u16 {
    gw.client
        .get(gw.url(path))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn etcd_outages_restarts_and_revisions_going_back() {
    // Runs where the CI's etcd is, with a server of its own to stop and wipe.
    if etcd().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (data, wiped): (PathBuf, PathBuf) = (dir.path().join("etcd"), dir.path().join("etcd2"));
    let mut etcd = OwnEtcd::start(&data);
    let up = spawn_upstream("up").await;
    let config = etcd_config(&dir.path().join("axle"), &etcd.client, "/apisix");
    etcdctl(
        &etcd.client,
        &["put", "/apisix/routes/1", &route_to("/one", up)],
    );
    let gw = spawn_gateway_with(config.clone()).await;
    gw.wait_for("/one", 200).await;
    reachable(&gw, 1.0).await;

    // etcd stopped: the routes keep serving, and the exporter says etcd is unreachable.
    etcd.stop();
    for _ in 0..5 {
        assert_eq!(get_status(&gw, "/one").await, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    reachable(&gw, 0.0).await;
    // Axle restarted while etcd is down: the last-known-good copy serves.
    drop(gw);
    let gw = spawn_gateway_with(config.clone()).await;
    assert_eq!(get_status(&gw, "/one").await, 200);

    // etcd back: changes apply.
    etcd.restart(&data);
    etcdctl(
        &etcd.client,
        &["put", "/apisix/routes/2", &route_to("/two", up)],
    );
    gw.wait_for("/two", 200).await;
    assert_eq!(get_status(&gw, "/one").await, 200);
    reachable(&gw, 1.0).await;

    // etcd replaced by an empty one (its revision goes back): what it holds is what serves.
    etcd.stop();
    etcd.restart(&wiped);
    etcdctl(
        &etcd.client,
        &["put", "/apisix/routes/3", &route_to("/three", up)],
    );
    gw.wait_for("/three", 200).await;
    gw.wait_for("/one", 404).await;
    assert_eq!(get_status(&gw, "/two").await, 404);
}

/// Waits for the exporter to say whether etcd is reachable (1) or not (0).
async fn reachable(gw: &Gateway, expected: f64) {
    eventually(20, &format!("apisix_etcd_reachable {expected}"), || async {
        let (_, samples) = scrape(gw).await;
        (metric(&samples, "apisix_etcd_reachable", &[]) == Some(expected)).then_some(())
    })
    .await
}

/// A TCP relay to `target` whose connections can be cut (and new ones refused) and restored.
struct Relay {
    addr: std::net::SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
    connections: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(target: String) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = Relay {
            addr: listener.local_addr().unwrap(),
            cut: Arc::default(),
            connections: Arc::default(),
        };
        let (cut, connections) = (relay.cut.clone(), relay.connections.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if cut.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                let target = target.clone();
                let copy = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                connections.lock().unwrap().push(copy);
            }
        });
        relay
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        self.connections
            .lock()
            .unwrap()
            .drain(..)
            .for_each(|c| c.abort());
    }

    fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_watch_behind_a_compaction_resyncs() {
    if etcd().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let etcd = OwnEtcd::start(&dir.path().join("etcd"));
    let relay = Relay::start(etcd.client.trim_start_matches("http://").to_string()).await;
    let up = spawn_upstream("up").await;
    let config = etcd_config(
        &dir.path().join("axle"),
        &format!("http://{}", relay.addr),
        "/apisix",
    );
    etcdctl(
        &etcd.client,
        &["put", "/apisix/routes/1", &route_to("/one", up)],
    );
    let gw = spawn_gateway_with(config).await;
    gw.wait_for("/one", 200).await;

    // Cut off, the gateway misses changes that etcd then compacts away.
    relay.cut();
    etcdctl(
        &etcd.client,
        &["put", "/apisix/routes/2", &route_to("/two", up)],
    );
    etcdctl(&etcd.client, &["del", "/apisix/routes/1"]);
    let status = etcdctl(&etcd.client, &["endpoint", "status", "-w", "json"]);
    let status: Value = serde_json::from_str(&status).unwrap();
    let revision = status[0]["Status"]["header"]["revision"].as_i64().unwrap();
    etcdctl(&etcd.client, &["compact", &revision.to_string()]);
    assert_eq!(
        get_status(&gw, "/one").await,
        200,
        "serving what it has meanwhile"
    );

    // Reconnected, its watch is refused as compacted; it reads everything again.
    relay.restore();
    gw.wait_for("/two", 200).await;
    gw.wait_for("/one", 404).await;
}

/// Writes `apisix.yaml` whole (a rename, as editors and config tools do).
fn write_yaml(path: &Path, text: &str) {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text).unwrap();
    std::fs::rename(&partial, path).unwrap();
}

fn yaml_route(node: std::net::SocketAddr) -> String {
    format!(
        "routes:\n  - id: live\n    uri: /live\n    upstream_id: 1\n\
         upstreams:\n  - id: 1\n    type: roundrobin\n    nodes:\n      \"{node}\": 1\n#END\n"
    )
}

#[tokio::test]
async fn yaml_file_changes_apply_under_load_and_bad_files_are_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("apisix.yaml");
    let (a, b) = (spawn_upstream("a").await, spawn_upstream("b").await);
    write_yaml(&file, &yaml_route(a));
    let mut config = TestPlatform::config(&Backends::embedded(), "yaml", dir.path());
    config.services.gateway.role = GatewayRole::DataPlane;
    config.services.gateway.config_provider = ConfigProvider::Yaml;
    config.services.gateway.yaml_file = Some(file.clone());
    let gw = Arc::new(spawn_gateway_with(config).await);
    gw.wait_for("/live", 200).await;
    // A data plane has no Admin API.
    let (status, _) = gw.admin(Method::GET, "/apisix/admin/routes", None).await;
    assert_eq!(status, 404);

    let load = Load::start(&gw, "/live");
    for node in [b, a, b] {
        write_yaml(&file, &yaml_route(node));
        let name = if node == a { "a" } else { "b" };
        eventually(10, "the file's upstream to answer", || async {
            let r = gw.client.get(gw.url("/live")).send().await.ok()?;
            let body: Value = r.json().await.ok()?;
            (body["upstream"] == name).then_some(())
        })
        .await;
    }
    // Half-written (no #END yet) and malformed files leave the last good one serving.
    write_yaml(&file, "routes:\n  - id: live\n    uri: /gone\n");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    write_yaml(&file, "routes: [\n#END\n");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (served, seen) = load.finish().await;
    assert!(served > 10);
    assert_eq!(seen.len(), 2, "both upstreams served: {seen:?}");
    assert_eq!(get_status(&gw, "/live").await, 200);
}
