//! `response-rewrite` (priority 899): changes the status, headers and body returned to the
//! client, when the request matches `vars` (always, without them).

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::StatusCode;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::{Ctx, HeaderEdits, Plugin, ResponseHead, Site};
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
    filters: Option<Value>,
}

#[derive(Debug)]
struct ResponseRewrite {
    status: Option<StatusCode>,
    body: Option<Bytes>,
    headers: HeaderEdits,
    vars: Option<Vars>,
}

pub(super) fn build(config: &Value, _site: &Site) -> Result<Arc<dyn Plugin>, String> {
    let c: Config = crate::resource::parse(config).map_err(|e| e.0)?;
    if c.filters.is_some() {
        return Err("filters: body filters are not supported yet (body is)".into());
    }
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
        let vars = ctx.vars();
        if self.vars.as_ref().is_some_and(|v| !v.matches(&vars)) {
            return;
        }
        if let Some(status) = self.status {
            head.status = status;
        }
        self.headers.apply(head.headers(), &vars);
        if let Some(body) = &self.body {
            head.body = Some(body.clone());
        }
    }
}
