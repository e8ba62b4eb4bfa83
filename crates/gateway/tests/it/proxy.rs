//! The data plane: forwarding, plugins, failures, retries, live changes, WebSocket, HTTP/2.

use std::sync::Arc;

use axle_core::testing::Backends;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{Gateway, Load, read_request, spawn_gateway, spawn_upstream, spawn_ws_echo};

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

#[tokio::test]
async fn forwards_with_x_forwarded_headers_and_runs_the_rewrite_plugins() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let up = spawn_upstream("up").await;
    gw.put(
        "/apisix/admin/routes/1",
        json!({
            "uri": "/v1/*",
            "upstream": {"nodes": {up.to_string(): 1}, "pass_host": "node"},
            "plugins": {
                "proxy-rewrite": {
                    "regex_uri": ["^/v1/(.*)", "/internal/$1"],
                    "headers": {"set": {"X-Api-Version": "v1", "X-Client": "$remote_addr"},
                                "remove": ["X-Secret"]}
                },
                "response-rewrite": {"headers": {"set": {"X-Served-By": "axle"}}}
            }
        }),
    )
    .await;
    gw.wait_for("/v1/orders", 200).await;
    let r = gw
        .client
        .get(gw.url("/v1/orders/7?expand=1"))
        .header("Host", "shop.example.com")
        .header("X-Secret", "s3cret")
        .header("X-Forwarded-For", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-served-by"], "axle");
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["path"], "/internal/orders/7");
    assert_eq!(seen["query"], "expand=1");
    let h = &seen["headers"];
    assert_eq!(h["host"], up.to_string(), "pass_host: node");
    assert_eq!(h["x-api-version"], "v1");
    assert_eq!(h["x-client"], "127.0.0.1");
    assert!(h.get("x-secret").is_none());
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-host"], "shop.example.com");
    assert_eq!(h["x-forwarded-proto"], "http");

    // response-rewrite replacing the body and status; a POST body streams through.
    gw.put(
        "/apisix/admin/routes/2",
        json!({"uri": "/teapot", "upstream": {"nodes": {up.to_string(): 1}},
               "plugins": {"response-rewrite": {"status_code": 418, "body": "short and stout"}}}),
    )
    .await;
    let r = gw.wait_for("/teapot", 418).await;
    assert_eq!(r.text().await.unwrap(), "short and stout");
    let big = "x".repeat(1 << 20);
    let r = gw
        .client
        .post(gw.url("/v1/upload"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["body"].as_str().unwrap().len(), big.len());
}

#[tokio::test]
async fn a_dead_node_is_retried_on_another_and_502_when_none_is_left() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let up = spawn_upstream("alive").await;
    let dead = free_addr();
    gw.put(
        "/apisix/admin/routes/1",
        json!({"uri": "/r", "upstream": {"nodes": {up.to_string(): 1, dead.clone(): 1}}}),
    )
    .await;
    gw.wait_for("/r", 200).await;
    for _ in 0..20 {
        let r = gw.client.get(gw.url("/r")).send().await.unwrap();
        assert_eq!(
            r.status(),
            200,
            "the dead node's share is retried on the live one"
        );
    }
    gw.put(
        "/apisix/admin/routes/2",
        json!({"uri": "/dead", "upstream": {"nodes": {dead: 1}}}),
    )
    .await;
    let r = gw.wait_for("/dead", 502).await;
    assert!(r.text().await.unwrap().contains("502 Bad Gateway"));
}

#[tokio::test]
async fn route_changes_apply_under_load_without_a_failed_request() {
    let gw = Arc::new(spawn_gateway(Backends::embedded()).await);
    let a = spawn_upstream("a").await;
    let b = spawn_upstream("b").await;
    gw.put(
        "/apisix/admin/routes/live",
        json!({"uri": "/live", "upstream": {"nodes": {a.to_string(): 1}}}),
    )
    .await;
    gw.wait_for("/live", 200).await;
    let load = Load::start(&gw, "/live");
    for i in 0..20 {
        let node = if i % 2 == 0 { b } else { a };
        gw.put(
            "/apisix/admin/routes/live",
            json!({"uri": "/live", "upstream": {"nodes": {node.to_string(): 1}}}),
        )
        .await;
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    let (served, seen) = load.finish().await;
    assert!(served > 20);
    assert_eq!(
        seen.len(),
        2,
        "both upstreams served during the changes: {seen:?}"
    );
}

#[tokio::test]
async fn websocket_upgrades_are_tunnelled() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let echo = spawn_ws_echo().await;
    gw.put(
        "/apisix/admin/routes/ws",
        json!({"uri": "/ws", "enable_websocket": true, "upstream": {"nodes": {echo.to_string(): 1}}}),
    )
    .await;
    axle_core::testing::eventually(10, "the websocket route", || async {
        let r = gw.client.get(gw.url("/ws")).send().await.ok()?;
        (r.status() != 404).then_some(())
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: auction.local\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // A masked WebSocket text frame "bid 100"; the echo sends the same bytes back.
    let frame = [
        0x81u8,
        0x87,
        1,
        2,
        3,
        4,
        b'b' ^ 1,
        b'i' ^ 2,
        b'd' ^ 3,
        b' ' ^ 4,
        b'1' ^ 1,
        b'0' ^ 2,
        b'0' ^ 3,
    ];
    stream.write_all(&frame).await.unwrap();
    let mut back = [0u8; 13];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(back, frame);
}

#[tokio::test]
async fn http2_clients_are_served() {
    use http_body_util::{BodyExt, Empty};
    let gw = spawn_gateway(Backends::embedded()).await;
    let up = spawn_upstream("h2").await;
    gw.put(
        "/apisix/admin/routes/1",
        json!({"uri": "/h2", "upstream": {"nodes": {up.to_string(): 1}}}),
    )
    .await;
    gw.wait_for("/h2", 200).await;
    let stream = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::get(format!("http://{}/h2", gw.proxy))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    // The node's header lines reach hyper's server as a map.
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let seen: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["upstream"], "h2");
    assert_eq!(seen["headers"]["host"], gw.proxy.to_string());
}

#[tokio::test]
async fn oversized_heads_get_431_and_oversized_bodies_413() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let up = spawn_upstream("up").await;
    gw.put(
        "/apisix/admin/routes/1",
        json!({"uri": "/big", "upstream": {"nodes": {up.to_string(): 1}}}),
    )
    .await;
    gw.wait_for("/big", 200).await;

    let mut stream = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    let huge = "x".repeat(64 * 1024);
    let request = format!("GET /big HTTP/1.1\r\nHost: a\r\nX-Huge: {huge}\r\n\r\n");
    let _ = stream.write_all(request.as_bytes()).await; // the gateway may stop reading early
    let mut answer = vec![0u8; 64];
    let n = stream.read(&mut answer).await.unwrap();
    let status_line = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(status_line.starts_with("HTTP/1.1 431"), "{status_line}");

    // The 413 comes from the declared length, before any of the body is read.
    let mut stream = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    let request = "POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 70000000\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap(); // the gateway closes the connection
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
}

/// One client connection carries pipelined requests, a head split across writes, a body sent
/// with its head, and then a chunked body (which hyper's server takes over) and more requests
/// after it; HTTP/1.0 clients get their answer and the close.
#[tokio::test]
async fn a_client_connection_carries_pipelined_split_and_chunked_requests() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let up = spawn_upstream("up").await;
    gw.put(
        "/apisix/admin/routes/1",
        json!({"uri": "/p", "upstream": {"nodes": {up.to_string(): 1}}}),
    )
    .await;
    gw.wait_for("/p", 200).await;

    let mut stream = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    let mut read = Vec::new();
    let get = |n: u32| format!("GET /p?n={n} HTTP/1.1\r\nHost: a\r\n\r\n");
    stream
        .write_all((get(1) + &get(2)).as_bytes())
        .await
        .unwrap();
    for n in ["n=1", "n=2"] {
        let (head, seen) = read_response(&mut stream, &mut read).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert_eq!(seen["query"], n, "answers in order");
    }
    let split = get(3);
    stream.write_all(&split.as_bytes()[..12]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    stream.write_all(&split.as_bytes()[12..]).await.unwrap();
    assert_eq!(
        read_response(&mut stream, &mut read).await.1["query"],
        "n=3"
    );
    stream
        .write_all(b"POST /p?n=4 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream, &mut read).await.1["body"], "abc");
    let chunked = "POST /p?n=5 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    stream
        .write_all((chunked.to_string() + &get(6)).as_bytes())
        .await
        .unwrap();
    let (_, seen) = read_response(&mut stream, &mut read).await;
    assert_eq!(
        (&seen["query"], &seen["body"]),
        (&json!("n=5"), &json!("hello"))
    );
    assert_eq!(
        read_response(&mut stream, &mut read).await.1["query"],
        "n=6"
    );
    stream.write_all(get(7).as_bytes()).await.unwrap();
    assert_eq!(
        read_response(&mut stream, &mut read).await.1["query"],
        "n=7"
    );

    let mut old = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    old.write_all(b"GET /p?n=8 HTTP/1.0\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    old.read_to_string(&mut answer).await.unwrap(); // the gateway closes the connection
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(answer.contains(r#""query":"n=8""#), "{answer}");
}

/// Reads one response with a `Content-Length` body (what the echo upstream sends) off
/// `stream`, keeping what follows it in `read`: its head, and its body as JSON.
async fn read_response(stream: &mut tokio::net::TcpStream, read: &mut Vec<u8>) -> (String, Value) {
    loop {
        let mut lines = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut lines);
        if let httparse::Status::Complete(at) = response.parse(read).unwrap() {
            let length: usize = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                .expect("a content-length");
            if read.len() >= at + length {
                let head = String::from_utf8_lossy(&read[..at]).to_string();
                let body = serde_json::from_slice(&read[at..at + length]).unwrap();
                read.drain(..at + length);
                return (head, body);
            }
        }
        let mut more = [0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut more))
            .await
            .expect("a response within 10 s")
            .unwrap();
        assert!(n > 0, "closed before a whole response");
        read.extend_from_slice(&more[..n]);
    }
}

/// The upstream's connection headers are its own: a `Connection: close` from a node ends that
/// upstream connection, not the client's, and names no header the client gets.
#[tokio::test]
async fn hop_by_hop_response_headers_stay_upstream() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let node = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = node.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = node.accept().await {
            tokio::spawn(async move {
                let _ = read_request(&mut stream, &mut Vec::new()).await;
                let answer = "HTTP/1.1 200 OK\r\nConnection: close, x-hop\r\nx-hop: node-only\r\n\
                              Keep-Alive: timeout=5\r\nx-end: kept\r\nContent-Length: 2\r\n\r\nok";
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    gw.put(
        "/apisix/admin/routes/1",
        json!({"uri": "/closing", "upstream": {"nodes": {up.to_string(): 1}}}),
    )
    .await;
    gw.wait_for("/closing", 200).await;

    let mut client = http1_client(&gw).await;
    for _ in 0..2 {
        let request = http::Request::get("/closing")
            .header("host", "a")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let response = client
            .send_request(request)
            .await
            .expect("the connection stays open");
        assert_eq!(response.status(), 200);
        let headers = response.headers();
        for name in ["connection", "x-hop", "keep-alive"] {
            assert!(headers.get(name).is_none(), "{name} forwarded: {headers:?}");
        }
        assert_eq!(headers["x-end"], "kept");
    }
}

#[tokio::test]
async fn chash_sends_each_key_to_one_node_and_least_conn_serves() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let (a, b) = (spawn_upstream("a").await, spawn_upstream("b").await);
    let nodes = json!({a.to_string(): 1, b.to_string(): 1});
    gw.put(
        "/apisix/admin/routes/sticky",
        json!({"uri": "/sticky", "upstream": {
            "type": "chash", "hash_on": "header", "key": "x-user", "nodes": nodes.clone()
        }}),
    )
    .await;
    gw.put(
        "/apisix/admin/routes/lc",
        json!({"uri": "/lc", "upstream": {"type": "least_conn", "nodes": nodes}}),
    )
    .await;
    gw.wait_for("/sticky", 200).await;
    let mut used = std::collections::HashSet::new();
    for user in 0..20 {
        let mut homes = std::collections::HashSet::new();
        for _ in 0..3 {
            let r = gw
                .client
                .get(gw.url("/sticky"))
                .header("x-user", user.to_string());
            let body: Value = r.send().await.unwrap().json().await.unwrap();
            homes.insert(body["upstream"].as_str().unwrap().to_string());
        }
        assert_eq!(homes.len(), 1, "user {user} stays on one node");
        used.extend(homes);
    }
    assert_eq!(used.len(), 2, "users spread over both nodes");
    for _ in 0..5 {
        gw.wait_for("/lc", 200).await;
    }
}

/// An HTTP/1.1 connection of its own to the gateway's data plane.
async fn http1_client<B>(gw: &Gateway) -> hyper::client::conn::http1::SendRequest<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    let (client, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    client
}

/// A node speaking raw HTTP/1.1 as servers do in the wild, one script per path; counts the
/// connections it accepts.
async fn spawn_scripted_node() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::Ordering;
    let node = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = node.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = node.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut read = Vec::new();
                for served in 0.. {
                    let Some((head, body)) = read_request(&mut stream, &mut read).await else {
                        return;
                    };
                    let path = head.split(' ').nth(1).unwrap_or_default().to_string();
                    let w = |s: &str| s.as_bytes().to_vec();
                    let answer = match path.as_str() {
                        "/chunked" => {
                            let start =
                                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel";
                            let _ = stream.write_all(start.as_bytes()).await;
                            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                            w("lo\r\n6;x=y\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n")
                        }
                        "/until-close" => {
                            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil ").await;
                            let _ = stream.write_all(b"the end").await;
                            return;
                        }
                        // Closes a reused connection on the request, as a node whose idle
                        // timeout fires just then does.
                        "/flaky" if served > 0 => return,
                        "/flaky" => w("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh"),
                        "/echo" => {
                            let mut a = w(&format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                                body.len()
                            ));
                            a.extend_from_slice(&body);
                            a
                        }
                        "/interim" => w("HTTP/1.1 100 Continue\r\n\r\n\
                                         HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
                        "/head" => w("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
                        "/short" => {
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
                                .await;
                            return;
                        }
                        _ => w("NOT HTTP AT ALL\r\n\r\n"),
                    };
                    if stream.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// The gateway's own HTTP/1.1 client against what nodes send: chunked bodies split anywhere,
/// bodies that end at the close, interim 1xx answers, HEAD, cut-short and malformed answers;
/// request bodies of known and unknown length; connections reused, and a request whose reused
/// connection the node closes is sent again on a new one.
#[tokio::test]
async fn upstream_answers_are_framed_and_their_connections_reused() {
    use std::sync::atomic::Ordering;
    let gw = spawn_gateway(Backends::embedded()).await;
    let (node, accepted) = spawn_scripted_node().await;
    gw.put(
        "/apisix/admin/routes/1",
        json!({"uri": "/*", "upstream": {"nodes": {node.to_string(): 1}}}),
    )
    .await;
    // (wait_for leaves its body unread, which closes that connection.)
    let r = gw.wait_for("/chunked", 200).await;
    assert_eq!(r.text().await.unwrap(), "hello world");

    let before = accepted.load(Ordering::SeqCst);
    for _ in 0..10 {
        let r = gw.client.get(gw.url("/chunked")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "hello world");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        before,
        "sequential requests reuse the pooled connection"
    );

    let r = gw.client.get(gw.url("/until-close")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "until the end");
    let r = gw.client.get(gw.url("/interim")).send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.text().await.unwrap()),
        (200, "ok".into())
    );
    let r = gw.client.head(gw.url("/head")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "1000");

    for _ in 0..3 {
        let r = gw.client.get(gw.url("/flaky")).send().await.unwrap();
        assert_eq!(r.status(), 200, "sent again on a new connection");
        assert_eq!(r.text().await.unwrap(), "fresh");
    }

    let sized = "s".repeat(300_000);
    let r = gw
        .client
        .post(gw.url("/echo"))
        .body(sized.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), sized);
    // A body of unknown length (chunked from the client) goes upstream chunked.
    let mut client = http1_client(&gw).await;
    let frames = ["first part, ", "second part"].map(|p| {
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from(p)))
    });
    let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
    let request = http::Request::post("/echo")
        .header("host", "a")
        .body(body)
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    let echoed = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap();
    assert_eq!(echoed.to_bytes(), "first part, second part");

    let r = gw.client.get(gw.url("/garbage")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let cut = match gw.client.get(gw.url("/short")).send().await {
        Ok(r) => r.text().await.is_err(),
        Err(_) => true,
    };
    assert!(cut, "a body cut short is not passed off as whole");
    let r = gw.client.get(gw.url("/chunked")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "hello world");
}
