//! What the reporting plugins (`http-logger`, `usage-counter`) share: the server they post to,
//! checked when configured, and the drops each post tells it of (`X-Axle-Dropped: n`, those
//! since the last post it took).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::client::fetch::{self, Call};
use crate::client::pool::Pool;

/// Where reports go: `uri` (http or https), with `Authorization: <auth_header>`.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub uri: String,
    pub authorization: Option<String>,
    pub timeout: Duration,
    pub verify: bool,
}

impl Target {
    pub fn new(
        uri: String,
        auth_header: Option<String>,
        timeout: Duration,
        verify: bool,
    ) -> Result<Target, String> {
        let url = reqwest::Url::parse(&uri).map_err(|e| format!("uri: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("uri: an http or https URL expected".into());
        }
        if let Some(auth) = &auth_header
            && http::HeaderValue::from_str(auth).is_err()
        {
            return Err("auth_header: not a header value".into());
        }
        Ok(Target {
            uri,
            authorization: auth_header,
            timeout,
            verify,
        })
    }
}

/// Reports dropped since the last post the server took.
#[derive(Debug, Default)]
pub(super) struct Dropped(AtomicU64);

impl Dropped {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn any(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }

    /// Posts `body` to `target`, saying how many were dropped; those are forgotten once the
    /// server takes the post (2xx).
    pub async fn post(
        &self,
        pool: &Arc<Pool>,
        target: &Target,
        content_type: &'static str,
        body: String,
    ) -> Result<(), String> {
        let dropped = self.0.load(Ordering::Relaxed);
        let mut call = Call::post(&target.uri, target.verify, content_type, body);
        call.authorization = target.authorization.clone();
        call.timeout = target.timeout;
        call.headers = vec![("x-axle-dropped", dropped.to_string())];
        match fetch::send(pool, call).await? {
            (status, _) if status.is_success() => {
                self.0.fetch_sub(dropped, Ordering::Relaxed);
                Ok(())
            }
            (status, _) => Err(format!("status {status}")),
        }
    }
}
