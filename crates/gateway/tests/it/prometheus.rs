//! The prometheus plugin and exporter: APISIX's metric names and labels, counted through the
//! real data plane, scraped from the exporter, and checked by `promtool check metrics` when
//! `AXLE_TEST_PROMTOOL` names it (`.ci/run` installs it).

use std::io::Write;

use axle_core::testing::{Backends, eventually};
use serde_json::json;

use crate::helpers::{get, metric as value, scrape, spawn_gateway, spawn_upstream};

#[tokio::test]
async fn prometheus_counts_routes_with_apisix_names_and_promtool_accepts_the_scrape() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let up = spawn_upstream("up").await;
    // A port nothing listens on: the health check marks it down.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    gw.put(
        "/apisix/admin/consumers",
        json!({"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}}),
    )
    .await;
    gw.put(
        "/apisix/admin/upstreams/checked",
        json!({"nodes": {up.to_string(): 1, format!("127.0.0.1:{dead_port}"): 0},
               "checks": {"active": {"http_path": "/", "healthy": {"interval": 1, "successes": 1},
                                     "unhealthy": {"interval": 1, "tcp_failures": 1}}}}),
    )
    .await;
    // APISIX's example: the plugin on a route.
    gw.put(
        "/apisix/admin/routes/prom",
        json!({"uri": "/hello*", "name": "hello-api", "upstream_id": "checked",
               "plugins": {"prometheus": {}, "key-auth": {}}}),
    )
    .await;
    gw.put(
        "/apisix/admin/routes/quiet",
        json!({"uri": "/quiet", "upstream": {"nodes": {up.to_string(): 1}}}),
    )
    .await;
    gw.wait_for("/quiet", 200).await;
    gw.wait_for("/hello", 401).await;
    let (_, before) = scrape(&gw).await;
    let requests_before = value(&before, "apisix_http_requests_total", &[]).unwrap();
    let refused = [
        ("code", "401"),
        ("route", "prom"),
        ("consumer", ""),
        ("node", ""),
    ];
    // wait_for's own 401s.
    let refused_before = value(&before, "apisix_http_status", &refused).unwrap();

    for path in ["/hello/a", "/hello/b", "/hello"] {
        let (status, _, _) = get(&gw, path, &[("apikey", "jack-key")]).await;
        assert_eq!(status, 200);
    }
    let (status, _, _) = get(&gw, "/hello/c", &[]).await;
    assert_eq!(status, 401);
    for _ in 0..2 {
        assert_eq!(get(&gw, "/quiet", &[]).await.0, 200);
    }

    let (_, samples) = eventually(10, "the last request's log phase", || async {
        let (text, samples) = scrape(&gw).await;
        let logged = value(&samples, "apisix_http_status", &refused);
        (logged == Some(refused_before + 1.0)).then_some((text, samples))
    })
    .await;
    let jack = [
        ("route", "prom"),
        ("service", ""),
        ("consumer", "jack"),
        ("node", "127.0.0.1"),
    ];
    let status = |code| {
        let mut labels = vec![
            ("code", code),
            ("matched_uri", "/hello*"),
            ("matched_host", ""),
        ];
        labels.extend(jack);
        value(&samples, "apisix_http_status", &labels)
    };
    assert_eq!(status("200"), Some(3.0));
    // Routes without the plugin are not counted.
    assert!(
        !samples
            .iter()
            .any(|(_, l, _)| l.get("route").is_some_and(|r| r == "quiet"))
    );
    for kind in ["request", "upstream", "apisix"] {
        let mut labels = vec![("type", kind)];
        labels.extend(jack);
        assert_eq!(
            value(&samples, "apisix_http_latency_count", &labels),
            Some(3.0),
            "{kind}"
        );
        labels.push(("le", "+Inf"));
        assert_eq!(
            value(&samples, "apisix_http_latency_bucket", &labels),
            Some(3.0)
        );
    }
    for kind in ["ingress", "egress"] {
        let mut labels = vec![("type", kind)];
        labels.extend(jack);
        let bytes = value(&samples, "apisix_bandwidth", &labels).unwrap();
        // Three requests' heads at least; the echoed bodies make the responses larger.
        assert!(bytes > 3.0 * 60.0, "{kind}: {bytes}");
    }
    let requests = value(&samples, "apisix_http_requests_total", &[]).unwrap();
    assert!(
        requests >= requests_before + 6.0,
        "{requests_before} → {requests}"
    );
    assert!(
        value(
            &samples,
            "apisix_nginx_http_current_connections",
            &[("state", "accepted")]
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        value(
            &samples,
            "apisix_node_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    // prefer_name labels the route by its name.
    gw.put(
        "/apisix/admin/routes/prom",
        json!({"uri": "/hello*", "name": "hello-api", "upstream_id": "checked",
               "plugins": {"prometheus": {"prefer_name": true}}}),
    )
    .await;
    eventually(10, "the route counted by name", || async {
        get(&gw, "/hello", &[]).await;
        let (_, samples) = scrape(&gw).await;
        value(&samples, "apisix_http_status", &[("route", "hello-api")]).map(|_| ())
    })
    .await;

    // Upstream health as the checks see it.
    let port = up.port().to_string();
    let dead_port = dead_port.to_string();
    let (text, _) = eventually(10, "the health of both nodes", || async {
        let (text, samples) = scrape(&gw).await;
        let health = |port: &str| {
            value(
                &samples,
                "apisix_upstream_status",
                &[
                    ("name", "/apisix/upstreams/checked"),
                    ("ip", "127.0.0.1"),
                    ("port", port),
                ],
            )
        };
        (health(&port) == Some(1.0) && health(&dead_port) == Some(0.0)).then_some((text, samples))
    })
    .await;

    if let Some(promtool) = axle_core::testing::tool("AXLE_TEST_PROMTOOL", "promtool") {
        let mut check = std::process::Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("AXLE_TEST_PROMTOOL={promtool}: {e}"));
        check
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Valid, and nothing for the linter (exit 3) either.
        assert!(
            out.status.success() && said.trim().is_empty(),
            "promtool check metrics ({:?}): {said}\n{text}",
            out.status.code()
        );
    }
}

/// A deleted route's series leave the scrape; the others keep counting where they were.
#[tokio::test]
async fn prometheus_drops_the_series_of_deleted_routes() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let up = spawn_upstream("up").await;
    for id in ["gone", "kept"] {
        gw.put(
            &format!("/apisix/admin/routes/{id}"),
            json!({"uri": format!("/{id}"), "plugins": {"prometheus": {}},
                   "upstream": {"nodes": {up.to_string(): 1}}}),
        )
        .await;
        gw.wait_for(&format!("/{id}"), 200).await;
    }
    let ok = |route: &'static str| [("code", "200"), ("route", route)];
    let (_, before) = scrape(&gw).await;
    assert!(value(&before, "apisix_http_status", &ok("gone")).is_some());
    let kept = value(&before, "apisix_http_status", &ok("kept")).unwrap();

    let (status, _) = gw
        .admin(reqwest::Method::DELETE, "/apisix/admin/routes/gone", None)
        .await;
    assert_eq!(status, 200);
    gw.wait_for("/gone", 404).await;
    let (text, after) = scrape(&gw).await;
    assert!(!text.contains(r#"route="gone""#), "{text}");
    assert_eq!(value(&after, "apisix_http_status", &ok("kept")), Some(kept));
    assert!(
        after
            .iter()
            .any(|(name, labels, _)| name == "apisix_http_latency_count"
                && labels.get("route").map(String::as_str) == Some("kept"))
    );
}
