//! The consistency check: golden records against the vehicle service's own API.
//!
//! Reads every vehicle from the source (paging through `GET /vehicles`) and every golden
//! record, and reports each vehicle that is missing on either side or differs in any field.

use std::collections::BTreeSet;

use axle_vehicle_api::VehicleView;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::FieldDrift;
use crate::store::{GoldenStore, StoreError};

/// At most this many drifting vehicles are listed (all are counted).
const MAX_LISTED: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("vehicle service: {0}")]
    Source(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    /// The source has the vehicle, master data does not.
    MissingGolden,
    /// Master data has a vehicle the source does not.
    MissingSource,
    /// Both have it and some fields differ.
    Different,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VehicleDrift {
    pub vehicle_id: Uuid,
    pub kind: DriftKind,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldDrift>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DriftReport {
    /// Vehicles compared (the union of both sides).
    pub checked: u64,
    /// Vehicles that drift.
    pub drifting: u64,
    pub in_sync: bool,
    pub drift: Vec<VehicleDrift>,
}

/// The vehicle service's API, as master data reads it.
#[derive(Debug, Clone)]
pub struct VehicleSource {
    client: reqwest::Client,
    base: String,
}

#[derive(Deserialize)]
struct Page {
    items: Vec<VehicleView>,
    next_cursor: Option<String>,
}

impl VehicleSource {
    pub fn new(base: &str) -> Self {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Self {
            client,
            base: base.trim_end_matches('/').to_string(),
        }
    }

    async fn page(&self, cursor: Option<&str>, token: Option<&str>) -> Result<Page, CheckError> {
        let mut url = format!("{}/vehicles?limit=200", self.base);
        if let Some(c) = cursor {
            url.push_str("&cursor=");
            url.push_str(c);
        }
        let mut request = self.client.get(&url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| CheckError::Source(e.to_string()))?;
        if !response.status().is_success() {
            return Err(CheckError::Source(format!(
                "GET {url}: {}",
                response.status()
            )));
        }
        response
            .json()
            .await
            .map_err(|e| CheckError::Source(e.to_string()))
    }
}

/// Compares every golden record with the source, reading the source as the caller whose
/// `token` is given.
pub async fn check(
    store: &GoldenStore,
    source: &VehicleSource,
    token: Option<&str>,
) -> Result<DriftReport, CheckError> {
    let mut report = DriftReport {
        checked: 0,
        drifting: 0,
        in_sync: true,
        drift: Vec::new(),
    };
    let note = |report: &mut DriftReport, d: VehicleDrift| {
        report.drifting += 1;
        report.in_sync = false;
        if report.drift.len() < MAX_LISTED {
            report.drift.push(d);
        }
    };
    let mut seen = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = source.page(cursor.as_deref(), token).await?;
        for vehicle in &page.items {
            seen.insert(vehicle.id);
            report.checked += 1;
            match store.get(vehicle.id).await? {
                None => note(
                    &mut report,
                    VehicleDrift {
                        vehicle_id: vehicle.id,
                        kind: DriftKind::MissingGolden,
                        fields: vec![],
                    },
                ),
                Some(golden) => {
                    let fields = golden.differences(vehicle);
                    if !fields.is_empty() {
                        note(
                            &mut report,
                            VehicleDrift {
                                vehicle_id: vehicle.id,
                                kind: DriftKind::Different,
                                fields,
                            },
                        );
                    }
                }
            }
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    for id in store.ids().await? {
        if !seen.contains(&id) {
            report.checked += 1;
            note(
                &mut report,
                VehicleDrift {
                    vehicle_id: id,
                    kind: DriftKind::MissingSource,
                    fields: vec![],
                },
            );
        }
    }
    Ok(report)
}
