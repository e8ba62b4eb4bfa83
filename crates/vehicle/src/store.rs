//! Persistence of vehicles and inventory pools (one SQL dialect for SQLite and PostgreSQL, see
//! `axle_core::db`).
//!
//! A vehicle row holds the whole published view as JSON (`doc`) plus the columns queries filter
//! on. Every change is saved with its event in one transaction, guarded by the version it was
//! read at (optimistic concurrency): a concurrent change makes the save fail with `Conflict`.

use axle_core::db::{Db, violates};
use axle_core::events::{CloudEvent, Outbox};
use axle_core::time::{now_text, to_text};
use axle_vehicle_api::{VehicleState, VehicleView};
use serde::Serialize;
use sqlx::Row;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::Vehicle;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("a vehicle with VIN {0} already exists")]
    VinExists(String),
    #[error("the vehicle changed concurrently")]
    Conflict,
    #[error("a pool named {0:?} already exists")]
    PoolExists(String),
    #[error("stored vehicle {0} is unreadable: {1}")]
    Corrupt(String, String),
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

/// Which vehicles a list returns.
#[derive(Debug, Clone, Default)]
pub struct VehicleFilter {
    pub state: Option<VehicleState>,
    pub seller_org: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Pool {
    pub id: Uuid,
    pub name: String,
    pub capacity: i64,
    pub used: i64,
}

/// What a deduction from a pool did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deduction {
    Deducted,
    /// This vehicle was already deducted from this pool.
    AlreadyDeducted,
    /// No capacity left, or no such pool.
    Refused,
}

#[derive(Debug, Clone)]
pub struct VehicleStore {
    db: Db,
}

impl VehicleStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Inserts a new vehicle and its event in one transaction.
    pub async fn create(&self, vehicle: &Vehicle, event: &CloudEvent) -> Result<(), StoreError> {
        let v = vehicle.view();
        let insert = sqlx::query(
            "INSERT INTO vehicles (id, vin, make, model, year, mileage_km, state, version, created_at, \
             updated_at, seller_org, doc) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(v.id.to_string())
        .bind(&v.vin)
        .bind(&v.make)
        .bind(&v.model)
        .bind(i64::from(v.year))
        .bind(v.mileage_km)
        .bind(v.state.as_str())
        .bind(v.version)
        .bind(to_text(v.created_at))
        .bind(to_text(v.updated_at))
        .bind(v.seller_org.as_deref())
        .bind(doc(v));
        match Outbox::commit(&self.db, insert, event).await {
            Err(e) if violates(&e, "vehicles_vin_key") || violates(&e, "vehicles.vin") => {
                Err(StoreError::VinExists(v.vin.clone()))
            }
            other => other.map(|_| ()).map_err(Into::into),
        }
    }

    /// Saves `vehicle` and its event if the stored vehicle is still at `read_version`.
    pub async fn save(
        &self,
        vehicle: &Vehicle,
        read_version: i64,
        event: &CloudEvent,
    ) -> Result<(), StoreError> {
        let v = vehicle.view();
        let update = sqlx::query(
            "UPDATE vehicles SET mileage_km = $1, state = $2, version = $3, updated_at = $4, \
             seller_org = $5, doc = $6 WHERE id = $7 AND version = $8",
        )
        .bind(v.mileage_km)
        .bind(v.state.as_str())
        .bind(v.version)
        .bind(to_text(v.updated_at))
        .bind(v.seller_org.as_deref())
        .bind(doc(v))
        .bind(v.id.to_string())
        .bind(read_version);
        match Outbox::commit(&self.db, update, event).await? {
            1 => Ok(()),
            _ => Err(StoreError::Conflict),
        }
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<Vehicle>, StoreError> {
        let row = sqlx::query("SELECT id, doc FROM vehicles WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(self.db.pool())
            .await?;
        row.map(|r| read(r.get(0), r.get(1))).transpose()
    }

    /// Up to `limit` vehicles matching `filter`, in creation order, after the vehicle `after`.
    pub async fn list(
        &self,
        filter: &VehicleFilter,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Vehicle>, StoreError> {
        // UUIDv7 text sorts by creation time; the nil id sorts before all of them. A NULL filter
        // parameter matches everything.
        let rows = sqlx::query(
            "SELECT id, doc FROM vehicles WHERE id > $1 \
             AND ($2 IS NULL OR state = $2) AND ($3 IS NULL OR seller_org = $3) \
             ORDER BY id LIMIT $4",
        )
        .bind(after.unwrap_or(Uuid::nil()).to_string())
        .bind(filter.state.map(|s| s.as_str()))
        .bind(filter.seller_org.as_deref())
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        rows.into_iter().map(|r| read(r.get(0), r.get(1))).collect()
    }

    pub async fn create_pool(&self, name: &str, capacity: i64) -> Result<Pool, StoreError> {
        let pool = Pool {
            id: axle_core::id::new_id(),
            name: name.to_string(),
            capacity,
            used: 0,
        };
        let inserted = sqlx::query(
            "INSERT INTO pools (id, name, capacity, used, created_at) VALUES ($1, $2, $3, 0, $4)",
        )
        .bind(pool.id.to_string())
        .bind(&pool.name)
        .bind(capacity)
        .bind(now_text())
        .execute(self.db.pool())
        .await;
        match inserted {
            Err(e) if violates(&e, "pools_name_key") || violates(&e, "pools.name") => {
                Err(StoreError::PoolExists(pool.name))
            }
            other => other.map(|_| pool).map_err(Into::into),
        }
    }

    pub async fn get_pool(&self, id: Uuid) -> Result<Option<Pool>, StoreError> {
        let row = sqlx::query("SELECT name, capacity, used FROM pools WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(self.db.pool())
            .await?;
        Ok(row.map(|r| Pool {
            id,
            name: r.get(0),
            capacity: r.get(1),
            used: r.get(2),
        }))
    }

    /// Takes one unit of `pool` for `vehicle`; repeating it is harmless.
    pub async fn deduct(&self, pool: Uuid, vehicle: Uuid) -> Result<Deduction, StoreError> {
        let mut tx = self.db.begin().await?;
        // The write comes first so SQLite takes its write lock at once.
        let fresh = sqlx::query(
            "INSERT INTO pool_deductions (pool_id, vehicle_id, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(pool.to_string())
        .bind(vehicle.to_string())
        .bind(now_text())
        .execute(&mut *tx)
        .await;
        let fresh = match fresh {
            // The foreign key: no such pool.
            Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
                return Ok(Deduction::Refused);
            }
            other => other?.rows_affected() == 1,
        };
        if !fresh {
            return Ok(Deduction::AlreadyDeducted);
        }
        let taken =
            sqlx::query("UPDATE pools SET used = used + 1 WHERE id = $1 AND used < capacity")
                .bind(pool.to_string())
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if taken != 1 {
            tx.rollback().await?;
            return Ok(Deduction::Refused);
        }
        tx.commit().await?;
        Ok(Deduction::Deducted)
    }

    /// Gives back the unit `vehicle` took from `pool` (the compensation of `deduct`); true if
    /// there was one to give back.
    pub async fn restore(&self, pool: Uuid, vehicle: Uuid) -> Result<bool, StoreError> {
        let mut tx = self.db.begin().await?;
        let removed =
            sqlx::query("DELETE FROM pool_deductions WHERE pool_id = $1 AND vehicle_id = $2")
                .bind(pool.to_string())
                .bind(vehicle.to_string())
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if removed == 1 {
            sqlx::query("UPDATE pools SET used = used - 1 WHERE id = $1")
                .bind(pool.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(removed == 1)
    }
}

fn doc(view: &VehicleView) -> String {
    // A struct of strings, numbers and nested structs always serialises.
    serde_json::to_string(view).unwrap_or_default()
}

fn read(id: String, doc: String) -> Result<Vehicle, StoreError> {
    let view: VehicleView =
        serde_json::from_str(&doc).map_err(|e| StoreError::Corrupt(id.clone(), e.to_string()))?;
    Vehicle::restore(view).map_err(|e| StoreError::Corrupt(id, e.to_string()))
}
