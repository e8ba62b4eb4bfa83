//! The market's domain: pure types and rules, no I/O.
//!
//! - [`product`]: an API product, who owns it and who may see it;
//! - [`version`]: a product's versions (semver), their lifecycle draft → published →
//!   deprecated → retired, and the paths and headers the gateway serves them with;
//! - [`document`]: the OpenAPI document a version is published with, checked on upload;
//! - [`plan`]: what a subscription allows (requests per period) and how it is approved;
//! - [`application`]: applications (gateway consumers) and their API keys;
//! - [`subscription`]: an application's subscription to a plan and its lifecycle;
//! - [`usage`]: what the gateway reports of each request, counted and summed up.
//!
//! Every refusal is a [`DomainError`] with a stable code, which the API answers with.

pub mod application;
pub mod document;
pub mod plan;
pub mod product;
pub mod subscription;
pub mod usage;
pub mod version;

/// Why the market refuses a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("cannot {action} a {noun} that is {from}")]
    IllegalTransition {
        noun: &'static str,
        from: &'static str,
        action: &'static str,
    },
    #[error("version {0} is retired: it takes no new subscriptions")]
    Retired(String),
    #[error("the plan is not open to this organisation")]
    PlanNotAllowed,
}

impl DomainError {
    /// The error's stable code, as the API answers with it.
    pub fn code(&self) -> &'static str {
        match self {
            DomainError::Invalid { .. } => "MARKET_INVALID",
            DomainError::IllegalTransition { .. } => "MARKET_ILLEGAL_TRANSITION",
            DomainError::Retired(_) => "MARKET_VERSION_RETIRED",
            DomainError::PlanNotAllowed => "MARKET_PLAN_NOT_ALLOWED",
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> DomainError {
    DomainError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Free text of 1 to `max` characters, trimmed.
fn text(field: &'static str, value: &str, max: usize) -> Result<String, DomainError> {
    let value = value.trim();
    if value.is_empty() || value.chars().count() > max {
        return Err(invalid(field, format!("must be 1 to {max} characters")));
    }
    Ok(value.to_string())
}

/// A name that goes into paths and keys: 2 to 64 of `a-z`, `0-9` and inner `-`.
fn slug(field: &'static str, value: &str) -> Result<String, DomainError> {
    let ok = (2..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if !ok {
        return Err(invalid(
            field,
            "must be 2 to 64 of a-z, 0-9 and '-', not starting or ending with '-'",
        ));
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_path_safe() {
        assert_eq!(slug("slug", "vehicle-data").unwrap(), "vehicle-data");
        for bad in ["a", "Vehicle", "-x", "x-", "a b", "a/b", "数据"] {
            let e = slug("slug", bad).unwrap_err();
            assert_eq!(e.code(), "MARKET_INVALID", "{bad}");
        }
    }

    #[test]
    fn text_is_trimmed_and_bounded() {
        assert_eq!(
            text("title", "  Vehicle data ", 20).unwrap(),
            "Vehicle data"
        );
        assert!(text("title", "   ", 10).is_err());
        assert!(text("title", &"x".repeat(11), 10).is_err());
    }
}
