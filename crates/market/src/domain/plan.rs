//! A product's plans: what a subscription allows, how it is approved, and who may choose it.
//!
//! A plan's limit — at most `count` requests per second, minute, hour, day or month — becomes a
//! `limit-count` keyed by the subscribing application's consumer, so each application has its
//! own count; the product's routes pick each application's plan with `workflow` (one rule per
//! plan, see [`crate::gateway`]).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{DomainError, invalid, text};

/// How a subscription to the plan is approved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Approval {
    /// At once, when requested.
    Auto,
    /// By one of the product's publishers.
    Manual,
}

/// The period of a limit: per second is a rate, the longer ones are quotas. A month is 30
/// days: `limit-count` counts in fixed windows of seconds, starting with the window's first
/// request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Second,
    Minute,
    Hour,
    Day,
    Month,
}

impl Period {
    pub fn seconds(self) -> u64 {
        match self {
            Period::Second => 1,
            Period::Minute => 60,
            Period::Hour => 3_600,
            Period::Day => 86_400,
            Period::Month => 30 * 86_400,
        }
    }
}

/// At most `count` requests per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Limit {
    pub count: u64,
    pub period: Period,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Plan {
    pub name: String,
    /// None: as many requests as the API takes.
    pub limit: Option<Limit>,
    pub approval: Approval,
    /// When set, only these organisations' applications may choose the plan.
    pub organisations: Option<Vec<String>>,
}

/// Where the gateway counts: in each gateway process, or in Redis, shared by every gateway
/// and kept across their restarts.
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
    /// Checks the plan's fields; the name is trimmed.
    pub fn checked(self) -> Result<Plan, DomainError> {
        if self.limit.is_some_and(|l| l.count == 0) {
            return Err(invalid("limit.count", "must be at least 1"));
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

    /// Whether an application of `organisation` may subscribe to the plan.
    pub fn admits(&self, organisation: Option<&str>) -> Result<(), DomainError> {
        match (&self.organisations, organisation) {
            (None, _) => Ok(()),
            (Some(allowed), Some(org)) if allowed.iter().any(|a| a == org) => Ok(()),
            _ => Err(DomainError::PlanNotAllowed),
        }
    }

    /// The plan's limit as APISIX's `limit-count` configuration, counting per consumer, with
    /// the quota headers; none for a plan without a limit.
    pub fn limit_count(&self, counting: &Counting) -> Option<Value> {
        let limit = self.limit?;
        let mut count = json!({
            "count": limit.count,
            "time_window": limit.period.seconds(),
            "key_type": "var",
            "key": "consumer_name",
            "rejected_code": 429,
            "rejected_msg": format!("the plan {:?} allows {} requests per {}", self.name, limit.count,
                                    serde_json::to_value(limit.period).ok()?.as_str()?),
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
        Some(count)
    }
}

/// A plan of a product, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
            limit: Some(Limit {
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
            limit: Some(Limit {
                count: 0,
                period: Period::Second,
            }),
            ..plan()
        };
        assert_eq!(
            zero.checked().unwrap_err().to_string(),
            "limit.count: must be at least 1"
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
    fn a_limit_becomes_limit_count_per_consumer() {
        let local = plan().limit_count(&Counting::Local).unwrap();
        assert_eq!(local["count"], 100_000);
        assert_eq!(local["time_window"], 86_400);
        assert_eq!(local["key"], "consumer_name");
        assert_eq!(local["policy"], "local");
        assert_eq!(
            local["rejected_msg"],
            "the plan \"Gold\" allows 100000 requests per day"
        );
        let shared = plan()
            .limit_count(&Counting::Redis {
                host: "127.0.0.1".into(),
                port: 6379,
                password: None,
                database: 0,
            })
            .unwrap();
        assert_eq!(shared["policy"], "redis");
        assert_eq!(shared["redis_host"], "127.0.0.1");
        assert!(shared.get("redis_password").is_none());
        let unlimited = Plan {
            limit: None,
            ..plan()
        };
        assert!(unlimited.limit_count(&Counting::Local).is_none());
    }
}
