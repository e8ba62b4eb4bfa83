//! The engine: workers that claim due instances and drive them, one call at a time.
//!
//! A claimed instance is driven step after step while its calls succeed, each outcome saved
//! (with the attempt, and the finishing event) before the next call; it is let go when it
//! finishes or must wait for a retry, and claimed again when due. A process that dies leaves
//! its leases behind: they run out (or are released when the same node starts again), and the
//! instance resumes from its last saved step. A step's action carries the idempotency key
//! `<instance>:<step>`, so a call repeated after a crash or a timeout does not apply twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axle_core::events::{CloudEvent, Outbox};
use axle_core::http::client::ClientToken;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use secrecy::ExposeSecret;
use serde_json::Value;
use tokio::sync::{Notify, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::domain::definition::{Call, Definition, Method};
use crate::domain::{Instance, Outcome, Phase, Status};
use crate::store::{Attempt, SagaStore, StoreError};

/// How long a claimed instance stays this worker's without a save. Longer than any step's
/// timeout, so a live worker never loses an instance it is calling for.
pub const LEASE: Duration = Duration::from_secs(30);
/// How often workers look for due instances when nobody wakes them.
const POLL: Duration = Duration::from_millis(250);

#[derive(Clone)]
pub struct Engine(Arc<Inner>);

struct Inner {
    store: SagaStore,
    outbox: Outbox,
    definitions: HashMap<&'static str, Definition>,
    /// Participant name → base URL.
    participants: HashMap<&'static str, String>,
    http: reqwest::Client,
    token: ClientToken,
    owner: String,
    concurrency: usize,
    wake: Notify,
    metrics: Metrics,
}

struct Metrics {
    started: IntCounterVec,
    finished: IntCounterVec,
    flagged: IntCounterVec,
    steps: HistogramVec,
    in_flight: IntGauge,
}

impl Metrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let started = IntCounterVec::new(
            Opts::new("axle_saga_started_total", "Saga instances started"),
            &["saga"],
        )?;
        let finished = IntCounterVec::new(
            Opts::new(
                "axle_saga_finished_total",
                "Saga instances finished, by status (completed or compensated)",
            ),
            &["saga", "status"],
        )?;
        let flagged = IntCounterVec::new(
            Opts::new(
                "axle_saga_flagged_total",
                "Saga instances whose compensation kept failing (an operator should look)",
            ),
            &["saga"],
        )?;
        let steps = HistogramVec::new(
            HistogramOpts::new("axle_saga_step_duration_seconds", "Calls to participants").buckets(
                vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            ),
            &["saga", "step", "phase", "outcome"],
        )?;
        let in_flight = IntGauge::new(
            "axle_saga_in_flight",
            "Saga instances this process is driving now",
        )?;
        registry.register(Box::new(started.clone()))?;
        registry.register(Box::new(finished.clone()))?;
        registry.register(Box::new(flagged.clone()))?;
        registry.register(Box::new(steps.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        Ok(Self {
            started,
            finished,
            flagged,
            steps,
            in_flight,
        })
    }
}

/// What the engine is built from.
pub struct Settings {
    pub definitions: Vec<Definition>,
    pub participants: HashMap<&'static str, String>,
    pub token: ClientToken,
    /// This process's name in leases.
    pub owner: String,
    /// Instances driven at once.
    pub concurrency: usize,
}

impl Engine {
    pub fn new(
        store: SagaStore,
        outbox: Outbox,
        settings: Settings,
        registry: &Registry,
    ) -> Result<Self, prometheus::Error> {
        Ok(Engine(Arc::new(Inner {
            store,
            outbox,
            definitions: settings
                .definitions
                .into_iter()
                .map(|d| (d.name, d))
                .collect(),
            participants: settings.participants,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(settings.concurrency)
                .build()
                .unwrap_or_default(),
            token: settings.token,
            owner: settings.owner,
            concurrency: settings.concurrency,
            wake: Notify::new(),
            metrics: Metrics::new(registry)?,
        })))
    }

    pub fn store(&self) -> &SagaStore {
        &self.0.store
    }

    pub fn definition(&self, name: &str) -> Option<&Definition> {
        self.0.definitions.get(name)
    }

    /// Starts an instance of `saga` for `key` (or finds the one started before) and has a
    /// worker pick it up at once. Answers the instance and whether it is new.
    pub async fn start(
        &self,
        saga: &str,
        key: String,
        input: Value,
    ) -> Result<(Instance, bool), StoreError> {
        let Some(definition) = self.definition(saga) else {
            return Err(StoreError::Corrupt(key, format!("no saga {saga}")));
        };
        let now = axle_core::time::now();
        let instance = Instance::start(definition, axle_core::id::new_id(), key, input, now);
        let (instance, created) = self.0.store.start(&instance).await?;
        if created {
            self.0.metrics.started.with_label_values(&[saga]).inc();
            self.0.wake.notify_one();
        }
        Ok((instance, created))
    }

    /// After an operator's change: look for due work now.
    pub fn wake(&self) {
        self.0.wake.notify_one();
    }

    /// Runs the workers until `shutdown`, then lets the instances in flight finish their
    /// current call.
    pub fn spawn(self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            if let Err(e) = self.0.store.release_leases(&self.0.owner).await {
                tracing::warn!(error = %e, "could not release this node's old leases");
            }
            let permits = Arc::new(Semaphore::new(self.0.concurrency));
            // The instances in flight belong to this task: if it is aborted, so are they.
            let mut drives = JoinSet::new();
            while !shutdown.is_cancelled() {
                while drives.try_join_next().is_some() {}
                let free = permits.available_permits();
                let claimed = if free == 0 {
                    Vec::new()
                } else {
                    let now = axle_core::time::now();
                    let until = now + chrono::Duration::from_std(LEASE).unwrap_or_default();
                    match self.0.store.claim(&self.0.owner, now, until, free).await {
                        Ok(claimed) => claimed,
                        Err(e) => {
                            tracing::warn!(error = %e, "could not claim saga instances");
                            Vec::new()
                        }
                    }
                };
                let more = free > 0 && claimed.len() == free;
                for instance in claimed {
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        return;
                    };
                    let engine = self.clone();
                    let stop = shutdown.clone();
                    drives.spawn(async move {
                        engine.0.metrics.in_flight.inc();
                        engine.drive(instance, stop).await;
                        engine.0.metrics.in_flight.dec();
                        let all_busy = permit.semaphore().available_permits() == 0;
                        drop(permit);
                        if all_busy {
                            // Due work may be waiting for a worker: look now, not at the poll.
                            engine.0.wake.notify_one();
                        }
                    });
                }
                if more {
                    continue;
                }
                tokio::select! {
                    _ = self.0.wake.notified() => {}
                    _ = tokio::time::sleep(POLL) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
            // Wait for the instances in flight (each ends after its current call).
            while drives.join_next().await.is_some() {}
        })
    }

    /// Drives one claimed instance until it finishes, must wait, is taken from us, or the
    /// process stops (then it is left, leased, after its current call).
    async fn drive(&self, mut instance: Instance, shutdown: CancellationToken) {
        let Some(definition) = self.definition(&instance.saga) else {
            tracing::error!(saga = %instance.saga, id = %instance.id, "no definition for a stored saga instance");
            return;
        };
        while let Some((step, phase, build)) = instance.next_call(definition) {
            let started_at = axle_core::time::now();
            let clock = Instant::now();
            let (outcome, status_code) = match build(&instance.input, &instance.results) {
                Ok(call) => {
                    let key =
                        (phase == Phase::Action).then(|| format!("{}:{}", instance.id, step.name));
                    self.call(step.participant, &call, key, step.timeout).await
                }
                Err(e) => (
                    Outcome::Refused(format!("the input does not fit: {e}")),
                    None,
                ),
            };
            let elapsed = clock.elapsed();
            self.0
                .metrics
                .steps
                .with_label_values(&[definition.name, step.name, phase.as_str(), outcome.label()])
                .observe(elapsed.as_secs_f64());
            let attempt = Attempt {
                step: instance.step,
                step_name: step.name.into(),
                phase,
                attempt: instance.attempt + 1,
                outcome: outcome.label().into(),
                status_code,
                error: match &outcome {
                    Outcome::Done(_) => None,
                    Outcome::Failed(e) | Outcome::Refused(e) => Some(e.clone()),
                },
                started_at,
                duration_ms: i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX),
            };
            let now = axle_core::time::now();
            let next = instance.after(definition, outcome, now, rand::random::<f64>());
            let keep_going = !next.status.is_terminal() && next.due_at <= now;
            let lease =
                keep_going.then(|| now + chrono::Duration::from_std(LEASE).unwrap_or_default());
            let event = match self.finishing_event(definition, &next) {
                Ok(event) => event,
                Err(e) => {
                    tracing::error!(error = %e, "could not build a saga's event");
                    return;
                }
            };
            match self
                .0
                .store
                .advance(&next, instance.version, &attempt, lease, event.as_ref())
                .await
            {
                Ok(()) => {}
                Err(StoreError::Conflict) => return, // an operator or another worker has it
                Err(e) => {
                    // The lease runs out and the step is tried again (idempotently).
                    tracing::warn!(error = %e, id = %instance.id, "could not save a saga step");
                    return;
                }
            }
            if event.is_some() {
                self.0.outbox.wake();
                self.0
                    .metrics
                    .finished
                    .with_label_values(&[definition.name, next.status.as_str()])
                    .inc();
            }
            if next.flagged && !instance.flagged {
                self.0
                    .metrics
                    .flagged
                    .with_label_values(&[definition.name])
                    .inc();
                tracing::error!(id = %next.id, saga = definition.name, error = ?next.last_error,
                    "a compensation keeps failing; the instance needs an operator");
            }
            if !keep_going || shutdown.is_cancelled() {
                return;
            }
            instance = next;
        }
    }

    fn finishing_event(
        &self,
        definition: &Definition,
        next: &Instance,
    ) -> Result<Option<CloudEvent>, axle_core::events::EventError> {
        let ty = match next.status {
            Status::Completed => definition.completed_event,
            Status::Compensated => definition.compensated_event,
            Status::Running | Status::Compensating => return Ok(None),
        };
        crate::events::finished(next, ty).map(Some)
    }

    /// Makes one call to a participant; the outcome and the HTTP status, if it answered.
    async fn call(
        &self,
        participant: &str,
        call: &Call,
        idempotency_key: Option<String>,
        timeout: Duration,
    ) -> (Outcome, Option<u16>) {
        let Some(base) = self.0.participants.get(participant) else {
            return (
                Outcome::Refused(format!("no participant {participant}")),
                None,
            );
        };
        let url = format!("{base}{}", call.path);
        let method = match call.method {
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Delete => reqwest::Method::DELETE,
        };
        let mut request = self.0.http.request(method, &url).timeout(timeout);
        if let Some(body) = &call.body {
            request = request.json(body);
        }
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        match self.0.token.bearer().await {
            Ok(Some(token)) => request = request.bearer_auth(token.expose_secret()),
            Ok(None) => {}
            Err(e) => return (Outcome::Failed(e.to_string()), None),
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return (
                    Outcome::Failed(format!("no answer within {timeout:?}")),
                    None,
                );
            }
            Err(e) => return (Outcome::Failed(format!("{participant}: {e}")), None),
        };
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let code = body["code"].as_str().unwrap_or_default();
        let said = || {
            format!(
                "{participant} answered {status}{}{}",
                if code.is_empty() { "" } else { " " },
                code
            )
        };
        let outcome = if status.is_success() {
            Outcome::Done(body)
        } else if status == reqwest::StatusCode::NOT_FOUND && call.absent_is_done {
            Outcome::Done(Value::Null)
        } else if status == reqwest::StatusCode::UNAUTHORIZED {
            // The token may have just expired or its key rotated: fetch a new one next time.
            self.0.token.forget().await;
            Outcome::Failed(said())
        } else if status.is_server_error()
            || status == reqwest::StatusCode::REQUEST_TIMEOUT
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
            || code == "IDEMPOTENCY_KEY_IN_USE"
            || code.ends_with("_CONCURRENT_UPDATE")
        {
            Outcome::Failed(said())
        } else {
            let message = body["message"].as_str().unwrap_or_default();
            Outcome::Refused(format!("{}: {message}", said()))
        };
        (outcome, Some(status.as_u16()))
    }
}
