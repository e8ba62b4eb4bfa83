//! The transactional outbox: events are written in the same transaction as the state change
//! they describe, and a relay moves them to the bus, deleting each only after the bus confirmed
//! it. So an event exists if and only if its change was committed, and no confirmed-stored event
//! is lost when the bus is down: it waits in the table until the bus is back.
//!
//! On PostgreSQL several replicas of a service may relay at once: each takes a batch with
//! `FOR UPDATE SKIP LOCKED`, so no event is published by two relays in the normal case (after a
//! crash between publish and delete an event is published again; consumers are idempotent).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::{Histogram, HistogramOpts, IntCounter, Registry};
use sqlx::{AnyConnection, Row};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{BusError, CloudEvent, EventBus, retry_backoff};
use crate::db::{Db, Engine};

/// Events moved to the bus per round trip.
const BATCH: i64 = 1024;
/// How often an idle relay looks for events written by other processes.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// How long the relay keeps trying to flush at shutdown.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("outbox: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// One service's outbox.
#[derive(Clone)]
pub struct Outbox {
    db: Db,
    wake: Arc<Notify>,
    published: IntCounter,
    lag: Histogram,
}

impl Outbox {
    pub fn new(db: Db, registry: &Registry) -> Result<Self, prometheus::Error> {
        let published = IntCounter::new(
            "axle_outbox_published_total",
            "Events relayed from the outbox to the bus",
        )?;
        let lag = Histogram::with_opts(
            HistogramOpts::new(
                "axle_outbox_lag_seconds",
                "Time from an event's commit to the bus confirming it",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
            ]),
        )?;
        registry.register(Box::new(published.clone()))?;
        registry.register(Box::new(lag.clone()))?;
        Ok(Self {
            db,
            wake: Arc::new(Notify::new()),
            published,
            lag,
        })
    }

    /// Adds `event` to the outbox inside the caller's transaction. Call [`Outbox::wake`] after
    /// the commit so the relay picks it up at once.
    pub async fn enqueue(conn: &mut AnyConnection, event: &CloudEvent) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO axle_outbox (event_id, payload, created_at) VALUES ($1, $2, $3)")
            .bind(&event.id)
            .bind(event.to_json())
            .bind(crate::time::now_text())
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Runs `change` (an insert, or an update guarded by the version it read) and adds `event`
    /// in one transaction; answers the rows `change` affected. When it affected none, nothing
    /// is committed and no event goes out (the caller's "changed concurrently"). Call
    /// [`Outbox::wake`] after.
    pub async fn commit<'q>(
        db: &Db,
        change: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
        event: &CloudEvent,
    ) -> Result<u64, sqlx::Error> {
        let mut tx = db.begin().await?;
        let affected = change.execute(&mut *tx).await?.rows_affected();
        if affected == 0 {
            return Ok(0);
        }
        Self::enqueue(&mut tx, event).await?;
        tx.commit().await?;
        Ok(affected)
    }

    /// Tells the relay that new events were committed.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Events committed but not yet confirmed by the bus.
    pub async fn pending(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT COUNT(*) FROM axle_outbox")
            .fetch_one(self.db.pool())
            .await
    }

    /// Moves one batch to the bus; returns how many events it moved.
    pub async fn relay_once(&self, bus: &EventBus) -> Result<usize, RelayError> {
        match self.db.engine() {
            // One process owns a SQLite file, so no row locks are needed; and a read transaction
            // that later writes would fail if another writer committed in between.
            Engine::Sqlite => {
                let batch = self.take(self.db.pool(), "").await?;
                self.publish_and_delete(bus, batch, self.db.pool()).await
            }
            Engine::Postgres => {
                let mut tx = self.db.begin().await?;
                let batch = self.take(&mut *tx, " FOR UPDATE SKIP LOCKED").await?;
                let moved = self.publish_and_delete(bus, batch, &mut *tx).await?;
                tx.commit().await?;
                Ok(moved)
            }
        }
    }

    async fn take<'e>(
        &self,
        conn: impl sqlx::Executor<'e, Database = sqlx::Any>,
        lock: &str,
    ) -> Result<Vec<(i64, CloudEvent, String)>, sqlx::Error> {
        let sql = format!(
            "SELECT seq, payload, created_at FROM axle_outbox ORDER BY seq LIMIT {BATCH}{lock}"
        );
        let rows = sqlx::query(&sql).fetch_all(conn).await?;
        let mut batch = Vec::with_capacity(rows.len());
        for row in rows {
            let seq: i64 = row.get(0);
            let payload: String = row.get(1);
            match CloudEvent::from_json(payload.as_bytes()) {
                Ok(event) => batch.push((seq, event, row.get(2))),
                // Only `enqueue` writes here, so this means the row was edited by hand.
                Err(e) => tracing::error!(seq, error = %e, "outbox row is not an event; skipped"),
            }
        }
        Ok(batch)
    }

    async fn publish_and_delete<'e>(
        &self,
        bus: &EventBus,
        batch: Vec<(i64, CloudEvent, String)>,
        conn: impl sqlx::Executor<'e, Database = sqlx::Any>,
    ) -> Result<usize, RelayError> {
        if batch.is_empty() {
            return Ok(0);
        }
        let events: Vec<CloudEvent> = batch.iter().map(|(_, e, _)| e.clone()).collect();
        bus.publish(&events).await?;
        let seqs: Vec<String> = batch.iter().map(|(seq, _, _)| seq.to_string()).collect();
        // Sequence numbers are integers read from the table, safe to inline.
        sqlx::query(&format!(
            "DELETE FROM axle_outbox WHERE seq IN ({})",
            seqs.join(",")
        ))
        .execute(conn)
        .await?;
        let now = Utc::now();
        for (_, _, created_at) in &batch {
            if let Ok(t) = DateTime::parse_from_rfc3339(created_at) {
                let lag = (now - t.with_timezone(&Utc))
                    .num_microseconds()
                    .unwrap_or(0);
                self.lag.observe(lag.max(0) as f64 / 1e6);
            }
        }
        self.published.inc_by(batch.len() as u64);
        Ok(batch.len())
    }

    /// Relays in the background until `shutdown`, then flushes what is left (bounded in time).
    /// Bus outages are retried with backoff; nothing is deleted until the bus confirmed it.
    pub fn spawn_relay(&self, bus: EventBus, shutdown: CancellationToken) -> JoinHandle<()> {
        let outbox = self.clone();
        tokio::spawn(async move {
            let mut failures = 0u32;
            while !shutdown.is_cancelled() {
                // After a failure, wait out the backoff even if new events are committed.
                let (wait, wakeable) = match outbox.relay_once(&bus).await {
                    Ok(n) if n > 0 => {
                        failures = 0;
                        continue;
                    }
                    Ok(_) => (IDLE_POLL, true),
                    Err(e) => {
                        failures += 1;
                        if failures == 1 {
                            tracing::warn!(error = %e, "outbox relay failed; retrying until it succeeds");
                        }
                        (retry_backoff(failures).min(Duration::from_secs(5)), false)
                    }
                };
                tokio::select! {
                    _ = outbox.wake.notified(), if wakeable => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
            outbox.flush(&bus, SHUTDOWN_FLUSH).await;
        })
    }

    /// Relays until the outbox is empty or `limit` has passed.
    pub async fn flush(&self, bus: &EventBus, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.relay_once(bus)).await {
                Ok(Ok(0)) => return,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "outbox flush failed; events stay in the outbox");
                    return;
                }
                Err(_) => {
                    tracing::warn!("outbox flush timed out; events stay in the outbox");
                    return;
                }
            }
        }
    }
}
