//! The traffic limits through the data plane: limit-count, limit-req and limit-conn, each
//! local and in Redis (shared by two gateways).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axle_core::testing::{Backends, eventually};
use serde_json::{Value, json};

use crate::helpers::{Gateway, get, spawn_gateway, spawn_upstream};

#[tokio::test]
async fn limit_count_counts_per_route_or_group_and_says_what_is_left() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let up = spawn_upstream("up").await;
    // APISIX's example: 2 requests per 60 s per client address, then 503.
    let limit = json!({"count": 2, "time_window": 60, "rejected_code": 503, "key_type": "var", "key": "remote_addr"});
    for id in ["a", "b"] {
        gw.put(
            &format!("/apisix/admin/routes/{id}"),
            json!({"uri": format!("/{id}"), "plugins": {"limit-count": limit},
                   "upstream": {"nodes": {up.to_string(): 1}}}),
        )
        .await;
    }
    let grouped = json!({"count": 3, "time_window": 60, "group": "shared", "key_type": "constant",
                         "key": "all", "rejected_code": 429, "rejected_msg": "slow down"});
    for id in ["g1", "g2"] {
        gw.put(
            &format!("/apisix/admin/routes/{id}"),
            json!({"uri": format!("/{id}"), "plugins": {"limit-count": grouped},
                   "upstream": {"nodes": {up.to_string(): 1}}}),
        )
        .await;
    }
    gw.wait_for("/g2", 200).await; // the last route is in; that request counted against the group

    let (status, _, headers) = get(&gw, "/a", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            &headers["x-ratelimit-limit"],
            &headers["x-ratelimit-remaining"]
        ),
        (&"2".parse().unwrap(), &"1".parse().unwrap())
    );
    let reset: u64 = headers["x-ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&reset), "{reset}");
    let (status, _, headers) = get(&gw, "/a", &[]).await;
    assert_eq!(
        (status, &headers["x-ratelimit-remaining"]),
        (200, &"0".parse().unwrap())
    );
    let (status, _, headers) = get(&gw, "/a", &[]).await;
    assert_eq!(
        (status, &headers["x-ratelimit-remaining"]),
        (503, &"0".parse().unwrap())
    );
    // Route b has its own counter.
    assert_eq!(get(&gw, "/b", &[]).await.0, 200);
    // A configuration change keeps the counters.
    gw.put(
        "/apisix/admin/routes/other",
        json!({"uri": "/other", "upstream": {"nodes": {up.to_string(): 1}}}),
    )
    .await;
    gw.wait_for("/other", 200).await;
    assert_eq!(get(&gw, "/a", &[]).await.0, 503);
    // The group's 3 are shared by g1 and g2 (one went on wait_for above).
    assert_eq!(get(&gw, "/g1", &[]).await.0, 200);
    assert_eq!(get(&gw, "/g2", &[]).await.0, 200);
    let (status, body, _) = get(&gw, "/g1", &[]).await;
    assert_eq!((status, body), (429, json!({"error_msg": "slow down"})));
}

#[tokio::test]
async fn limit_count_in_redis_holds_across_two_gateways_and_degrades_when_asked() {
    let Some(redis) = test_redis() else { return };
    let (one, two) = (
        spawn_gateway(Backends::embedded()).await,
        spawn_gateway(Backends::embedded()).await,
    );
    let up = spawn_upstream("up").await;
    // A key of this run's own, so earlier runs' counters do not count.
    let key = format!("run-{}", uuid::Uuid::new_v4());
    let limit = json!({"count": 5, "time_window": 60, "key_type": "constant", "key": key,
        "group": "shared"});
    on_both(
        [&one, &two],
        "/limited",
        "limit-count",
        in_redis(limit, &redis),
        up,
    )
    .await;
    let down = json!({"count": 1, "time_window": 60});
    degrades_when_asked(
        [&one, &two],
        up,
        "limit-count",
        down,
        "failed to limit count",
    )
    .await;
    // 5 requests in all pass, alternating between the gateways; the rest are refused by both.
    let mut passed = 0;
    for i in 0..10 {
        let gw = if i % 2 == 0 { &one } else { &two };
        match get(gw, "/limited", &[]).await.0 {
            200 => passed += 1,
            503 => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(passed, 5);
    assert_eq!(get(&one, "/limited", &[]).await.0, 503);
    assert_eq!(get(&two, "/limited", &[]).await.0, 503);
}

#[tokio::test]
async fn limit_req_delays_up_to_burst_and_refuses_the_rest() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let up = spawn_upstream("up").await;
    let route = |id: &str, limit: serde_json::Value| {
        json!({"uri": format!("/{id}"), "plugins": {"limit-req": limit},
               "upstream": {"nodes": {up.to_string(): 1}}})
    };
    // APISIX's example: 1 request per second, no burst, refused with a message.
    gw.put(
        "/apisix/admin/routes/strict",
        route(
            "strict",
            json!({"rate": 1, "burst": 0, "rejected_code": 429,
            "rejected_msg": "Requests are too frequent, please try again later.",
            "key_type": "var", "key": "remote_addr"}),
        ),
    )
    .await;
    // 2 per second; 2 more may queue, delayed until their turn.
    gw.put(
        "/apisix/admin/routes/queue",
        route(
            "queue",
            json!({"rate": 2, "burst": 2, "key": "remote_addr"}),
        ),
    )
    .await;
    // The same, sent at once, per user.
    gw.put(
        "/apisix/admin/routes/nodelay",
        route(
            "nodelay",
            json!({"rate": 0.1, "burst": 2, "nodelay": true,
            "key_type": "var_combination", "key": "$http_x_user"}),
        ),
    )
    .await;
    gw.wait_for("/nodelay", 200).await; // anonymous: keyed by the client address

    let (status, _, _) = get(&gw, "/strict", &[]).await;
    assert_eq!(status, 200);
    let (status, body, _) = get(&gw, "/strict", &[]).await;
    assert_eq!(
        (status, body),
        (
            429,
            json!({"error_msg": "Requests are too frequent, please try again later."})
        )
    );

    // Four at once: one now, one after 0.5 s, one after 1 s, one refused.
    let started = Instant::now();
    let requests = (0..4).map(|_| {
        let gw = &gw;
        async move {
            let (status, _, _) = get(gw, "/queue", &[]).await;
            (status, started.elapsed())
        }
    });
    let mut results = futures::future::join_all(requests).await;
    results.sort();
    let statuses: Vec<_> = results.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [200, 200, 200, 503]);
    let slowest = results[..3].iter().map(|(_, t)| *t).max().unwrap();
    assert!(
        slowest >= Duration::from_millis(900),
        "the last queued request waited its turn: {slowest:?}"
    );

    for user in ["ann", "bob"] {
        let headers = [("x-user", user)];
        let statuses: Vec<_> =
            futures::future::join_all((0..4).map(|_| get(&gw, "/nodelay", &headers)))
                .await
                .into_iter()
                .map(|(s, _, _)| s)
                .collect();
        let passed = statuses.iter().filter(|s| **s == 200).count();
        assert_eq!(passed, 3, "{user}: {statuses:?}");
    }

    // Bad configurations are refused when written, naming the field.
    for (limit, field) in [
        (json!({"rate": 0, "burst": 1, "key": "remote_addr"}), "rate"),
        (json!({"rate": 1, "key": "remote_addr"}), "burst"),
        (json!({"rate": 1, "burst": 1, "key": "no_such_var"}), "key"),
        (
            json!({"rate": 1, "burst": 1, "key": "remote_addr", "rejected_code": 99}),
            "rejected_code",
        ),
        (
            json!({"rate": 1, "burst": 1, "key": "remote_addr", "policy": "redis"}),
            "policy",
        ),
    ] {
        gw.refused_naming("/apisix/admin/routes/bad", route("bad", limit), field)
            .await;
    }
}

#[tokio::test]
async fn limit_conn_holds_places_until_the_response_is_done() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let up = spawn_upstream("up").await;
    // APISIX's example: one request in flight per client, none waiting.
    gw.put(
        "/apisix/admin/routes/one",
        json!({"uri": "/one", "plugins": {"limit-conn": {"conn": 1, "burst": 0,
            "default_conn_delay": 0.1, "rejected_code": 503, "key_type": "var",
            "key": "remote_addr"}},
            "upstream": {"nodes": {up.to_string(): 1}}}),
    )
    .await;
    // One in flight, one more after a delay.
    gw.put(
        "/apisix/admin/routes/burst",
        json!({"uri": "/burst", "plugins": {"limit-conn": {"conn": 1, "burst": 1,
            "default_conn_delay": 0.2, "only_use_default_delay": true,
            "key": "remote_addr", "rejected_msg": "busy"}},
            "upstream": {"nodes": {up.to_string(): 1}}}),
    )
    .await;
    gw.wait_for("/burst", 200).await;

    let slow = "/one?sleep_ms=600";
    let (first, second) = tokio::join!(get(&gw, slow, &[]), async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        get(&gw, slow, &[]).await
    });
    assert_eq!((first.0, second.0), (200, 503));
    // The place was given back with the response.
    assert_eq!(get(&gw, "/one", &[]).await.0, 200);
    // It is held while the body is still on its way.
    let dripping = gw
        .client
        .get(gw.url("/one?drip_ms=600"))
        .send()
        .await
        .unwrap();
    assert_eq!(dripping.status(), 200);
    assert_eq!(get(&gw, "/one", &[]).await.0, 503);
    assert!(dripping.text().await.unwrap().contains("upstream"));
    assert_eq!(get(&gw, "/one", &[]).await.0, 200);

    // A client that goes away gives its place back too, while the upstream still works.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    assert!(
        impatient
            .get(gw.url("/one?sleep_ms=3000"))
            .send()
            .await
            .is_err()
    );
    let again = async {
        loop {
            if get(&gw, "/one", &[]).await.0 == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(2), again)
        .await
        .expect("the place is free again before the upstream would have answered");

    // Burst: the second waits a unit delay, the third is refused.
    let slow = "/burst?sleep_ms=800";
    let started = Instant::now();
    let results = futures::future::join_all((0..3).map(|i| {
        let gw = &gw;
        async move {
            tokio::time::sleep(Duration::from_millis(100 * i)).await;
            let (status, body, _) = get(gw, slow, &[]).await;
            (status, body, started.elapsed())
        }
    }))
    .await;
    let statuses: Vec<_> = results.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(statuses, [200, 200, 503]);
    assert_eq!(results[2].1, json!({"error_msg": "busy"}));
    assert!(
        results[1].2 >= Duration::from_millis(1000),
        "the second waited its delay: {:?}",
        results[1].2
    );
}

/// Where the test Redis is, as the `redis_host` and `redis_port` of a limit; None when unset.
fn test_redis() -> Option<(String, u16)> {
    let url = axle_core::testing::redis_url()?;
    let addr = url.trim_start_matches("redis://").trim_end_matches('/');
    let (host, port) = addr.rsplit_once(':').unwrap();
    Some((host.to_string(), port.parse().unwrap()))
}

/// `limit` counting in the Redis at `(host, port)`.
fn in_redis(mut limit: Value, (host, port): &(String, u16)) -> Value {
    let fields = json!({"policy": "redis", "redis_host": host, "redis_port": port});
    limit
        .as_object_mut()
        .unwrap()
        .extend(fields.as_object().unwrap().clone());
    limit
}

/// The route `uri` on both gateways, limited by `plugin` configured as `limit`.
async fn on_both(gws: [&Gateway; 2], uri: &str, plugin: &str, limit: Value, up: SocketAddr) {
    for gw in gws {
        gw.put(
            &format!("/apisix/admin/routes/{}", uri.trim_start_matches('/')),
            json!({"uri": uri, "plugins": {plugin: limit},
                   "upstream": {"nodes": {up.to_string(): 1}}}),
        )
        .await;
    }
}

/// With its Redis unreachable, `plugin` (configured as `limit`) lets requests pass uncounted
/// with `allow_degradation` and refuses them with a 500 and `message` without; never a hang.
async fn degrades_when_asked(
    gws: [&Gateway; 2],
    up: SocketAddr,
    plugin: &str,
    limit: Value,
    message: &str,
) {
    let nowhere = ("127.0.0.1".to_string(), 1);
    for (uri, degrade) in [("/degrade", true), ("/strict", false)] {
        let mut limit = in_redis(limit.clone(), &nowhere);
        limit["redis_timeout"] = json!(200);
        limit["allow_degradation"] = json!(degrade);
        on_both(gws, uri, plugin, limit, up).await;
    }
    for gw in gws {
        gw.wait_for("/strict", 500).await;
        for _ in 0..3 {
            assert_eq!(get(gw, "/degrade", &[]).await.0, 200);
        }
        let (status, body, _) = get(gw, "/strict", &[]).await;
        assert_eq!((status, body), (500, json!({ "message": message })));
    }
}

#[tokio::test]
async fn limit_req_in_redis_holds_across_two_gateways_and_degrades_when_asked() {
    let Some(redis) = test_redis() else { return };
    let (one, two) = (
        spawn_gateway(Backends::embedded()).await,
        spawn_gateway(Backends::embedded()).await,
    );
    let up = spawn_upstream("up").await;
    let key = format!("run-{}", uuid::Uuid::new_v4());
    // One request a minute, two more may wait: four at once, one refused — whichever
    // gateway they come through.
    let limit = json!({"rate": 1.0 / 60.0, "burst": 2, "nodelay": true,
        "key_type": "constant", "key": key, "rejected_code": 429});
    on_both(
        [&one, &two],
        "/req",
        "limit-req",
        in_redis(limit, &redis),
        up,
    )
    .await;
    let down = json!({"rate": 1, "burst": 0, "key": "remote_addr"});
    degrades_when_asked([&one, &two], up, "limit-req", down, "failed to limit req").await;

    let mut statuses = Vec::new();
    for i in 0..6 {
        let gw = if i % 2 == 0 { &one } else { &two };
        statuses.push(get(gw, "/req", &[]).await.0);
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 429, 429, 429],
        "one bucket for both"
    );
}

#[tokio::test]
async fn limit_conn_in_redis_holds_across_two_gateways_and_degrades_when_asked() {
    let Some(redis) = test_redis() else { return };
    let (one, two) = (
        spawn_gateway(Backends::embedded()).await,
        spawn_gateway(Backends::embedded()).await,
    );
    let up = spawn_upstream("up").await;
    let key = format!("run-{}", uuid::Uuid::new_v4());
    let limit = json!({"conn": 1, "burst": 0, "default_conn_delay": 0.1,
        "key_type": "constant", "key": key, "rejected_code": 429});
    on_both(
        [&one, &two],
        "/conn",
        "limit-conn",
        in_redis(limit, &redis),
        up,
    )
    .await;
    let down = json!({"conn": 1, "burst": 0, "default_conn_delay": 0.1, "key": "remote_addr"});
    degrades_when_asked([&one, &two], up, "limit-conn", down, "failed to limit conn").await;

    // A response still on its way through one gateway holds the only place: the other refuses.
    let dripping = one
        .client
        .get(one.url("/conn?drip_ms=600"))
        .send()
        .await
        .unwrap();
    assert_eq!(dripping.status(), 200);
    assert_eq!(get(&two, "/conn", &[]).await.0, 429);
    assert!(dripping.text().await.unwrap().contains("upstream"));
    // Given back with the response: either gateway serves again.
    eventually(5, "the place to be given back", || async {
        (get(&two, "/conn", &[]).await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(get(&one, "/conn", &[]).await.0, 200);
}

/// APISIX's "Rate Limit with Anonymous Consumer" example: a consumer's limit follows it over
/// every route it calls, and the anonymous consumer's limit counts every unauthenticated request.
#[tokio::test]
async fn limit_count_on_consumers_counts_each_consumer_over_every_route() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let up = spawn_upstream("up").await;
    gw.put(
        "/apisix/admin/consumers",
        json!({"username": "john", "plugins": {"limit-count": {
            "count": 3, "time_window": 30, "rejected_code": 429}}}),
    )
    .await;
    gw.put(
        "/apisix/admin/consumers/john/credentials",
        json!({"id": "cred-john-key-auth", "plugins": {"key-auth": {"key": "john-key"}}}),
    )
    .await;
    gw.put(
        "/apisix/admin/consumers",
        json!({"username": "anonymous", "plugins": {"limit-count": {
            "count": 1, "time_window": 30, "rejected_code": 429}}}),
    )
    .await;
    for (id, uri) in [("key-auth-route", "/anything"), ("other-route", "/other")] {
        gw.put(
            "/apisix/admin/routes",
            json!({"id": id, "uri": uri,
                   "plugins": {"key-auth": {"anonymous_consumer": "anonymous"}},
                   "upstream": {"type": "roundrobin", "nodes": {up.to_string(): 1}}}),
        )
        .await;
    }
    gw.wait_for("/other", 200).await; // the anonymous consumer's one request
    let john = [("apikey", "john-key")];
    let statuses: Vec<u16> = futures::future::join_all((0..5).map(|i| {
        let uri = if i % 2 == 0 { "/anything" } else { "/other" };
        get(&gw, uri, &john)
    }))
    .await
    .iter()
    .map(|(status, _, _)| *status)
    .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        2,
        "{statuses:?}"
    );
    // The anonymous consumer had its one request already, on the other route.
    assert_eq!(get(&gw, "/anything", &[]).await.0, 429);
}

/// A global rule's limit counts the requests of every route; `plugin_metadata/limit-count`
/// names the quota headers (APISIX's "Customize Rate Limiting Headers").
#[tokio::test]
async fn global_limits_count_across_routes_with_the_header_names_metadata_gives() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let up = spawn_upstream("up").await;
    gw.put(
        "/apisix/admin/plugin_metadata/limit-count",
        json!({"limit_header": "X-Custom-RateLimit-Limit",
               "remaining_header": "X-Custom-RateLimit-Remaining",
               "reset_header": "X-Custom-RateLimit-Reset"}),
    )
    .await;
    gw.put(
        "/apisix/admin/global_rules/1",
        json!({"plugins": {"limit-count": {"count": 3, "time_window": 60, "rejected_code": 429,
            "key_type": "constant", "key": "everyone"}}}),
    )
    .await;
    for uri in ["/a", "/b"] {
        gw.put(
            &format!("/apisix/admin/routes{uri}"),
            json!({"uri": uri, "upstream": {"nodes": {up.to_string(): 1}}}),
        )
        .await;
    }
    let (status, _, headers) = eventually(10, "the routes and the rule", || async {
        let answer = get(&gw, "/b", &[]).await;
        answer
            .2
            .contains_key("x-custom-ratelimit-limit")
            .then_some(answer)
    })
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-custom-ratelimit-limit"], "3");
    assert!(!headers.contains_key("x-ratelimit-limit"));
    let mut statuses = Vec::new();
    for uri in ["/a", "/b", "/a"] {
        statuses.push(get(&gw, uri, &[]).await.0);
    }
    assert_eq!(statuses, [200, 200, 429], "one count for both routes");
}

#[tokio::test]
async fn workflow_runs_the_first_matching_rules_action_as_apisixs_examples_do() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let up = spawn_upstream("up").await;
    let upstream = json!({"type": "roundrobin", "nodes": {up.to_string(): 1}});
    // APISIX's "Return Response HTTP Status Code Conditionally".
    gw.put(
        "/apisix/admin/routes/workflow-route",
        json!({"uri": "/anything/*", "plugins": {"workflow": {"rules": [
                  {"case": [["uri", "==", "/anything/rejected"]], "actions": [["return", {"code": 403}]]}]}},
               "upstream": upstream}),
    )
    .await;
    gw.wait_for("/anything/anything", 200).await;
    let (status, body, _) = get(&gw, "/anything/rejected", &[]).await;
    assert_eq!(
        (status, body),
        (403, json!({"error_msg": "rejected by workflow"}))
    );

    // "Apply Rate Limiting Conditionally by URI and Query Parameter".
    gw.put(
        "/apisix/admin/routes/workflow-route",
        json!({"uri": "/anything/*", "plugins": {"workflow": {"rules": [
                  {"case": [["uri", "==", "/anything/rate-limit"], ["arg_env", "==", "v1"]],
                   "actions": [["limit-count", {"count": 1, "time_window": 60, "rejected_code": 429}]]}]}},
               "upstream": upstream}),
    )
    .await;
    gw.wait_for("/anything/rejected", 200).await;
    let statuses = |path: &'static str, n: usize, key: Option<&'static str>| {
        let gw = &gw;
        async move {
            let mut seen = Vec::new();
            for _ in 0..n {
                let headers: Vec<(&str, &str)> = key.map(|k| ("apikey", k)).into_iter().collect();
                seen.push(get(gw, path, &headers).await.0);
            }
            seen
        }
    };
    assert_eq!(
        statuses("/anything/rate-limit?env=v1", 2, None).await,
        [200, 429]
    );
    assert_eq!(
        statuses("/anything/anything?env=v1", 3, None).await,
        [200, 200, 200]
    );

    // "Apply Rate Limiting Conditionally by Consumers": john 5, jane 3, everyone else 2.
    for name in ["john", "jane", "jimmy"] {
        gw.put("/apisix/admin/consumers", json!({ "username": name }))
            .await;
        gw.put(
            &format!("/apisix/admin/consumers/{name}/credentials"),
            json!({"id": format!("cred-{name}-key-auth"), "plugins": {"key-auth": {"key": format!("{name}-key")}}}),
        )
        .await;
    }
    let limit = |count: u64, key: &str, key_type: &str| {
        json!(["limit-count", {"count": count, "key": key, "key_type": key_type,
                                "rejected_code": 429, "time_window": 30, "policy": "local"}])
    };
    gw.put(
        "/apisix/admin/routes/workflow-route",
        json!({"uri": "/anything", "plugins": {"key-auth": {}, "workflow": {"rules": [
                  {"actions": [limit(5, "consumer_john", "constant")], "case": [["consumer_name", "==", "john"]]},
                  {"actions": [limit(3, "consumer_jane", "constant")], "case": [["consumer_name", "==", "jane"]]},
                  {"actions": [limit(2, "$consumer_name", "var")]}]}},
               "upstream": upstream}),
    )
    .await;
    gw.wait_for("/anything", 401).await;
    let tally = |seen: Vec<u16>| {
        (
            seen.iter().filter(|s| **s == 200).count(),
            seen.iter().filter(|s| **s == 429).count(),
        )
    };
    assert_eq!(
        tally(statuses("/anything", 6, Some("john-key")).await),
        (5, 1)
    );
    assert_eq!(
        tally(statuses("/anything", 6, Some("jane-key")).await),
        (3, 3)
    );
    assert_eq!(
        tally(statuses("/anything", 3, Some("jimmy-key")).await),
        (2, 1)
    );

    // Bad rules are refused naming what is wrong.
    for (rules, says) in [
        (
            json!([{"actions": [["rewrite", {}]]}]),
            "unsupported action: rewrite",
        ),
        (json!([{"actions": [["return", {"code": 99}]]}]), "code"),
        (
            json!([{"case": [["uri", "=~", "x"]], "actions": [["return", {"code": 403}]]}]),
            "case",
        ),
        (
            json!([{"actions": [["limit-count", {"count": 1, "time_window": 1, "group": "g"}]]}]),
            "group",
        ),
        (json!([{"actions": []}]), "actions"),
    ] {
        let message = gw
            .refused(
                reqwest::Method::PUT,
                "/apisix/admin/routes/bad",
                json!({"uri": "/bad", "plugins": {"workflow": {"rules": rules}}, "upstream": upstream}),
            )
            .await;
        assert!(message.contains(says), "{message}");
    }
}
