//! Persistence of receivables and the deposit ledger (one SQL for SQLite and PostgreSQL).
//!
//! Movements on one account are serialised by bumping the account's `version` first in their
//! transaction (a row lock on PostgreSQL, the write lock on SQLite); a hold then reads the
//! available balance — the sum of the account's `available` entries — and only books if it
//! fits. Each movement, its two entries and its event commit together.

use axle_core::db::{Db, is_unique_violation};
use axle_core::events::{CloudEvent, Outbox};
use axle_core::money::Currency;
use axle_core::time::{from_text, to_text};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Any, Row, Transaction};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::DomainError;
use crate::domain::ledger::{self, Balances, Book, Hold, HoldStatus, MovementKind};
use crate::domain::receivable::{Receivable, ReceivableStatus};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    Exists(String),
    #[error("no {0}")]
    NotFound(String),
    #[error("the record changed concurrently")]
    Conflict,
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("stored record {0} is unreadable: {1}")]
    Corrupt(String, String),
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Account {
    pub id: Uuid,
    pub org_id: String,
    pub currency: Currency,
    pub balances: Balances,
    /// Grows with every movement.
    pub version: i64,
    pub created_at: DateTime<Utc>,
}

/// One movement with its entries, as a statement shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Movement {
    pub id: Uuid,
    pub kind: MovementKind,
    pub amount: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_id: Option<Uuid>,
    pub reference: String,
    pub actor: String,
    pub entries: Vec<Entry>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Entry {
    pub book: Book,
    pub amount: i64,
}

/// A movement to book: what, how much, for what, by whom; with the event to publish.
pub struct Booking<'a> {
    pub kind: MovementKind,
    pub amount: i64,
    pub reference: &'a str,
    pub actor: &'a str,
}

#[derive(Debug, Clone, Default)]
pub struct ReceivableFilter {
    pub status: Option<ReceivableStatus>,
    pub debtor_org: Option<String>,
}

#[derive(Debug, Clone)]
pub struct FinanceStore {
    db: Db,
}

fn uuid(text: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(text).map_err(|e| StoreError::Corrupt(text.into(), e.to_string()))
}

fn time(text: &str) -> Result<DateTime<Utc>, StoreError> {
    from_text(text).ok_or_else(|| StoreError::Corrupt(text.into(), "not a time".into()))
}

impl FinanceStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    // Receivables.

    pub async fn create_receivable(
        &self,
        r: &Receivable,
        event: &CloudEvent,
    ) -> Result<(), StoreError> {
        let insert = sqlx::query(
            "INSERT INTO receivables (id, order_id, debtor_org, status, due_date, version, created_at, doc) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(r.id.to_string())
        .bind(r.order_id.to_string())
        .bind(&r.debtor_org)
        .bind(r.status.as_str())
        .bind(r.due_date.to_string())
        .bind(r.version)
        .bind(to_text(r.created_at))
        .bind(receivable_doc(r));
        match Outbox::commit(&self.db, insert, event).await {
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::Exists(format!("receivable {}", r.id)))
            }
            other => other.map(|_| ()).map_err(Into::into),
        }
    }

    pub async fn save_receivable(
        &self,
        r: &Receivable,
        read_version: i64,
        event: &CloudEvent,
    ) -> Result<(), StoreError> {
        let update = sqlx::query(
            "UPDATE receivables SET status = $1, version = $2, doc = $3 WHERE id = $4 AND version = $5",
        )
        .bind(r.status.as_str())
        .bind(r.version)
        .bind(receivable_doc(r))
        .bind(r.id.to_string())
        .bind(read_version);
        match Outbox::commit(&self.db, update, event).await? {
            1 => Ok(()),
            _ => Err(StoreError::Conflict),
        }
    }

    pub async fn receivable(&self, id: Uuid) -> Result<Option<Receivable>, StoreError> {
        let row = sqlx::query("SELECT id, doc FROM receivables WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(self.db.pool())
            .await?;
        row.map(|r| read_receivable(r.get(0), r.get(1))).transpose()
    }

    /// Newest first, before the receivable `before`.
    pub async fn receivables(
        &self,
        filter: &ReceivableFilter,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Receivable>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, doc FROM receivables WHERE id < $1 \
             AND ($2 IS NULL OR status = $2) AND ($3 IS NULL OR debtor_org = $3) \
             ORDER BY id DESC LIMIT $4",
        )
        .bind(before.map_or_else(|| "~".to_string(), |b| b.to_string()))
        .bind(filter.status.map(|s| s.as_str()))
        .bind(filter.debtor_org.as_deref())
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        rows.into_iter()
            .map(|r| read_receivable(r.get(0), r.get(1)))
            .collect()
    }

    // Accounts.

    pub async fn open_account(
        &self,
        org_id: &str,
        currency: Currency,
        event: impl FnOnce(&Account) -> Result<CloudEvent, StoreError>,
    ) -> Result<Account, StoreError> {
        let account = Account {
            id: axle_core::id::new_id(),
            org_id: org_id.into(),
            currency,
            balances: Balances::default(),
            version: 1,
            created_at: axle_core::time::now(),
        };
        let event = event(&account)?;
        let mut tx = self.db.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO accounts (id, org_id, currency, version, created_at) VALUES ($1, $2, $3, 1, $4)",
        )
        .bind(account.id.to_string())
        .bind(org_id)
        .bind(currency.as_str())
        .bind(to_text(account.created_at))
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Exists(format!(
                    "an account of {org_id} in {currency}"
                )));
            }
            other => other?,
        };
        Outbox::enqueue(&mut tx, &event).await?;
        tx.commit().await?;
        Ok(account)
    }

    pub async fn account(&self, id: Uuid) -> Result<Option<Account>, StoreError> {
        let row = sqlx::query(
            "SELECT id, org_id, currency, version, created_at FROM accounts WHERE id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(self.db.pool())
        .await?;
        match row {
            None => Ok(None),
            Some(row) => Ok(Some(self.with_balances(row).await?)),
        }
    }

    /// Accounts in opening order, of one organisation or all.
    pub async fn accounts(
        &self,
        org_id: Option<&str>,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Account>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, org_id, currency, version, created_at FROM accounts \
             WHERE id > $1 AND ($2 IS NULL OR org_id = $2) ORDER BY id LIMIT $3",
        )
        .bind(after.unwrap_or(Uuid::nil()).to_string())
        .bind(org_id)
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        let mut accounts = Vec::with_capacity(rows.len());
        for row in rows {
            accounts.push(self.with_balances(row).await?);
        }
        Ok(accounts)
    }

    async fn with_balances(&self, row: sqlx::any::AnyRow) -> Result<Account, StoreError> {
        let id = uuid(row.get::<&str, _>(0))?;
        let mut conn = self.db.pool().acquire().await?;
        let balances = balances(&mut conn, id).await?;
        let currency: String = row.get(2);
        Ok(Account {
            id,
            org_id: row.get(1),
            currency: Currency::parse(&currency)
                .map_err(|e| StoreError::Corrupt(id.to_string(), e.to_string()))?,
            balances,
            version: row.get(3),
            created_at: time(row.get::<&str, _>(4))?,
        })
    }

    /// Books a top-up: money paid into the account.
    pub async fn top_up(
        &self,
        account: Uuid,
        booking: Booking<'_>,
        event: impl FnOnce(i64) -> Result<CloudEvent, StoreError>,
    ) -> Result<Uuid, StoreError> {
        let mut tx = self.db.begin().await?;
        let version = lock(&mut tx, account).await?;
        let movement = book(&mut tx, account, None, &booking).await?;
        Outbox::enqueue(&mut tx, &event(version)?).await?;
        tx.commit().await?;
        Ok(movement)
    }

    /// Holds `amount` of the account's available balance, if it has that much.
    pub async fn place_hold(
        &self,
        account: Uuid,
        reason: &str,
        booking: Booking<'_>,
        event: impl FnOnce(&Hold, i64) -> Result<CloudEvent, StoreError>,
    ) -> Result<Hold, StoreError> {
        let mut tx = self.db.begin().await?;
        let version = lock(&mut tx, account).await?;
        let available = balances(&mut tx, account).await?.available;
        ledger::check_hold(available, booking.amount)?;
        let now = axle_core::time::now();
        let hold = Hold {
            id: axle_core::id::new_id(),
            account_id: account,
            amount: booking.amount,
            reason: reason.into(),
            reference: booking.reference.into(),
            status: HoldStatus::Active,
            created_at: now,
            updated_at: now,
        };
        sqlx::query(
            "INSERT INTO holds (id, account_id, amount, reason, reference, status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        )
        .bind(hold.id.to_string())
        .bind(account.to_string())
        .bind(hold.amount)
        .bind(&hold.reason)
        .bind(&hold.reference)
        .bind(hold.status.as_str())
        .bind(to_text(now))
        .execute(&mut *tx)
        .await?;
        book(&mut tx, account, Some(hold.id), &booking).await?;
        Outbox::enqueue(&mut tx, &event(&hold, version)?).await?;
        tx.commit().await?;
        Ok(hold)
    }

    /// Ends an active hold as released or captured; repeating it changes nothing.
    pub async fn end_hold(
        &self,
        hold_id: Uuid,
        to: HoldStatus,
        actor: &str,
        event: impl FnOnce(&Hold, i64) -> Result<CloudEvent, StoreError>,
    ) -> Result<Hold, StoreError> {
        let Some(hold) = self.hold(hold_id).await? else {
            return Err(StoreError::NotFound(format!("hold {hold_id}")));
        };
        let mut tx = self.db.begin().await?;
        let version = lock(&mut tx, hold.account_id).await?;
        // Read again under the account's lock: a concurrent end may have won.
        let status: String = sqlx::query_scalar("SELECT status FROM holds WHERE id = $1")
            .bind(hold_id.to_string())
            .fetch_one(&mut *tx)
            .await?;
        let status = HoldStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(hold_id.to_string(), status.clone()))?;
        let Some(kind) = status.end(to)? else {
            tx.rollback().await?;
            return Ok(Hold { status, ..hold });
        };
        let now = axle_core::time::now();
        sqlx::query("UPDATE holds SET status = $1, updated_at = $2 WHERE id = $3")
            .bind(to.as_str())
            .bind(to_text(now))
            .bind(hold_id.to_string())
            .execute(&mut *tx)
            .await?;
        let booking = Booking {
            kind,
            amount: hold.amount,
            reference: &hold.reference,
            actor,
        };
        book(&mut tx, hold.account_id, Some(hold_id), &booking).await?;
        let ended = Hold {
            status: to,
            updated_at: now,
            ..hold
        };
        Outbox::enqueue(&mut tx, &event(&ended, version)?).await?;
        tx.commit().await?;
        Ok(ended)
    }

    pub async fn hold(&self, id: Uuid) -> Result<Option<Hold>, StoreError> {
        let row = sqlx::query(
            "SELECT id, account_id, amount, reason, reference, status, created_at, updated_at \
             FROM holds WHERE id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(self.db.pool())
        .await?;
        row.map(read_hold).transpose()
    }

    /// The account's holds, newest first, of one status or all.
    pub async fn holds(
        &self,
        account: Uuid,
        status: Option<HoldStatus>,
        limit: u32,
    ) -> Result<Vec<Hold>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, account_id, amount, reason, reference, status, created_at, updated_at \
             FROM holds WHERE account_id = $1 AND ($2 IS NULL OR status = $2) ORDER BY id DESC LIMIT $3",
        )
        .bind(account.to_string())
        .bind(status.map(|s| s.as_str()))
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        rows.into_iter().map(read_hold).collect()
    }

    /// The account's movements with their entries, newest first, before the movement `before`.
    pub async fn statement(
        &self,
        account: Uuid,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Movement>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, kind, amount, hold_id, reference, actor, created_at FROM movements \
             WHERE account_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
        )
        .bind(account.to_string())
        .bind(before.map_or_else(|| "~".to_string(), |b| b.to_string()))
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        let mut movements = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.get(0);
            let entries = sqlx::query(
                "SELECT book, amount FROM ledger_entries WHERE movement_id = $1 ORDER BY id",
            )
            .bind(&id)
            .fetch_all(self.db.pool())
            .await?
            .into_iter()
            .map(|e| {
                let book: String = e.get(0);
                Ok(Entry {
                    book: Book::parse(&book)
                        .ok_or_else(|| StoreError::Corrupt(id.clone(), book.clone()))?,
                    amount: e.get(1),
                })
            })
            .collect::<Result<_, StoreError>>()?;
            let kind: String = row.get(1);
            movements.push(Movement {
                id: uuid(&id)?,
                kind: MovementKind::parse(&kind)
                    .ok_or_else(|| StoreError::Corrupt(id.clone(), kind.clone()))?,
                amount: row.get(2),
                hold_id: row.get::<Option<&str>, _>(3).map(uuid).transpose()?,
                reference: row.get(4),
                actor: row.get(5),
                entries,
                created_at: time(row.get::<&str, _>(6))?,
            });
        }
        Ok(movements)
    }

    /// The ledger's invariants, checked over everything stored: the movements whose entries
    /// do not sum to zero, and the accounts whose held balance differs from their active holds
    /// or whose available balance is negative. All empty on a sound ledger.
    pub async fn audit(&self) -> Result<LedgerAudit, StoreError> {
        let unbalanced = sqlx::query_scalar::<_, String>(
            "SELECT movement_id FROM ledger_entries GROUP BY movement_id HAVING SUM(amount) <> 0",
        )
        .fetch_all(self.db.pool())
        .await?;
        let mut mismatched = Vec::new();
        let mut overdrawn = Vec::new();
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM accounts")
            .fetch_all(self.db.pool())
            .await?;
        let mut conn = self.db.pool().acquire().await?;
        for id in ids {
            let account = uuid(&id)?;
            let b = balances(&mut conn, account).await?;
            let active: i64 = sqlx::query_scalar(
                "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM holds WHERE account_id = $1 AND status = 'active'",
            )
            .bind(&id)
            .fetch_one(&mut *conn)
            .await?;
            if active != b.held {
                mismatched.push(account);
            }
            if b.available < 0 {
                overdrawn.push(account);
            }
        }
        Ok(LedgerAudit {
            unbalanced,
            mismatched,
            overdrawn,
        })
    }
}

/// What [`FinanceStore::audit`] found.
#[derive(Debug, Default, PartialEq)]
pub struct LedgerAudit {
    pub unbalanced: Vec<String>,
    pub mismatched: Vec<Uuid>,
    pub overdrawn: Vec<Uuid>,
}

/// Takes the account for this transaction (its row lock, or SQLite's write lock) and answers
/// its new version.
async fn lock(tx: &mut Transaction<'static, Any>, account: Uuid) -> Result<i64, StoreError> {
    let version: Option<i64> = sqlx::query_scalar(
        "UPDATE accounts SET version = version + 1 WHERE id = $1 RETURNING version",
    )
    .bind(account.to_string())
    .fetch_optional(&mut **tx)
    .await?;
    version.ok_or_else(|| StoreError::NotFound(format!("account {account}")))
}

/// Writes a movement and its two entries; answers the movement's id.
async fn book(
    tx: &mut Transaction<'static, Any>,
    account: Uuid,
    hold: Option<Uuid>,
    booking: &Booking<'_>,
) -> Result<Uuid, StoreError> {
    let id = axle_core::id::new_id();
    let now = axle_core::time::now_text();
    sqlx::query(
        "INSERT INTO movements (id, account_id, kind, amount, hold_id, reference, actor, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id.to_string())
    .bind(account.to_string())
    .bind(booking.kind.as_str())
    .bind(booking.amount)
    .bind(hold.map(|h| h.to_string()))
    .bind(booking.reference)
    .bind(booking.actor)
    .bind(&now)
    .execute(&mut **tx)
    .await?;
    for (book, amount) in booking.kind.entries(booking.amount) {
        sqlx::query(
            "INSERT INTO ledger_entries (id, movement_id, account_id, book, amount, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(axle_core::id::new_id().to_string())
        .bind(id.to_string())
        .bind(account.to_string())
        .bind(book.as_str())
        .bind(amount)
        .bind(&now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(id)
}

/// The account's balances, summed from its entries.
async fn balances(conn: &mut sqlx::AnyConnection, account: Uuid) -> Result<Balances, StoreError> {
    let rows = sqlx::query(
        "SELECT book, CAST(SUM(amount) AS BIGINT) FROM ledger_entries \
         WHERE account_id = $1 AND book IN ('available', 'held') GROUP BY book",
    )
    .bind(account.to_string())
    .fetch_all(&mut *conn)
    .await?;
    let mut b = Balances::default();
    for row in rows {
        match row.get::<&str, _>(0) {
            "available" => b.available = row.get(1),
            _ => b.held = row.get(1),
        }
    }
    b.total = b.available + b.held;
    Ok(b)
}

fn receivable_doc(r: &Receivable) -> String {
    serde_json::to_string(r).unwrap_or_default()
}

fn read_receivable(id: String, doc: String) -> Result<Receivable, StoreError> {
    serde_json::from_str(&doc).map_err(|e| StoreError::Corrupt(id, e.to_string()))
}

fn read_hold(row: sqlx::any::AnyRow) -> Result<Hold, StoreError> {
    let id: String = row.get(0);
    let status: String = row.get(5);
    Ok(Hold {
        id: uuid(&id)?,
        account_id: uuid(row.get::<&str, _>(1))?,
        amount: row.get(2),
        reason: row.get(3),
        reference: row.get(4),
        status: HoldStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(id, status))?,
        created_at: time(row.get::<&str, _>(6))?,
        updated_at: time(row.get::<&str, _>(7))?,
    })
}
