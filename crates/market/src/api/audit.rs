//! `/audit`: the market's audit trail — every change, who made it and when — for publishers.

use axle_core::audit::AuditEntry;
use axle_core::http::{ApiResult, Caller, ErrorBody, Json, Page, PageQuery, Query};
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::Deserialize;
use utoipa::IntoParams;

use super::{AppState, PUBLISHERS};

pub fn router() -> Router<AppState> {
    Router::new().route("/audit", get(trail))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only the changes of this record (a product's, a subscription's… id).
    pub target: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// The audit trail, oldest first.
#[utoipa::path(get, path = "/audit", tag = "audit", operation_id = "audit_trail", params(AuditQuery),
    responses((status = 200, body = Page<AuditEntry>), (status = 403, body = ErrorBody)))]
pub async fn trail(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Page<AuditEntry>>> {
    caller.require(PUBLISHERS)?;
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    };
    let limit = page.limit()?;
    let entries = state
        .store
        .audit_trail(q.target.as_deref(), page.after()?, limit)
        .await?;
    Ok(Json(Page::from_overfetch(entries, limit, |e| {
        e.id.to_string()
    })))
}
