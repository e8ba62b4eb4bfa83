//! `response-rewrite` (priority 899): changes the status, headers and body returned to the
//! client, when the request (and the response: `status`, `balancer_ip`…) matches `vars`
//! (always, without them). The body is replaced (`body`), or rewritten by regex `filters`
//! (the first match or every one, as `scope` says), read whole up to `max_resp_body_size`.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::StatusCode;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::{HeaderEdits, Site};
use crate::runtime::phases::{BodyRewrite, Ctx, Plugin, ResponseHead};
use crate::vars::Vars;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    status_code: Option<u16>,
    body: Option<String>,
    #[serde(default)]
    body_base64: bool,
    headers: Option<Value>,
    vars: Option<Value>,
    filters: Option<Vec<Filter>>,
    #[serde(default = "default_max_body")]
    max_resp_body_size: usize,
}

fn default_max_body() -> usize {
    64 * 1024 * 1024
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Filter {
    regex: String,
    #[serde(default)]
    scope: Scope,
    replace: String,
    /// PCRE-style flags as nginx's `ngx.re` takes them: `i`, `m`, `s`, `x` are honoured; `j`
    /// and `o` (compile once, JIT) are what Axle always does.
    #[serde(default = "default_options")]
    options: String,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Scope {
    #[default]
    Once,
    Global,
}

fn default_options() -> String {
    "jo".into()
}

/// A compiled filter.
#[derive(Debug)]
struct Substitution {
    regex: regex::bytes::Regex,
    replace: Vec<u8>,
    every: bool,
}

#[derive(Debug)]
struct ResponseRewrite {
    status: Option<StatusCode>,
    body: Option<Bytes>,
    headers: HeaderEdits,
    vars: Option<Vars>,
    filters: Option<Arc<Vec<Substitution>>>,
    max_body: usize,
}

pub(super) fn build(config: &Value, _site: &Site) -> Result<Arc<dyn Plugin>, String> {
    let c: Config = crate::resource::parse(config).map_err(|e| e.0)?;
    if c.filters.is_some() && c.body.is_some() {
        return Err("filters: not with body (one or the other changes the body)".into());
    }
    if c.max_resp_body_size == 0 {
        return Err("max_resp_body_size: at least 1".into());
    }
    let filters = c
        .filters
        .map(|filters| {
            filters
                .iter()
                .map(|f| {
                    let mut regex = regex::bytes::RegexBuilder::new(&f.regex);
                    for flag in f.options.chars() {
                        match flag {
                            'i' => regex.case_insensitive(true),
                            'm' => regex.multi_line(true),
                            's' => regex.dot_matches_new_line(true),
                            'x' => regex.ignore_whitespace(true),
                            'j' | 'o' | 'u' | 'U' | 'J' => &mut regex,
                            other => {
                                return Err(format!("filters.options: {other:?} is not supported"));
                            }
                        };
                    }
                    Ok(Substitution {
                        regex: regex.build().map_err(|e| format!("filters.regex: {e}"))?,
                        replace: f.replace.clone().into_bytes(),
                        every: f.scope == Scope::Global,
                    })
                })
                .collect::<Result<Vec<_>, String>>()
                .map(Arc::new)
        })
        .transpose()?;
    let status = match c.status_code {
        Some(code) if (200..=598).contains(&code) => {
            Some(StatusCode::from_u16(code).map_err(|e| format!("status_code: {e}"))?)
        }
        Some(code) => return Err(format!("status_code: {code} is not within 200-598")),
        None => None,
    };
    let body = match (c.body, c.body_base64) {
        (Some(b), true) => Some(Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b.as_bytes())
                .map_err(|e| format!("body: not base64: {e}"))?,
        )),
        (Some(b), false) => Some(Bytes::from(b)),
        (None, true) => return Err("body_base64 needs body".into()),
        (None, false) => None,
    };
    let headers = match &c.headers {
        Some(h) => HeaderEdits::parse(h)?,
        None => HeaderEdits::default(),
    };
    let vars = c
        .vars
        .as_ref()
        .map(Vars::compile)
        .transpose()
        .map_err(|e| format!("vars: {e}"))?;
    Ok(Arc::new(ResponseRewrite {
        status,
        body,
        headers,
        vars,
        filters,
        max_body: c.max_resp_body_size,
    }))
}

impl Plugin for ResponseRewrite {
    fn name(&self) -> &'static str {
        "response-rewrite"
    }

    fn priority(&self) -> i32 {
        899
    }

    fn response(&self, ctx: &Ctx, head: &mut ResponseHead) {
        let vars = ctx.response_vars(head);
        if self.vars.as_ref().is_some_and(|v| !v.matches(&vars)) {
            return;
        }
        self.headers.apply(head.headers(), &vars);
        if let Some(status) = self.status {
            head.status = status;
        }
        if let Some(body) = &self.body {
            head.body = Some(body.clone());
        }
        if let Some(filters) = &self.filters {
            let filters = filters.clone();
            head.rewrite = Some(BodyRewrite {
                limit: self.max_body,
                apply: Box::new(move |body| substitute(&filters, body)),
            });
        }
    }
}

/// `body` through each filter in turn.
fn substitute(filters: &[Substitution], body: Bytes) -> Bytes {
    let mut body = body.to_vec();
    for filter in filters {
        let replaced = match filter.every {
            true => filter.regex.replace_all(&body, filter.replace.as_slice()),
            false => filter.regex.replace(&body, filter.replace.as_slice()),
        };
        if let std::borrow::Cow::Owned(changed) = replaced {
            body = changed;
        }
    }
    Bytes::from(body)
}
