//! TLS both ways: certificates from `ssls` served by SNI on the TLS listener (HTTP/1.1 and
//! HTTP/2 by ALPN), `https` upstreams over kept-alive connections, `https` health checks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axle_core::testing::{Backends, eventually};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use reqwest::Method;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::{Gateway, spawn_gateway, spawn_upstream};

/// A test certificate authority issuing leaf certificates.
pub(crate) struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub(crate) fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    /// A certificate for `names` and its key, in PEM.
    pub(crate) fn issue(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        roots
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a TLS client saw: the protocol ALPN chose, the status and the body.
#[derive(Debug)]
pub(crate) struct Seen {
    alpn: Option<Vec<u8>>,
    pub(crate) status: u16,
    body: String,
}

/// `GET path` over TLS to `addr` with SNI `sni` (none for an IP), trusting only `ca`, offering
/// `alpn`; Err when the handshake fails.
pub(crate) async fn https_get(
    addr: SocketAddr,
    sni: &str,
    ca: &Ca,
    alpn: &[&[u8]],
    path: &str,
) -> Result<Seen, std::io::Error> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let tls = connector.connect(name, tcp).await?;
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let request = http::Request::get(path)
        .header("host", sni)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = if alpn.as_deref() == Some(b"h2") {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        let (mut parts, body) = request.into_parts();
        parts.uri = format!("https://{sni}{path}").parse().unwrap();
        parts.headers.remove("host");
        sender
            .send_request(http::Request::from_parts(parts, body))
            .await
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        sender.send_request(request).await
    }
    .map_err(std::io::Error::other)?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Ok(Seen {
        alpn,
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// An HTTPS node: answers `{"upstream", "host", "sni"}`, or its health at `/health`.
struct TlsNode {
    addr: SocketAddr,
    /// TCP connections accepted.
    connections: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
    snis: Arc<Mutex<Vec<Option<String>>>>,
}

async fn spawn_tls_node(name: &'static str, cert: &str, key: &str) -> TlsNode {
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = TlsNode {
        addr: listener.local_addr().unwrap(),
        connections: Arc::default(),
        healthy: Arc::new(AtomicBool::new(true)),
        snis: Arc::default(),
    };
    let (connections, healthy, snis) = (
        node.connections.clone(),
        node.healthy.clone(),
        node.snis.clone(),
    );
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            connections.fetch_add(1, Ordering::SeqCst);
            let (acceptor, healthy, snis) = (acceptor.clone(), healthy.clone(), snis.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().map(str::to_string);
                snis.lock().unwrap().push(sni.clone());
                let service = hyper::service::service_fn(move |req: http::Request<_>| {
                    let healthy = healthy.load(Ordering::SeqCst);
                    let (status, body) = if req.uri().path() == "/health" {
                        (if healthy { 200 } else { 500 }, json!({}))
                    } else {
                        let host = req.headers().get("host").map(|h| h.to_str().unwrap());
                        (200, json!({"upstream": name, "host": host, "sni": sni}))
                    };
                    let response = http::Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::from(body.to_string())))
                        .unwrap();
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    node
}

#[tokio::test]
async fn ssls_are_served_by_sni_over_http1_and_http2() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let ca = Ca::new();
    let upstream = spawn_upstream("plain").await;
    gw.put(
        "/apisix/admin/routes/1",
        json!({"uri": "/get", "upstream": {"nodes": {upstream.to_string(): 1}}}),
    )
    .await;
    gw.wait_for("/get", 200).await;

    // APISIX's example: one certificate for one name; then a wildcard.
    let (cert, key) = ca.issue(&["test.com"]);
    gw.put(
        "/apisix/admin/ssls/1",
        json!({"cert": cert, "key": key, "snis": ["test.com"]}),
    )
    .await;
    let (wild_cert, wild_key) = ca.issue(&["*.example.com"]);
    gw.put(
        "/apisix/admin/ssls/2",
        json!({"cert": wild_cert, "key": wild_key, "snis": ["*.example.com"]}),
    )
    .await;
    // The wildcard was written last: once it is served, so is the first.
    let wild = eventually(10, "the certificates to be served", || async {
        https_get(gw.tls_proxy, "api.example.com", &ca, &[b"h2"], "/get")
            .await
            .ok()
    })
    .await;
    assert_eq!(wild.status, 200);
    let seen = https_get(gw.tls_proxy, "test.com", &ca, &[b"http/1.1"], "/get")
        .await
        .unwrap();
    assert_eq!(seen.status, 200);
    assert_eq!(seen.alpn.as_deref(), Some(&b"http/1.1"[..]));
    let echoed: Value = serde_json::from_str(&seen.body).unwrap();
    assert_eq!(echoed["headers"]["x-forwarded-proto"], "https");
    assert_eq!(echoed["headers"]["host"], "test.com");

    let h2 = https_get(gw.tls_proxy, "test.com", &ca, &[b"h2", b"http/1.1"], "/get")
        .await
        .unwrap();
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(h2.status, 200);

    // The client verified the chain and the name: a certificate for test.com would not do.
    assert!(
        https_get(gw.tls_proxy, "other.org", &ca, &[], "/get")
            .await
            .is_err(),
        "no certificate matches other.org"
    );

    // Bad certificates are refused with the field named; disabling one stops serving it.
    let (_, stranger_key) = ca.issue(&["test.com"]);
    let mismatched = json!({"cert": cert, "key": stranger_key, "snis": ["test.com"]});
    let error = gw
        .refused(Method::PUT, "/apisix/admin/ssls/3", mismatched)
        .await;
    assert!(error.contains("key"), "{error}");
    let not_pem = json!({"cert": "nope", "key": key, "snis": ["test.com"]});
    gw.refused(Method::PUT, "/apisix/admin/ssls/3", not_pem)
        .await;
    let (status, _) = gw
        .admin(
            Method::PATCH,
            "/apisix/admin/ssls/1",
            Some(json!({"status": 0})),
        )
        .await;
    assert_eq!(status, 200);
    eventually(
        10,
        "the disabled certificate to stop being served",
        || async {
            https_get(gw.tls_proxy, "test.com", &ca, &[], "/get")
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
}

/// `https` upstreams: the node's certificate is not verified unless `tls.verify`, the SNI is
/// the upstream host, and connections are kept alive across requests.
#[tokio::test]
async fn https_upstreams_keep_connections_alive_and_verify_on_request() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let ca = Ca::new();
    let (cert, key) = ca.issue(&["backend.test"]);
    let node = spawn_tls_node("secure", &cert, &key).await;
    gw.put(
        "/apisix/admin/routes/1",
        json!({"uri": "/s", "upstream": {
            "scheme": "https",
            "pass_host": "rewrite",
            "upstream_host": "backend.test",
            "nodes": {node.addr.to_string(): 1}
        }}),
    )
    .await;
    gw.wait_for("/s", 200).await;
    for _ in 0..20 {
        let r = gw.client.get(gw.url("/s")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["upstream"], "secure");
        assert_eq!(body["host"], "backend.test");
        assert_eq!(body["sni"], "backend.test");
    }
    assert_eq!(
        node.connections.load(Ordering::SeqCst),
        1,
        "one kept-alive connection carried every request"
    );

    // The node's certificate is signed by a CA the system does not trust.
    gw.put(
        "/apisix/admin/routes/2",
        json!({"uri": "/verified", "upstream": {
            "scheme": "https",
            "tls": {"verify": true},
            "pass_host": "rewrite",
            "upstream_host": "backend.test",
            "nodes": {node.addr.to_string(): 1}
        }}),
    )
    .await;
    let refused = gw.wait_for("/verified", 502).await;
    assert_eq!(refused.status(), 502);

    let half = json!({"scheme": "https", "nodes": {"127.0.0.1:1": 1},
        "tls": {"client_cert": cert}});
    let error = gw
        .refused(Method::PUT, "/apisix/admin/upstreams/9", half)
        .await;
    assert!(error.contains("client_key"), "{error}");
}

/// `https` active checks eject a node whose health endpoint fails over TLS and restore it.
#[tokio::test]
async fn https_health_checks_eject_and_restore() {
    let gw = spawn_gateway(Backends::embedded()).await;
    let ca = Ca::new();
    let (cert, key) = ca.issue(&["node.test"]);
    let a = spawn_tls_node("a", &cert, &key).await;
    let b = spawn_tls_node("b", &cert, &key).await;
    gw.put(
        "/apisix/admin/routes/h",
        json!({"uri": "/h", "upstream": {
            "scheme": "https",
            "nodes": {a.addr.to_string(): 1, b.addr.to_string(): 1},
            "retries": 0,
            "checks": {"active": {
                "type": "https",
                "https_verify_certificate": false,
                "http_path": "/health",
                "healthy": {"interval": 1, "successes": 1},
                "unhealthy": {"interval": 1, "http_failures": 1}
            }}
        }}),
    )
    .await;
    gw.wait_for("/h", 200).await;
    let answers = |n: usize| {
        let gw: &Gateway = &gw;
        async move {
            let mut seen = Vec::new();
            for _ in 0..n {
                let r = gw.client.get(gw.url("/h")).send().await.unwrap();
                let body: Value = r.json().await.unwrap_or_default();
                seen.push(body["upstream"].as_str().unwrap_or("").to_string());
            }
            seen
        }
    };
    b.healthy.store(false, Ordering::SeqCst);
    eventually(10, "the failing node to be ejected", || async {
        answers(20).await.iter().all(|u| u == "a").then_some(())
    })
    .await;
    b.healthy.store(true, Ordering::SeqCst);
    eventually(10, "the node to be restored", || async {
        answers(10).await.iter().any(|u| u == "b").then_some(())
    })
    .await;
    // The probes spoke TLS: each of them was a handshake the node accepted.
    assert!(b.snis.lock().unwrap().len() > 1);
}
