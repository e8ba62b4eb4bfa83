//! One request to a service a plugin depends on (an identity provider's discovery document,
//! key set, token or introspection endpoint), over the gateway's own connection pool, bounded
//! in time and size.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode, header};
use http_body_util::BodyExt;

use super::pool::{self, Pool};
use crate::resource::KeepalivePool;

/// What to send.
#[derive(Debug)]
pub struct Call<'a> {
    pub method: Method,
    pub url: &'a str,
    /// Whether an `https` server's certificate is verified (system roots, host name).
    pub verify: bool,
    /// A body and its content type, for POSTs.
    pub body: Option<(&'static str, String)>,
    /// An `Authorization` header.
    pub authorization: Option<String>,
    /// More header fields.
    pub headers: Vec<(&'static str, String)>,
    pub timeout: Duration,
    /// The largest body accepted.
    pub max_bytes: usize,
}

impl<'a> Call<'a> {
    pub fn get(url: &'a str, verify: bool) -> Self {
        Self {
            method: Method::GET,
            url,
            verify,
            body: None,
            authorization: None,
            headers: Vec::new(),
            timeout: Duration::from_secs(3),
            max_bytes: 1024 * 1024,
        }
    }

    pub fn post_form(url: &'a str, verify: bool, form: String) -> Self {
        Self::post(url, verify, "application/x-www-form-urlencoded", form)
    }

    pub fn post(url: &'a str, verify: bool, content_type: &'static str, body: String) -> Self {
        Self {
            method: Method::POST,
            body: Some((content_type, body)),
            ..Self::get(url, verify)
        }
    }
}

/// Sends `call`; answers the status and the whole body. Errors are one line for a log.
pub async fn send(pool: &Arc<Pool>, call: Call<'_>) -> Result<(StatusCode, Bytes), String> {
    tokio::time::timeout(call.timeout, exchange(pool, &call))
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// Sends `call` and reads a JSON answer of a 2xx status.
pub async fn json<T: serde::de::DeserializeOwned>(
    pool: &Arc<Pool>,
    call: Call<'_>,
) -> Result<T, String> {
    let (status, body) = send(pool, call).await?;
    if !status.is_success() {
        return Err(format!("status {status}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("not the JSON expected: {e}"))
}

async fn exchange(pool: &Arc<Pool>, call: &Call<'_>) -> Result<(StatusCode, Bytes), String> {
    let url = reqwest::Url::parse(call.url).map_err(|e| e.to_string())?;
    let host = url.host_str().ok_or("no host")?;
    let port = url.port_or_known_default().ok_or("no port")?;
    let tls = match url.scheme() {
        "https" => Some(pool::Tls {
            config: crate::tls::client_config(call.verify, None)?,
            name: crate::tls::server_name(host).ok_or("not a server name")?,
        }),
        "http" => None,
        other => return Err(format!("unsupported scheme {other}")),
    };
    let key = pool::Key {
        host: host.trim_start_matches('[').trim_end_matches(']').into(),
        port,
        tls,
    };
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    let path = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_string(),
    };
    let mut request = http::Request::builder()
        .method(call.method.clone())
        .uri(path)
        .header(header::HOST, authority)
        .header(header::ACCEPT, "application/json");
    if let Some(authorization) = &call.authorization {
        request = request.header(header::AUTHORIZATION, authorization);
    }
    for (name, value) in &call.headers {
        request = request.header(*name, value);
    }
    let request = match &call.body {
        Some((content_type, body)) => request
            .header(header::CONTENT_TYPE, *content_type)
            .header(header::CONTENT_LENGTH, body.len())
            .body(super::full(body.clone())),
        None => request.body(super::empty()),
    }
    .map_err(|e| e.to_string())?;
    let response = pool
        .send(
            &key,
            &KeepalivePool::default(),
            call.timeout,
            request.into(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let body = http_body_util::Limited::new(response.body, call.max_bytes)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((response.status, body))
}
