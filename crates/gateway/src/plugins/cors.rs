//! `cors` (priority 4000): answers preflight (`OPTIONS`) requests and adds the
//! `Access-Control-*` headers to responses for allowed origins — `allow_origins` (`*`, `**`
//! for any origin even with credentials, or a comma-separated list) or
//! `allow_origins_by_regex`.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use regex::Regex;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::{Ctx, Flow, Plugin, Reply, ResponseHead, Site};

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
    allow_origins_by_metadata: Option<Value>,
    timing_allow_origins: Option<Value>,
    timing_allow_origins_by_regex: Option<Value>,
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
    by_regex: Vec<Regex>,
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

pub(super) fn build(config: &Value, _site: &Site) -> Result<Arc<dyn Plugin>, String> {
    let c: Config = crate::resource::parse(config).map_err(|e| e.0)?;
    for (field, set) in [
        ("allow_origins_by_metadata", &c.allow_origins_by_metadata),
        ("timing_allow_origins", &c.timing_allow_origins),
        (
            "timing_allow_origins_by_regex",
            &c.timing_allow_origins_by_regex,
        ),
    ] {
        if set.is_some() {
            return Err(format!("{field}: not supported yet"));
        }
    }
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
    let origins = match c.allow_origins.as_str() {
        "*" => Origins::Star,
        "**" => Origins::Any,
        list => Origins::List(list.split(',').map(|o| o.trim().to_string()).collect()),
    };
    let by_regex = c
        .allow_origins_by_regex
        .unwrap_or_default()
        .iter()
        .map(|r| {
            Regex::new(&format!("^(?:{r})$")).map_err(|e| format!("allow_origins_by_regex: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let methods = match c.allow_methods.as_str() {
        "**" => ALL_METHODS,
        other => other,
    };
    Ok(Arc::new(Cors {
        origins,
        by_regex,
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
        if let Origins::Star = self.origins {
            return Some(HeaderValue::from_static("*"));
        }
        let origin = origin?;
        let text = origin.to_str().ok()?;
        let listed = match &self.origins {
            Origins::Any => true,
            Origins::List(list) => list.iter().any(|o| o == text),
            Origins::Star => false,
        };
        (listed || self.by_regex.iter().any(|r| r.is_match(text))).then(|| origin.clone())
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
        let Some(origin) = self.allowed(ctx.headers.get(header::ORIGIN)) else {
            return;
        };
        let h = head.headers();
        if origin != "*" {
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
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
