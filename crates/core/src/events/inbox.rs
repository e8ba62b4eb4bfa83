//! Idempotent consumers: each (consumer, event id) is processed at most once.
//!
//! A handler claims the event inside the transaction that applies its effect:
//!
//! ```ignore
//! let mut tx = db.begin().await?;
//! if inbox::claim(&mut tx, "masterdata.vehicles", &event.id).await? {
//!     apply(&mut tx, &event).await?;
//! }
//! tx.commit().await?;
//! ```
//!
//! A redelivered event finds its claim and is skipped; a failed handler rolls its claim back
//! with everything else, so the retry runs it again.

use sqlx::AnyConnection;

/// Records that `consumer` processes `event_id`; false if it already did.
pub async fn claim(
    conn: &mut AnyConnection,
    consumer: &str,
    event_id: &str,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO axle_processed_events (consumer, event_id, processed_at) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
    )
    .bind(consumer)
    .bind(event_id)
    .bind(crate::time::now_text())
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}
