//! What a saga is: named steps, each an action and (usually) a compensation — calls to a
//! participant's HTTP API built from the instance's input and the results of earlier steps —
//! with a retry policy and a timeout.

use std::time::Duration;

use serde_json::{Map, Value};

use super::retry::RetryPolicy;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Post,
    Put,
    Delete,
}

/// One call to a participant.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub method: Method,
    /// Under the participant's base URL, e.g. `/orders/{id}/cancel`.
    pub path: String,
    pub body: Option<Value>,
    /// A 404 means the thing to undo never existed: the compensation is done.
    pub absent_is_done: bool,
}

impl Call {
    pub fn post(path: String, body: Value) -> Self {
        Call {
            method: Method::Post,
            path,
            body: Some(body),
            absent_is_done: false,
        }
    }

    pub fn put(path: String) -> Self {
        Call {
            method: Method::Put,
            path,
            body: None,
            absent_is_done: false,
        }
    }

    pub fn delete(path: String) -> Self {
        Call {
            method: Method::Delete,
            path,
            body: None,
            absent_is_done: false,
        }
    }

    /// This compensation is done when there is nothing to undo.
    pub fn absent_is_done(self) -> Self {
        Call {
            absent_is_done: true,
            ..self
        }
    }
}

/// Builds a step's call from the instance's input and earlier steps' results; an `Err` (the
/// input does not fit) fails the step without retrying.
pub type BuildCall = fn(input: &Value, results: &Map<String, Value>) -> Result<Call, String>;

#[derive(Debug, Clone)]
pub struct Step {
    pub name: &'static str,
    /// Which participant's API the calls go to (a key of the orchestrator's participants).
    pub participant: &'static str,
    pub action: BuildCall,
    /// `None`: nothing to undo.
    pub compensation: Option<BuildCall>,
    /// What of the action's answer the instance keeps (later calls and operators read it):
    /// usually [`summary`], so a saga's row stays small however large the answers.
    pub keep: fn(&Value) -> Value,
    /// How the action is retried; past its attempts the saga compensates.
    pub retry: RetryPolicy,
    /// How the compensation is retried; past its attempts the instance is flagged for an
    /// operator, and retried on.
    pub compensation_retry: RetryPolicy,
    /// How long one call may take; past it the attempt counts as failed (and is retried —
    /// participants get the step's idempotency key, so a late first attempt is harmless).
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Definition {
    /// The saga type, e.g. `settlement`.
    pub name: &'static str,
    pub steps: Vec<Step>,
    /// Published when an instance completes.
    pub completed_event: &'static str,
    /// Published when an instance was compensated (undone).
    pub compensated_event: &'static str,
}

/// The identifying fields of a participant's answer — `id`, `status`, `state`, `version` —
/// as an instance keeps it.
pub fn summary(answer: &Value) -> Value {
    let Value::Object(fields) = answer else {
        return Value::Null;
    };
    Value::Object(
        ["id", "status", "state", "version"]
            .into_iter()
            .filter_map(|k| fields.get(k).map(|v| (k.to_string(), v.clone())))
            .collect(),
    )
}
