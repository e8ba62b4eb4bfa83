//! The embedded event bus: durable queues in one SQLite file, for `axle serve` on one machine.
//!
//! Publishing copies an event into every queue whose bindings match its type, in one
//! transaction; a message leaves its queue only when the consumer succeeded, or when it moves to
//! the dead letters after `max_attempts` failures. A crash at any point loses nothing: the worst
//! case is a redelivery, which consumers absorb with [`super::inbox::claim`].

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{BusError, CloudEvent, Handler, Subscription, retry_backoff, topic_matches};
use crate::time::{now_text, text_after};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/bus");

/// How long an idle consumer sleeps before looking again without being woken.
const IDLE_POLL: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct EmbeddedBus {
    inner: Arc<Inner>,
}

struct Inner {
    pool: SqlitePool,
    max_attempts: u32,
    /// Wakes the consumer of a queue when something was published to it.
    wakers: Mutex<HashMap<String, Arc<Notify>>>,
}

impl EmbeddedBus {
    pub async fn open(path: &Path, max_attempts: u32) -> Result<Self, BusError> {
        crate::files::private_sqlite(path).map_err(sqlx::Error::Io)?;
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        MIGRATIONS.run(&pool).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                max_attempts,
                wakers: Mutex::new(HashMap::new()),
            }),
        })
    }

    fn waker(&self, queue: &str) -> Arc<Notify> {
        let mut wakers = self.inner.wakers.lock().unwrap_or_else(|e| e.into_inner());
        wakers.entry(queue.to_string()).or_default().clone()
    }

    pub async fn publish(&self, events: &[CloudEvent]) -> Result<(), BusError> {
        // Read before the transaction: one that reads and then writes fails with "database is
        // locked" (SQLITE_BUSY_SNAPSHOT) when another connection commits in between, where one
        // that starts with its write waits its turn.
        let bindings: Vec<(String, String)> = sqlx::query_as("SELECT queue, pattern FROM bindings")
            .fetch_all(&self.inner.pool)
            .await?;
        let mut tx = self.inner.pool.begin().await?;
        let mut touched: Vec<&str> = Vec::new();
        let now = now_text();
        for event in events {
            let payload = event.to_json();
            let mut queues: Vec<&str> = bindings
                .iter()
                .filter(|(_, pattern)| topic_matches(pattern, &event.ty))
                .map(|(queue, _)| queue.as_str())
                .collect();
            queues.dedup();
            for queue in queues {
                sqlx::query(
                    "INSERT INTO messages (queue, event_id, payload, visible_at) VALUES (?, ?, ?, ?)",
                )
                .bind(queue)
                .bind(&event.id)
                .bind(&payload)
                .bind(&now)
                .execute(&mut *tx)
                .await?;
                touched.push(queue);
            }
        }
        tx.commit().await?;
        touched.sort_unstable();
        touched.dedup();
        for queue in touched {
            self.waker(queue).notify_one();
        }
        Ok(())
    }

    pub(super) async fn subscribe(
        &self,
        subscription: Subscription,
        handler: Handler,
        shutdown: CancellationToken,
    ) -> Result<JoinHandle<()>, BusError> {
        for pattern in &subscription.patterns {
            sqlx::query("INSERT OR IGNORE INTO bindings (queue, pattern) VALUES (?, ?)")
                .bind(&subscription.queue)
                .bind(pattern)
                .execute(&self.inner.pool)
                .await?;
        }
        let bus = self.clone();
        Ok(tokio::spawn(async move {
            bus.consume(subscription.queue, handler, shutdown).await;
        }))
    }

    async fn consume(self, queue: String, handler: Handler, shutdown: CancellationToken) {
        let waker = self.waker(&queue);
        while !shutdown.is_cancelled() {
            match self.deliver_next(&queue, &handler).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => tracing::warn!(queue, error = %e, "embedded bus: delivery failed"),
            }
            tokio::select! {
                _ = waker.notified() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }

    /// Delivers the oldest visible message of `queue`; false when there was none.
    async fn deliver_next(&self, queue: &str, handler: &Handler) -> Result<bool, BusError> {
        let pool = &self.inner.pool;
        let row = sqlx::query(
            "SELECT id, payload, attempts FROM messages WHERE queue = ? AND visible_at <= ? \
             ORDER BY id LIMIT 1",
        )
        .bind(queue)
        .bind(now_text())
        .fetch_optional(pool)
        .await?;
        let Some(row) = row else { return Ok(false) };
        let id: i64 = row.get("id");
        let payload: String = row.get("payload");
        let attempts = row.get::<i64, _>("attempts") as u32 + 1;

        let (outcome, unreadable) = match CloudEvent::from_json(payload.as_bytes()) {
            Ok(event) => {
                let outcome = handler.run(vec![event]).await.pop();
                (
                    outcome.unwrap_or(Ok(())).map_err(|e| format!("{e:#}")),
                    false,
                )
            }
            // An unreadable message can never succeed: dead-letter it at once.
            Err(e) => (Err(e.to_string()), true),
        };
        match outcome {
            Ok(()) => {
                sqlx::query("DELETE FROM messages WHERE id = ?")
                    .bind(id)
                    .execute(pool)
                    .await?;
            }
            Err(error) if unreadable || attempts >= self.inner.max_attempts => {
                tracing::warn!(
                    queue,
                    attempts,
                    error,
                    "embedded bus: message dead-lettered"
                );
                let mut tx = pool.begin().await?;
                sqlx::query(
                    "INSERT INTO dead_letters (queue, event_id, payload, attempts, error, died_at) \
                     SELECT queue, event_id, payload, ?, ?, ? FROM messages WHERE id = ?",
                )
                .bind(attempts as i64)
                .bind(&error)
                .bind(now_text())
                .bind(id)
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM messages WHERE id = ?")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            Err(error) => {
                tracing::debug!(
                    queue,
                    attempts,
                    error,
                    "embedded bus: delivery failed, will retry"
                );
                sqlx::query("UPDATE messages SET attempts = ?, visible_at = ? WHERE id = ?")
                    .bind(attempts as i64)
                    .bind(text_after(retry_backoff(attempts)))
                    .bind(id)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(true)
    }

    pub async fn dead_letter_count(&self, queue: &str) -> Result<u64, BusError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters WHERE queue = ?")
            .bind(queue)
            .fetch_one(&self.inner.pool)
            .await?;
        Ok(n as u64)
    }

    pub async fn replay_dead_letters(&self, queue: &str) -> Result<u64, BusError> {
        let mut tx = self.inner.pool.begin().await?;
        let moved = sqlx::query(
            "INSERT INTO messages (queue, event_id, payload, visible_at) \
             SELECT queue, event_id, payload, ? FROM dead_letters WHERE queue = ? ORDER BY id",
        )
        .bind(now_text())
        .bind(queue)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM dead_letters WHERE queue = ?")
            .bind(queue)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.waker(queue).notify_one();
        Ok(moved)
    }

    pub async fn ping(&self) -> Result<(), BusError> {
        sqlx::query("SELECT 1").execute(&self.inner.pool).await?;
        Ok(())
    }
}
