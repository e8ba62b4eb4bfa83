//! The data plane against clients that test its reading of HTTP: spellings of a path that
//! would slip past a route's plugins, requests with no `Host` or two, absolute-form targets,
//! repeated lengths, bodies that are malformed, cut short or late, heads that trickle in, and
//! one address opening connection after connection. Spoken over raw TCP, as such clients do.

use std::time::Duration;

use axle_core::testing::{Backends, TestPlatform, eventually};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Gateway, spawn_gateway, spawn_gateway_with, spawn_recorder, spawn_upstream};

/// Sends `request` on a connection of its own and reads until the gateway closes it: the
/// response's status and body, or None when it closed without one.
async fn exchange(gw: &Gateway, request: &[u8]) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
    stream.write_all(request).await.ok()?;
    answer(&mut stream).await
}

/// What comes back on `stream` until it closes (10 s at most).
async fn answer(stream: &mut TcpStream) -> Option<(u16, String)> {
    let mut read = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut read)).await;
    let text = String::from_utf8_lossy(&read).into_owned();
    let status = text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    Some((status, body.unwrap_or_default()))
}

/// A route at `uri` to `node` with `plugins`.
async fn route(gw: &Gateway, id: &str, route: Value) {
    gw.put(&format!("/apisix/admin/routes/{id}"), route).await;
}

#[tokio::test]
async fn no_spelling_of_a_path_slips_past_its_routes_plugins() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let node = spawn_upstream("node").await.to_string();
    gw.put(
        "/apisix/admin/consumers",
        json!({"username": "jack", "plugins": {"key-auth": {"key": "jack-key"}}}),
    )
    .await;
    route(
        &gw,
        "private",
        json!({"uri": "/private/*", "plugins": {"key-auth": {}},
               "upstream": {"nodes": {node.clone(): 1}}}),
    )
    .await;
    route(
        &gw,
        "public",
        json!({"uri": "/public/*", "upstream": {"nodes": {node: 1}}}),
    )
    .await;
    gw.wait_for("/public/x", 200).await;

    for target in [
        "/private/x",
        "/public/../private/x",
        "/public/%2e%2e/private/x",
        "/public/%2E%2E/private/x",
        "/public/.%2e/private/x",
        "/public/./../private/x",
        "//private/x",
        "/public/..//private/x",
        "/%70rivate/x",
        "/public/..%2Fprivate/x",
        "/public%2F..%2Fprivate/x",
        "/public/%2",
    ] {
        let request = format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let (status, body) = exchange(&gw, request.as_bytes()).await.unwrap();
        assert!(
            status == 401 || status == 400,
            "{target} reached the upstream without a key: {status} {body}"
        );
    }
    // Unless a route asks for the path as the client wrote it, unsafe as that is.
    route(
        &gw,
        "raw",
        json!({"uri": "/raw/*", "plugins": {"proxy-rewrite": {"use_real_request_uri_unsafe": true}},
               "upstream": {"nodes": {spawn_upstream("raw").await.to_string(): 1}}}),
    )
    .await;
    let request = b"GET /raw/./a/../b%7e?q=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let seen = eventually(10, "the raw route", || async {
        let (status, body) = exchange(&gw, request).await?;
        (status == 200).then(|| serde_json::from_str::<Value>(&body).unwrap())
    })
    .await;
    assert_eq!(
        (seen["path"].as_str(), seen["query"].as_str()),
        (Some("/raw/./a/../b%7e"), Some("q=1"))
    );
    // With the key, the upstream gets the path in its normal form.
    let request = "GET /public/%2e%2e/private/%78?q=1 HTTP/1.1\r\nHost: a\r\n\
                   apikey: jack-key\r\nConnection: close\r\n\r\n";
    let (status, body) = exchange(&gw, request.as_bytes()).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (seen["path"].as_str(), seen["query"].as_str()),
        (Some("/private/x"), Some("q=1"))
    );
}

#[tokio::test]
async fn a_request_names_its_host_once() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let node = spawn_upstream("node").await.to_string();
    route(
        &gw,
        "1",
        json!({"uri": "/h", "hosts": ["example.com"], "upstream": {"nodes": {node: 1}}}),
    )
    .await;
    eventually(10, "the route", || async {
        let request = b"GET /h HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n";
        (exchange(&gw, request).await?.0 == 200).then_some(())
    })
    .await;
    for (request, expected) in [
        (&b"GET /h HTTP/1.1\r\nConnection: close\r\n\r\n"[..], 400),
        (
            b"GET /h HTTP/1.1\r\nHost: example.com\r\nHost: example.com\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            b"GET /h HTTP/1.1\r\nHost: example.com\r\nHost: evil.com\r\nConnection: close\r\n\r\n",
            400,
        ),
        // HTTP/1.0 had no Host: the request goes on, matching no host.
        (b"GET /h HTTP/1.0\r\n\r\n", 404),
        // An absolute-form target names the host, whatever Host says.
        (
            b"GET http://example.com/h?a=1 HTTP/1.1\r\nHost: evil.com\r\nConnection: close\r\n\r\n",
            200,
        ),
        (b"GET http://example.com/h HTTP/1.1\r\nConnection: close\r\n\r\n", 200),
    ] {
        let (status, body) = exchange(&gw, request).await.unwrap();
        assert_eq!(status, expected, "{}: {body}", String::from_utf8_lossy(request));
        if status == 200 {
            let seen: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(seen["headers"]["host"], "example.com", "{body}");
            assert_eq!(seen["path"], "/h", "{body}");
        }
    }
}

#[tokio::test]
async fn a_repeated_length_is_forwarded_once() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let node = spawn_recorder().await.to_string();
    route(
        &gw,
        "1",
        json!({"uri": "/r", "upstream": {"nodes": {node: 1}}}),
    )
    .await;
    gw.wait_for("/r", 200).await;
    for request in [
        &b"POST /r HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"[..],
        b"POST /r HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\nConnection: close\r\n\r\nabc",
    ] {
        let (status, head) = exchange(&gw, request).await.unwrap();
        assert_eq!(status, 200, "{head}");
        assert_eq!(head.matches("content-length").count(), 1, "{head}");
        assert!(head.contains("content-length: 3\r\n"), "{head}");
    }
}

#[tokio::test]
async fn a_clients_broken_body_is_its_own_fault_not_the_nodes() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let a = spawn_upstream("a").await.to_string();
    let b = spawn_upstream("b").await.to_string();
    route(
        &gw,
        "1",
        json!({"uri": "/b",
               "plugins": {"api-breaker": {"break_response_code": 599,
                   "unhealthy": {"http_statuses": [502, 504], "failures": 1}}},
               "upstream": {"nodes": {a: 1, b: 1}, "retries": 0,
                   "checks": {"active": {"healthy": {"interval": 0}, "unhealthy": {"interval": 0}},
                              "passive": {"unhealthy": {"tcp_failures": 1, "http_failures": 1,
                                                        "timeouts": 1}}}}}),
    )
    .await;
    gw.wait_for("/b", 200).await;

    for _ in 0..4 {
        // A chunk size that is not hexadecimal.
        let malformed = b"POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n";
        let (status, _) = exchange(&gw, malformed).await.unwrap();
        assert_eq!(status, 400);
        // A body that ends before its length: the client stops sending.
        let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
        let short = b"POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly ten..";
        stream.write_all(short).await.unwrap();
        stream.shutdown().await.unwrap();
        if let Some((status, _)) = answer(&mut stream).await {
            assert_eq!(status, 400);
        }
    }
    // Neither node was ejected, nor the breaker tripped.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        let r = gw.client.get(gw.url("/b")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        seen.insert(body["upstream"].as_str().unwrap().to_string());
    }
    assert_eq!(seen.len(), 2, "both nodes still serve: {seen:?}");
}

/// A body read before routing, for `post_arg_*` in a route's `vars`, keeps the rules of a body
/// streamed upstream: over the limit 413, malformed 400; and a body that arrives whole is read
/// whatever its framing.
#[tokio::test]
async fn a_body_read_for_its_fields_keeps_the_body_rules() {
    let (gw, _dir) = gateway_with(|g| g.max_body_bytes = 1024).await;
    let node = spawn_upstream("a").await.to_string();
    route(
        &gw,
        "1",
        json!({"uri": "/form", "vars": [["post_arg_name", "==", "json"]],
               "upstream": {"nodes": {node: 1}}}),
    )
    .await;
    let form = "Content-Type: application/x-www-form-urlencoded";
    let chunked = format!(
        "POST /form HTTP/1.1\r\nHost: a\r\n{form}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n4\r\nname\r\n5\r\n=json\r\n0\r\n\r\n"
    );
    let body = eventually(10, "the route to apply", || async {
        let (status, body) = exchange(&gw, chunked.as_bytes()).await?;
        (status == 200).then_some(body)
    })
    .await;
    assert!(body.contains(r#""body":"name=json""#), "{body}");

    let big = "x".repeat(2000);
    let over = format!(
        "POST /form HTTP/1.1\r\nHost: a\r\n{form}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\nname={big}\r\n0\r\n\r\n",
        big.len() + 5
    );
    assert_eq!(exchange(&gw, over.as_bytes()).await.unwrap().0, 413);
    let malformed = format!(
        "POST /form HTTP/1.1\r\nHost: a\r\n{form}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
    );
    assert_eq!(exchange(&gw, malformed.as_bytes()).await.unwrap().0, 400);
}

/// A gateway with data-plane settings of the test's choosing.
async fn gateway_with(
    set: impl FnOnce(&mut axle_core::config::GatewayConfig),
) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = TestPlatform::config(&Backends::embedded(), "conformance", dir.path());
    set(&mut config.services.gateway);
    (spawn_gateway_with(config).await, dir)
}

#[tokio::test]
async fn a_head_trickling_in_is_cut_off_at_its_deadline() {
    let (gw, _dir) = gateway_with(|g| g.head_timeout_secs = 1).await;
    let node = spawn_upstream("node").await.to_string();
    route(
        &gw,
        "1",
        json!({"uri": "/h", "upstream": {"nodes": {node: 1}}}),
    )
    .await;
    gw.wait_for("/h", 200).await;

    let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
    stream
        .write_all(b"GET /h HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    // A line every 250 ms for 5 s: each arrives well within any per-read timeout.
    let mut cut_off = false;
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if stream
            .write_all(format!("X-Drip: {i}\r\n").as_bytes())
            .await
            .is_err()
        {
            cut_off = true;
            break;
        }
        let mut probe = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), stream.read(&mut probe)).await
        {
            cut_off = true;
            break;
        }
    }
    assert!(cut_off, "the connection outlived its head's deadline");
}

#[tokio::test]
async fn one_address_has_at_most_its_share_of_connections() {
    let (gw, _dir) = gateway_with(|g| g.max_connections_per_client = 2).await;
    let node = spawn_upstream("node").await.to_string();
    route(
        &gw,
        "1",
        json!({"uri": "/h", "upstream": {"nodes": {node: 1}}}),
    )
    .await;
    let closing = b"GET /h HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    eventually(10, "the route", || async {
        (exchange(&gw, closing).await?.0 == 200).then_some(())
    })
    .await;

    let request = b"GET /h HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        open.push(stream);
    }
    // A third is closed as it comes.
    assert_eq!(exchange(&gw, request).await, None);
    // Once one closes, another may open.
    drop(open.pop());
    eventually(10, "a place to be given back", || async {
        (exchange(&gw, closing).await?.0 == 200).then_some(())
    })
    .await;
}
