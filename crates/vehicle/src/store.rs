//! Persistence of vehicles (one SQL dialect for SQLite and PostgreSQL, see `axle_core::db`).

use axle_core::db::{Db, violates};
use axle_core::events::{CloudEvent, Outbox};
use axle_core::time::{from_text, to_text};
use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use crate::domain::{Vehicle, VehicleState, Vin};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("a vehicle with VIN {0} already exists")]
    VinExists(String),
    #[error("stored vehicle {0} is unreadable: {1}")]
    Corrupt(String, &'static str),
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

#[derive(Debug, Clone)]
pub struct VehicleStore {
    db: Db,
}

const COLUMNS: &str =
    "id, vin, make, model, year, mileage_km, state, version, created_at, updated_at";

impl VehicleStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Inserts a new vehicle and its event in one transaction.
    pub async fn create(&self, vehicle: &Vehicle, event: &CloudEvent) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO vehicles (id, vin, make, model, year, mileage_km, state, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(vehicle.id.to_string())
        .bind(vehicle.vin.as_str())
        .bind(&vehicle.make)
        .bind(&vehicle.model)
        .bind(i64::from(vehicle.year))
        .bind(vehicle.mileage_km)
        .bind(vehicle.state.as_str())
        .bind(vehicle.version)
        .bind(to_text(vehicle.created_at))
        .bind(to_text(vehicle.updated_at))
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(e) if violates(&e, "vehicles_vin_key") || violates(&e, "vehicles.vin") => {
                return Err(StoreError::VinExists(vehicle.vin.to_string()));
            }
            other => other?,
        };
        Outbox::enqueue(&mut tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<Vehicle>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM vehicles WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(self.db.pool())
            .await?;
        row.map(|r| read(&r)).transpose()
    }

    /// Up to `limit` vehicles in creation order, after the vehicle `after` when given.
    pub async fn list(&self, after: Option<Uuid>, limit: u32) -> Result<Vec<Vehicle>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM vehicles WHERE id > $1 ORDER BY id LIMIT $2");
        // UUIDv7 text sorts by creation time; the nil id sorts before all of them.
        let after = after.unwrap_or(Uuid::nil()).to_string();
        let rows = sqlx::query(&sql)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(read).collect()
    }
}

fn read(row: &AnyRow) -> Result<Vehicle, StoreError> {
    let id: String = row.try_get("id")?;
    let corrupt = |what| StoreError::Corrupt(id.clone(), what);
    Ok(Vehicle {
        id: Uuid::parse_str(&id).map_err(|_| corrupt("id"))?,
        vin: Vin::parse(&row.try_get::<String, _>("vin")?).map_err(|_| corrupt("vin"))?,
        make: row.try_get("make")?,
        model: row.try_get("model")?,
        year: i32::try_from(row.try_get::<i64, _>("year")?).map_err(|_| corrupt("year"))?,
        mileage_km: row.try_get("mileage_km")?,
        state: VehicleState::parse(&row.try_get::<String, _>("state")?)
            .ok_or_else(|| corrupt("state"))?,
        version: row.try_get("version")?,
        created_at: from_text(&row.try_get::<String, _>("created_at")?)
            .ok_or_else(|| corrupt("created_at"))?,
        updated_at: from_text(&row.try_get::<String, _>("updated_at")?)
            .ok_or_else(|| corrupt("updated_at"))?,
    })
}
