//! A product's plans: what a subscription allows, how it is approved, and who may choose it.
//!
//! A plan's limits become the gateway plugins of the subscribing application's consumer: a rate
//! (requests per second) is `limit-req`, a quota (requests per minute, hour, day or month) is
//! `limit-count`, both keyed by the consumer, so each application has its own.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{DomainError, invalid, text};

/// How a subscription to the plan is approved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Approval {
    /// At once, when requested.
    Auto,
    /// By one of the product's publishers.
    Manual,
}

/// The period of a quota. A month is 30 days: `limit-count` counts in fixed windows of
/// seconds, starting with the window's first request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Minute,
    Hour,
    Day,
    Month,
}

impl Period {
    pub fn seconds(self) -> u64 {
        match self {
            Period::Minute => 60,
            Period::Hour => 3_600,
            Period::Day => 86_400,
            Period::Month => 30 * 86_400,
        }
    }
}

/// Requests allowed per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    pub count: u64,
    pub period: Period,
}

/// A plan as its publisher writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub name: String,
    /// Requests per second, at most.
    pub rate_per_second: Option<u32>,
    pub quota: Option<Quota>,
    pub approval: Approval,
    /// The organisations whose applications may choose it; none: whoever sees the product.
    pub organisations: Option<Vec<String>>,
}

/// Where the gateway keeps the counts: in the gateway process, or in Redis, shared by every
/// gateway and kept across restarts (`limit-count`'s `redis_*` fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Counting {
    Local,
    Redis {
        host: String,
        port: u16,
        password: Option<String>,
        database: u32,
    },
}

impl Plan {
    /// The plan, checked: a name, limits above zero, a restriction naming organisations.
    pub fn checked(self) -> Result<Plan, DomainError> {
        if self.rate_per_second == Some(0) {
            return Err(invalid("rate_per_second", "must be at least 1"));
        }
        if self.quota.is_some_and(|q| q.count == 0) {
            return Err(invalid("quota.count", "must be at least 1"));
        }
        if self.organisations.as_ref().is_some_and(Vec::is_empty) {
            return Err(invalid(
                "organisations",
                "names at least one organisation, or is left out",
            ));
        }
        Ok(Plan {
            name: text("name", &self.name, 100)?,
            ..self
        })
    }

    /// Whether an application of `organisation` may subscribe.
    pub fn admits(&self, organisation: Option<&str>) -> Result<(), DomainError> {
        match (&self.organisations, organisation) {
            (None, _) => Ok(()),
            (Some(allowed), Some(org)) if allowed.iter().any(|a| a == org) => Ok(()),
            _ => Err(DomainError::PlanNotAllowed),
        }
    }

    /// The gateway plugins that enforce the plan on a subscriber's consumer, by name, in
    /// APISIX's configuration shapes.
    pub fn gateway_plugins(&self, counting: &Counting) -> serde_json::Map<String, Value> {
        let mut plugins = serde_json::Map::new();
        if let Some(rate) = self.rate_per_second {
            plugins.insert(
                "limit-req".into(),
                json!({
                    "rate": rate,
                    "burst": 0,
                    "key_type": "var",
                    "key": "consumer_name",
                    "rejected_code": 429,
                }),
            );
        }
        if let Some(quota) = self.quota {
            let mut count = json!({
                "count": quota.count,
                "time_window": quota.period.seconds(),
                "key_type": "var",
                "key": "consumer_name",
                "rejected_code": 429,
                "show_limit_quota_header": true,
                "policy": "local",
            });
            if let Counting::Redis {
                host,
                port,
                password,
                database,
            } = counting
            {
                count["policy"] = json!("redis");
                count["redis_host"] = json!(host);
                count["redis_port"] = json!(port);
                count["redis_database"] = json!(database);
                if let Some(password) = password {
                    count["redis_password"] = json!(password);
                }
            }
            plugins.insert("limit-count".into(), count);
        }
        plugins
    }
}

/// A plan of a product, as stored and listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductPlan {
    pub product_id: uuid::Uuid,
    #[serde(flatten)]
    pub plan: Plan,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            name: "Gold".into(),
            rate_per_second: Some(50),
            quota: Some(Quota {
                count: 100_000,
                period: Period::Day,
            }),
            approval: Approval::Manual,
            organisations: None,
        }
    }

    #[test]
    fn limits_are_checked() {
        assert!(plan().checked().is_ok());
        let zero = Plan {
            rate_per_second: Some(0),
            ..plan()
        };
        assert_eq!(
            zero.checked().unwrap_err().to_string(),
            "rate_per_second: must be at least 1"
        );
        let nobody = Plan {
            organisations: Some(vec![]),
            ..plan()
        };
        assert!(nobody.checked().is_err());
    }

    #[test]
    fn a_restricted_plan_admits_its_organisations_only() {
        let restricted = Plan {
            organisations: Some(vec!["org-dealer".into()]),
            ..plan()
        };
        assert!(restricted.admits(Some("org-dealer")).is_ok());
        let e = restricted.admits(Some("org-other")).unwrap_err();
        assert_eq!(e.code(), "MARKET_PLAN_NOT_ALLOWED");
        assert!(restricted.admits(None).is_err());
        assert!(plan().admits(None).is_ok());
    }

    #[test]
    fn limits_become_apisix_plugins_per_consumer() {
        let local = plan().gateway_plugins(&Counting::Local);
        assert_eq!(local["limit-req"]["rate"], 50);
        assert_eq!(local["limit-count"]["count"], 100_000);
        assert_eq!(local["limit-count"]["time_window"], 86_400);
        assert_eq!(local["limit-count"]["key"], "consumer_name");
        assert_eq!(local["limit-count"]["policy"], "local");
        let shared = plan().gateway_plugins(&Counting::Redis {
            host: "127.0.0.1".into(),
            port: 6379,
            password: None,
            database: 0,
        });
        assert_eq!(shared["limit-count"]["policy"], "redis");
        assert_eq!(shared["limit-count"]["redis_host"], "127.0.0.1");
        assert!(shared["limit-count"].get("redis_password").is_none());
        let unlimited = Plan {
            rate_per_second: None,
            quota: None,
            ..plan()
        };
        assert!(unlimited.gateway_plugins(&Counting::Local).is_empty());
    }
}
