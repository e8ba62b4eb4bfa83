//! The audit trail: who changed what, when — a row per change, written in the change's own
//! transaction, so the trail holds exactly the changes that happened.
//!
//! A service keeps it in its own database, in a table its migrations create:
//!
//! ```sql
//! CREATE TABLE audit (
//!     id TEXT PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL,
//!     action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL
//! );
//! ```

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Row;
use uuid::Uuid;

use crate::db::Db;
use crate::time::{from_text, to_text};

/// One line of the audit trail.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    /// Who: a username, or `client:<id>`.
    pub actor: String,
    /// What: the change's name (an event type, `user.created`…).
    pub action: String,
    /// To what: the changed record's id.
    pub target: String,
    pub detail: Value,
}

/// Records a change in `tx`, the transaction making it.
pub async fn record(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    actor: &str,
    action: &str,
    target: &str,
    detail: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit (id, at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(crate::id::new_id().to_string())
    .bind(to_text(crate::time::now()))
    .bind(actor)
    .bind(action)
    .bind(target)
    .bind(detail.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The trail, oldest first, after `after`, of `target` (or of everything), at most `limit`
/// and one more (for [`crate::http::Page::from_overfetch`]).
pub async fn trail(
    db: &Db,
    target: Option<&str>,
    after: Option<Uuid>,
    limit: u32,
) -> Result<Vec<AuditEntry>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT * FROM audit WHERE id > $1 AND ($2 = '' OR target = $2) ORDER BY id LIMIT $3",
    )
    .bind(after.map(|a| a.to_string()).unwrap_or_default())
    .bind(target.unwrap_or_default())
    .bind(i64::from(limit) + 1)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|row| {
            let corrupt = |column: &str| sqlx::Error::ColumnDecode {
                index: column.into(),
                source: "not the value written".into(),
            };
            let id: String = row.try_get("id")?;
            let at: String = row.try_get("at")?;
            let detail: String = row.try_get("detail")?;
            Ok(AuditEntry {
                id: Uuid::parse_str(&id).map_err(|_| corrupt("id"))?,
                at: from_text(&at).ok_or_else(|| corrupt("at"))?,
                actor: row.try_get("actor")?,
                action: row.try_get("action")?,
                target: row.try_get("target")?,
                detail: serde_json::from_str(&detail).unwrap_or(Value::Null),
            })
        })
        .collect()
}
