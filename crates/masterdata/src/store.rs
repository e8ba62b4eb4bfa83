//! Persistence of golden records and the timeline (one SQL dialect for SQLite and PostgreSQL).

use axle_core::db::Db;
use axle_core::events::{CloudEvent, inbox};
use axle_core::time::{from_text, to_text};
use axle_vehicle_api::{VehicleChanged, VehicleState};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{GoldenVehicle, Observation};

/// The consumer name under which events are claimed.
pub const CONSUMER: &str = "masterdata.vehicles";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("stored record {0} is unreadable: {1}")]
    Corrupt(String, String),
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

/// One entry of a vehicle's timeline: what happened, when, by whom, reported by which service.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TimelineEntry {
    pub event_id: String,
    pub version: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub time: DateTime<Utc>,
    pub actor: String,
    pub source: String,
    /// The state the vehicle reached.
    pub state: VehicleState,
}

#[derive(Debug, Clone, Default)]
pub struct SearchFilter {
    pub vin: Option<String>,
    pub state: Option<VehicleState>,
    pub make: Option<String>,
    pub seller_org: Option<String>,
}

#[derive(Debug, Clone)]
pub struct GoldenStore {
    db: Db,
}

impl GoldenStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Records vehicle events, each once, in order and in one transaction: all of them or
    /// none. Returns how many were new.
    pub async fn record(
        &self,
        changes: &[(CloudEvent, VehicleChanged)],
    ) -> Result<usize, StoreError> {
        let mut tx = self.db.begin().await?;
        let mut fresh = 0;
        for (event, change) in changes {
            if record_in(&mut tx, event, change).await? {
                fresh += 1;
            }
        }
        tx.commit().await?;
        Ok(fresh)
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<GoldenVehicle>, StoreError> {
        let mut conn = self.db.pool().acquire().await?;
        golden_in(&mut conn, id).await
    }

    /// Up to `limit` records matching `filter`, in id (creation) order, after `after`.
    pub async fn search(
        &self,
        filter: &SearchFilter,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<GoldenVehicle>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, doc FROM golden_vehicles WHERE id > $1 \
             AND ($2 IS NULL OR vin = $2) AND ($3 IS NULL OR state = $3) \
             AND ($4 IS NULL OR make = $4) AND ($5 IS NULL OR seller_org = $5) \
             ORDER BY id LIMIT $6",
        )
        .bind(after.unwrap_or(Uuid::nil()).to_string())
        .bind(filter.vin.as_deref().map(str::to_ascii_uppercase))
        .bind(filter.state.map(|s| s.as_str()))
        .bind(filter.make.as_deref())
        .bind(filter.seller_org.as_deref())
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(read).collect()
    }

    /// Every id that has a golden record (for the consistency check).
    pub async fn ids(&self) -> Result<Vec<Uuid>, StoreError> {
        let rows: Vec<String> = sqlx::query_scalar("SELECT id FROM golden_vehicles ORDER BY id")
            .fetch_all(self.db.pool())
            .await?;
        rows.into_iter()
            .map(|id| {
                Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(id.clone(), e.to_string()))
            })
            .collect()
    }

    /// The vehicle's timeline in version order.
    pub async fn timeline(&self, id: Uuid) -> Result<Vec<TimelineEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT event_id, version, event_type, time, actor, source, data FROM timeline \
             WHERE vehicle_id = $1 ORDER BY version, time",
        )
        .bind(id.to_string())
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let event_id: String = r.get(0);
                let corrupt = |what: &str| StoreError::Corrupt(event_id.clone(), what.to_string());
                let change: VehicleChanged = serde_json::from_str(&r.get::<String, _>(6))
                    .map_err(|e| corrupt(&e.to_string()))?;
                Ok(TimelineEntry {
                    version: r.get(1),
                    event_type: r.get(2),
                    time: from_text(&r.get::<String, _>(3)).ok_or_else(|| corrupt("time"))?,
                    actor: r.get(4),
                    source: r.get(5),
                    state: change.vehicle.state,
                    event_id,
                })
            })
            .collect()
    }

    /// Rebuilds every golden record from the timeline; returns how many records it built.
    pub async fn replay(&self) -> Result<u64, StoreError> {
        let mut tx = self.db.begin().await?;
        sqlx::query("DELETE FROM golden_vehicles")
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query(
            "SELECT event_id, time, source, data FROM timeline ORDER BY vehicle_id, version, time",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut built = 0;
        for golden in fold_timeline(&rows)? {
            upsert(&mut tx, &golden).await?;
            built += 1;
        }
        tx.commit().await?;
        Ok(built)
    }
}

/// Records one vehicle event once inside `tx`: its timeline entry and the golden record it
/// leads to. False for an event already recorded.
async fn record_in(
    tx: &mut AnyConnection,
    event: &CloudEvent,
    change: &VehicleChanged,
) -> Result<bool, StoreError> {
    if !inbox::claim(tx, CONSUMER, &event.id).await? {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO timeline (event_id, vehicle_id, version, event_type, time, actor, source, data) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
    )
    .bind(&event.id)
    .bind(change.vehicle.id.to_string())
    .bind(event.aggregateversion)
    .bind(&event.ty)
    .bind(to_text(event.time))
    .bind(&change.actor)
    .bind(&event.source)
    .bind(serde_json::to_string(change).unwrap_or_default())
    .execute(&mut *tx)
    .await?;
    let seen = Observation {
        vehicle: &change.vehicle,
        source: &event.source,
        time: event.time,
        version: event.aggregateversion,
    };
    let current = golden_in(tx, change.vehicle.id).await?;
    let next = match &current {
        // A late event may tell when a current value was really set: fold the vehicle's
        // whole timeline again, in version order, for exact provenance.
        Some(c) if c.version > seen.version => {
            let rows = sqlx::query(
                "SELECT event_id, time, source, data FROM timeline WHERE vehicle_id = $1 \
                 ORDER BY version, time",
            )
            .bind(change.vehicle.id.to_string())
            .fetch_all(&mut *tx)
            .await?;
            fold_timeline(&rows)?.pop()
        }
        _ => GoldenVehicle::fold(current.as_ref(), &seen),
    };
    if let Some(next) = next {
        upsert(tx, &next).await?;
    }
    Ok(true)
}

/// Golden records from timeline rows (`event_id, time, source, data`) ordered by vehicle, then
/// version: one record per vehicle.
fn fold_timeline(rows: &[AnyRow]) -> Result<Vec<GoldenVehicle>, StoreError> {
    let mut built = Vec::new();
    let mut current: Option<GoldenVehicle> = None;
    for row in rows {
        let event_id: String = row.get(0);
        let corrupt = |what: String| StoreError::Corrupt(event_id.clone(), what);
        let change: VehicleChanged =
            serde_json::from_str(&row.get::<String, _>(3)).map_err(|e| corrupt(e.to_string()))?;
        let time = from_text(&row.get::<String, _>(1)).ok_or_else(|| corrupt("time".into()))?;
        let source: String = row.get(2);
        if current.as_ref().is_some_and(|c| c.id != change.vehicle.id) {
            built.extend(current.take());
        }
        let seen = Observation {
            vehicle: &change.vehicle,
            source: &source,
            time,
            version: change.vehicle.version,
        };
        if let Some(next) = GoldenVehicle::fold(current.as_ref(), &seen) {
            current = Some(next);
        }
    }
    built.extend(current);
    Ok(built)
}

async fn golden_in(
    conn: &mut AnyConnection,
    id: Uuid,
) -> Result<Option<GoldenVehicle>, StoreError> {
    let row = sqlx::query("SELECT id, doc FROM golden_vehicles WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(read).transpose()
}

/// Writes `golden` unless a newer version is already stored (replicas may race); a record of
/// the same version replaces the stored one (a refold with better provenance).
async fn upsert(conn: &mut AnyConnection, golden: &GoldenVehicle) -> Result<(), StoreError> {
    let text = |name: &str| {
        golden
            .attribute(name)
            .and_then(|v| v.as_str())
            .map(String::from)
    };
    sqlx::query(
        "INSERT INTO golden_vehicles (id, vin, state, make, seller_org, version, doc, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (id) DO UPDATE SET vin = excluded.vin, state = excluded.state, make = excluded.make, \
         seller_org = excluded.seller_org, version = excluded.version, doc = excluded.doc, \
         updated_at = excluded.updated_at WHERE golden_vehicles.version <= excluded.version",
    )
    .bind(golden.id.to_string())
    .bind(&golden.vin)
    .bind(golden.state.as_str())
    .bind(text("make").unwrap_or_default())
    .bind(text("seller_org"))
    .bind(golden.version)
    .bind(serde_json::to_string(golden).unwrap_or_default())
    .bind(to_text(golden.updated_at))
    .execute(conn)
    .await?;
    Ok(())
}

fn read(row: &AnyRow) -> Result<GoldenVehicle, StoreError> {
    let id: String = row.get(0);
    serde_json::from_str(&row.get::<String, _>(1))
        .map_err(|e| StoreError::Corrupt(id, e.to_string()))
}
