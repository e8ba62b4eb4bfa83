//! `api-breaker` (priority 1005): a circuit breaker per route, host and URI. After
//! `unhealthy.failures` upstream answers with an `unhealthy.http_statuses` status, requests are
//! answered with `break_response_code` (and `break_response_body`, `break_response_headers`)
//! for 2 seconds; each further `failures` doubles that, up to `max_breaker_sec`. Once broken,
//! `healthy.successes` answers with a `healthy.http_statuses` status close the breaker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::{Shared, Site, Template};
use crate::runtime::phases::{Ctx, Flow, Log, Plugin, Reply};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    break_response_code: u16,
    break_response_body: Option<String>,
    #[serde(default)]
    break_response_headers: Vec<HeaderConfig>,
    #[serde(default = "default_max_breaker_sec")]
    max_breaker_sec: u64,
    #[serde(default)]
    unhealthy: Unhealthy,
    #[serde(default)]
    healthy: Healthy,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct HeaderConfig {
    key: String,
    value: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct Unhealthy {
    http_statuses: Vec<u16>,
    failures: u64,
}

impl Default for Unhealthy {
    fn default() -> Self {
        Unhealthy {
            http_statuses: vec![500],
            failures: 3,
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct Healthy {
    http_statuses: Vec<u16>,
    successes: u64,
}

impl Default for Healthy {
    fn default() -> Self {
        Healthy {
            http_statuses: vec![200],
            successes: 3,
        }
    }
}

fn default_max_breaker_sec() -> u64 {
    300
}

#[derive(Debug)]
struct ApiBreaker {
    /// The process's plugin state: its circuit breakers.
    shared: Arc<Shared>,
    code: StatusCode,
    body: Option<Bytes>,
    headers: Vec<(HeaderName, Template)>,
    max_break: Duration,
    unhealthy: Unhealthy,
    healthy: Healthy,
}

pub(super) fn build(config: &Value, site: &Site) -> Result<Arc<dyn Plugin>, String> {
    let c: Config = crate::resource::parse(config).map_err(|e| e.0)?;
    let status = |code: u16, range: std::ops::RangeInclusive<u16>, at: &str| {
        StatusCode::from_u16(code)
            .ok()
            .filter(|_| range.contains(&code))
            .ok_or_else(|| format!("{at}: {code} is not within {range:?}"))
    };
    let code = status(c.break_response_code, 200..=599, "break_response_code")?;
    for s in &c.unhealthy.http_statuses {
        status(*s, 500..=599, "unhealthy.http_statuses")?;
    }
    for s in &c.healthy.http_statuses {
        status(*s, 200..=499, "healthy.http_statuses")?;
    }
    if c.unhealthy.http_statuses.is_empty() || c.healthy.http_statuses.is_empty() {
        return Err("http_statuses: at least one status expected".into());
    }
    if c.unhealthy.failures == 0 {
        return Err("unhealthy.failures: must be at least 1".into());
    }
    if c.healthy.successes == 0 {
        return Err("healthy.successes: must be at least 1".into());
    }
    if !(3..=crate::resource::MAX_SECONDS).contains(&c.max_breaker_sec) {
        return Err(format!(
            "max_breaker_sec: must be within 3 and {}",
            crate::resource::MAX_SECONDS
        ));
    }
    let headers = c
        .break_response_headers
        .iter()
        .map(|h| {
            let name = HeaderName::from_bytes(h.key.as_bytes())
                .map_err(|_| format!("break_response_headers: {:?} is not a header name", h.key))?;
            super::head_text("break_response_headers", &h.value)?;
            Ok((name, Template::parse(&h.value)?))
        })
        .collect::<Result<_, String>>()?;
    Ok(Arc::new(ApiBreaker {
        shared: site.shared.clone(),
        code,
        body: c.break_response_body.map(Bytes::from),
        headers,
        max_break: Duration::from_secs(c.max_breaker_sec),
        unhealthy: c.unhealthy,
        healthy: c.healthy,
    }))
}

impl Plugin for ApiBreaker {
    fn name(&self) -> &'static str {
        "api-breaker"
    }

    fn priority(&self) -> i32 {
        1005
    }

    fn access<'a>(&'a self, ctx: &'a mut Ctx) -> Flow<'a> {
        let key = breaker_key(&ctx.route_id, &ctx.host, &ctx.original_path);
        if !self
            .shared
            .breakers
            .is_open(&key, self.unhealthy.failures, self.max_break)
        {
            return Flow::Next;
        }
        let Some(body) = &self.body else {
            return Flow::Reply(Reply {
                status: self.code,
                headers: HeaderMap::new(),
                body: Bytes::new(),
            });
        };
        // As in APISIX, the headers come with a body only.
        let vars = ctx.vars();
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            if let Ok(value) = HeaderValue::from_str(&value.render(&vars, &[])) {
                headers.append(name, value);
            }
        }
        Flow::Reply(Reply {
            status: self.code,
            headers,
            body: body.clone(),
        })
    }

    fn logs(&self) -> bool {
        true
    }

    fn log(&self, log: &Log) {
        let Some(status) = log.upstream_status else {
            return;
        };
        let key = breaker_key(&log.route, &log.host, &log.uri);
        if self.unhealthy.http_statuses.contains(&status) {
            self.shared
                .breakers
                .failed(key, self.unhealthy.failures, self.max_break);
        } else if self.healthy.http_statuses.contains(&status) {
            self.shared.breakers.succeeded(&key, self.healthy.successes);
        }
    }
}

fn breaker_key(route: &str, host: &str, uri: &str) -> String {
    format!("{route}\n{host}\n{uri}")
}

/// The breakers of every `api-breaker`, per gateway process; they outlive snapshots.
#[derive(Debug, Default)]
pub struct Breakers(Mutex<HashMap<String, Breaker>>);

/// Unhealthy answers since the breaker was last closed, healthy ones since it broke, and when
/// it last broke.
#[derive(Debug, Clone, Copy)]
struct Breaker {
    failures: u64,
    successes: u64,
    broke_at: Option<Instant>,
    /// How long this breaker is kept after its last change without a request.
    keep: Duration,
    touched: Instant,
}

impl Breakers {
    /// Whether requests are to be answered by the breaker now: for 2^n seconds (at most
    /// `max_break`) after the n-th run of `failures` unhealthy answers.
    fn is_open(&self, key: &str, failures: u64, max_break: Duration) -> bool {
        let breakers = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(Breaker {
            failures: failed,
            broke_at: Some(broke_at),
            ..
        }) = breakers.get(key)
        else {
            return false;
        };
        let runs = (failed / failures).min(63) as u32;
        let open_for = Duration::from_secs(2u64.saturating_pow(runs)).min(max_break);
        broke_at.elapsed() <= open_for
    }

    fn failed(&self, key: String, failures: u64, max_break: Duration) {
        let now = Instant::now();
        let mut breakers = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if breakers.len() > 1024 {
            breakers.retain(|_, b| b.touched.elapsed() <= b.keep);
        }
        let breaker = breakers.entry(key).or_insert(Breaker {
            failures: 0,
            successes: 0,
            broke_at: None,
            keep: max_break,
            touched: now,
        });
        breaker.failures += 1;
        breaker.touched = now;
        if breaker.failures.is_multiple_of(failures) {
            breaker.broke_at = Some(now);
        }
    }

    fn succeeded(&self, key: &str, successes: u64) {
        let mut breakers = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(breaker) = breakers.get_mut(key) else {
            return; // nothing failed: nothing to heal
        };
        breaker.successes += 1;
        breaker.touched = Instant::now();
        if breaker.successes >= successes {
            breakers.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_breaker_opens_after_a_run_of_failures_and_heals_after_successes() {
        let breakers = Breakers::default();
        let max = Duration::from_secs(300);
        assert!(!breakers.is_open("k", 3, max));
        breakers.failed("k".into(), 3, max);
        breakers.failed("k".into(), 3, max);
        assert!(!breakers.is_open("k", 3, max), "two failures of three");
        breakers.failed("k".into(), 3, max);
        assert!(breakers.is_open("k", 3, max));
        assert!(!breakers.is_open("other", 3, max));
        breakers.succeeded("k", 2);
        assert!(breakers.is_open("k", 3, max), "one success of two");
        breakers.succeeded("k", 2);
        assert!(!breakers.is_open("k", 3, max));
        assert!(breakers.0.lock().unwrap().is_empty());
    }
}
