//! Finance's rules, pure: receivables ([`receivable`]) and the deposit ledger ([`ledger`]).

pub mod ledger;
pub mod receivable;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DomainError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("a receivable that is {from} cannot be {action}")]
    IllegalTransition {
        from: &'static str,
        action: &'static str,
    },
    #[error("the available balance is {available}, less than {asked}")]
    InsufficientFunds { available: i64, asked: i64 },
    #[error("the hold is {0}")]
    HoldSettled(&'static str),
}

pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> DomainError {
    DomainError::Invalid {
        field,
        reason: reason.into(),
    }
}

pub(crate) fn text(field: &'static str, value: &str, max: usize) -> Result<String, DomainError> {
    let value = value.trim();
    if value.is_empty() || value.chars().count() > max {
        return Err(invalid(field, format!("must be 1 to {max} characters")));
    }
    Ok(value.to_string())
}
