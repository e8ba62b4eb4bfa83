//! `workflow` (priority 1006): rules in order, each a `case` (a `vars` expression; none = every
//! request) and its action; the first rule whose case holds runs its action and the rest are
//! not looked at. An action is `["return", {"code": …}]` (answers with that status and
//! `{"error_msg": "rejected by workflow"}`), or `["limit-count", {…}]` / `["limit-conn", {…}]`
//! with those plugins' fields (limit-count's `group` excepted), each counting on its own: a
//! rule's limit is not its neighbour's, nor the route's. As in APISIX, a rule has one action;
//! further ones are checked and not run.

use std::sync::Arc;

use http::StatusCode;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::Site;
use crate::runtime::phases::{Ctx, Flow, Plugin, Reply};
use crate::vars::Vars;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    rules: Vec<RuleConfig>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RuleConfig {
    /// A `vars` expression (lua-resty-expr): rules, `"AND"`/`"OR"`, `"!"`.
    case: Option<Vec<Value>>,
    /// `[name, configuration]` pairs; the first runs.
    actions: Vec<Vec<Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReturnConfig {
    code: u16,
}

#[derive(Debug)]
struct Workflow {
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    case: Option<Vars>,
    action: Action,
}

#[derive(Debug)]
enum Action {
    Return(StatusCode),
    /// A limit plugin of its own, counting in the rule's scope.
    Limit(Arc<dyn Plugin>),
}

pub(crate) fn build(config: &Value, site: &Site) -> Result<Arc<dyn Plugin>, String> {
    let c: Config = crate::resource::parse(config).map_err(|e| e.0)?;
    if c.rules.is_empty() {
        return Err("rules: at least one rule expected".into());
    }
    let mut rules = Vec::with_capacity(c.rules.len());
    for (i, rule) in c.rules.into_iter().enumerate() {
        let at = format!("rules[{i}]");
        let case = match rule.case {
            Some(case) if case.is_empty() => return Err(format!("{at}.case: empty")),
            Some(case) => Some(
                Vars::compile(&Value::Array(case))
                    .map_err(|e| format!("{at}.case: failed to validate the expression: {e}"))?,
            ),
            None => None,
        };
        if rule.actions.is_empty() {
            return Err(format!("{at}.actions: one action expected"));
        }
        // Each action's counters are the rule's own (APISIX isolates them by the rule's place).
        let owner = format!("{}#workflow.{i}", site.owner);
        let site = Site {
            owner: &owner,
            ..*site
        };
        let mut actions = rule
            .actions
            .iter()
            .enumerate()
            .map(|(j, action)| {
                self::action(action, &site).map_err(|e| format!("{at}.actions[{j}]: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        rules.push(Rule {
            case,
            action: actions.swap_remove(0),
        });
    }
    Ok(Arc::new(Workflow { rules }))
}

fn action(action: &[Value], site: &Site) -> Result<Action, String> {
    let (Some(Value::String(name)), Some(config), 2) =
        (action.first(), action.get(1), action.len())
    else {
        return Err("expected [\"<action>\", {configuration}]".into());
    };
    let failed = |e: String| format!("failed to validate the '{name}' action: {e}");
    match name.as_str() {
        "return" => {
            let c: ReturnConfig = crate::resource::parse(config).map_err(|e| failed(e.0))?;
            let code = StatusCode::from_u16(c.code)
                .ok()
                .filter(|_| (100..=599).contains(&c.code))
                .ok_or_else(|| failed(format!("code: {} is not within 100-599", c.code)))?;
            Ok(Action::Return(code))
        }
        "limit-count" => {
            if config.get("group").is_some() {
                return Err(failed("group: not allowed in a workflow".into()));
            }
            super::limit::count::build(config, site)
                .map(Action::Limit)
                .map_err(failed)
        }
        "limit-conn" => super::limit::conn::build(config, site)
            .map(Action::Limit)
            .map_err(failed),
        other => Err(format!("unsupported action: {other}")),
    }
}

impl Plugin for Workflow {
    fn name(&self) -> &'static str {
        "workflow"
    }

    fn priority(&self) -> i32 {
        1006
    }

    fn access<'a>(&'a self, ctx: &'a mut Ctx) -> Flow<'a> {
        let rule = {
            let vars = ctx.vars();
            self.rules
                .iter()
                .find(|rule| rule.case.as_ref().is_none_or(|case| case.matches(&vars)))
        };
        match rule.map(|rule| &rule.action) {
            None => Flow::Next,
            Some(Action::Return(code)) => Flow::Reply(Reply::json(
                *code,
                &serde_json::json!({"error_msg": "rejected by workflow"}),
            )),
            Some(Action::Limit(limit)) => limit.access(ctx),
        }
    }

    fn reads_body(&self) -> bool {
        self.rules
            .iter()
            .any(|rule| rule.case.as_ref().is_some_and(Vars::reads_body))
    }
}
