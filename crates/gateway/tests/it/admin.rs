//! The Admin API against APISIX's documented examples, shapes and errors.

use axle_core::testing::Backends;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{KEY, spawn_gateway, spawn_upstream};
use axle_core::on_every_backend;

on_every_backend!(apisix_examples, apisix_examples_work_as_written);
async fn apisix_examples_work_as_written(backends: Backends) {
    let gw = spawn_gateway(backends).await;
    let a = spawn_upstream("a").await;
    let b = spawn_upstream("b").await;

    // Create an upstream.
    let (status, created) = gw
        .admin(
            Method::PUT,
            "/apisix/admin/upstreams/1",
            Some(json!({"type": "roundrobin", "nodes": {a.to_string(): 1}})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["key"], "/apisix/upstreams/1");
    assert_eq!(created["value"]["id"], "1");
    assert!(created["value"]["create_time"].is_i64());
    assert!(created["value"]["update_time"].is_i64());

    // A route with upstream_id.
    gw.put(
        "/apisix/admin/routes/1",
        json!({"uri": "/get", "upstream_id": "1"}),
    )
    .await;
    let seen: Value = gw.wait_for("/get", 200).await.json().await.unwrap();
    assert_eq!(seen["upstream"], "a");

    // A route with an inline upstream.
    gw.put(
        "/apisix/admin/routes/2",
        json!({"methods": ["GET"], "host": "example.com", "uri": "/anything/*",
               "upstream": {"type": "roundrobin", "nodes": {b.to_string(): 1}}}),
    )
    .await;
    let r = axle_core::testing::eventually(10, "the inline route", || async {
        let r = gw
            .client
            .get(gw.url("/anything/foo?arg=10"))
            .header("Host", "example.com")
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(r)
    })
    .await;
    let seen: Value = r.json().await.unwrap();
    assert_eq!(
        (seen["upstream"].clone(), seen["path"].clone()),
        (json!("b"), json!("/anything/foo"))
    );
    assert_eq!(seen["query"], "arg=10");
    // Wrong host: no route.
    let miss = gw
        .client
        .get(gw.url("/anything/foo"))
        .header("Host", "other.com")
        .send()
        .await
        .unwrap();
    assert_eq!(miss.status(), 404);
    assert_eq!(
        miss.json::<Value>().await.unwrap(),
        json!({"error_msg": "404 Route Not Found"})
    );

    // A service, and a route using it.
    gw.put(
        "/apisix/admin/services/201",
        json!({"upstream": {"type": "roundrobin", "nodes": {b.to_string(): 1}}}),
    )
    .await;
    gw.put(
        "/apisix/admin/routes/12",
        json!({"uri": "/svc", "service_id": "201"}),
    )
    .await;
    let seen: Value = gw.wait_for("/svc", 200).await.json().await.unwrap();
    assert_eq!(seen["upstream"], "b");

    // PATCH a node's weight: the upstream now has both nodes, `a` at weight 0 (never picked).
    let (status, patched) = gw
        .admin(
            Method::PATCH,
            "/apisix/admin/upstreams/1",
            Some(json!({"nodes": {b.to_string(): 1, a.to_string(): 0}})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        patched["value"]["type"], "roundrobin",
        "other fields are kept"
    );
    axle_core::testing::eventually(10, "the patched weights", || async {
        let r = gw.client.get(gw.url("/get")).send().await.ok()?;
        let seen: Value = r.json().await.ok()?;
        (seen["upstream"] == "b").then_some(())
    })
    .await;
    // PATCH a sub-path.
    let (status, patched) = gw
        .admin(
            Method::PATCH,
            "/apisix/admin/upstreams/1/nodes",
            Some(json!({a.to_string(): 1})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(patched["value"]["nodes"], json!({a.to_string(): 1}));

    // GET one and the list, in APISIX v3 shapes.
    let (status, one) = gw.admin(Method::GET, "/apisix/admin/routes/1", None).await;
    assert_eq!(status, 200);
    assert_eq!(one["key"], "/apisix/routes/1");
    assert!(one["createdIndex"].is_i64() && one["modifiedIndex"].is_i64());
    let (_, list) = gw.admin(Method::GET, "/apisix/admin/routes", None).await;
    assert_eq!(list["total"], 3);
    assert_eq!(list["list"].as_array().unwrap().len(), 3);
    let (_, found) = gw
        .admin(Method::GET, "/apisix/admin/routes?uri=anything", None)
        .await;
    assert_eq!(found["total"], 1);
    assert_eq!(found["list"][0]["value"]["id"], "2");

    // DELETE.
    let (status, deleted) = gw
        .admin(Method::DELETE, "/apisix/admin/routes/12", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        deleted,
        json!({"deleted": "12", "key": "/apisix/routes/12"})
    );
    gw.wait_for("/svc", 404).await;
    let (status, body) = gw.admin(Method::GET, "/apisix/admin/routes/12", None).await;
    assert_eq!((status, body), (404, json!({"message": "Key not found"})));
}

on_every_backend!(bad_input, bad_input_gets_a_400_naming_the_problem);
async fn bad_input_gets_a_400_naming_the_problem(backends: Backends) {
    let gw = spawn_gateway(backends).await;
    let cases = [
        (
            Method::PUT,
            "/apisix/admin/routes/1",
            "{not json",
            "invalid request body",
        ),
        (
            Method::PUT,
            "/apisix/admin/routes/1",
            r#"{"uri": "/a", "upstream_id": "1", "uir": 1}"#,
            "unknown field `uir`",
        ),
        (
            Method::PUT,
            "/apisix/admin/routes/1",
            r#"{"uri": "/a", "upstream_id": "1", "vars": [["arg_a", "~~", "(x"]]}"#,
            "invalid regex",
        ),
        (
            Method::PUT,
            "/apisix/admin/routes/1",
            r#"{"uri": "/a", "upstream_id": "1", "remote_addrs": ["10.0.0.0/40"]}"#,
            "remote_addrs",
        ),
        (
            Method::PUT,
            "/apisix/admin/routes/1",
            r#"{"uri": "/a", "plugins": {"magic": {}}}"#,
            "unknown plugin [magic]",
        ),
        (
            Method::PUT,
            "/apisix/admin/routes/1",
            r#"{"uri": "/a", "upstream_id": "404"}"#,
            "failed to fetch upstream info by upstream id [404]",
        ),
        (
            Method::PUT,
            "/apisix/admin/routes/1",
            r#"{"id": "2", "uri": "/a", "plugins": {}}"#,
            "wrong route id",
        ),
        (
            Method::PUT,
            "/apisix/admin/upstreams/1",
            r#"{"nodes": {"127.0.0.1:80": "heavy"}}"#,
            "nodes",
        ),
        (
            Method::PUT,
            "/apisix/admin/upstreams/1",
            r#"{"nodes": {"127.0.0.1:80": 1}, "timeout": {"connect": 0, "send": 1, "read": 1}}"#,
            "timeout.connect",
        ),
        (
            Method::PUT,
            "/apisix/admin/consumers",
            r#"{"username": "no spaces"}"#,
            "username",
        ),
    ];
    for (method, path, body, expected) in cases {
        let response = gw
            .client
            .request(method, gw.admin.url(path))
            .header("X-API-KEY", KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        let msg = error["error_msg"].as_str().unwrap();
        assert!(msg.contains(expected), "{body}: {msg}");
    }

    // Referential checks on delete.
    gw.put(
        "/apisix/admin/upstreams/1",
        json!({"nodes": {"127.0.0.1:1": 1}}),
    )
    .await;
    gw.put(
        "/apisix/admin/routes/7",
        json!({"uri": "/x", "upstream_id": 1}),
    )
    .await;
    let (status, body) = gw
        .admin(Method::DELETE, "/apisix/admin/upstreams/1", None)
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error_msg"],
        "can not delete this upstream, route [7] is still using it now"
    );

    // Without the key, or with a wrong one.
    let r = gw
        .client
        .get(gw.admin.url("/apisix/admin/routes"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = gw
        .client
        .get(gw.admin.url("/apisix/admin/routes"))
        .header("X-API-KEY", "guess")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Unknown resource kinds and paging limits.
    let (status, _) = gw.admin(Method::GET, "/apisix/admin/bananas", None).await;
    assert_eq!(status, 404);
    let (status, _) = gw
        .admin(Method::GET, "/apisix/admin/routes?page_size=5", None)
        .await;
    assert_eq!(status, 400);
}

on_every_backend!(history, every_change_is_versioned_and_can_be_rolled_back);
async fn every_change_is_versioned_and_can_be_rolled_back(backends: Backends) {
    let gw = spawn_gateway(backends).await;
    let a = spawn_upstream("a").await;
    let b = spawn_upstream("b").await;
    gw.put(
        "/apisix/admin/upstreams/1",
        json!({"nodes": {a.to_string(): 1}}),
    )
    .await;
    gw.put(
        "/apisix/admin/routes/1",
        json!({"uri": "/r", "upstream_id": "1"}),
    )
    .await;
    let (_, history) = gw.admin(Method::GET, "/axle/admin/history", None).await;
    let good = history["revision"].as_i64().unwrap();
    assert_eq!(history["changes"][0]["key"], "/apisix/routes/1");

    gw.put(
        "/apisix/admin/upstreams/1",
        json!({"nodes": {b.to_string(): 1}}),
    )
    .await;
    gw.put(
        "/apisix/admin/routes/2",
        json!({"uri": "/r2", "upstream_id": "1"}),
    )
    .await;
    gw.wait_for("/r2", 200).await;
    let (_, diff) = gw
        .admin(Method::GET, &format!("/axle/admin/diff?from={good}"), None)
        .await;
    let keys: Vec<&str> = diff["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["/apisix/routes/2", "/apisix/upstreams/1"]);
    assert!(diff["differences"][0]["before"].is_null());

    let (status, rolled) = gw
        .admin(
            Method::POST,
            "/axle/admin/rollback",
            Some(json!({"revision": good})),
        )
        .await;
    assert_eq!(status, 200, "{rolled}");
    assert!(rolled["revision"].as_i64().unwrap() > good);
    gw.wait_for("/r2", 404).await;
    let seen: Value = gw.wait_for("/r", 200).await.json().await.unwrap();
    assert_eq!(seen["upstream"], "a");
    let (status, _) = gw
        .admin(
            Method::POST,
            "/axle/admin/rollback",
            Some(json!({"revision": 1_000_000})),
        )
        .await;
    assert_eq!(status, 400);
}

on_every_backend!(
    credentials,
    credentials_and_plugin_metadata_have_their_own_paths
);
/// APISIX 3.x credentials live under their consumer and go with it; plugin metadata is keyed by
/// plugin name and checked against the plugin's metadata schema.
async fn credentials_and_plugin_metadata_have_their_own_paths(backends: Backends) {
    let gw = spawn_gateway(backends).await;
    let path = "/apisix/admin/consumers/jack/credentials/c1";
    let error = gw.refused(Method::PUT, path, json!({})).await;
    assert!(error.contains("consumer"), "no consumer jack yet: {error}");

    gw.put("/apisix/admin/consumers", json!({"username": "jack"}))
        .await;
    let (status, body) = gw
        .admin(Method::PUT, path, Some(json!({"desc": "jack's first"})))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["key"], "/apisix/consumers/jack/credentials/c1");
    assert_eq!(body["value"]["id"], "c1");
    let (status, body) = gw
        .admin(
            Method::POST,
            "/apisix/admin/consumers/jack/credentials",
            Some(json!({"name": "generated"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = gw
        .admin(Method::PATCH, path, Some(json!({"desc": "renamed"})))
        .await;
    assert_eq!((status, &body["value"]["desc"]), (200, &json!("renamed")));

    // Only authentication plugins go on a credential.
    let plugins = json!({"plugins": {"proxy-rewrite": {"uri": "/x"}}});
    let error = gw.refused(Method::PUT, path, plugins).await;
    assert!(error.contains("not an authentication plugin"), "{error}");

    // Listing consumers shows consumers; listing credentials shows the consumer's.
    let (_, consumers) = gw.admin(Method::GET, "/apisix/admin/consumers", None).await;
    assert_eq!(consumers["total"], 1, "{consumers}");
    let (_, credentials) = gw
        .admin(
            Method::GET,
            "/apisix/admin/consumers/jack/credentials",
            None,
        )
        .await;
    assert_eq!(credentials["total"], 2, "{credentials}");
    let (status, one) = gw.admin(Method::GET, path, None).await;
    assert_eq!((status, &one["value"]["desc"]), (200, &json!("renamed")));

    // The consumer's credentials go with it.
    let (status, _) = gw
        .admin(Method::DELETE, "/apisix/admin/consumers/jack", None)
        .await;
    assert_eq!(status, 200);
    let (status, _) = gw.admin(Method::GET, path, None).await;
    assert_eq!(status, 404);

    // Plugin metadata: by plugin name, for plugins that have metadata.
    let metadata = "/apisix/admin/plugin_metadata";
    let error = gw
        .refused(
            Method::PUT,
            &format!("{metadata}/no-such-plugin"),
            json!({"log_format": {}}),
        )
        .await;
    assert!(error.contains("invalid plugin name"), "{error}");
    let error = gw
        .refused(
            Method::PUT,
            &format!("{metadata}/proxy-rewrite"),
            json!({"anything": 1}),
        )
        .await;
    assert!(
        error.contains("no metadata schema for plugin proxy-rewrite"),
        "{error}"
    );
    gw.refused(Method::POST, metadata, json!({})).await;
}

#[tokio::test]
async fn the_plugin_list_and_schemas_name_every_plugin_and_need_the_key() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let (status, list) = gw
        .admin(Method::GET, "/apisix/admin/plugins/list", None)
        .await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for plugin in [
        "jwt-auth",
        "key-auth",
        "limit-count",
        "prometheus",
        "traffic-split",
    ] {
        assert!(names.contains(&plugin), "{names:?}");
    }
    let anonymous = reqwest::get(gw.admin.url("/apisix/admin/plugins/list"))
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);

    // Every plugin has a JSON Schema of its configuration.
    for name in &names {
        let (status, schema) = gw
            .admin(
                Method::GET,
                &format!("/apisix/admin/schema/plugins/{name}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{name}: {schema}");
        assert_eq!(schema["type"], "object", "{name}: {schema}");
        assert!(schema["properties"].is_object(), "{name}: {schema}");
    }
    let (_, limit) = gw
        .admin(
            Method::GET,
            "/apisix/admin/schema/plugins/limit-count",
            None,
        )
        .await;
    assert_eq!(limit["required"], json!(["count", "time_window"]));
    assert_eq!(limit["additionalProperties"], json!(false));
    assert_eq!(
        limit["properties"]["policy"]["enum"],
        json!(["local", "redis", "redis-cluster"])
    );
    // Authentication plugins also describe their consumer side.
    let (status, consumer) = gw
        .admin(
            Method::GET,
            "/apisix/admin/schema/plugins/key-auth?schema_type=consumer",
            None,
        )
        .await;
    assert_eq!((status, &consumer["required"]), (200, &json!(["key"])));
    for (path, message) in [
        ("/apisix/admin/schema/plugins/nope", "not found plugin nope"),
        (
            "/apisix/admin/schema/plugins/cors?schema_type=consumer",
            "plugin cors has no configuration on a consumer",
        ),
    ] {
        let (status, body) = gw.admin(Method::GET, path, None).await;
        assert_eq!((status, body), (400, json!({"error_msg": message})));
    }
    let anonymous = reqwest::get(gw.admin.url("/apisix/admin/schema/plugins/cors"))
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
}

/// The Admin API's v3 features as APISIX's documentation shows them: force deletion, list
/// filters, schema validation, plugin schemas, and the defaults APISIX stores.
#[tokio::test]
async fn apisix_v3_admin_features_work_as_documented() {
    let gw = crate::helpers::spawn_gateway(Backends::embedded()).await;
    // Defaults filled in as APISIX stores them.
    gw.put(
        "/apisix/admin/upstreams/1",
        json!({"nodes": {"127.0.0.1:8080": 1}, "type": "roundrobin"}),
    )
    .await;
    let route = gw
        .put(
            "/apisix/admin/routes/1",
            json!({"uri": "/*", "upstream_id": 1}),
        )
        .await;
    assert_eq!(
        (&route["value"]["priority"], &route["value"]["status"]),
        (&json!(0), &json!(1)),
        "{route}"
    );
    let (_, upstream) = gw
        .admin(Method::GET, "/apisix/admin/upstreams/1", None)
        .await;
    for (field, default) in [
        ("hash_on", "vars"),
        ("scheme", "http"),
        ("pass_host", "pass"),
    ] {
        assert_eq!(upstream["value"][field], default, "{upstream}");
    }

    // Force deletion: refused, refused with another value, done with true.
    let (status, body) = gw
        .admin(Method::DELETE, "/apisix/admin/upstreams/1", None)
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error_msg"],
        "can not delete this upstream, route [1] is still using it now"
    );
    let (status, _) = gw
        .admin(
            Method::DELETE,
            "/apisix/admin/upstreams/1?force=anyvalue",
            None,
        )
        .await;
    assert_eq!(status, 400);
    let (status, body) = gw
        .admin(Method::DELETE, "/apisix/admin/upstreams/1?force=true", None)
        .await;
    assert_eq!(
        (status, body),
        (200, json!({"deleted": "1", "key": "/apisix/upstreams/1"}))
    );

    // Routes filtered by service_id (escaped once more).
    gw.put(
        "/apisix/admin/services/1",
        json!({"upstream": {"nodes": {"127.0.0.1:8080": 1}}}),
    )
    .await;
    gw.put(
        "/apisix/admin/routes/2",
        json!({"uri": "/a", "service_id": "1"}),
    )
    .await;
    gw.put(
        "/apisix/admin/routes/3",
        json!({"uri": "/b", "service_id": 1}),
    )
    .await;
    let (_, listed) = gw
        .admin(
            Method::GET,
            "/apisix/admin/routes?filter=service_id%3D1",
            None,
        )
        .await;
    assert_eq!(listed["total"], 2, "{listed}");
    let (_, all) = gw.admin(Method::GET, "/apisix/admin/routes", None).await;
    assert_eq!(all["total"], 3);

    // Validation without storing.
    let (status, _) = gw
        .admin(
            Method::POST,
            "/apisix/admin/schema/validate/routes",
            Some(json!({"uri": "/v", "upstream": {"nodes": {"127.0.0.1:1": 1}}})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = gw
        .admin(
            Method::POST,
            "/apisix/admin/schema/validate/routes",
            Some(json!({"uri": 1})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error_msg"].as_str().unwrap().contains("uri"),
        "{body}"
    );
    let (_, all) = gw.admin(Method::GET, "/apisix/admin/routes", None).await;
    assert_eq!(all["total"], 3, "nothing stored");

    // Plugin schemas at APISIX's paths.
    let (status, schema) = gw
        .admin(Method::GET, "/apisix/admin/plugins/limit-count", None)
        .await;
    assert_eq!(status, 200);
    assert!(schema["properties"]["count"].is_object(), "{schema}");
    let (_, all) = gw
        .admin(Method::GET, "/apisix/admin/plugins?all=true", None)
        .await;
    assert!(all["key-auth"]["schema"]["properties"].is_object(), "{all}");
}

on_every_backend!(ttl, resources_written_with_a_ttl_lapse);
async fn resources_written_with_a_ttl_lapse(backends: Backends) {
    lapse(&spawn_gateway(backends).await).await;
}

#[tokio::test]
async fn resources_written_with_a_ttl_lapse_on_etcd() {
    let Some(endpoint) = axle_core::testing::etcd_endpoints() else {
        return;
    };
    let (gw, _dir) = crate::helpers::spawn_gateway_on_etcd(&endpoint).await;
    lapse(&gw).await;
}

/// APISIX's example: "create a route that expires after 60 seconds" (`?ttl=`), here three
/// seconds. It serves, then is gone from the data plane and the Admin API; a key rewritten
/// without a ttl stays; a ttl that is not a number of seconds is refused.
async fn lapse(gw: &crate::helpers::Gateway) {
    let node = spawn_upstream("a").await;
    let route = |uri: &str| json!({"uri": uri, "upstream": {"nodes": {node.to_string(): 1}}});
    let (status, created) = gw
        .admin(
            Method::PUT,
            "/apisix/admin/routes/2?ttl=3",
            Some(route("/aa")),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    gw.admin(
        Method::PUT,
        "/apisix/admin/routes/3?ttl=1",
        Some(route("/kept")),
    )
    .await;
    gw.put("/apisix/admin/routes/3", route("/kept")).await;
    let (status, posted) = gw
        .admin(
            Method::POST,
            "/apisix/admin/upstreams?ttl=1",
            Some(json!({"nodes": {node.to_string(): 1}})),
        )
        .await;
    assert_eq!(status, 201, "{posted}");
    gw.wait_for("/aa", 200).await;

    gw.wait_for("/aa", 404).await;
    let gone = |path: String| async move { gw.admin(Method::GET, &path, None).await.0 };
    assert_eq!(gone("/apisix/admin/routes/2".into()).await, 404);
    let upstream = posted["key"]
        .as_str()
        .unwrap()
        .replace("/apisix/", "/apisix/admin/");
    axle_core::testing::eventually(10, "the posted upstream to lapse", || {
        let path = upstream.clone();
        async move { (gone(path).await == 404).then_some(()) }
    })
    .await;
    assert_eq!(
        gone("/apisix/admin/routes/3".into()).await,
        200,
        "rewritten for good"
    );
    gw.wait_for("/kept", 200).await;

    for bad in ["abc", "0", "-1", "1.5"] {
        let (status, refused) = gw
            .admin(
                Method::PUT,
                &format!("/apisix/admin/routes/4?ttl={bad}"),
                Some(route("/x")),
            )
            .await;
        assert_eq!(status, 400, "ttl={bad}: {refused}");
        assert!(
            refused["error_msg"].as_str().unwrap().contains("ttl"),
            "{refused}"
        );
    }
}
