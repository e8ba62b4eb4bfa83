//! `consumer-restriction` (priority 2400): allows or refuses a request by who or where it is —
//! the consumer's name (default) or group, or the route or service it matched — with a
//! `whitelist`, a `blacklist`, and per-consumer `allowed_by_methods`.

use std::sync::Arc;

use http::{Method, StatusCode};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::Site;
use crate::runtime::phases::{Ctx, Flow, Plugin, Reply};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum On {
    ConsumerName,
    ConsumerGroupId,
    ServiceId,
    RouteId,
}

impl On {
    fn name(self) -> &'static str {
        match self {
            On::ConsumerName => "consumer_name",
            On::ConsumerGroupId => "consumer_group_id",
            On::ServiceId => "service_id",
            On::RouteId => "route_id",
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    #[serde(default = "default_on", rename = "type")]
    on: On,
    whitelist: Option<Vec<String>>,
    blacklist: Option<Vec<String>>,
    #[serde(default = "default_code")]
    rejected_code: u16,
    rejected_msg: Option<String>,
    allowed_by_methods: Option<Vec<MethodsFor>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct MethodsFor {
    user: String,
    methods: Vec<String>,
}

fn default_on() -> On {
    On::ConsumerName
}

fn default_code() -> u16 {
    403
}

#[derive(Debug)]
struct ConsumerRestriction {
    on: On,
    whitelist: Option<Vec<String>>,
    blacklist: Vec<String>,
    allowed_by_methods: Vec<(String, Vec<Method>)>,
    rejected_code: StatusCode,
    rejected_msg: String,
}

pub(super) fn build(config: &Value, _site: &Site) -> Result<Arc<dyn Plugin>, String> {
    let c: Config = crate::resource::parse(config).map_err(|e| e.0)?;
    if c.whitelist.is_none() && c.blacklist.is_none() && c.allowed_by_methods.is_none() {
        return Err("one of whitelist, blacklist and allowed_by_methods is required".into());
    }
    let rejected_code = StatusCode::from_u16(c.rejected_code)
        .ok()
        .filter(|s| s.as_u16() >= 200)
        .ok_or_else(|| format!("rejected_code: {} is not an HTTP status", c.rejected_code))?;
    let allowed_by_methods = c
        .allowed_by_methods
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            let methods = m
                .methods
                .iter()
                .map(|name| Method::from_bytes(name.as_bytes()))
                .collect::<Result<_, _>>()
                .map_err(|_| format!("allowed_by_methods: bad method for {}", m.user))?;
            Ok((m.user, methods))
        })
        .collect::<Result<_, String>>()?;
    Ok(Arc::new(ConsumerRestriction {
        on: c.on,
        whitelist: c.whitelist,
        blacklist: c.blacklist.unwrap_or_default(),
        allowed_by_methods,
        rejected_code,
        rejected_msg: c
            .rejected_msg
            .unwrap_or_else(|| format!("The {} is forbidden.", c.on.name())),
    }))
}

impl Plugin for ConsumerRestriction {
    fn name(&self) -> &'static str {
        "consumer-restriction"
    }

    fn priority(&self) -> i32 {
        2400
    }

    fn access<'a>(&'a self, ctx: &'a mut Ctx) -> Flow<'a> {
        let consumer = ctx.consumer.as_ref().map(|(c, _)| c);
        if matches!(self.on, On::ConsumerName | On::ConsumerGroupId) && consumer.is_none() {
            return Flow::Reply(Reply::message(
                StatusCode::UNAUTHORIZED,
                "Missing authentication or identity verification.",
            ));
        }
        let value = match self.on {
            On::ConsumerName => consumer.map(|c| c.username.as_str()),
            On::ConsumerGroupId => consumer.and_then(|c| c.group_id.as_deref()),
            On::ServiceId => ctx.service_id.as_deref(),
            On::RouteId => Some(&*ctx.route_id),
        };
        let Some(value) = value else {
            return Flow::Reply(Reply::message(
                StatusCode::UNAUTHORIZED,
                &format!(
                    "The request is rejected, please check the {} for this request",
                    self.on.name()
                ),
            ));
        };
        let listed = |list: &[String]| list.iter().any(|v| v == value);
        let allowed = !listed(&self.blacklist)
            && self.whitelist.as_deref().is_none_or(listed)
            && self.method_allowed(value, &ctx.method);
        if allowed {
            Flow::Next
        } else {
            Flow::Reply(Reply::message(self.rejected_code, &self.rejected_msg))
        }
    }
}

impl ConsumerRestriction {
    /// `allowed_by_methods`: a listed user may use only its methods; others are not limited.
    fn method_allowed(&self, user: &str, method: &Method) -> bool {
        self.allowed_by_methods
            .iter()
            .find(|(u, _)| u == user)
            .is_none_or(|(_, methods)| methods.contains(method))
    }
}
