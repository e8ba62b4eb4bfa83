//! `fault-injection` (priority 11000): delays requests (`delay.duration` seconds) and/or answers
//! them itself (`abort.http_status`, `body`, `headers`), for a `percentage` of requests and only
//! those matching `vars` — a list of rule lists, any of which must hold in full.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::{Site, Template};
use crate::runtime::phases::{Ctx, Flow, Plugin, Reply};
use crate::vars::Vars;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    abort: Option<AbortConfig>,
    delay: Option<DelayConfig>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct AbortConfig {
    http_status: u16,
    body: Option<String>,
    headers: Option<std::collections::BTreeMap<String, String>>,
    percentage: Option<u8>,
    vars: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct DelayConfig {
    duration: f64,
    percentage: Option<u8>,
    vars: Option<Vec<Value>>,
}

/// When a fault applies: a share of requests, among those matching.
#[derive(Debug)]
struct When {
    percentage: Option<u8>,
    /// Any of these rule lists holding in full; empty = every request.
    vars: Vec<Vars>,
}

impl When {
    fn parse(percentage: Option<u8>, vars: Option<Vec<Value>>, at: &str) -> Result<When, String> {
        if let Some(p) = percentage
            && !(1..=100).contains(&p)
        {
            return Err(format!("{at}.percentage: 1 to 100 expected"));
        }
        let vars = vars
            .unwrap_or_default()
            .iter()
            .map(|rules| Vars::compile(rules).map_err(|e| format!("{at}.vars: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(When { percentage, vars })
    }

    fn holds(&self, ctx: &Ctx) -> bool {
        let sampled = self
            .percentage
            .is_none_or(|p| rand::random_range(1..=100u8) <= p);
        sampled && (self.vars.is_empty() || self.vars.iter().any(|v| v.matches(&ctx.vars())))
    }
}

#[derive(Debug)]
struct Abort {
    status: StatusCode,
    body: Option<Template>,
    headers: Vec<(HeaderName, Template)>,
    when: When,
}

#[derive(Debug)]
struct FaultInjection {
    abort: Option<Abort>,
    delay: Option<(Duration, When)>,
}

pub(super) fn build(config: &Value, _site: &Site) -> Result<Arc<dyn Plugin>, String> {
    let c: Config = crate::resource::parse(config).map_err(|e| e.0)?;
    if c.abort.is_none() && c.delay.is_none() {
        return Err("one of abort and delay is required".into());
    }
    let abort = c
        .abort
        .map(|a| {
            let status = StatusCode::from_u16(a.http_status)
                .ok()
                .filter(|s| s.as_u16() >= 200)
                .ok_or_else(|| format!("abort.http_status: {} is not >= 200", a.http_status))?;
            let headers = a
                .headers
                .unwrap_or_default()
                .iter()
                .map(|(name, value)| {
                    let name = HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| format!("abort.headers: {name:?} is not a header name"))?;
                    super::head_text(&format!("abort.headers.{name}"), value)?;
                    Ok((name, Template::parse(value)?))
                })
                .collect::<Result<_, String>>()?;
            Ok::<_, String>(Abort {
                status,
                body: a.body.as_deref().map(Template::parse).transpose()?,
                headers,
                when: When::parse(a.percentage, a.vars, "abort")?,
            })
        })
        .transpose()?;
    let delay = c
        .delay
        .map(|d| {
            let duration = Duration::try_from_secs_f64(d.duration)
                .ok()
                .filter(|t| !t.is_zero() && *t <= Duration::from_secs(3600))
                .ok_or("delay.duration: seconds above 0, up to 3600, expected")?;
            Ok::<_, String>((duration, When::parse(d.percentage, d.vars, "delay")?))
        })
        .transpose()?;
    Ok(Arc::new(FaultInjection { abort, delay }))
}

impl Plugin for FaultInjection {
    fn name(&self) -> &'static str {
        "fault-injection"
    }

    fn priority(&self) -> i32 {
        11000
    }

    fn reads_body(&self) -> bool {
        let abort = self.abort.as_ref().map(|a| &a.when);
        let delay = self.delay.as_ref().map(|(_, when)| when);
        abort
            .into_iter()
            .chain(delay)
            .any(|when| when.vars.iter().any(Vars::reads_body))
    }

    fn rewrite<'a>(&'a self, ctx: &'a mut Ctx) -> Flow<'a> {
        let reply = self.abort.as_ref().filter(|a| a.when.holds(ctx)).map(|a| {
            let vars = ctx.vars();
            let mut headers = HeaderMap::new();
            for (name, value) in &a.headers {
                if let Ok(v) = HeaderValue::from_str(&value.render(&vars, &[])) {
                    headers.insert(name.clone(), v);
                }
            }
            let body = a.body.as_ref().map(|b| b.render(&vars, &[]));
            Reply {
                status: a.status,
                headers,
                body: body.map(Bytes::from).unwrap_or_default(),
            }
        });
        match self.delay.as_ref().filter(|(_, when)| when.holds(ctx)) {
            Some((duration, _)) => {
                let duration = *duration;
                Flow::Wait(Box::pin(async move {
                    tokio::time::sleep(duration).await;
                    reply
                }))
            }
            None => reply.map_or(Flow::Next, Flow::Reply),
        }
    }
}
