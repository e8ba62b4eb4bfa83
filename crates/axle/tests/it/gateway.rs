//! The gateway of two `axle serve` processes sharing one Redis.

use serde_json::json;

use crate::helpers::*;

/// One `axle serve` with its gateway's Admin API on a port of the test's choosing; with that
/// port, and the vehicle service's.
async fn serve_gateway(dir: &std::path::Path) -> (Server, u16, u16) {
    let (admin, vehicle) = (free_port(), free_port());
    let server = Server::serve(
        dir,
        vehicle,
        &[
            (
                "AXLE__SERVICES__GATEWAY__ADMIN_LISTEN",
                format!("127.0.0.1:{admin}"),
            ),
            ("AXLE__SERVICES__GATEWAY__ADMIN_KEY", ADMIN_KEY.into()),
        ],
    )
    .await;
    (server, admin, vehicle)
}

const ADMIN_KEY: &str = "two-processes-admin-key";

/// Writes the route `id` through the Admin API on `admin`.
async fn put_route(admin: u16, id: &str, route: &serde_json::Value) {
    let r = reqwest::Client::new()
        .put(format!("http://127.0.0.1:{admin}/apisix/admin/routes/{id}"))
        .header("x-api-key", ADMIN_KEY)
        .json(route)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

#[tokio::test]
async fn limit_count_in_redis_holds_across_two_axle_processes() {
    let Some(redis_url) = axle_core::testing::redis_url() else {
        return;
    };
    let (host, port) = redis_url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .rsplit_once(':')
        .unwrap();
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let app = axum::Router::new().fallback(|| async { "ok" });
    tokio::spawn(async move { axum::serve(upstream, app).await.unwrap() });

    let (dir_one, dir_two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (one, admin_one, _) = serve_gateway(dir_one.path()).await;
    let (two, admin_two, _) = serve_gateway(dir_two.path()).await;
    // A key of this run's own, so earlier runs' counters do not count.
    let key = format!("two-processes-{}", std::process::id());
    let route = json!({"uri": "/limited", "upstream": {"nodes": {upstream_addr.to_string(): 1}},
        "plugins": {"limit-count": {"count": 5, "time_window": 60, "key_type": "constant",
            "key": key, "policy": "redis", "redis_host": host, "redis_port": port.parse::<u16>().unwrap()}}});
    // Not following redirects: until the route arrives, the pages' sign-in answers.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for admin in [admin_one, admin_two] {
        put_route(admin, "limited", &route).await;
    }
    let through = |server: &Server| {
        let url = format!("http://127.0.0.1:{}/limited", server.gateway_port);
        let client = client.clone();
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    };
    // The routes reach the data planes (each process compiles its own store's change; until
    // then the pages' catch-all route answers).
    for server in [&one, &two] {
        for _ in 0..100 {
            if matches!(through(server).await, 200 | 503) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    // Two requests went through while waiting; alternating, three more pass in all.
    let mut statuses = Vec::new();
    for i in 0..8 {
        statuses.push(through(if i % 2 == 0 { &one } else { &two }).await);
    }
    let passed = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(passed, 3, "{statuses:?}");
    assert!(statuses[3..].iter().all(|s| *s == 503), "{statuses:?}");
}

#[tokio::test]
async fn an_upstream_outage_under_load_writes_a_few_lines_not_one_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let (server, admin, _) = serve_gateway(dir.path()).await;
    let down = free_port(); // nothing listens there
    let route = json!({"uri": "/down", "upstream": {"nodes": {format!("127.0.0.1:{down}"): 1},
        "retries": 0}});
    put_route(admin, "down", &route).await;
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/down", server.gateway_port);
    let status = async || client.get(&url).send().await.unwrap().status().as_u16();
    let mut reached = false;
    for _ in 0..200 {
        if status().await == 502 {
            reached = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(reached, "the route reached the data plane");
    let mut failed = 1;
    for _ in 0..400 {
        failed += usize::from(status().await == 502);
    }
    assert_eq!(failed, 401);
    let out = server.terminate();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines = stderr
        .lines()
        .filter(|l| l.contains("upstream request failed"))
        .count();
    assert!(
        (1..=5).contains(&lines),
        "{failed} failed requests wrote {lines} lines"
    );
}

/// Ctrl-C with a request in flight through the gateway to a service of the same process: the
/// gateway stops taking requests and finishes this one before the service stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_finishes_the_requests_in_flight_before_the_services_go() {
    let dir = tempfile::tempdir().unwrap();
    let (server, admin, vehicle) = serve_gateway(dir.path()).await;
    // A route to the vehicle service that takes a second and a half to get there.
    let route = json!({"uri": "/slow", "upstream": {"nodes": {format!("127.0.0.1:{vehicle}"): 1}},
        "plugins": {"fault-injection": {"delay": {"duration": 1.5}},
                    "proxy-rewrite": {"uri": "/vehicles"}}});
    put_route(admin, "slow", &route).await;
    let token = server.token(dir.path());
    let client = reqwest::Client::builder()
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {token}").parse().unwrap(),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{}/slow", server.gateway_port);
    // Ready once the vehicle service answers through the route: until the route is in the
    // data plane, the pages' catch-all route answers `/slow` (with a page). The first answer
    // also has the vehicle service fetch the issuer's keys, which it could not do once the
    // gateway stops taking requests.
    let mut ready = false;
    for _ in 0..100 {
        let answer = client.get(&url).send().await.unwrap();
        let vehicles = answer.status() == 200
            && answer
                .json::<serde_json::Value>()
                .await
                .is_ok_and(|body| body.get("items").is_some());
        if vehicles {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ready, "the route reached the data plane");

    let in_flight = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let stopped = tokio::task::spawn_blocking(move || server.terminate());
    let answer = in_flight.await.unwrap();
    assert_eq!(answer.ok(), Some(200), "the request in flight was finished");
    let out = stopped.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// APISIX's jwt-auth example "Manage Secrets in Environment Variables": a credential's secret
/// is `$env://JACK_JWT_SECRET`, resolved from the gateway's environment.
#[tokio::test]
async fn jwt_auth_secrets_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, secret) = (free_port(), "jack-hs256-secret-that-is-very-long");
    let server = Server::serve(
        dir.path(),
        free_port(),
        &[
            (
                "AXLE__SERVICES__GATEWAY__ADMIN_LISTEN",
                format!("127.0.0.1:{admin}"),
            ),
            ("AXLE__SERVICES__GATEWAY__ADMIN_KEY", ADMIN_KEY.into()),
            ("JACK_JWT_SECRET", secret.into()),
        ],
    )
    .await;
    // Not following redirects: until the route arrives, the pages' sign-in answers.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let admin_put = async |path: &str, body: serde_json::Value| {
        let r = client
            .put(format!("http://127.0.0.1:{admin}/apisix/admin/{path}"))
            .header("x-api-key", ADMIN_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    };
    admin_put("consumers", json!({"username": "jack"})).await;
    admin_put(
        "consumers/jack/credentials",
        json!({"id": "cred-jack-jwt-auth",
               "plugins": {"jwt-auth": {"key": "jack-key", "secret": "$env://JACK_JWT_SECRET"}}}),
    )
    .await;
    let upstream = format!("127.0.0.1:{}", server.masterdata_port);
    admin_put(
        "routes",
        json!({"id": "jwt-route", "uri": "/healthz", "plugins": {"jwt-auth": {}},
               "upstream": {"type": "roundrobin", "nodes": {upstream: 1}}}),
    )
    .await;
    let sign = |secret: &str| {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 60;
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({"key": "jack-key", "exp": exp}),
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let url = format!("http://127.0.0.1:{}/healthz", server.gateway_port);
    let status = async |token: &str| {
        let r = client
            .get(&url)
            .header("Authorization", token)
            .send()
            .await
            .unwrap();
        r.status().as_u16()
    };
    let good = sign(secret);
    let mut answered = 0;
    for _ in 0..100 {
        answered = status(&good).await;
        if answered == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(answered, 200, "signed with the environment's secret");
    assert_eq!(
        status(&sign("$env://JACK_JWT_SECRET")).await,
        401,
        "not with the reference"
    );
    assert!(server.terminate().status.success());
}
