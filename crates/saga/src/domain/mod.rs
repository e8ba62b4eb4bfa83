//! Saga instances and how they move, pure: given an instance, its definition and the outcome
//! of one call, the next instance.
//!
//! ```text
//! running ──every step done──→ completed
//!    │ a step refused (4xx), or failed past its attempts (5xx, timeout), or an operator aborts
//!    ▼
//! compensating ──every completed step undone, last first──→ compensated
//!    └─ a compensation failing past its attempts: flagged for an operator, retried on
//! ```
//!
//! A step that failed past its attempts may still have taken effect (its last call timed out),
//! so its own compensation runs too; a refused step did not, so compensation starts with the
//! step before it. Compensations must therefore be safe when there is nothing to undo.

pub mod definition;
pub mod retry;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use definition::{BuildCall, Definition, Step};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    Compensating,
    Completed,
    Compensated,
}

impl Status {
    pub const ALL: [Status; 4] = [
        Status::Running,
        Status::Compensating,
        Status::Completed,
        Status::Compensated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Compensating => "compensating",
            Status::Completed => "completed",
            Status::Compensated => "compensated",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Compensated)
    }
}

/// Which way a step's call goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Action,
    Compensation,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Action => "action",
            Phase::Compensation => "compensation",
        }
    }
}

/// What one call came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// 2xx (or a 404 where nothing to undo is fine), with the participant's answer.
    Done(Value),
    /// 5xx, a timeout, a connection error: worth retrying.
    Failed(String),
    /// 4xx: the participant said no; retrying cannot help.
    Refused(String),
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Done(_) => "done",
            Outcome::Failed(_) => "failed",
            Outcome::Refused(_) => "refused",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Instance {
    pub id: Uuid,
    /// The saga type (its definition's name).
    pub saga: String,
    /// The business key: one instance per saga and key (a lot id for a settlement).
    pub key: String,
    pub status: Status,
    /// The next step to run (running) or to undo (compensating), from 0.
    pub step: i64,
    /// Calls made at the current step in the current direction.
    pub attempt: u32,
    pub input: Value,
    /// Each completed step's answer, by step name.
    pub results: Map<String, Value>,
    /// When the next call is due.
    pub due_at: DateTime<Utc>,
    /// A compensation keeps failing: an operator should look.
    pub flagged: bool,
    pub last_error: Option<String>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DomainError {
    #[error("the instance is {0}: nothing to {1}")]
    Finished(&'static str, &'static str),
    #[error("the instance is already compensating")]
    AlreadyCompensating,
}

impl Instance {
    /// A new instance of `definition` for `key`, due now.
    pub fn start(
        definition: &Definition,
        id: Uuid,
        key: String,
        input: Value,
        now: DateTime<Utc>,
    ) -> Instance {
        Instance {
            id,
            saga: definition.name.into(),
            key,
            status: if definition.steps.is_empty() {
                Status::Completed
            } else {
                Status::Running
            },
            step: 0,
            attempt: 0,
            input,
            results: Map::new(),
            due_at: now,
            flagged: false,
            last_error: None,
            version: 1,
            created_at: now,
            updated_at: now,
        }
    }

    /// The step to call next and in which direction; `None` once finished.
    pub fn next_call<'d>(
        &self,
        definition: &'d Definition,
    ) -> Option<(&'d Step, Phase, BuildCall)> {
        let step = definition.steps.get(usize::try_from(self.step).ok()?)?;
        match self.status {
            Status::Running => Some((step, Phase::Action, step.action)),
            Status::Compensating => Some((step, Phase::Compensation, step.compensation?)),
            Status::Completed | Status::Compensated => None,
        }
    }

    /// The instance after the current call came to `outcome` at `now`; `jitter` in [0, 1)
    /// spreads retries.
    pub fn after(
        &self,
        definition: &Definition,
        outcome: Outcome,
        now: DateTime<Utc>,
        jitter: f64,
    ) -> Instance {
        let mut next = self.clone();
        next.version += 1;
        next.updated_at = now;
        // `due_at` moves only when the instance must wait: a row whose indexed columns stay
        // as they were is updated in place (PostgreSQL's HOT updates).
        let Some((step, _, _)) = self.next_call(definition) else {
            return next;
        };
        let policy = match self.status {
            Status::Compensating => &step.compensation_retry,
            _ => &step.retry,
        };
        let retry_at = |failures: u32| {
            now + chrono::Duration::from_std(policy.delay(failures, jitter)).unwrap_or_default()
        };
        match (self.status, outcome) {
            (Status::Running, Outcome::Done(answer)) => {
                next.results.insert(step.name.into(), (step.keep)(&answer));
                next.step += 1;
                next.attempt = 0;
                next.last_error = None;
                if next.step as usize >= definition.steps.len() {
                    next.status = Status::Completed;
                }
            }
            (Status::Running, Outcome::Failed(error)) => {
                next.attempt += 1;
                next.last_error = Some(format!("{}: {error}", step.name));
                if next.attempt < policy.max_attempts {
                    next.due_at = retry_at(next.attempt);
                } else {
                    // Its last call may have taken effect: undo it too.
                    next.begin_compensation(definition, self.step);
                }
            }
            (Status::Running, Outcome::Refused(error)) => {
                next.last_error = Some(format!("{}: {error}", step.name));
                next.begin_compensation(definition, self.step - 1);
            }
            (Status::Compensating, Outcome::Done(_)) => {
                next.attempt = 0;
                next.flagged = false;
                next.seek_compensation(definition, self.step - 1);
            }
            (Status::Compensating, Outcome::Failed(error) | Outcome::Refused(error)) => {
                next.attempt = self.attempt.saturating_add(1);
                next.last_error = Some(format!("undoing {}: {error}", step.name));
                next.flagged = next.attempt >= policy.max_attempts;
                next.due_at = retry_at(next.attempt);
            }
            (Status::Completed | Status::Compensated, _) => {}
        }
        next
    }

    /// An operator gives up on a running instance: undo what was done.
    pub fn abort(
        &self,
        definition: &Definition,
        now: DateTime<Utc>,
    ) -> Result<Instance, DomainError> {
        match self.status {
            Status::Completed | Status::Compensated => {
                Err(DomainError::Finished(self.status.as_str(), "abort"))
            }
            Status::Compensating => Err(DomainError::AlreadyCompensating),
            Status::Running => {
                let mut next = self.operated(now);
                next.last_error = Some("aborted by an operator".into());
                // The current step may be in flight or have taken effect: undo it too.
                next.begin_compensation(definition, self.step);
                Ok(next)
            }
        }
    }

    /// An operator asks for the next call now, with a fresh count of attempts.
    pub fn retry(&self, now: DateTime<Utc>) -> Result<Instance, DomainError> {
        if self.status.is_terminal() {
            return Err(DomainError::Finished(self.status.as_str(), "retry"));
        }
        Ok(self.operated(now))
    }

    fn operated(&self, now: DateTime<Utc>) -> Instance {
        Instance {
            attempt: 0,
            flagged: false,
            due_at: now,
            updated_at: now,
            version: self.version + 1,
            ..self.clone()
        }
    }

    fn begin_compensation(&mut self, definition: &Definition, from: i64) {
        self.status = Status::Compensating;
        self.attempt = 0;
        self.seek_compensation(definition, from);
    }

    /// Moves to the first step at or before `from` that has something to undo.
    fn seek_compensation(&mut self, definition: &Definition, from: i64) {
        let mut step = from;
        while step >= 0 && definition.steps[step as usize].compensation.is_none() {
            step -= 1;
        }
        self.step = step;
        if step < 0 {
            self.status = Status::Compensated;
            self.step = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::definition::{Call, Step};
    use super::retry::RetryPolicy;
    use super::*;
    use serde_json::json;

    fn call(_: &Value, _: &Map<String, Value>) -> Result<Call, String> {
        Ok(Call::put("/x".into()))
    }

    fn step(name: &'static str, undo: bool) -> Step {
        Step {
            name,
            participant: "p",
            action: call,
            compensation: undo.then_some(call as BuildCall),
            keep: definition::summary,
            retry: RetryPolicy {
                max_attempts: 3,
                initial: Duration::from_millis(100),
                max: Duration::from_secs(1),
            },
            compensation_retry: RetryPolicy {
                max_attempts: 4,
                initial: Duration::from_millis(100),
                max: Duration::from_secs(1),
            },
            timeout: Duration::from_secs(1),
        }
    }

    /// a (undoable), b (nothing to undo), c, d (undoable).
    fn definition() -> Definition {
        Definition {
            name: "test",
            steps: vec![
                step("a", true),
                step("b", false),
                step("c", true),
                step("d", true),
            ],
            completed_event: "done",
            compensated_event: "undone",
        }
    }

    fn run(outcomes: &[Outcome]) -> Instance {
        let d = definition();
        let now = Utc::now();
        let mut i = Instance::start(&d, Uuid::nil(), "k".into(), json!({}), now);
        for o in outcomes {
            i = i.after(&d, o.clone(), now, 0.5);
        }
        i
    }

    fn done() -> Outcome {
        Outcome::Done(json!({"id": "r-1", "status": "open", "lines": ["a long answer"]}))
    }

    #[test]
    fn every_step_done_completes_with_each_answer_kept() {
        let i = run(&[done(), done(), done(), done()]);
        assert_eq!(i.status, Status::Completed);
        assert_eq!(i.results.len(), 4);
        assert_eq!(
            i.results["d"],
            json!({"id": "r-1", "status": "open"}),
            "a summary"
        );
        assert_eq!(i.version, 5);
    }

    #[test]
    fn a_refused_step_undoes_the_steps_before_it_last_first_skipping_those_with_nothing_to_undo() {
        let d = definition();
        let i = run(&[done(), done(), done(), Outcome::Refused("409".into())]);
        assert_eq!((i.status, i.step), (Status::Compensating, 2));
        assert_eq!(i.next_call(&d).unwrap().0.name, "c");
        let i = run(&[
            done(),
            done(),
            done(),
            Outcome::Refused("409".into()),
            done(),
        ]);
        assert_eq!(
            (i.status, i.step),
            (Status::Compensating, 0),
            "b has nothing to undo"
        );
        let i = run(&[
            done(),
            done(),
            done(),
            Outcome::Refused("409".into()),
            done(),
            done(),
        ]);
        assert_eq!(i.status, Status::Compensated);
        assert!(i.last_error.unwrap().starts_with("d: 409"));
    }

    #[test]
    fn a_failing_step_is_retried_with_backoff_then_undone_itself_too() {
        let fail = || Outcome::Failed("503".into());
        let i = run(&[done(), fail()]);
        assert_eq!((i.status, i.step, i.attempt), (Status::Running, 1, 1));
        assert!(i.due_at > i.updated_at);
        let i = run(&[done(), done(), fail(), fail(), fail()]);
        assert_eq!(
            (i.status, i.step),
            (Status::Compensating, 2),
            "c may have taken effect"
        );
        let i = run(&[done(), done(), fail(), fail(), done()]);
        assert_eq!((i.status, i.step, i.attempt), (Status::Running, 3, 0));
    }

    #[test]
    fn a_failing_compensation_is_retried_forever_and_flagged_after_its_attempts() {
        let fail = || Outcome::Failed("503".into());
        let mut outcomes = vec![done(), Outcome::Refused("422".into())];
        outcomes.extend(std::iter::repeat_n(fail(), 2));
        let i = run(&outcomes);
        assert_eq!((i.status, i.flagged), (Status::Compensating, false));
        outcomes.extend(std::iter::repeat_n(fail(), 5));
        let i = run(&outcomes);
        assert_eq!(
            (i.status, i.flagged, i.step),
            (Status::Compensating, true, 0)
        );
        outcomes.push(done());
        let i = run(&outcomes);
        assert_eq!(i.status, Status::Compensated);
    }

    #[test]
    fn operators_abort_running_instances_and_retry_unfinished_ones() {
        let d = definition();
        let now = Utc::now();
        let i = run(&[done(), done()]);
        let aborted = i.abort(&d, now).unwrap();
        assert_eq!(
            (aborted.status, aborted.step),
            (Status::Compensating, 2),
            "c may be in flight"
        );
        let tried = run(&[done(), Outcome::Failed("x".into())]);
        assert_eq!(
            tried.abort(&d, now).unwrap().step,
            0,
            "b has nothing to undo"
        );
        assert_eq!(
            aborted.abort(&d, now),
            Err(DomainError::AlreadyCompensating)
        );
        let retried = tried.retry(now).unwrap();
        assert_eq!((retried.attempt, retried.due_at), (0, now));
        let finished = run(&[done(), done(), done(), done()]);
        assert!(finished.retry(now).is_err() && finished.abort(&d, now).is_err());
        let first = run(&[]).abort(&d, now).unwrap();
        assert_eq!(
            (first.status, first.step),
            (Status::Compensating, 0),
            "a may be in flight"
        );
    }
}
