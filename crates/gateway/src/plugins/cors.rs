//! `cors` (priority 4000): answers preflight (`OPTIONS`) requests and adds the
//! `Access-Control-*` headers to responses for allowed origins, as APISIX decides them:
//! origins named in `plugin_metadata/cors`'s `allow_origins` under the keys
//! `allow_origins_by_metadata` lists; else `allow_origins_by_regex` (regexes found anywhere in
//! the origin, as APISIX's — anchor them with `^…$`), which replaces `allow_origins` when set;
//! else `allow_origins` (`*`, `**` for any origin even with credentials, or a comma-separated
//! list). `timing_allow_origins` and `timing_allow_origins_by_regex` grant
//! `Timing-Allow-Origin` the same way.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use regex::Regex;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::Site;
use crate::runtime::phases::{Ctx, Flow, Plugin, Reply, ResponseHead};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    #[serde(default = "star")]
    allow_origins: String,
    #[serde(default = "star")]
    allow_methods: String,
    #[serde(default = "star")]
    allow_headers: String,
    expose_headers: Option<String>,
    #[serde(default = "default_max_age")]
    max_age: i64,
    #[serde(default)]
    allow_credential: bool,
    allow_origins_by_regex: Option<Vec<String>>,
    /// Keys of `plugin_metadata/cors`'s `allow_origins`.
    allow_origins_by_metadata: Option<Vec<String>>,
    timing_allow_origins: Option<String>,
    timing_allow_origins_by_regex: Option<Vec<String>>,
}

/// `plugin_metadata/cors`: origins by key, for `allow_origins_by_metadata`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
struct Metadata {
    allow_origins: std::collections::BTreeMap<String, String>,
}

/// Checks `plugin_metadata/cors`.
pub(super) fn check_metadata(metadata: &Value) -> Result<(), String> {
    let m: Metadata = crate::resource::parse(metadata).map_err(|e| e.0)?;
    for (key, origins) in &m.allow_origins {
        super::head_text(&format!("allow_origins.{key}"), origins)?;
    }
    Ok(())
}

fn star() -> String {
    "*".into()
}

fn default_max_age() -> i64 {
    5
}

const ALL_METHODS: &str = "GET,POST,PUT,DELETE,PATCH,HEAD,OPTIONS,CONNECT,TRACE";

#[derive(Debug)]
struct Cors {
    origins: Origins,
    /// `allow_origins_by_regex`, one alternation.
    by_regex: Option<Regex>,
    /// The origins `allow_origins_by_metadata` names, when set.
    by_metadata: Option<Vec<Origins>>,
    /// `Timing-Allow-Origin`'s origins, when set.
    timing: Option<Origins>,
    timing_by_regex: Option<Regex>,
    methods: HeaderValue,
    /// None: `**`, echo the preflight's `Access-Control-Request-Headers`.
    headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    max_age: HeaderValue,
    credentials: bool,
}

#[derive(Debug)]
enum Origins {
    Star,
    Any,
    List(Vec<String>),
}

impl Origins {
    fn parse(text: &str) -> Origins {
        match text {
            "*" => Origins::Star,
            "**" => Origins::Any,
            list => Origins::List(list.split(',').map(|o| o.trim().to_string()).collect()),
        }
    }

    /// The allow-origin value for a request from `origin`; None when it is not allowed.
    fn admit(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        match self {
            Origins::Star => Some(HeaderValue::from_static("*")),
            Origins::Any => Some(origin.cloned().unwrap_or(HeaderValue::from_static("*"))),
            Origins::List(list) => {
                let origin = origin?;
                let text = origin.to_str().ok()?;
                list.iter().any(|o| o == text).then(|| origin.clone())
            }
        }
    }
}

/// Regexes as one alternation, found anywhere in an origin (as APISIX's `re_find`).
fn alternation(field: &str, regexes: Option<&Vec<String>>) -> Result<Option<Regex>, String> {
    let Some(regexes) = regexes.filter(|r| !r.is_empty()) else {
        return Ok(None);
    };
    let joined = regexes
        .iter()
        .map(|r| format!("(?:{r})"))
        .collect::<Vec<_>>()
        .join("|");
    Regex::new(&joined)
        .map(Some)
        .map_err(|e| format!("{field}: {e}"))
}

/// `origin` when `regex` finds itself in it.
fn by_regex(regex: &Regex, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
    let origin = origin?;
    regex
        .is_match(origin.to_str().ok()?)
        .then(|| origin.clone())
}

pub(super) fn build(config: &Value, site: &Site) -> Result<Arc<dyn Plugin>, String> {
    let c: Config = crate::resource::parse(config).map_err(|e| e.0)?;
    // Checked when the metadata was written; a key it does not have names no origin.
    let metadata: Metadata = site
        .metadata
        .get("cors")
        .and_then(|m| crate::resource::parse(m).ok())
        .unwrap_or_default();
    let by_metadata = c.allow_origins_by_metadata.as_ref().map(|keys| {
        keys.iter()
            .filter_map(|key| metadata.allow_origins.get(key))
            .map(|origins| Origins::parse(origins))
            .collect()
    });
    if c.allow_credential {
        let starred = [&c.allow_origins, &c.allow_methods, &c.allow_headers]
            .into_iter()
            .chain(c.expose_headers.as_ref())
            .any(|v| v == "*");
        if starred {
            return Err(
                "you can not set '*' for other option when 'allow_credential' is true".into(),
            );
        }
    }
    let value = |field: &str, text: &str| {
        HeaderValue::from_str(text).map_err(|_| format!("{field}: not valid in a header"))
    };
    let origins = Origins::parse(&c.allow_origins);
    let by_regex = alternation("allow_origins_by_regex", c.allow_origins_by_regex.as_ref())?;
    let timing_by_regex = alternation(
        "timing_allow_origins_by_regex",
        c.timing_allow_origins_by_regex.as_ref(),
    )?;
    let methods = match c.allow_methods.as_str() {
        "**" => ALL_METHODS,
        other => other,
    };
    Ok(Arc::new(Cors {
        origins,
        by_regex,
        by_metadata,
        timing: c.timing_allow_origins.as_deref().map(Origins::parse),
        timing_by_regex,
        methods: value("allow_methods", methods)?,
        headers: match c.allow_headers.as_str() {
            "**" => None,
            other => Some(value("allow_headers", other)?),
        },
        expose: c
            .expose_headers
            .as_deref()
            .map(|e| value("expose_headers", e))
            .transpose()?,
        max_age: HeaderValue::from(c.max_age),
        credentials: c.allow_credential,
    }))
}

impl Cors {
    /// The `Access-Control-Allow-Origin` for a request from `origin`; None when not allowed.
    fn allowed(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        if let Some(sets) = &self.by_metadata {
            let listed = |set: &Origins| {
                set.admit(origin)
                    .is_some_and(|allowed| allowed == "*" || Some(&allowed) == origin)
            };
            if origin.is_some() && sets.iter().any(listed) {
                return origin.cloned();
            }
            // Not among the metadata's: `allow_origins` decides, unless it is the default `*`.
            if matches!(self.origins, Origins::Star) {
                return None;
            }
        }
        match &self.by_regex {
            Some(regex) => by_regex(regex, origin),
            None => self.origins.admit(origin),
        }
    }

    /// The `Timing-Allow-Origin` for a request from `origin`, when timing is allowed.
    fn timing(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        match (&self.timing_by_regex, &self.timing) {
            (Some(regex), _) => by_regex(regex, origin),
            (None, Some(origins)) => origins.admit(origin).filter(|a| Some(a) == origin),
            (None, None) => None,
        }
    }
}

impl Plugin for Cors {
    fn name(&self) -> &'static str {
        "cors"
    }

    fn priority(&self) -> i32 {
        4000
    }

    fn rewrite<'a>(&'a self, ctx: &'a mut Ctx) -> Flow<'a> {
        if ctx.method != Method::OPTIONS {
            return Flow::Next;
        }
        Flow::Reply(Reply {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        })
    }

    fn response(&self, ctx: &Ctx, head: &mut ResponseHead) {
        let requested = ctx.headers.get(header::ORIGIN);
        if let Some(timing) = self.timing(requested) {
            head.headers().insert("timing-allow-origin", timing);
        }
        // The answer depends on the request's origin, unless every origin gets `*`.
        let star = matches!(self.origins, Origins::Star);
        if !star || self.by_regex.is_some() || self.by_metadata.is_some() {
            head.headers()
                .append(header::VARY, HeaderValue::from_static("Origin"));
        }
        let Some(origin) = self.allowed(requested) else {
            return;
        };
        let h = head.headers();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone());
        let allow_headers = match &self.headers {
            Some(v) => Some(v.clone()),
            None => ctx
                .headers
                .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                .cloned(),
        };
        if let Some(v) = allow_headers {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        if let Some(v) = &self.expose {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
        h.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        if self.credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
}
