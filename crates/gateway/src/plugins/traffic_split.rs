//! `traffic-split` (priority 966): sends a share of a route's traffic to other upstreams —
//! canary by percentage, blue-green by header, A/B by cookie or consumer.
//!
//! `rules` are tried in order; the first whose `match` holds (any of its `vars` expressions;
//! a rule without `match` always holds) splits the request among its `weighted_upstreams` by
//! weight, with the same smooth weighted round robin as upstream nodes. An entry names an
//! upstream by `upstream_id`, carries one inline (`upstream`), or has only a `weight`: the
//! route's own upstream. When no rule holds, the route's upstream serves.

use std::sync::{Arc, Mutex};

use http::StatusCode;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::Site;
use crate::resource;
use crate::runtime::phases::{Ctx, Flow, Plugin, Reply};
use crate::runtime::upstream::{Upstream, smooth_weighted};
use crate::vars::Vars;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    #[serde(default)]
    rules: Vec<RuleConfig>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RuleConfig {
    #[serde(default, rename = "match")]
    matches: Vec<MatchConfig>,
    weighted_upstreams: Vec<WeightedConfig>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct MatchConfig {
    vars: Value,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct WeightedConfig {
    upstream_id: Option<resource::Id>,
    upstream: Option<Value>,
    #[serde(default = "default_weight")]
    weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug)]
struct TrafficSplit {
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    /// Any of these holds; none means always.
    matches: Vec<Vars>,
    targets: Vec<(Target, i64)>,
    /// Smooth weighted round robin state, one score per target.
    scores: Mutex<Vec<i64>>,
}

#[derive(Debug)]
enum Target {
    /// The route's own upstream.
    Route,
    Id(String),
    Inline(Arc<Upstream>),
}

pub(super) fn build(config: &Value, _site: &Site) -> Result<Arc<dyn Plugin>, String> {
    let c: Config = resource::parse(config).map_err(|e| e.0)?;
    let mut rules = Vec::new();
    for (r, rule) in c.rules.into_iter().enumerate() {
        let matches = rule
            .matches
            .iter()
            .enumerate()
            .map(|(m, entry)| {
                Vars::compile(&entry.vars).map_err(|e| format!("rules[{r}].match[{m}].vars: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if rule.weighted_upstreams.is_empty() {
            return Err(format!(
                "rules[{r}].weighted_upstreams: at least one expected"
            ));
        }
        let mut targets = Vec::new();
        for (w, entry) in rule.weighted_upstreams.into_iter().enumerate() {
            let at = format!("rules[{r}].weighted_upstreams[{w}]");
            let target = match (entry.upstream_id, entry.upstream) {
                (Some(_), Some(_)) => {
                    return Err(format!("{at}: upstream_id and upstream exclude each other"));
                }
                (Some(id), None) => Target::Id(id.0),
                (None, Some(inline)) => {
                    let parsed: resource::Upstream =
                        resource::parse(&inline).map_err(|e| format!("{at}.upstream: {}", e.0))?;
                    let upstream = Upstream::from_config(&parsed)
                        .map_err(|e| format!("{at}.upstream: {}", e.0))?;
                    Target::Inline(Arc::new(upstream))
                }
                (None, None) => Target::Route,
            };
            targets.push((target, i64::from(entry.weight)));
        }
        rules.push(Rule {
            matches,
            scores: Mutex::new(vec![0; targets.len()]),
            targets,
        });
    }
    Ok(Arc::new(TrafficSplit { rules }))
}

impl Rule {
    fn holds(&self, ctx: &Ctx) -> bool {
        let vars = ctx.vars();
        self.matches.is_empty() || self.matches.iter().any(|m| m.matches(&vars))
    }

    /// The next target by weight; None when every weight is 0.
    fn pick(&self) -> Option<&Target> {
        let mut scores = self.scores.lock().unwrap_or_else(|e| e.into_inner());
        let weighted = self.targets.iter().map(|(_, w)| *w).enumerate();
        let best = smooth_weighted(&mut scores, weighted.filter(|(_, w)| *w > 0))?;
        Some(&self.targets[best].0)
    }
}

impl Plugin for TrafficSplit {
    fn name(&self) -> &'static str {
        "traffic-split"
    }

    fn priority(&self) -> i32 {
        966
    }

    fn reads_body(&self) -> bool {
        let matches = self.rules.iter().flat_map(|rule| &rule.matches);
        matches.clone().any(Vars::reads_body)
    }

    fn access<'a>(&'a self, ctx: &'a mut Ctx) -> Flow<'a> {
        let Some(rule) = self.rules.iter().find(|r| r.holds(ctx)) else {
            return Flow::Next;
        };
        match rule.pick() {
            None | Some(Target::Route) => {}
            Some(Target::Inline(upstream)) => ctx.upstream = Some(upstream.clone()),
            Some(Target::Id(id)) => match ctx.snapshot.upstreams.get(id) {
                Some(upstream) => ctx.upstream = Some(upstream.clone()),
                None => {
                    if let Some(suppressed) = crate::warnings::NO_SPLIT_UPSTREAM.admit() {
                        tracing::error!(
                            upstream_id = id,
                            route = &*ctx.route_id,
                            suppressed,
                            "traffic-split: no such upstream"
                        );
                    }
                    return Flow::Reply(Reply::message(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "traffic-split: the upstream chosen does not exist",
                    ));
                }
            },
        }
        Flow::Next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn configs_are_checked_naming_the_place() {
        let err = |v: Value| build(&v, &Site::checking()).unwrap_err();
        assert!(
            err(json!({"rules": [{"weighted_upstreams": []}]}))
                .contains("rules[0].weighted_upstreams")
        );
        assert!(
            err(json!({"rules": [{"match": [{"vars": [["arg_x", "~~~", 1]]}], "weighted_upstreams": [{"weight": 1}]}]}))
                .contains("rules[0].match[0].vars")
        );
        assert!(
            err(json!({"rules": [{"weighted_upstreams": [{"upstream": {"type": "roundrobin"}, "weight": 1}]}]}))
                .contains("rules[0].weighted_upstreams[0].upstream")
        );
        assert!(
            err(json!({"rules": [{"weighted_upstreams": [{"upstream_id": 1, "upstream": {}}]}]}))
                .contains("exclude")
        );
    }

    #[test]
    fn weights_interleave_smoothly() {
        let rule = Rule {
            matches: Vec::new(),
            targets: vec![
                (Target::Id("a".into()), 3),
                (Target::Route, 1),
                (Target::Id("z".into()), 0),
            ],
            scores: Mutex::new(vec![0; 3]),
        };
        let picks: String = (0..8)
            .map(|_| match rule.pick() {
                Some(Target::Id(id)) => id.clone(),
                Some(Target::Route) => "r".into(),
                _ => "?".into(),
            })
            .collect();
        assert_eq!(picks, "aaraaara");
    }
}
