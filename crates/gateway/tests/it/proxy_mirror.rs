//! proxy-mirror through the data plane: copies with method, path, query and body, at the
//! request's path, a replaced one or a prefixed one; sampled; never delaying the request.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axle_core::testing::Backends;
use axum::extract::Request;
use serde_json::json;

use crate::helpers::{Gateway, spawn_gateway, spawn_upstream};

/// What a mirror saw: method, path with query, Host, body.
type Seen = Arc<Mutex<Vec<(String, String, String, String)>>>;

/// A mirror that records what it receives, after `delay`.
async fn spawn_mirror(delay: Duration) -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let sink = seen.clone();
    let app = axum::Router::new().fallback(move |request: Request| {
        let sink = sink.clone();
        async move {
            tokio::time::sleep(delay).await;
            let (parts, body) = request.into_parts();
            let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            let host = parts.headers["host"].to_str().unwrap().to_string();
            sink.lock().unwrap().push((
                parts.method.to_string(),
                parts.uri.to_string(),
                host,
                String::from_utf8_lossy(&body).into_owned(),
            ));
            "mirrored"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

async fn post(gw: &Gateway, path: &str, body: &str) -> (u16, serde_json::Value) {
    let r = gw
        .client
        .post(gw.url(path))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Waits until `seen` holds `n` copies of POSTs; they arrive after the requests' answers.
async fn posts(seen: &Seen, n: usize) -> Vec<(String, String, String, String)> {
    let copied = || -> Vec<_> {
        let seen = seen.lock().unwrap();
        seen.iter().filter(|c| c.0 == "POST").cloned().collect()
    };
    for _ in 0..200 {
        if copied().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    copied()
}

#[tokio::test]
async fn proxy_mirror_copies_requests_without_delaying_them() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let up = spawn_upstream("up").await;
    let (mirror, seen) = spawn_mirror(Duration::ZERO).await;
    let (slow, slow_seen) = spawn_mirror(Duration::from_secs(5)).await;
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let routes = [
        // APISIX's example: every request copied to the mirror at its own path.
        ("same", json!({"host": format!("http://{mirror}")})),
        (
            "replace",
            json!({"host": format!("http://{mirror}"), "path": "/copies"}),
        ),
        (
            "prefix",
            json!({"host": format!("http://{mirror}"), "path": "/copies",
                          "path_concat_mode": "prefix"}),
        ),
        ("slow", json!({"host": format!("http://{slow}")})),
        ("gone", json!({"host": format!("http://{gone}")})),
        (
            "half",
            json!({"host": format!("http://{mirror}"), "path": "/half", "sample_ratio": 0.5}),
        ),
    ];
    for (id, mirror) in &routes {
        gw.put(
            &format!("/apisix/admin/routes/{id}"),
            json!({"uri": format!("/{id}"), "plugins": {"proxy-mirror": mirror,
                   "proxy-rewrite": {"uri": "/rewritten"}},
                   "upstream": {"nodes": {up.to_string(): 1}}}),
        )
        .await;
    }
    gw.wait_for("/half", 200).await; // a GET, whose copy may come in later

    let (status, body) = post(&gw, "/same?x=1", "hello").await;
    assert_eq!(
        (status, &body["path"], &body["body"]),
        (200, &json!("/rewritten"), &json!("hello"))
    );
    let (status, _) = post(&gw, "/replace?x=2", "second").await;
    assert_eq!(status, 200);
    let (status, _) = post(&gw, "/prefix", "third").await;
    assert_eq!(status, 200);
    let mut got = posts(&seen, 3).await;
    got.sort_by(|a, b| a.3.cmp(&b.3));
    let host = mirror.to_string();
    assert_eq!(
        got,
        [
            (
                "POST".into(),
                "/same?x=1".into(),
                host.clone(),
                "hello".into()
            ),
            (
                "POST".into(),
                "/copies?x=2".into(),
                host.clone(),
                "second".into()
            ),
            (
                "POST".into(),
                "/copies/prefix".into(),
                host.clone(),
                "third".into()
            ),
        ],
        "copies go out with the path the client asked for, before proxy-rewrite"
    );

    // A mirror that takes 5 s to answer, or is not there at all, delays nothing.
    let quick = async {
        for path in ["/slow", "/gone", "/slow", "/gone"] {
            assert_eq!(post(&gw, path, "body").await.0, 200);
        }
    };
    tokio::time::timeout(Duration::from_secs(3), quick)
        .await
        .expect("requests are answered without waiting for their copies");
    assert!(slow_seen.lock().unwrap().is_empty());

    // Sampling: about half of 400 requests are copied (6 standard deviations either side).
    seen.lock().unwrap().clear();
    for _ in 0..400 {
        assert_eq!(crate::helpers::get(&gw, "/half", &[]).await.0, 200);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let copied = seen.lock().unwrap().len();
    assert!((140..=260).contains(&copied), "{copied} of 400 copied");

    for (mirror, field) in [
        (json!({}), "host"),
        (json!({"host": "ftp://127.0.0.1"}), "host"),
        (json!({"host": "http://127.0.0.1/path"}), "host"),
        (
            json!({"host": "http://127.0.0.1", "path": "relative"}),
            "path",
        ),
        (
            json!({"host": "http://127.0.0.1", "sample_ratio": 0}),
            "sample_ratio",
        ),
        (
            json!({"host": "http://127.0.0.1", "path_concat_mode": "append"}),
            "path_concat_mode",
        ),
    ] {
        let route = json!({"uri": "/bad", "plugins": {"proxy-mirror": mirror},
                           "upstream": {"nodes": {up.to_string(): 1}}});
        gw.refused_naming("/apisix/admin/routes/bad", route, field)
            .await;
    }
}
