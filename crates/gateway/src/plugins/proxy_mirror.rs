//! `proxy-mirror` (priority 1010): copies a `sample_ratio` share of requests — method, headers
//! and body — to a mirror `host`, at the request's own path, at `path` (`path_concat_mode:
//! replace`) or at `path` followed by the request's path (`prefix`). The mirror's answer is
//! thrown away: a slow, failing or unreachable mirror never delays or fails the request.
//!
//! The plugin picks the requests and where their copies go; the data plane sends the copies,
//! over its own connection pools, as the body streams to the upstream.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::Site;
use crate::resource;
use crate::runtime::phases::{Ctx, Flow, Mirror, Plugin};
use crate::runtime::upstream::Upstream;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    host: String,
    path: Option<String>,
    #[serde(default)]
    path_concat_mode: ConcatMode,
    #[serde(default = "all")]
    sample_ratio: f64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum ConcatMode {
    #[default]
    Replace,
    Prefix,
}

fn all() -> f64 {
    1.0
}

#[derive(Debug)]
struct ProxyMirror {
    upstream: Arc<Upstream>,
    path: Option<String>,
    mode: ConcatMode,
    sample_ratio: f64,
}

pub(super) fn build(config: &Value, _site: &Site) -> Result<Arc<dyn Plugin>, String> {
    let c: Config = resource::parse(config).map_err(|e| e.0)?;
    let url = reqwest::Url::parse(&c.host).map_err(|e| format!("host: {e}"))?;
    let scheme = url.scheme();
    if !matches!(scheme, "http" | "https") || url.host_str().is_none() {
        return Err("host: an http:// or https:// address is expected".into());
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() {
        return Err("host: no path is expected; the path goes in `path`".into());
    }
    if let Some(path) = &c.path
        && (!path.starts_with('/') || path.contains(['?', '&']))
    {
        return Err("path: must start with / and have no query".into());
    }
    if !(0.00001..=1.0).contains(&c.sample_ratio) {
        return Err("sample_ratio: must be within 0.00001 and 1".into());
    }
    let node = serde_json::json!({
        "host": url.host_str(),
        "port": url.port_or_known_default(),
        "weight": 1,
    });
    let upstream: resource::Upstream = resource::parse(&serde_json::json!({
        "nodes": [node],
        "scheme": scheme,
        "pass_host": "node",
    }))
    .map_err(|e| format!("host: {}", e.0))?;
    let upstream = Upstream::from_config(&upstream).map_err(|e| format!("host: {}", e.0))?;
    Ok(Arc::new(ProxyMirror {
        upstream: Arc::new(upstream),
        path: c.path,
        mode: c.path_concat_mode,
        sample_ratio: c.sample_ratio,
    }))
}

impl Plugin for ProxyMirror {
    fn name(&self) -> &'static str {
        "proxy-mirror"
    }

    fn priority(&self) -> i32 {
        1010
    }

    /// Before proxy-rewrite, so the copy has the path the client asked for.
    fn rewrite<'a>(&'a self, ctx: &'a mut Ctx) -> Flow<'a> {
        if self.sample_ratio < 1.0 && rand::random::<f64>() >= self.sample_ratio {
            return Flow::Next;
        }
        let path = match (&self.path, self.mode) {
            (None, _) => ctx.path.clone(),
            (Some(path), ConcatMode::Replace) => path.clone(),
            (Some(prefix), ConcatMode::Prefix) => format!("{prefix}{}", ctx.path),
        };
        let path_and_query = match &ctx.query {
            Some(query) => format!("{path}?{query}"),
            None => path,
        };
        ctx.mirror = Some(Mirror {
            upstream: self.upstream.clone(),
            path_and_query,
        });
        Flow::Next
    }
}
