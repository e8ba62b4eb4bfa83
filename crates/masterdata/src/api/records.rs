//! `/vehicles`: golden records, searched and fetched, and their timelines.

use axle_core::http::{ApiError, ApiResult, Caller, ErrorBody, Json, Page, PageQuery, Path, Query};
use axle_vehicle_api::VehicleState;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use crate::domain::GoldenVehicle;
use crate::store::{SearchFilter, TimelineEntry};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/vehicles", get(search))
        .route("/vehicles/{id}", get(fetch))
        .route("/vehicles/{id}/timeline", get(timeline))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    pub vin: Option<String>,
    pub state: Option<VehicleState>,
    pub make: Option<String>,
    pub seller_org: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Search golden records by VIN, state, make or seller.
#[utoipa::path(get, path = "/vehicles", tag = "golden records", params(SearchQuery),
    responses((status = 200, body = Page<GoldenVehicle>), (status = 400, body = ErrorBody)))]
pub async fn search(
    State(state): State<AppState>,
    _caller: Caller,
    Query(q): Query<SearchQuery>,
) -> ApiResult<Json<Page<GoldenVehicle>>> {
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    };
    let limit = page.limit()?;
    let after = page.after()?;
    let filter = SearchFilter {
        vin: q.vin,
        state: q.state,
        make: q.make,
        seller_org: q.seller_org,
    };
    let items = state.store.search(&filter, after, limit + 1).await?;
    Ok(Json(Page::from_overfetch(items, limit, |g| {
        g.id.to_string()
    })))
}

/// One golden record, with the provenance of every attribute.
#[utoipa::path(get, path = "/vehicles/{id}", tag = "golden records", params(("id" = Uuid, Path)),
    responses((status = 200, body = GoldenVehicle), (status = 404, description = "GOLDEN_RECORD_NOT_FOUND", body = ErrorBody)))]
pub async fn fetch(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<GoldenVehicle>> {
    state.store.get(id).await?.map(Json).ok_or_else(|| {
        ApiError::not_found(
            "GOLDEN_RECORD_NOT_FOUND",
            format!("no golden record for vehicle {id}"),
        )
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Timeline {
    pub items: Vec<TimelineEntry>,
}

/// Everything that happened to a vehicle, in order: what, when, who, which service.
#[utoipa::path(get, path = "/vehicles/{id}/timeline", tag = "golden records", params(("id" = Uuid, Path)),
    responses((status = 200, body = Timeline), (status = 404, body = ErrorBody)))]
pub async fn timeline(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Timeline>> {
    let items = state.store.timeline(id).await?;
    if items.is_empty() {
        return Err(ApiError::not_found(
            "GOLDEN_RECORD_NOT_FOUND",
            format!("no events for vehicle {id}"),
        ));
    }
    Ok(Json(Timeline { items }))
}
