//! Usage: `POST /usage/counts` takes the counts of the gateway's `usage-counter`, and
//! `POST /usage/ingest` entries of `http-logger` (so an APISIX fleet can be metered too), both
//! with the market's usage token; `GET /applications/{id}/usage` and `GET /products/{id}/usage` sum them up for
//! the application's owner and for publishers.

use std::collections::BTreeMap;

use axle_core::http::{ApiError, ApiResult, Caller, ErrorBody, Json, Path, Query};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use chrono::TimeDelta;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{AppState, PUBLISHERS, not_found};
use crate::domain::usage::{self, Summary};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/usage/ingest", post(ingest))
        .route("/usage/counts", post(counts))
        .route("/applications/{id}/usage", get(of_application))
        .route("/products/{id}/usage", get(of_product))
}

/// Take a batch of the gateway's log entries (APISIX's `http-logger` format, a JSON array);
/// `X-Axle-Dropped` says how many it could not send before.
#[utoipa::path(post, path = "/usage/ingest", tag = "usage", operation_id = "ingest_usage",
    params(("X-Axle-Dropped" = Option<u64>, Header, description = "Entries the gateway dropped since its last batch")),
    request_body(content = Vec<Object>, description = "http-logger entries"),
    responses((status = 204, description = "Counted"), (status = 401, body = ErrorBody)))]
pub async fn ingest(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(entries): Json<Vec<usage::Entry>>,
) -> ApiResult<StatusCode> {
    let dropped = from_the_gateway(&state, &headers)?;
    let counted = usage::count(&entries, dropped, axle_core::time::now());
    state.store.add_usage(&counted).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Take the counts of the gateway's `usage-counter` (per route, consumer, status class and
/// minute); `X-Axle-Dropped` says how many requests it could not count.
#[utoipa::path(post, path = "/usage/counts", tag = "usage", operation_id = "ingest_usage_counts",
    params(("X-Axle-Dropped" = Option<u64>, Header, description = "Requests the gateway dropped since its last post")),
    request_body(content = Vec<Object>, description = "usage-counter counts"),
    responses((status = 204, description = "Counted"), (status = 401, body = ErrorBody)))]
pub async fn counts(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(counted): Json<Vec<usage::Counted>>,
) -> ApiResult<StatusCode> {
    let dropped = from_the_gateway(&state, &headers)?;
    let added = usage::add_counted(&counted, dropped, axle_core::time::now());
    state.store.add_usage(&added).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Checks the usage token a report carries; answers the drops it reports.
fn from_the_gateway(state: &AppState, headers: &HeaderMap) -> ApiResult<u64> {
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !same(presented.as_bytes(), state.usage_token.as_bytes()) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "the usage token is missing or wrong",
        ));
    }
    Ok(headers
        .get("x-axle-dropped")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// Compares in time independent of where the texts differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Span {
    /// How many minutes back (default 60, at most 43,200: 30 days).
    pub minutes: Option<i64>,
}

impl Span {
    fn from(&self) -> ApiResult<chrono::DateTime<chrono::Utc>> {
        let minutes = self.minutes.unwrap_or(60);
        if !(1..=43_200).contains(&minutes) {
            return Err(ApiError::bad_request(
                "MARKET_INVALID",
                "minutes: 1 to 43200",
            ));
        }
        Ok(axle_core::time::now() - TimeDelta::minutes(minutes))
    }
}

/// An application's usage: overall, and per product.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApplicationUsage {
    #[serde(flatten)]
    pub summary: Summary,
    pub products: BTreeMap<Uuid, Summary>,
}

/// The application's usage over the last minutes.
#[utoipa::path(get, path = "/applications/{id}/usage", tag = "usage", operation_id = "application_usage",
    params(("id" = Uuid, Path), Span), responses((status = 200, body = ApplicationUsage), (status = 404, body = ErrorBody)))]
pub async fn of_application(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Query(span): Query<Span>,
) -> ApiResult<Json<ApplicationUsage>> {
    super::applications::owned(&state, &caller, id).await?;
    let rows = state.store.usage(id, false, span.from()?).await?;
    let mut by_product: BTreeMap<Uuid, Vec<_>> = BTreeMap::new();
    for row in &rows {
        by_product.entry(row.0.product).or_default().push(*row);
    }
    Ok(Json(ApplicationUsage {
        summary: usage::summarize(&rows),
        products: by_product
            .into_iter()
            .map(|(product, rows)| (product, usage::summarize(&rows)))
            .collect(),
    }))
}

/// A product's usage: overall, and per application (requests of no application under
/// `anonymous`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ProductUsage {
    #[serde(flatten)]
    pub summary: Summary,
    pub applications: BTreeMap<String, Summary>,
}

/// The product's usage over the last minutes, per consuming application (publishers).
#[utoipa::path(get, path = "/products/{id}/usage", tag = "usage", operation_id = "product_usage",
    params(("id" = Uuid, Path), Span), responses((status = 200, body = ProductUsage), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn of_product(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Query(span): Query<Span>,
) -> ApiResult<Json<ProductUsage>> {
    caller.require(PUBLISHERS)?;
    if state.store.product(id).await?.is_none() {
        return Err(not_found("product", id));
    }
    let rows = state.store.usage(id, true, span.from()?).await?;
    let mut by_app: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for row in &rows {
        if row.0.status == 0 {
            continue;
        }
        let name = row
            .0
            .application
            .map_or("anonymous".into(), |a| a.to_string());
        by_app.entry(name).or_default().push(*row);
    }
    Ok(Json(ProductUsage {
        summary: usage::summarize(&rows),
        applications: by_app
            .into_iter()
            .map(|(app, rows)| (app, usage::summarize(&rows)))
            .collect(),
    }))
}
