//! Shared set-up for core's integration tests.

use axle_core::db::{Db, Migrations};
use axle_core::events::{CloudEvent, Outbox, inbox};
use axle_core::testing::TestPlatform;
use sqlx::AnyConnection;
use sqlx::migrate::Migrator;

/// Only core's own tables.
pub fn core_only() -> Migrations {
    Migrations {
        sqlite: Migrator::DEFAULT,
        postgres: Migrator::DEFAULT,
    }
}

/// An event of the test's own type.
pub fn event(n: usize) -> CloudEvent {
    CloudEvent::new(
        "test",
        "axle.test.happened.v1",
        format!("agg-{n}"),
        1,
        &serde_json::json!({"n": n}),
    )
    .unwrap()
}

/// A consumer database with an `effects` table the handler writes to.
pub async fn consumer_db(tp: &TestPlatform) -> Db {
    let db = tp.platform.open_db("consumer", &core_only()).await.unwrap();
    sqlx::query("CREATE TABLE effects (event_id TEXT PRIMARY KEY, subject TEXT NOT NULL)")
        .execute(db.pool())
        .await
        .unwrap();
    db
}

/// The idempotent handler pattern: claim and effect in one transaction.
pub async fn apply_once(db: &Db, event: &CloudEvent) -> anyhow::Result<bool> {
    let mut tx = db.begin().await?;
    let fresh = apply_in(&mut tx, event).await?;
    tx.commit().await?;
    Ok(fresh)
}

/// Claims `event` and writes its effect inside the caller's transaction; false if it was
/// already applied.
pub async fn apply_in(tx: &mut AnyConnection, event: &CloudEvent) -> anyhow::Result<bool> {
    let fresh = inbox::claim(tx, "consumer.test", &event.id).await?;
    if fresh {
        sqlx::query("INSERT INTO effects (event_id, subject) VALUES ($1, $2)")
            .bind(&event.id)
            .bind(&event.subject)
            .execute(&mut *tx)
            .await?;
    }
    Ok(fresh)
}

pub async fn count(db: &Db, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(db.pool())
        .await
        .unwrap()
}

/// Commits `event` through `outbox` in its own transaction.
pub async fn commit_event(db: &Db, outbox: &Outbox, event: &CloudEvent) {
    let mut tx = db.begin().await.unwrap();
    Outbox::enqueue(&mut tx, event).await.unwrap();
    tx.commit().await.unwrap();
    outbox.wake();
}
