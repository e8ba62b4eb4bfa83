//! The plugins through the real data plane: authentication and consumers, access control,
//! request ids, CORS and fault injection, with APISIX's documentation examples.

use axle_core::testing::Backends;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{call, get, spawn_gateway, spawn_upstream};

#[tokio::test]
async fn key_auth_names_the_consumer_whose_plugins_then_win() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let up = spawn_upstream("up").await;
    // APISIX's key-auth example: a consumer, its credential, a route.
    gw.put("/apisix/admin/consumers", json!({"username": "jack"}))
        .await;
    gw.put(
        "/apisix/admin/consumers/jack/credentials",
        json!({"id": "cred-jack-key-auth", "plugins": {"key-auth": {"key": "jack-key"}}}),
    )
    .await;
    gw.put(
        "/apisix/admin/routes",
        json!({"id": "key-auth-route", "uri": "/anything", "plugins": {"key-auth": {}},
               "upstream": {"type": "roundrobin", "nodes": {up.to_string(): 1}}}),
    )
    .await;
    gw.wait_for("/anything", 401).await;

    let (status, body, _) = get(&gw, "/anything", &[]).await;
    assert_eq!(
        (status, body),
        (401, json!({"message": "Missing API key in request"}))
    );
    let (status, body, _) = get(&gw, "/anything", &[("apikey", "wrong-key")]).await;
    assert_eq!(
        (status, body),
        (401, json!({"message": "Invalid API key in request"}))
    );
    // A client cannot claim to be someone: its consumer headers are replaced.
    let forged = [
        ("apikey", "jack-key"),
        ("X-Consumer-Username", "admin"),
        ("X-Consumer-Group-Id", "staff"),
    ];
    let (status, seen, _) = get(&gw, "/anything", &forged).await;
    assert_eq!(status, 200);
    assert_eq!(seen["headers"]["x-consumer-username"], "jack");
    assert_eq!(
        seen["headers"]["x-credential-identifier"],
        "cred-jack-key-auth"
    );
    assert_eq!(seen["headers"]["x-consumer-group-id"], Value::Null);
    assert_eq!(seen["headers"]["apikey"], "jack-key");
    let (status, seen, _) = get(&gw, "/anything?apikey=jack-key", &[]).await;
    assert_eq!((status, &seen["query"]), (200, &json!("apikey=jack-key")));

    // hide_credentials, and a key in a header of the route's choosing.
    gw.put(
        "/apisix/admin/routes/hidden",
        json!({"uri": "/hidden", "plugins": {"key-auth": {"header": "Authorization", "hide_credentials": true}},
               "upstream": {"nodes": {up.to_string(): 1}}}),
    )
    .await;
    gw.wait_for("/hidden", 401).await;
    let (status, seen, _) = get(&gw, "/hidden?x=1", &[("Authorization", "jack-key")]).await;
    assert_eq!(status, 200);
    assert_eq!(seen["headers"]["authorization"], Value::Null);
    assert_eq!(seen["query"], "x=1");
    let (status, seen, _) = get(&gw, "/hidden?apikey=jack-key&x=1", &[]).await;
    assert_eq!((status, &seen["query"]), (200, &json!("x=1")));

    // Precedence: consumer > consumer group > route for a plugin configured on each.
    gw.put(
        "/apisix/admin/consumer_groups/gold",
        json!({"plugins": {"proxy-rewrite": {"headers": {"set": {"X-Tier": "group"}}}}}),
    )
    .await;
    gw.put(
        "/apisix/admin/consumers",
        json!({"username": "rose", "group_id": "gold", "labels": {"custom_id": "c-42"},
               "plugins": {"key-auth": {"key": "rose-key"},
                           "proxy-rewrite": {"headers": {"set": {"X-Tier": "consumer"}}}}}),
    )
    .await;
    gw.put(
        "/apisix/admin/consumers",
        json!({"username": "jack", "group_id": "gold"}),
    )
    .await;
    // Written before the route, so the route's arrival means it has arrived too.
    gw.put("/apisix/admin/consumers", json!({"username": "guest"}))
        .await;
    gw.put(
        "/apisix/admin/routes/tiers",
        json!({"uri": "/tiers", "plugins": {"key-auth": {"anonymous_consumer": "guest"},
                                            "proxy-rewrite": {"headers": {"set": {"X-Tier": "route"}}}},
               "upstream": {"nodes": {up.to_string(): 1}}}),
    )
    .await;
    let tier = |seen: &Value| seen["headers"]["x-tier"].clone();
    let (status, seen, _) = axle_core::testing::eventually(10, "rose's key", || async {
        let r = get(&gw, "/tiers", &[("apikey", "rose-key")]).await;
        (r.0 == 200 && r.1["headers"]["x-consumer-username"] == "rose").then_some(r)
    })
    .await;
    assert_eq!((status, tier(&seen)), (200, json!("consumer")));
    assert_eq!(seen["headers"]["x-consumer-custom-id"], "c-42");
    assert_eq!(seen["headers"]["x-consumer-group-id"], "gold");
    assert_eq!(seen["headers"]["x-credential-identifier"], Value::Null);
    let (_, seen, _) = get(&gw, "/tiers", &[("apikey", "jack-key")]).await;
    assert_eq!(
        (seen["headers"]["x-consumer-username"].clone(), tier(&seen)),
        (json!("jack"), json!("group"))
    );
    // No key: the anonymous consumer, with the route's own plugins.
    let (status, seen, _) = get(&gw, "/tiers", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(
        (seen["headers"]["x-consumer-username"].clone(), tier(&seen)),
        (json!("guest"), json!("route"))
    );

    // A deleted credential stops working.
    let (status, _) = gw
        .admin(
            Method::DELETE,
            "/apisix/admin/consumers/jack/credentials/cred-jack-key-auth",
            None,
        )
        .await;
    assert_eq!(status, 200);
    gw.wait_for("/anything?apikey=jack-key", 401).await;
}

#[tokio::test]
async fn basic_auth_and_consumer_restriction() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let up = spawn_upstream("up").await;
    for (user, password) in [("foo", "bar"), ("bob", "pw")] {
        gw.put(
            "/apisix/admin/consumers",
            json!({"username": user, "plugins": {"basic-auth": {"username": user, "password": password}}}),
        )
        .await;
    }
    // carl may call route r1 only: consumer-restriction on the consumer, by route id.
    gw.put(
        "/apisix/admin/consumers",
        json!({"username": "carl", "plugins": {
            "basic-auth": {"username": "carl", "password": "pw"},
            "consumer-restriction": {"type": "route_id", "whitelist": ["r1"], "rejected_code": 401}}}),
    )
    .await;
    gw.put(
        "/apisix/admin/routes/r1",
        json!({"uri": "/r1", "plugins": {"basic-auth": {},
                "consumer-restriction": {"whitelist": ["foo", "carl"],
                    "allowed_by_methods": [{"user": "foo", "methods": ["GET"]}]}},
               "upstream": {"nodes": {up.to_string(): 1}}}),
    )
    .await;
    gw.put(
        "/apisix/admin/routes/r2",
        json!({"uri": "/r2", "plugins": {"basic-auth": {"hide_credentials": true}},
               "upstream": {"nodes": {up.to_string(): 1}}}),
    )
    .await;
    gw.put(
        "/apisix/admin/routes/r3",
        json!({"uri": "/r3", "plugins": {"consumer-restriction": {"blacklist": ["bob"]}},
               "upstream": {"nodes": {up.to_string(): 1}}}),
    )
    .await;
    gw.wait_for("/r3", 401).await;
    let basic = |user: &str, password: &str| {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    };

    let (status, body, headers) = get(&gw, "/r1", &[]).await;
    assert_eq!(
        (status, body),
        (401, json!({"message": "Missing authorization in request"}))
    );
    assert_eq!(headers["www-authenticate"], "Basic realm=\"basic\"");
    let (status, body, _) = get(&gw, "/r1", &[("Authorization", &basic("foo", "nope"))]).await;
    assert_eq!(
        (status, body),
        (401, json!({"message": "Invalid user authorization"}))
    );
    let (status, body, _) = get(&gw, "/r1", &[("Authorization", "Basic !!!")]).await;
    assert_eq!(
        (status, body),
        (401, json!({"message": "Invalid authorization in request"}))
    );
    let (status, seen, _) = get(&gw, "/r1", &[("Authorization", &basic("foo", "bar"))]).await;
    assert_eq!(
        (status, &seen["headers"]["x-consumer-username"]),
        (200, &json!("foo"))
    );
    assert_eq!(seen["headers"]["authorization"], basic("foo", "bar"));
    let (status, body, _) = call(
        &gw,
        Method::POST,
        "/r1",
        &[("Authorization", &basic("foo", "bar"))],
    )
    .await;
    assert_eq!(
        (status, body),
        (403, json!({"message": "The consumer_name is forbidden."}))
    );
    let (status, body, _) = get(&gw, "/r1", &[("Authorization", &basic("bob", "pw"))]).await;
    assert_eq!(
        (status, body),
        (403, json!({"message": "The consumer_name is forbidden."}))
    );
    let (status, _, _) = get(&gw, "/r1", &[("Authorization", &basic("carl", "pw"))]).await;
    assert_eq!(status, 200);
    // carl's own restriction follows him to r2, which he may not call.
    let (status, body, _) = get(&gw, "/r2", &[("Authorization", &basic("carl", "pw"))]).await;
    assert_eq!(
        (status, body),
        (401, json!({"message": "The route_id is forbidden."}))
    );
    let (status, seen, _) = get(&gw, "/r2", &[("Authorization", &basic("bob", "pw"))]).await;
    assert_eq!(
        (status, &seen["headers"]["authorization"]),
        (200, &Value::Null)
    );
    // consumer-restriction without authentication.
    let (status, body, _) = get(&gw, "/r3", &[]).await;
    assert_eq!(
        (status, body),
        (
            401,
            json!({"message": "Missing authentication or identity verification."})
        )
    );
}

#[tokio::test]
async fn ip_restriction_request_id_cors_and_fault_injection() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let up = spawn_upstream("up").await;
    let route = |uri: &str, plugins: Value| json!({"uri": uri, "plugins": plugins, "upstream": {"nodes": {up.to_string(): 1}}});
    gw.put(
        "/apisix/admin/routes/allow",
        route(
            "/allow",
            json!({"ip-restriction": {"whitelist": ["127.0.0.1", "10.0.0.0/8"]}}),
        ),
    )
    .await;
    gw.put(
        "/apisix/admin/routes/deny",
        route("/deny", json!({"ip-restriction": {"blacklist": ["127.0.0.0/24"], "message": "Do you want to do something bad?"}})),
    )
    .await;
    gw.put(
        "/apisix/admin/routes/id",
        route("/id", json!({"request-id": {}})),
    )
    .await;
    gw.put(
        "/apisix/admin/routes/nano",
        route("/nano", json!({"request-id": {"header_name": "X-Trace", "algorithm": "nanoid", "include_in_response": false}})),
    )
    .await;
    gw.put(
        "/apisix/admin/routes/ksuid",
        route("/ksuid", json!({"request-id": {"algorithm": "ksuid"}})),
    )
    .await;
    gw.put(
        "/apisix/admin/routes/cors",
        route("/cors", json!({"cors": {"allow_origins": "https://shop.example.com,https://a.dealer.example.com",
            "allow_methods": "GET,POST",
            "allow_headers": "**", "expose_headers": "X-Request-Id", "max_age": 60, "allow_credential": true}})),
    )
    .await;
    gw.put(
        "/apisix/admin/routes/abort",
        route(
            "/abort",
            json!({"fault-injection": {"abort": {"http_status": 200, "body": "Fault Injection!\n",
            "headers": {"X-Fault": "$remote_addr"}}}}),
        ),
    )
    .await;
    gw.put(
        "/apisix/admin/routes/abort-jack",
        route(
            "/abort-jack",
            json!({"fault-injection": {"abort": {"http_status": 403, "body": "no jack",
            "vars": [[["arg_name", "==", "jack"]]]}}}),
        ),
    )
    .await;
    gw.put(
        "/apisix/admin/routes/delay",
        route(
            "/delay",
            json!({"fault-injection": {"delay": {"duration": 0.05, "percentage": 100}}}),
        ),
    )
    .await;
    gw.wait_for("/delay", 200).await;

    assert_eq!(get(&gw, "/allow", &[]).await.0, 200);
    let (status, body, _) = get(&gw, "/deny", &[]).await;
    assert_eq!(
        (status, body),
        (403, json!({"message": "Do you want to do something bad?"}))
    );

    let (status, seen, headers) = get(&gw, "/id", &[]).await;
    assert_eq!(status, 200);
    let id = headers["x-request-id"].to_str().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    assert_eq!(seen["headers"]["x-request-id"], id.as_str());
    let (_, seen, headers) = get(&gw, "/id", &[("X-Request-Id", "from-client")]).await;
    assert_eq!(seen["headers"]["x-request-id"], "from-client");
    assert_eq!(headers["x-request-id"], "from-client");
    // An empty header gets an id too (APISIX's `curl -H 'X-Request-Id;'`).
    let (_, seen, headers) = get(&gw, "/id", &[("X-Request-Id", "")]).await;
    let id = headers["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    assert_eq!(seen["headers"]["x-request-id"], id);
    let (_, seen, headers) = get(&gw, "/nano", &[]).await;
    assert_eq!(seen["headers"]["x-trace"].as_str().unwrap().len(), 21);
    assert!(!headers.contains_key("x-trace"));
    let (_, _, headers) = get(&gw, "/ksuid", &[]).await;
    let id = headers["x-request-id"].to_str().unwrap();
    assert!(
        id.len() == 27 && id.bytes().all(|b| b.is_ascii_alphanumeric()),
        "a KSUID: {id}"
    );

    let preflight = [
        ("Origin", "https://shop.example.com"),
        ("Access-Control-Request-Headers", "X-Custom"),
    ];
    let (status, _, headers) = call(&gw, Method::OPTIONS, "/cors", &preflight).await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://shop.example.com"
    );
    assert_eq!(headers["access-control-allow-methods"], "GET,POST");
    assert_eq!(headers["access-control-allow-headers"], "X-Custom");
    assert_eq!(headers["access-control-max-age"], "60");
    assert_eq!(headers["access-control-allow-credentials"], "true");
    assert_eq!(headers["vary"], "Origin");
    let (status, _, headers) =
        get(&gw, "/cors", &[("Origin", "https://a.dealer.example.com")]).await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://a.dealer.example.com"
    );
    assert_eq!(headers["access-control-expose-headers"], "X-Request-Id");
    let (_, _, headers) = get(&gw, "/cors", &[("Origin", "https://evil.example.net")]).await;
    assert!(!headers.contains_key("access-control-allow-origin"));

    let (status, body, headers) = get(&gw, "/abort", &[]).await;
    assert_eq!((status, body), (200, json!("Fault Injection!\n")));
    assert_eq!(headers["x-fault"], "127.0.0.1");
    let (status, body, _) = get(&gw, "/abort-jack?name=jack", &[]).await;
    assert_eq!((status, body), (403, json!("no jack")));
    let (status, seen, _) = get(&gw, "/abort-jack?name=jill", &[]).await;
    assert_eq!((status, &seen["upstream"]), (200, &json!("up")));
    let (status, seen, _) = get(&gw, "/delay", &[]).await;
    assert_eq!((status, &seen["upstream"]), (200, &json!("up")));
}

#[tokio::test]
async fn bad_plugin_configs_are_refused_naming_the_field() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let route = |plugins: Value| json!({"uri": "/x", "plugins": plugins});
    let cases = [
        (
            json!({"ip-restriction": {"whitelist": ["10.0.0.300"]}}),
            "whitelist",
        ),
        (
            json!({"ip-restriction": {"whitelist": ["1.2.3.4"], "blacklist": ["5.6.7.8"]}}),
            "exactly one of whitelist and blacklist",
        ),
        (json!({"fault-injection": {}}), "one of abort and delay"),
        (
            json!({"fault-injection": {"abort": {"http_status": 403, "vars": [[["arg_x", "~~", "("]]]}}}),
            "abort.vars",
        ),
        (
            json!({"cors": {"allow_credential": true}}),
            "allow_credential",
        ),
        (
            json!({"consumer-restriction": {}}),
            "whitelist, blacklist and allowed_by_methods",
        ),
        (
            json!({"request-id": {"algorithm": "snowflake"}}),
            "algorithm",
        ),
        (json!({"key-auth": {"key": "on-a-route"}}), "key"),
    ];
    for (plugins, field) in cases {
        gw.refused_naming("/apisix/admin/routes/x", route(plugins), field)
            .await;
    }
    gw.put("/apisix/admin/consumers", json!({"username": "jack"}))
        .await;
    let credential = json!({"plugins": {"key-auth": {}}});
    gw.refused_naming(
        "/apisix/admin/consumers/jack/credentials/c1",
        credential,
        "key",
    )
    .await;
    let consumer = json!({"username": "ann", "plugins": {"basic-auth": {"username": "ann"}}});
    gw.refused_naming("/apisix/admin/consumers", consumer, "password")
        .await;
    // `_meta` belongs to the pipeline and is accepted on any plugin.
    gw.put(
        "/apisix/admin/routes/x",
        route(json!({"request-id": {"_meta": {"disable": true}}})),
    )
    .await;
}

/// APISIX's cors examples "Use RegEx to Match Origin" and "Configure Origins in Plugin
/// Metadata", and Timing-Allow-Origin.
#[tokio::test]
async fn cors_matches_origins_by_regex_and_by_metadata() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let up = spawn_upstream("up").await;
    gw.put(
        "/apisix/admin/plugin_metadata/cors",
        json!({"allow_origins": {"key_1": "https://domain.com",
            "key_2": "https://sub.domain.com,https://sub2.domain.com", "key_3": "*"}}),
    )
    .await;
    let common = json!({"allow_methods": "GET,POST", "allow_headers": "headr1,headr2",
        "expose_headers": "ex-headr1,ex-headr2", "max_age": 50});
    let with = |extra: Value| {
        let mut cors = common.clone();
        cors.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        cors
    };
    for (id, cors) in [
        (
            "regex",
            with(json!({"allow_origins_by_regex": [".*\\.test.com$"]})),
        ),
        (
            "metadata",
            with(json!({"allow_origins_by_metadata": ["key_1"]})),
        ),
        (
            "timing",
            json!({"timing_allow_origins": "https://timing.example.com"}),
        ),
    ] {
        gw.put(
            "/apisix/admin/routes",
            json!({"id": id, "uri": format!("/{id}"), "plugins": {"cors": cors},
                   "upstream": {"nodes": {up.to_string(): 1}, "type": "roundrobin"}}),
        )
        .await;
    }
    gw.wait_for("/timing", 200).await;

    let origin = async |uri: &str, origin: &str| get(&gw, uri, &[("Origin", origin)]).await.2;
    let headers = origin("/regex", "http://a.test.com").await;
    assert_eq!(headers["access-control-allow-origin"], "http://a.test.com");
    assert_eq!(headers["vary"], "Origin");
    assert_eq!(headers["access-control-allow-methods"], "GET,POST");
    assert_eq!(headers["access-control-max-age"], "50");
    assert_eq!(
        headers["access-control-expose-headers"],
        "ex-headr1,ex-headr2"
    );
    assert_eq!(headers["access-control-allow-headers"], "headr1,headr2");
    let headers = origin("/regex", "http://a.test2.com").await;
    assert!(!headers.contains_key("access-control-allow-origin"));
    assert_eq!(headers["vary"], "Origin");

    let headers = origin("/metadata", "https://domain.com").await;
    assert_eq!(headers["access-control-allow-origin"], "https://domain.com");
    let headers = origin("/metadata", "http://a.test2.com").await;
    assert!(
        !headers.contains_key("access-control-allow-origin"),
        "{headers:?}"
    );
    let headers = origin("/metadata", "https://sub.domain.com").await;
    assert!(
        !headers.contains_key("access-control-allow-origin"),
        "key_2 is not named"
    );

    let headers = origin("/timing", "https://timing.example.com").await;
    assert_eq!(headers["timing-allow-origin"], "https://timing.example.com");
    let headers = origin("/timing", "https://else.example.com").await;
    assert!(!headers.contains_key("timing-allow-origin"));
}

/// APISIX's proxy-rewrite examples "Set or Append Multiple Values for the Same Header" and
/// "Dynamically Forward Requests" (`$uri_param_*`).
#[tokio::test]
async fn proxy_rewrite_sets_lists_of_values_and_path_parameters() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let addr = crate::helpers::spawn_recorder().await;
    let upstream = json!({"type": "roundrobin", "nodes": {addr.to_string(): 1}});
    gw.put(
        "/apisix/admin/routes",
        json!({"id": "proxy-rewrite-route", "methods": ["GET"], "uri": "/",
               "plugins": {"proxy-rewrite": {"uri": "/headers",
                   "headers": {"set": {"X-Api-Version": ["v1", "v2"]}}}},
               "upstream": upstream}),
    )
    .await;
    gw.put(
        "/apisix/admin/routes",
        json!({"id": "append", "uri": "/append",
               "plugins": {"proxy-rewrite": {"headers": {"add": {"X-Api-Version": ["v1", "v2"]}}}},
               "upstream": upstream}),
    )
    .await;
    gw.put(
        "/apisix/admin/routes",
        json!({"id": "httpbin", "uri": "/anything/user/:user_id/profile",
               "plugins": {"proxy-rewrite": {"headers": {"set": {"X-User-Id": "$uri_param_user_id"}}}},
               "upstream": upstream}),
    )
    .await;
    gw.wait_for("/anything/user/123/profile", 200).await;

    let (_, head, _) = get(&gw, "/", &[("X-Api-Version", "v0")]).await;
    let head = head.as_str().unwrap().to_string();
    assert!(head.starts_with("get /headers "), "{head}");
    assert!(
        head.contains("x-api-version: v1\r\nx-api-version: v2\r\n"),
        "{head}"
    );
    assert!(!head.contains("v0"), "set replaces the client's: {head}");
    let (_, head, _) = get(&gw, "/append", &[("X-Api-Version", "v0")]).await;
    let head = head.as_str().unwrap().to_string();
    assert!(
        head.contains("x-api-version: v0\r\nx-api-version: v1\r\nx-api-version: v2\r\n"),
        "{head}"
    );
    let (_, head, _) = get(&gw, "/anything/user/123/profile", &[]).await;
    assert!(
        head.as_str().unwrap().contains("x-user-id: 123\r\n"),
        "{head}"
    );
}

/// APISIX's response-rewrite examples "Rewrite Header and Body" (only for a `200`, with the
/// answering node in `$balancer_ip:$balancer_port`) and "Rewrite Header With RegEx Filter".
#[tokio::test]
async fn response_rewrite_follows_the_status_and_filters_the_body() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let up = spawn_upstream("up").await;
    let (down, _) = crate::helpers::spawn_node("down", None, reqwest::StatusCode::NOT_FOUND).await;
    for (id, node) in [("ok", up), ("missing", down)] {
        gw.put(
            "/apisix/admin/routes",
            json!({"id": id, "methods": ["GET"], "uri": format!("/{id}"),
                "plugins": {"response-rewrite": {
                    "body": "{\"code\":\"ok\",\"message\":\"new json body\"}",
                    "headers": {"set": {"X-Server-id": 3, "X-Server-status": "on",
                        "X-Server-balancer-addr": "$balancer_ip:$balancer_port"}},
                    "vars": [["status", "==", 200]]}},
                "upstream": {"type": "roundrobin", "nodes": {node.to_string(): 1}}}),
        )
        .await;
    }
    gw.put(
        "/apisix/admin/routes",
        json!({"id": "filtered", "methods": ["GET"], "uri": "/headers",
            "plugins": {"response-rewrite": {"filters": [
                {"regex": "X-Amzn-Trace-Id", "scope": "global", "replace": "X-Amzn-Trace-Id-Replace",
                 "options": "ijo"},
                {"regex": "(up)stream\"", "replace": "${1}per\""}]}},
            "upstream": {"type": "roundrobin", "nodes": {up.to_string(): 1}}}),
    )
    .await;
    gw.wait_for("/headers", 200).await;

    let (status, body, headers) = get(&gw, "/ok", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"code": "ok", "message": "new json body"}));
    assert_eq!(headers["x-server-id"], "3");
    assert_eq!(headers["x-server-status"], "on");
    assert_eq!(headers["x-server-balancer-addr"], up.to_string());
    // A 404 does not match `vars`: left as the node sent it.
    let (status, body, headers) = get(&gw, "/missing", &[]).await;
    assert_eq!(status, 404);
    assert_eq!(body["upstream"], "down");
    assert!(!headers.contains_key("x-server-id"));

    let (status, body, _) = get(&gw, "/headers", &[("X-Amzn-Trace-Id", "Root=1-abc")]).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["headers"]["X-Amzn-Trace-Id-Replace"], "Root=1-abc",
        "{body}"
    );
    assert_eq!(
        body["upper"], "up",
        "the first match of the second filter, with its capture: {body}"
    );
}
