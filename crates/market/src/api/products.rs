//! `/products`, `/versions`: the catalog, and the publishers' side — products, their versions
//! (with the OpenAPI document, moving draft → published → deprecated → retired) and plans.

use std::time::Duration;

use axle_core::http::{ApiError, ApiResult, Caller, ErrorBody, Json, Path, Query};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{AppState, PUBLISHERS, not_found, sees};
use crate::domain::document;
use crate::domain::plan::{Approval, Limit, Plan, ProductPlan};
use crate::domain::product::{Product, Visibility};
use crate::domain::version::{self, ApiVersion, Backend, Command, Status};
use crate::events;
use crate::store::Record;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/products", get(list).post(create))
        .route("/products/{id}", get(fetch))
        .route("/products/{id}/versions", post(create_version))
        .route("/products/{id}/versions/import", post(import_version))
        .route("/products/{id}/plans", post(create_plan))
        .route("/versions/{id}", get(fetch_version))
        .route("/versions/{id}/openapi", get(document))
        .route("/versions/{id}/publish", post(publish))
        .route("/versions/{id}/weight", put(set_weight))
        .route("/versions/{id}/deprecate", post(deprecate))
        .route("/versions/{id}/retire", post(retire))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    /// Its name in paths: `/market/<slug>/v1/…`.
    pub slug: String,
    pub title: String,
    #[serde(default)]
    pub description: String,
    pub owner_team: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Public unless said otherwise.
    pub visibility: Option<Visibility>,
}

/// Create a product. Emits `axle.market.product_created.v1`.
#[utoipa::path(post, path = "/products", tag = "products", operation_id = "create_product", request_body = NewProduct,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retry-safe key")),
    responses((status = 201, body = Record<Product>), (status = 403, body = ErrorBody),
        (status = 409, description = "MARKET_PRODUCT_EXISTS", body = ErrorBody), (status = 422, description = "MARKET_INVALID", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(new): Json<NewProduct>,
) -> ApiResult<(StatusCode, Json<Record<Product>>)> {
    caller.require(PUBLISHERS)?;
    let product = Product {
        slug: new.slug,
        title: new.title,
        description: new.description,
        owner_team: new.owner_team,
        tags: new.tags,
        visibility: new.visibility.unwrap_or(Visibility::Public),
    }
    .checked()?;
    let record = Record::new(product, axle_core::id::new_id(), axle_core::time::now());
    let event = events::changed(&record, events::PRODUCT_CREATED, &caller.name)
        .map_err(ApiError::internal)?;
    state.store.create_product(&record, &event).await?;
    state.outbox.wake();
    Ok((StatusCode::CREATED, Json(record)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Search {
    /// Words in the slug, title or description.
    pub q: Option<String>,
    pub tag: Option<String>,
}

/// The catalog: the products the caller may see, oldest first, by words and tag.
#[utoipa::path(get, path = "/products", tag = "products", operation_id = "list_products", params(Search),
    responses((status = 200, body = [Record<Product>])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(search): Query<Search>,
) -> ApiResult<Json<Vec<Record<Product>>>> {
    let words: Vec<String> = search
        .q
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_lowercase)
        .collect();
    let mut found = Vec::new();
    let mut after = None;
    loop {
        let page = state.store.products(after, 200).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        found.extend(page.into_iter().filter(|p| {
            let text =
                format!("{} {} {}", p.item.slug, p.item.title, p.item.description).to_lowercase();
            sees(&caller, p)
                && words.iter().all(|w| text.contains(w))
                && search.tag.as_ref().is_none_or(|t| p.item.tags.contains(t))
        }));
    }
    Ok(Json(found))
}

/// A product with its versions and plans.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProductView {
    #[serde(flatten)]
    pub product: Record<Product>,
    /// Drafts only for publishers.
    pub versions: Vec<Record<ApiVersion>>,
    pub plans: Vec<Record<ProductPlan>>,
    /// Where each major version is served: `/market/<slug>/v<major>`.
    pub base_paths: Vec<String>,
}

/// Fetch a product with its versions and plans.
#[utoipa::path(get, path = "/products/{id}", tag = "products", operation_id = "fetch_product", params(("id" = Uuid, Path)),
    responses((status = 200, body = ProductView), (status = 404, description = "MARKET_NOT_FOUND", body = ErrorBody)))]
pub async fn fetch(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<ProductView>> {
    let product = visible(&state, &caller, id).await?;
    let publisher = caller.require(PUBLISHERS).is_ok();
    let versions: Vec<_> = state
        .store
        .versions_of(id)
        .await?
        .into_iter()
        .filter(|v| publisher || v.item.status != Status::Draft)
        .collect();
    let mut majors: Vec<u64> = versions
        .iter()
        .filter(|v| v.item.status.serves())
        .filter_map(|v| version::number(&v.item.number).ok().map(|n| n.major))
        .collect();
    majors.sort_unstable();
    majors.dedup();
    let base_paths = majors
        .into_iter()
        .map(|m| version::base_path(&product.item.slug, m))
        .collect();
    Ok(Json(ProductView {
        plans: state.store.plans_of(id).await?,
        product,
        versions,
        base_paths,
    }))
}

/// The product `id` if the caller may see it (404 otherwise, as if it did not exist).
async fn visible(state: &AppState, caller: &Caller, id: Uuid) -> ApiResult<Record<Product>> {
    match state.store.product(id).await? {
        Some(p) if sees(caller, &p) => Ok(p),
        _ => Err(not_found("product", id)),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewVersion {
    /// A semantic version: `1.2.0`.
    pub number: String,
    /// The OpenAPI 3.0 or 3.1 document, as text (JSON or YAML) or as a JSON object.
    pub document: Value,
    pub backend: Backend,
}

/// Add a draft version with its OpenAPI document. Emits `axle.market.version_created.v1`.
#[utoipa::path(post, path = "/products/{id}/versions", tag = "versions", operation_id = "create_version",
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header, description = "Retry-safe key")), request_body = NewVersion,
    responses((status = 201, body = Record<ApiVersion>), (status = 404, body = ErrorBody),
        (status = 409, description = "MARKET_VERSION_EXISTS", body = ErrorBody),
        (status = 422, description = "MARKET_INVALID, MARKET_INVALID_DOCUMENT (naming the line)", body = ErrorBody)))]
pub async fn create_version(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(new): Json<NewVersion>,
) -> ApiResult<(StatusCode, Json<Record<ApiVersion>>)> {
    caller.require(PUBLISHERS)?;
    let product = visible(&state, &caller, id).await?;
    let number = version::number(&new.number)?.to_string();
    let text = match &new.document {
        Value::String(text) => text.clone(),
        other => serde_json::to_string_pretty(other).map_err(ApiError::internal)?,
    };
    let document = document::check(&text).map_err(|problem| {
        ApiError::unprocessable("MARKET_INVALID_DOCUMENT", problem.to_string())
    })?;
    let record = Record::new(
        ApiVersion {
            product_id: product.id,
            number,
            status: Status::Draft,
            openapi: document.openapi,
            title: document.title,
            operations: document.operations.len(),
            backend: new.backend.checked()?,
            weight: None,
        },
        axle_core::id::new_id(),
        axle_core::time::now(),
    );
    let event = events::changed(&record, events::VERSION_CREATED, &caller.name)
        .map_err(ApiError::internal)?;
    state
        .store
        .create_version(&record, &document.content, &event)
        .await?;
    state.outbox.wake();
    Ok((StatusCode::CREATED, Json(record)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Import {
    /// A semantic version: `1.0.0`.
    pub number: String,
    /// The gateway route to import: its upstream becomes the version's backend.
    pub route_id: String,
    /// The OpenAPI document; none: a minimal one listing the route's paths.
    pub document: Option<Value>,
}

/// Add a draft version from an existing gateway route: its upstream as the backend, its
/// paths as the document unless one is given. Emits `axle.market.version_created.v1`.
#[utoipa::path(post, path = "/products/{id}/versions/import", tag = "versions", operation_id = "import_version",
    params(("id" = Uuid, Path)), request_body = Import,
    responses((status = 201, body = Record<ApiVersion>), (status = 404, description = "MARKET_NOT_FOUND (the product or the route)", body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, description = "MARKET_GATEWAY_UNAVAILABLE", body = ErrorBody)))]
pub async fn import_version(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(import): Json<Import>,
) -> ApiResult<(StatusCode, Json<Record<ApiVersion>>)> {
    caller.require(PUBLISHERS)?;
    let admin = state.gateway.admin();
    let safe = |id: &str| {
        !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    if !safe(&import.route_id) {
        return Err(not_found("route", &import.route_id));
    }
    let route = admin
        .get(&format!("/apisix/admin/routes/{}", import.route_id))
        .await?
        .ok_or_else(|| not_found("route", &import.route_id))?;
    let named = match (route["upstream_id"].as_str(), route["service_id"].as_str()) {
        (Some(upstream), _) if safe(upstream) => {
            admin
                .get(&format!("/apisix/admin/upstreams/{upstream}"))
                .await?
        }
        (None, Some(service)) if safe(service) => admin
            .get(&format!("/apisix/admin/services/{service}"))
            .await?
            .and_then(|s| s.get("upstream").cloned()),
        _ => None,
    };
    let backend =
        crate::gateway::config::imported_backend(&route, named.as_ref()).ok_or_else(|| {
            ApiError::unprocessable(
                "MARKET_INVALID",
                format!(
                    "route {}: no upstream node to import as the backend",
                    import.route_id
                ),
            )
        })?;
    let document = import
        .document
        .unwrap_or_else(|| crate::gateway::config::imported_document(&import.route_id, &route));
    create_version(
        State(state),
        caller,
        Path(id),
        Json(NewVersion {
            number: import.number,
            document,
            backend: Backend { url: backend },
        }),
    )
    .await
}

/// Fetch a version.
#[utoipa::path(get, path = "/versions/{id}", tag = "versions", operation_id = "fetch_version", params(("id" = Uuid, Path)),
    responses((status = 200, body = Record<ApiVersion>), (status = 404, body = ErrorBody)))]
pub async fn fetch_version(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Record<ApiVersion>>> {
    Ok(Json(readable_version(&state, &caller, id).await?))
}

/// The version `id` if the caller may read it: its product is visible, and it is no draft
/// unless the caller publishes.
async fn readable_version(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
) -> ApiResult<Record<ApiVersion>> {
    let version = state
        .store
        .api_version(id)
        .await?
        .ok_or_else(|| not_found("version", id))?;
    visible(state, caller, version.item.product_id).await?;
    if version.item.status == Status::Draft && caller.require(PUBLISHERS).is_err() {
        return Err(not_found("version", id));
    }
    Ok(version)
}

/// The version's OpenAPI document, as published.
#[utoipa::path(get, path = "/versions/{id}/openapi", tag = "versions", operation_id = "fetch_version_document", params(("id" = Uuid, Path)),
    responses((status = 200, description = "The OpenAPI document", body = Object), (status = 404, body = ErrorBody)))]
pub async fn document(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Value>> {
    readable_version(&state, &caller, id).await?;
    let document = state
        .store
        .document(id)
        .await?
        .ok_or_else(|| not_found("version", id))?;
    Ok(Json(document))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Weight {
    /// A canary's share of its major version's requests, 0 to 100 percent; none: the version
    /// serves what the canaries leave (the newest such version does).
    pub weight: Option<u8>,
}

/// Publish a draft: its routes go into the gateway — with a `weight`, as a canary taking that
/// share of its major version's requests. Refused when its backend cannot be reached. Emits
/// `axle.market.version_published.v1`.
#[utoipa::path(post, path = "/versions/{id}/publish", tag = "versions", operation_id = "publish_version", params(("id" = Uuid, Path)),
    request_body(content = Weight, description = "Optional"),
    responses((status = 200, body = Record<ApiVersion>), (status = 404, body = ErrorBody),
        (status = 409, description = "MARKET_ILLEGAL_TRANSITION, MARKET_CONCURRENT_UPDATE", body = ErrorBody),
        (status = 422, description = "MARKET_BACKEND_UNREACHABLE", body = ErrorBody)))]
pub async fn publish(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Record<ApiVersion>>> {
    caller.require(PUBLISHERS)?;
    let Weight { weight } = optional_body(&body)?;
    let mut version = readable_version(&state, &caller, id).await?;
    reachable(&version.item.backend).await?;
    version.item.weight = canary_weight(&state, &version, weight).await?;
    move_version(
        &state,
        &caller,
        version,
        Command::Publish,
        events::VERSION_PUBLISHED,
    )
    .await
}

/// Set or clear a serving version's canary weight. Emits `axle.market.version_weighted.v1`.
#[utoipa::path(put, path = "/versions/{id}/weight", tag = "versions", operation_id = "weigh_version",
    params(("id" = Uuid, Path)), request_body = Weight,
    responses((status = 200, body = Record<ApiVersion>), (status = 404, body = ErrorBody),
        (status = 409, description = "MARKET_ILLEGAL_TRANSITION (not serving), MARKET_CONCURRENT_UPDATE", body = ErrorBody),
        (status = 422, description = "MARKET_INVALID", body = ErrorBody)))]
pub async fn set_weight(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(Weight { weight }): Json<Weight>,
) -> ApiResult<Json<Record<ApiVersion>>> {
    caller.require(PUBLISHERS)?;
    let version = readable_version(&state, &caller, id).await?;
    if !version.item.status.serves() {
        return Err(crate::domain::DomainError::IllegalTransition {
            noun: "version",
            from: version.item.status.name(),
            action: "weigh",
        }
        .into());
    }
    let now = axle_core::time::now();
    let mut weighed = version.clone();
    weighed.item.weight = canary_weight(&state, &version, weight).await?;
    weighed.version += 1;
    weighed.updated_at = now;
    let event = events::changed(&weighed, events::VERSION_WEIGHTED, &caller.name)
        .map_err(ApiError::internal)?;
    state
        .store
        .save_version(&weighed, version.version, &event)
        .await?;
    state.changed().await;
    Ok(Json(weighed))
}

/// Checks `weight` for `version`: a canary shares its major's route, so its backend's path
/// must be that of the major's other serving versions.
async fn canary_weight(
    state: &AppState,
    version: &Record<ApiVersion>,
    weight: Option<u8>,
) -> ApiResult<Option<u8>> {
    let weight = version::weight(weight)?;
    if weight.is_none() {
        return Ok(None);
    }
    let major = |v: &ApiVersion| version::number(&v.number).ok().map(|n| n.major);
    let path = |v: &ApiVersion| v.backend.parts().map(|(_, _, path)| path);
    for other in state.store.versions_of(version.item.product_id).await? {
        if other.id != version.id
            && other.item.status.serves()
            && major(&other.item) == major(&version.item)
            && path(&other.item) != path(&version.item)
        {
            return Err(ApiError::unprocessable(
                "MARKET_INVALID",
                format!(
                    "weight: a canary's backend must have the path of the versions it shares \
                     traffic with ({} has {})",
                    other.item.number, other.item.backend.url
                ),
            ));
        }
    }
    Ok(weight)
}

/// An optional JSON body: empty reads as the default.
pub(super) fn optional_body<T: Default + serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    if body.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("BAD_REQUEST", format!("the body: {e}")))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Deprecation {
    /// When the version will be retired (RFC 3339, in the future).
    pub sunset: DateTime<Utc>,
}

/// Deprecate a published version: its responses carry `Deprecation` and `Sunset`. Emits
/// `axle.market.version_deprecated.v1`.
#[utoipa::path(post, path = "/versions/{id}/deprecate", tag = "versions", operation_id = "deprecate_version",
    params(("id" = Uuid, Path)), request_body = Deprecation,
    responses((status = 200, body = Record<ApiVersion>), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn deprecate(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(body): Json<Deprecation>,
) -> ApiResult<Json<Record<ApiVersion>>> {
    caller.require(PUBLISHERS)?;
    let version = readable_version(&state, &caller, id).await?;
    let command = Command::Deprecate {
        sunset: body.sunset,
    };
    move_version(
        &state,
        &caller,
        version,
        command,
        events::VERSION_DEPRECATED,
    )
    .await
}

/// Retire a version: it answers 410 (when no other version serves its major) and takes no
/// new subscriptions. Emits `axle.market.version_retired.v1`.
#[utoipa::path(post, path = "/versions/{id}/retire", tag = "versions", operation_id = "retire_version", params(("id" = Uuid, Path)),
    responses((status = 200, body = Record<ApiVersion>), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn retire(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Record<ApiVersion>>> {
    caller.require(PUBLISHERS)?;
    let version = readable_version(&state, &caller, id).await?;
    move_version(
        &state,
        &caller,
        version,
        Command::Retire,
        events::VERSION_RETIRED,
    )
    .await
}

async fn move_version(
    state: &AppState,
    caller: &Caller,
    version: Record<ApiVersion>,
    command: Command,
    event_type: &str,
) -> ApiResult<Json<Record<ApiVersion>>> {
    let now = axle_core::time::now();
    let mut moved = version.clone();
    moved.item.status = version.item.status.apply(command, now)?;
    moved.version += 1;
    moved.updated_at = now;
    let event = events::changed(&moved, event_type, &caller.name).map_err(ApiError::internal)?;
    state
        .store
        .save_version(&moved, version.version, &event)
        .await?;
    state.changed().await;
    Ok(Json(moved))
}

/// 422 `MARKET_BACKEND_UNREACHABLE` unless a TCP connection to the backend opens within 3 s.
async fn reachable(backend: &Backend) -> ApiResult<()> {
    let unreachable = |why: String| {
        ApiError::unprocessable(
            "MARKET_BACKEND_UNREACHABLE",
            format!("the backend {} cannot be reached: {why}", backend.url),
        )
    };
    let (_, node, _) = backend
        .parts()
        .ok_or_else(|| unreachable("not a URL".into()))?;
    let connect = tokio::net::TcpStream::connect(node.as_str());
    match tokio::time::timeout(Duration::from_secs(3), connect).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(unreachable("no answer within 3 s".into())),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPlan {
    pub name: String,
    /// At most `count` requests per period; none for no limit.
    pub limit: Option<Limit>,
    pub approval: Approval,
    /// Only these organisations' applications may choose it; none for all.
    pub organisations: Option<Vec<String>>,
}

/// Add a plan to a product. Emits `axle.market.plan_created.v1`.
#[utoipa::path(post, path = "/products/{id}/plans", tag = "products", operation_id = "create_plan",
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header, description = "Retry-safe key")), request_body = NewPlan,
    responses((status = 201, body = Record<ProductPlan>), (status = 404, body = ErrorBody),
        (status = 409, description = "MARKET_PLAN_EXISTS", body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_plan(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(new): Json<NewPlan>,
) -> ApiResult<(StatusCode, Json<Record<ProductPlan>>)> {
    caller.require(PUBLISHERS)?;
    let product = visible(&state, &caller, id).await?;
    let plan = Plan {
        name: new.name,
        limit: new.limit,
        approval: new.approval,
        organisations: new.organisations,
    }
    .checked()?;
    let record = Record::new(
        ProductPlan {
            product_id: product.id,
            plan,
        },
        axle_core::id::new_id(),
        axle_core::time::now(),
    );
    let event =
        events::changed(&record, events::PLAN_CREATED, &caller.name).map_err(ApiError::internal)?;
    state.store.create_plan(&record, &event).await?;
    // The product's routes gain the plan's (empty) rule.
    state.changed().await;
    Ok((StatusCode::CREATED, Json(record)))
}
