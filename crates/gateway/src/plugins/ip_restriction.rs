//! `ip-restriction` (priority 3000): allows (`whitelist`) or refuses (`blacklist`) clients by
//! address or CIDR block.

use std::sync::Arc;

use http::StatusCode;
use ipnet::IpNet;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::Site;
use crate::runtime::phases::{Ctx, Flow, Plugin, Reply};
use crate::vars::parse_cidr;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    whitelist: Option<Vec<String>>,
    blacklist: Option<Vec<String>>,
    message: Option<String>,
    #[serde(default = "default_code")]
    response_code: u16,
}

fn default_code() -> u16 {
    403
}

#[derive(Debug)]
enum Rule {
    Only(Vec<IpNet>),
    Not(Vec<IpNet>),
}

#[derive(Debug)]
struct IpRestriction {
    rule: Rule,
    code: StatusCode,
    message: String,
}

pub(super) fn build(config: &Value, _site: &Site) -> Result<Arc<dyn Plugin>, String> {
    let c: Config = crate::resource::parse(config).map_err(|e| e.0)?;
    let blocks = |field: &str, list: Vec<String>| -> Result<Vec<IpNet>, String> {
        if list.is_empty() {
            return Err(format!("{field}: must not be empty"));
        }
        list.iter()
            .map(|a| parse_cidr(a).map_err(|e| format!("{field}: {e}")))
            .collect()
    };
    let rule = match (c.whitelist, c.blacklist) {
        (Some(w), None) => Rule::Only(blocks("whitelist", w)?),
        (None, Some(b)) => Rule::Not(blocks("blacklist", b)?),
        _ => return Err("exactly one of whitelist and blacklist is required".into()),
    };
    let message = c
        .message
        .unwrap_or_else(|| "Your IP address is not allowed".into());
    if message.is_empty() || message.len() > 1024 {
        return Err("message: 1 to 1024 characters expected".into());
    }
    let code = match c.response_code {
        403..=404 => StatusCode::from_u16(c.response_code).map_err(|e| e.to_string())?,
        other => return Err(format!("response_code: {other} is not 403 or 404")),
    };
    Ok(Arc::new(IpRestriction {
        rule,
        code,
        message,
    }))
}

impl Plugin for IpRestriction {
    fn name(&self) -> &'static str {
        "ip-restriction"
    }

    fn priority(&self) -> i32 {
        3000
    }

    fn access<'a>(&'a self, ctx: &'a mut Ctx) -> Flow<'a> {
        let ip = ctx.remote_addr.to_canonical();
        let allowed = match &self.rule {
            Rule::Only(blocks) => blocks.iter().any(|b| b.contains(&ip)),
            Rule::Not(blocks) => !blocks.iter().any(|b| b.contains(&ip)),
        };
        if allowed {
            Flow::Next
        } else {
            Flow::Reply(Reply::message(self.code, &self.message))
        }
    }
}
