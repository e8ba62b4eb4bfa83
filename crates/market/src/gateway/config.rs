//! What the market's state is as gateway configuration (APISIX's shapes), worked out without
//! I/O: a route per product and major version, a consumer per application.
//!
//! The market owns its part of the gateway by name: routes `market-<product id>-v<major>`,
//! consumers `market_<application id>` (see [`consumer_name`]). A product's major version is
//! served by its newest published or deprecated version of that major without a `weight` —
//! the primary — and by its versions with a weight (canaries), each taking that percentage of
//! the requests (`traffic-split`), the primary the rest:
//!
//! - `key-auth` (the key in `apikey`, as header or query, kept from the backend);
//! - `consumer-restriction`: only applications with an approved subscription pass (403);
//! - `workflow`: a rule per plan with a limit, `limit-count` for the applications on it (429
//!   with the quota headers); rules stay in the plans' order, so each keeps its counters;
//! - `proxy-rewrite`: `/market/<product>/v<major>/rest` → the backend's path + `/rest`;
//! - deprecated: `response-rewrite` adds `Deprecation` and `Sunset`;
//! - metered: `usage-counter` counts the requests in the gateway and posts the counts to the
//!   market each second;
//! - a major with only retired versions answers 410 to everyone (`fault-injection`).

use std::collections::BTreeMap;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::domain::application::consumer_name;
use crate::domain::plan::{Counting, ProductPlan};
use crate::domain::product::Product;
use crate::domain::subscription::Subscription;
use crate::domain::version::{self, ApiVersion, Status};
use crate::store::Record;

/// How the market's routes count and report.
#[derive(Debug, Clone)]
pub struct Settings {
    pub counting: Counting,
    /// Where the gateway reports each request (`usage-counter`); none: not metered.
    pub metering: Option<Metering>,
}

/// The market's usage endpoint, and the token the gateway sends it.
#[derive(Debug, Clone)]
pub struct Metering {
    pub url: String,
    pub token: String,
}

/// A name no application's consumer has, for a route nobody may call yet (APISIX's
/// `whitelist` takes at least one name).
pub const NOBODY: &str = "market_nobody";

/// Everything the gateway needs to know of one product.
#[derive(Debug, Clone)]
pub struct ProductState<'a> {
    pub product: &'a Record<Product>,
    pub versions: &'a [Record<ApiVersion>],
    pub plans: &'a [Record<ProductPlan>],
    /// The product's subscriptions (only approved ones count).
    pub subscriptions: &'a [Record<Subscription>],
}

/// A route's id.
pub fn route_id(product: Uuid, major: u64) -> String {
    format!("market-{}-v{major}", product.simple())
}

/// The product's routes by id.
pub fn routes(state: &ProductState<'_>, settings: &Settings) -> BTreeMap<String, Value> {
    let mut majors: BTreeMap<u64, Vec<(semver::Version, &Record<ApiVersion>)>> = BTreeMap::new();
    for v in state.versions {
        if v.item.status == Status::Draft {
            continue;
        }
        if let Ok(number) = version::number(&v.item.number) {
            majors.entry(number.major).or_default().push((number, v));
        }
    }
    let mut routes = BTreeMap::new();
    for (major, mut versions) in majors {
        versions.sort_by(|a, b| b.0.cmp(&a.0));
        let serving: Vec<&Record<ApiVersion>> = versions
            .iter()
            .map(|(_, v)| *v)
            .filter(|v| v.item.status.serves())
            .collect();
        let primary = serving
            .iter()
            .find(|v| v.item.weight.is_none())
            .or(serving.first());
        let id = route_id(state.product.id, major);
        let route = match primary {
            Some(primary) => {
                let canaries: Vec<_> = serving
                    .iter()
                    .filter(|v| v.id != primary.id && v.item.weight.is_some_and(|w| w > 0))
                    .copied()
                    .collect();
                served(state, primary, &canaries, major, settings)
            }
            None => retired(state, major),
        };
        routes.insert(id, route);
    }
    routes
}

/// The route of a major version served by `v`, and by `canaries` for their weights.
fn served(
    state: &ProductState<'_>,
    v: &Record<ApiVersion>,
    canaries: &[&Record<ApiVersion>],
    major: u64,
    settings: &Settings,
) -> Value {
    let product = &state.product.item;
    let base = version::base_path(&product.slug, major);
    let path = v
        .item
        .backend
        .parts()
        .map(|(_, _, path)| path)
        .unwrap_or_default();
    // Which applications may call, and on which plan.
    let mut allowed = Vec::new();
    let mut on_plan: BTreeMap<Uuid, Vec<String>> = BTreeMap::new();
    for s in state.subscriptions {
        if s.item.status.admits_calls() {
            let consumer = consumer_name(s.item.application_id);
            on_plan
                .entry(s.item.plan_id)
                .or_default()
                .push(consumer.clone());
            allowed.push(consumer);
        }
    }
    allowed.sort();
    if allowed.is_empty() {
        allowed.push(NOBODY.to_string());
    }
    let rules: Vec<Value> = state
        .plans
        .iter()
        .filter_map(|plan| {
            let limit = plan.item.plan.limit_count(&settings.counting)?;
            let consumers = on_plan.get(&plan.id).cloned().unwrap_or_default();
            Some(json!({
                "case": [["consumer_name", "in", consumers]],
                "actions": [["limit-count", limit]],
            }))
        })
        .collect();
    let mut plugins = json!({
        "key-auth": {"hide_credentials": true},
        "consumer-restriction": {
            "whitelist": allowed,
            "rejected_code": 403,
            "rejected_msg": format!("this application has no approved subscription to {}", product.slug),
        },
        "proxy-rewrite": {"regex_uri": [format!("^{base}/?(.*)$"), format!("{path}/$1")]},
    });
    if !rules.is_empty() {
        plugins["workflow"] = json!({ "rules": rules });
    }
    if let Some(metering) = &settings.metering {
        // Counts kept in the gateway and posted each second (kept over a market restart).
        plugins["usage-counter"] = json!({
            "uri": metering.url,
            "auth_header": format!("Bearer {}", metering.token),
            "interval": 1,
            "latency_buckets_ms": crate::domain::usage::BOUNDS_MS,
        });
    }
    if !canaries.is_empty() {
        let mut split: Vec<Value> = canaries
            .iter()
            .map(|c| json!({"upstream": upstream(c), "weight": c.item.weight.unwrap_or(0)}))
            .collect();
        let taken: u32 = canaries
            .iter()
            .map(|c| u32::from(c.item.weight.unwrap_or(0)))
            .sum();
        split.push(json!({"weight": 100u32.saturating_sub(taken)}));
        plugins["traffic-split"] = json!({"rules": [{"weighted_upstreams": split}]});
    }
    if let Some(headers) = v.item.status.deprecation_headers() {
        let set: serde_json::Map<String, Value> = headers
            .into_iter()
            .map(|(name, value)| (name.to_string(), Value::String(value)))
            .collect();
        plugins["response-rewrite"] = json!({"headers": {"set": set}});
    }
    json!({
        "name": format!("{} v{major} ({})", product.title, v.item.number),
        "desc": format!("API market: {} {}", product.slug, v.item.number),
        "labels": {"market": product.slug, "version": v.item.number},
        "uris": [base.clone(), format!("{base}/*")],
        "plugins": plugins,
        "upstream": upstream(v),
    })
}

/// The upstream of a version's backend.
fn upstream(v: &Record<ApiVersion>) -> Value {
    let (scheme, node, _) = v
        .item
        .backend
        .parts()
        .unwrap_or_else(|| ("http".into(), "127.0.0.1:1".into(), String::new()));
    json!({"type": "roundrobin", "scheme": scheme, "pass_host": "node", "nodes": {node: 1}})
}

/// The route of a major version whose versions are all retired: 410 for everyone.
fn retired(state: &ProductState<'_>, major: u64) -> Value {
    let product = &state.product.item;
    let base = version::base_path(&product.slug, major);
    let body = json!({
        "code": "MARKET_VERSION_RETIRED",
        "message": format!("{} v{major} is retired", product.slug),
    });
    json!({
        "name": format!("{} v{major} (retired)", product.title),
        "labels": {"market": product.slug},
        "uris": [base.clone(), format!("{base}/*")],
        "plugins": {"fault-injection": {"abort": {
            "http_status": 410,
            "body": body.to_string(),
            "headers": {"content-type": "application/json"},
        }}},
        "upstream": {"type": "roundrobin", "nodes": {"127.0.0.1:1": 1}},
    })
}

/// The backend of an existing gateway route, for importing it as a version: its upstream's
/// first node (the route's own, or `upstream` — the one it names by `upstream_id` or through
/// its service), with the upstream's scheme.
pub fn imported_backend(route: &Value, upstream: Option<&Value>) -> Option<String> {
    let upstream = route.get("upstream").or(upstream)?;
    let scheme = upstream["scheme"].as_str().unwrap_or("http");
    let node = match &upstream["nodes"] {
        Value::Object(nodes) => nodes.keys().next()?.clone(),
        Value::Array(nodes) => {
            let first = nodes.first()?;
            format!("{}:{}", first["host"].as_str()?, first["port"].as_u64()?)
        }
        _ => return None,
    };
    Some(format!("{scheme}://{node}"))
}

/// A minimal OpenAPI document for an existing route: a GET per `uri`/`uris` entry (`/*` as a
/// `{path}` parameter), for a publisher to complete.
pub fn imported_document(route_id: &str, route: &Value) -> Value {
    let uris: Vec<&str> = match (route["uri"].as_str(), route["uris"].as_array()) {
        (Some(uri), _) => vec![uri],
        (None, Some(uris)) => uris.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let mut paths = serde_json::Map::new();
    for uri in uris {
        let (path, rest) = match uri.strip_suffix('*') {
            Some(prefix) => (format!("{prefix}{{path}}"), true),
            None => (uri.to_string(), false),
        };
        let mut get = json!({"summary": format!("Imported from the gateway route {route_id}"),
                             "responses": {"200": {"description": "The route's answer"}}});
        if rest {
            get["parameters"] = json!([{"name": "path", "in": "path", "required": true,
                                        "schema": {"type": "string"}}]);
        }
        paths.insert(path, json!({ "get": get }));
    }
    let title = route["name"].as_str().unwrap_or(route_id);
    json!({"openapi": "3.0.3", "info": {"title": title, "version": "1.0.0"}, "paths": paths})
}

/// An application's consumer.
pub fn consumer(application: &Record<crate::domain::application::Application>) -> Value {
    json!({
        "username": consumer_name(application.id),
        "desc": format!("API market application {:?}", application.item.name),
        "labels": {"market": "application"},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::plan::{Approval, Limit, Period, Plan};
    use crate::domain::product::Visibility;
    use crate::domain::subscription::Status as Sub;
    use crate::domain::version::Backend;
    use chrono::{DateTime, Utc};

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn record<T>(item: T) -> Record<T> {
        Record::new(item, Uuid::now_v7(), at("2026-12-01T00:00:00Z"))
    }

    fn version(product: Uuid, number: &str, status: Status, url: &str) -> Record<ApiVersion> {
        record(ApiVersion {
            product_id: product,
            number: number.into(),
            status,
            openapi: "3.0.3".into(),
            title: "Fleet".into(),
            operations: 1,
            backend: Backend { url: url.into() },
            weight: None,
        })
    }

    #[test]
    fn an_existing_route_imports_as_a_backend_and_a_document() {
        let route = json!({"name": "Vehicles", "uris": ["/vehicles/*", "/health"],
                           "upstream": {"scheme": "https", "nodes": {"10.0.0.9:8443": 1}}});
        assert_eq!(
            imported_backend(&route, None).as_deref(),
            Some("https://10.0.0.9:8443")
        );
        let named = json!({"uri": "/a", "upstream_id": "1"});
        let upstream = json!({"nodes": [{"host": "10.0.0.1", "port": 80, "weight": 1}]});
        assert_eq!(
            imported_backend(&named, Some(&upstream)).as_deref(),
            Some("http://10.0.0.1:80")
        );
        assert_eq!(imported_backend(&named, None), None);
        let document = imported_document("r1", &route);
        assert_eq!(document["info"]["title"], "Vehicles");
        assert!(document["paths"]["/vehicles/{path}"]["get"]["parameters"].is_array());
        assert!(document["paths"]["/health"]["get"].is_object());
        let checked = crate::domain::document::check(&document.to_string()).unwrap();
        assert_eq!(
            checked.operations.len(),
            2,
            "the generated document passes the checks"
        );
    }

    #[test]
    fn each_major_is_served_by_its_newest_serving_version_to_subscribers_on_their_plans() {
        let product = record(Product {
            slug: "fleet".into(),
            title: "Fleet".into(),
            description: String::new(),
            owner_team: "platform".into(),
            tags: vec![],
            visibility: Visibility::Public,
        });
        let published = Status::Published {
            at: at("2026-12-01T00:00:00Z"),
        };
        let deprecated = Status::Deprecated {
            at: at("2026-12-01T00:00:00Z"),
            sunset: at("2027-03-01T00:00:00Z"),
        };
        let retired_status = Status::Retired {
            at: at("2026-12-01T00:00:00Z"),
        };
        let versions = [
            version(product.id, "1.0.0", published, "http://10.0.0.1:8080/v1"),
            version(product.id, "1.1.0", deprecated, "http://10.0.0.2:8080/api/"),
            version(product.id, "1.2.0", Status::Draft, "http://10.0.0.3:8080"),
            version(product.id, "2.0.0", retired_status, "http://10.0.0.4:8080"),
        ];
        let plan = |name: &str, limit| {
            record(ProductPlan {
                product_id: product.id,
                plan: Plan {
                    name: name.into(),
                    limit,
                    approval: Approval::Auto,
                    organisations: None,
                },
            })
        };
        let plans = [
            plan(
                "Gold",
                Some(Limit {
                    count: 1000,
                    period: Period::Day,
                }),
            ),
            plan("Unlimited", None),
            plan(
                "Free",
                Some(Limit {
                    count: 2,
                    period: Period::Minute,
                }),
            ),
        ];
        let sub = |plan: &Record<ProductPlan>, status| {
            record(Subscription {
                application_id: Uuid::now_v7(),
                product_id: product.id,
                plan_id: plan.id,
                status,
                reason: None,
                requested_by: "li.wei".into(),
                decided_by: None,
            })
        };
        let subscriptions = [
            sub(&plans[0], Sub::Approved),
            sub(&plans[2], Sub::Approved),
            sub(&plans[2], Sub::Suspended),
            sub(&plans[1], Sub::Requested),
        ];
        let state = ProductState {
            product: &product,
            versions: &versions,
            plans: &plans,
            subscriptions: &subscriptions,
        };
        let settings = Settings {
            counting: Counting::Local,
            metering: Some(Metering {
                url: "http://127.0.0.1:9205/usage/counts".into(),
                token: "t".into(),
            }),
        };
        let routes = routes(&state, &settings);
        assert_eq!(routes.len(), 2);
        let v1 = &routes[&route_id(product.id, 1)];
        assert_eq!(
            v1["uris"],
            json!(["/market/fleet/v1", "/market/fleet/v1/*"])
        );
        assert_eq!(v1["upstream"]["nodes"], json!({"10.0.0.2:8080": 1}));
        assert_eq!(
            v1["plugins"]["proxy-rewrite"]["regex_uri"],
            json!(["^/market/fleet/v1/?(.*)$", "/api/$1"])
        );
        assert_eq!(
            v1["plugins"]["response-rewrite"]["headers"]["set"]["Sunset"],
            "Mon, 01 Mar 2027 00:00:00 GMT"
        );
        let gold = consumer_name(subscriptions[0].item.application_id);
        let free = consumer_name(subscriptions[1].item.application_id);
        let mut both = vec![gold.clone(), free.clone()];
        both.sort();
        assert_eq!(
            v1["plugins"]["consumer-restriction"]["whitelist"],
            json!(both)
        );
        let rules = v1["plugins"]["workflow"]["rules"].as_array().unwrap();
        assert_eq!(rules.len(), 2, "the unlimited plan has no rule");
        assert_eq!(rules[0]["case"], json!([["consumer_name", "in", [gold]]]));
        assert_eq!(rules[0]["actions"][0][1]["count"], 1000);
        assert_eq!(rules[1]["case"], json!([["consumer_name", "in", [free]]]));
        let v2 = &routes[&route_id(product.id, 2)];
        assert_eq!(
            v2["plugins"]["fault-injection"]["abort"]["http_status"],
            410
        );
        assert!(
            v2["plugins"].get("usage-counter").is_none(),
            "a retired major is not metered"
        );
        assert_eq!(v1["plugins"]["usage-counter"]["auth_header"], "Bearer t");
        assert!(v1["plugins"].get("traffic-split").is_none());

        // A canary takes its weight of its major's requests; the primary the rest.
        let mut canary = version(product.id, "1.2.0", published, "http://10.0.0.3:8080/api");
        canary.item.weight = Some(10);
        let with_canary = [versions.to_vec(), vec![canary]].concat();
        let split = ProductState {
            versions: &with_canary,
            ..state.clone()
        };
        let routes = super::routes(&split, &settings);
        let v1 = &routes[&route_id(product.id, 1)];
        assert_eq!(
            v1["upstream"]["nodes"],
            json!({"10.0.0.2:8080": 1}),
            "1.1.0 stays primary"
        );
        assert_eq!(
            v1["plugins"]["traffic-split"]["rules"][0]["weighted_upstreams"],
            json!([
                {"upstream": {"type": "roundrobin", "scheme": "http", "pass_host": "node",
                              "nodes": {"10.0.0.3:8080": 1}}, "weight": 10},
                {"weight": 90}
            ])
        );

        // Nobody subscribed: the route lets nobody through.
        let none = ProductState {
            subscriptions: &[],
            ..state
        };
        let routes = super::routes(&none, &settings);
        let v1 = &routes[&route_id(product.id, 1)];
        assert_eq!(
            v1["plugins"]["consumer-restriction"]["whitelist"],
            json!([NOBODY])
        );
        assert_eq!(
            v1["plugins"]["workflow"]["rules"][0]["case"],
            json!([["consumer_name", "in", []]])
        );
    }
}
