//! `/models`: the model catalog as last synced, with its freshness.

use axle_core::http::{ApiError, ApiResult, Caller, ErrorBody, Json, Query};
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use crate::catalog::{CatalogModel, SyncError, SyncStatus};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/models", get(models))
        .route("/models/sync", post(sync))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ModelQuery {
    pub make: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Models {
    pub models: Vec<CatalogModel>,
    #[serde(flatten)]
    pub status: SyncStatus,
}

/// The cached catalog; `stale: true` when the upstream could not be reached lately.
#[utoipa::path(get, path = "/models", tag = "catalog", params(ModelQuery), responses((status = 200, body = Models)))]
pub async fn models(
    State(state): State<AppState>,
    Query(q): Query<ModelQuery>,
) -> ApiResult<Json<Models>> {
    let models = state.catalog.models(q.make.as_deref()).await?;
    Ok(Json(Models {
        models,
        status: state.catalog.status().await?,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Synced {
    pub changed: usize,
}

/// Sync from the upstream now.
#[utoipa::path(post, path = "/models/sync", tag = "catalog",
    responses((status = 200, body = Synced), (status = 502, description = "CATALOG_UPSTREAM_UNAVAILABLE", body = ErrorBody),
              (status = 409, description = "CATALOG_NOT_CONFIGURED", body = ErrorBody)))]
pub async fn sync(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Synced>> {
    caller.require(super::operations::OPERATORS)?;
    match state.catalog.sync_once().await {
        Ok(changed) => Ok(Json(Synced { changed })),
        Err(e @ SyncError::NotConfigured) => {
            Err(ApiError::conflict("CATALOG_NOT_CONFIGURED", e.to_string()))
        }
        Err(e @ SyncError::Upstream(_)) => Err(ApiError::new(
            axum::http::StatusCode::BAD_GATEWAY,
            "CATALOG_UPSTREAM_UNAVAILABLE",
            e.to_string(),
        )),
        Err(SyncError::Sql(e)) => Err(e.into()),
    }
}
