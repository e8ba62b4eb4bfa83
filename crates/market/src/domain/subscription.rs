//! An application's subscription to a plan: requested, then approved or rejected; an approved
//! one may be suspended (and resumed) or revoked. Only an approved subscription lets calls
//! through, so its status is what the gateway configuration follows.

use serde::{Deserialize, Serialize};

use uuid::Uuid;

use super::plan::Approval;
use super::{DomainError, text};

/// An application's subscription to one of a product's plans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Subscription {
    pub application_id: Uuid,
    pub product_id: Uuid,
    pub plan_id: Uuid,
    pub status: Status,
    /// Why it was rejected, suspended or revoked.
    pub reason: Option<String>,
    pub requested_by: String,
    /// Who moved it last (approved, rejected…); none while it waits.
    pub decided_by: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Requested,
    Approved,
    Rejected,
    Suspended,
    Revoked,
}

/// What a publisher (or, for `Revoke`, the subscriber too) does to a subscription; the ones
/// that stop calls say why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Approve,
    Reject { reason: String },
    Suspend { reason: String },
    Resume,
    Revoke { reason: String },
}

impl Status {
    /// A new subscription's status: approved at once under a plan approved automatically.
    pub fn requested(approval: Approval) -> Status {
        match approval {
            Approval::Auto => Status::Approved,
            Approval::Manual => Status::Requested,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Status::Requested => "requested",
            Status::Approved => "approved",
            Status::Rejected => "rejected",
            Status::Suspended => "suspended",
            Status::Revoked => "revoked",
        }
    }

    /// Whether the subscriber's calls go through.
    pub fn admits_calls(self) -> bool {
        self == Status::Approved
    }

    /// The status after `command`, with the reason given (checked: 1 to 500 characters) for
    /// a command that stops calls; a command the status does not allow is refused.
    pub fn apply(self, command: &Command) -> Result<(Status, Option<String>), DomainError> {
        let reason = |r: &str| text("reason", r, 500).map(Some);
        let refused = |action| DomainError::IllegalTransition {
            noun: "subscription",
            from: self.name(),
            action,
        };
        match (self, command) {
            (Status::Requested, Command::Approve) => Ok((Status::Approved, None)),
            (Status::Requested, Command::Reject { reason: r }) => {
                Ok((Status::Rejected, reason(r)?))
            }
            (Status::Approved, Command::Suspend { reason: r }) => {
                Ok((Status::Suspended, reason(r)?))
            }
            (Status::Suspended, Command::Resume) => Ok((Status::Approved, None)),
            (
                Status::Requested | Status::Approved | Status::Suspended,
                Command::Revoke { reason: r },
            ) => Ok((Status::Revoked, reason(r)?)),
            (_, Command::Approve) => Err(refused("approve")),
            (_, Command::Reject { .. }) => Err(refused("reject")),
            (_, Command::Suspend { .. }) => Err(refused("suspend")),
            (_, Command::Resume) => Err(refused("resume")),
            (_, Command::Revoke { .. }) => Err(refused("revoke")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn why() -> String {
        "over the agreed volume".into()
    }

    #[test]
    fn approval_follows_the_plan() {
        assert_eq!(Status::requested(Approval::Auto), Status::Approved);
        assert_eq!(Status::requested(Approval::Manual), Status::Requested);
    }

    #[test]
    fn only_approved_subscriptions_admit_calls() {
        let (approved, _) = Status::Requested.apply(&Command::Approve).unwrap();
        assert!(approved.admits_calls());
        let (suspended, reason) = approved.apply(&Command::Suspend { reason: why() }).unwrap();
        assert!(!suspended.admits_calls());
        assert_eq!(reason.as_deref(), Some("over the agreed volume"));
        let (resumed, _) = suspended.apply(&Command::Resume).unwrap();
        assert!(resumed.admits_calls());
        let (revoked, _) = resumed.apply(&Command::Revoke { reason: why() }).unwrap();
        assert!(!revoked.admits_calls());
        for status in [
            Status::Requested,
            Status::Rejected,
            Status::Suspended,
            Status::Revoked,
        ] {
            assert!(!status.admits_calls(), "{status:?}");
        }
    }

    #[test]
    fn ended_subscriptions_stay_ended() {
        let e = Status::Revoked.apply(&Command::Approve).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot approve a subscription that is revoked"
        );
        assert!(Status::Rejected.apply(&Command::Resume).is_err());
        // A second approval (two publishers racing) is refused, not applied twice.
        assert!(Status::Approved.apply(&Command::Approve).is_err());
    }

    #[test]
    fn stopping_calls_needs_a_reason() {
        let e = Status::Requested
            .apply(&Command::Reject { reason: " ".into() })
            .unwrap_err();
        assert_eq!(e.code(), "MARKET_INVALID");
    }
}
