//! `proxy-rewrite` (priority 1008): changes the path, method, `Host` and headers sent upstream.
//!
//! `uri` wins over `regex_uri` (`[regex, template, ...]`, the first regex that matches applies);
//! both may use `$var` and, for `regex_uri`, `$1`… captures. A new uri with a `?` replaces the
//! query string; otherwise the client's is kept. `use_real_request_uri_unsafe` sends the path as
//! the client wrote it, not its normal form, and wins over both (as in APISIX: unsafe, as the
//! upstream may read it otherwise than the route matched it).

use std::sync::Arc;

use http::Method;
use regex::Regex;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::{HeaderEdits, Site, Template};
use crate::runtime::phases::{Ctx, Flow, Plugin};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    uri: Option<String>,
    method: Option<String>,
    regex_uri: Option<Vec<String>>,
    host: Option<String>,
    headers: Option<Value>,
    #[serde(default)]
    use_real_request_uri_unsafe: bool,
}

#[derive(Debug)]
struct ProxyRewrite {
    raw_path: bool,
    uri: Option<Template>,
    regex_uri: Vec<(Regex, Template)>,
    method: Option<Method>,
    host: Option<String>,
    headers: HeaderEdits,
}

pub(super) fn build(config: &Value, _site: &Site) -> Result<Arc<dyn Plugin>, String> {
    let c: Config = crate::resource::parse(config).map_err(|e| e.0)?;
    if let Some(uri) = &c.uri {
        request_target("uri", uri)?;
    }
    let uri = c.uri.as_deref().map(Template::parse).transpose()?;
    let mut regex_uri = Vec::new();
    if let Some(pairs) = &c.regex_uri {
        if pairs.is_empty() || pairs.len() % 2 != 0 {
            return Err("regex_uri: expected [regex, replacement, ...] pairs".into());
        }
        for pair in pairs.chunks(2) {
            request_target("regex_uri", &pair[1])?;
            let regex = Regex::new(&pair[0])
                .map_err(|e| format!("regex_uri: invalid regex {:?}: {e}", pair[0]))?;
            regex_uri.push((regex, Template::parse(&pair[1])?));
        }
    }
    let method = match c.method.as_deref() {
        Some(m) => {
            let allowed = [
                "GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "MKCOL", "COPY", "MOVE",
                "PROPFIND", "LOCK", "UNLOCK", "PATCH", "TRACE",
            ];
            if !allowed.contains(&m) {
                return Err(format!("method: {m:?} is not a supported method"));
            }
            Some(Method::from_bytes(m.as_bytes()).map_err(|e| format!("method: {e}"))?)
        }
        None => None,
    };
    let headers = match &c.headers {
        Some(h) => HeaderEdits::parse(h)?,
        None => HeaderEdits::default(),
    };
    if let Some(host) = &c.host {
        super::head_text("host", host)?;
        if host.is_empty() || host.contains([' ', '/', '@', '?', '#']) {
            return Err(format!("host: {host:?} is not a host[:port]"));
        }
    }
    Ok(Arc::new(ProxyRewrite {
        raw_path: c.use_real_request_uri_unsafe,
        uri,
        regex_uri,
        method,
        host: c.host,
        headers,
    }))
}

/// A new path goes into the upstream's request line, which a space or control character would
/// end early.
fn request_target(field: &str, text: &str) -> Result<(), String> {
    super::head_text(field, text)?;
    if text.contains(' ') {
        return Err(format!(
            "{field}: a space is not allowed in a path (write %20)"
        ));
    }
    Ok(())
}

impl Plugin for ProxyRewrite {
    fn name(&self) -> &'static str {
        "proxy-rewrite"
    }

    fn priority(&self) -> i32 {
        1008
    }

    fn rewrite<'a>(&'a self, ctx: &'a mut Ctx) -> Flow<'a> {
        let vars = ctx.vars();
        let new_uri = if self.raw_path {
            // A path holds no `?`: the client's query is kept below.
            Some(
                ctx.raw_path
                    .clone()
                    .unwrap_or_else(|| ctx.original_path.clone()),
            )
        } else if let Some(uri) = &self.uri {
            Some(uri.render(&vars, &[]))
        } else {
            self.regex_uri.iter().find_map(|(regex, template)| {
                let caps = regex.captures(&ctx.original_path)?;
                let captures: Vec<Option<&str>> =
                    caps.iter().map(|m| m.map(|m| m.as_str())).collect();
                let replaced = template.render(&vars, &captures);
                // Like nginx's `ngx.re.sub`: the match is replaced, the rest of the path kept.
                let whole = caps.get(0)?;
                Some(format!(
                    "{}{replaced}{}",
                    &ctx.original_path[..whole.start()],
                    &ctx.original_path[whole.end()..]
                ))
            })
        };
        let mut headers = ctx.headers.clone();
        self.headers.apply(&mut headers, &vars);
        if let Some(uri) = new_uri {
            match uri.split_once('?') {
                Some((path, query)) => {
                    ctx.path = path.to_string();
                    ctx.query = Some(query.to_string());
                }
                None => ctx.path = uri,
            }
            if !ctx.path.starts_with('/') {
                ctx.path.insert(0, '/');
            }
        }
        ctx.headers = headers;
        if let Some(method) = &self.method {
            ctx.method = method.clone();
        }
        if let Some(host) = &self.host {
            ctx.upstream_host = Some(host.clone());
        }
        Flow::Next
    }
}
