//! `/applications`: the consumers' side — applications, their API keys and their
//! subscriptions. An application is its owner's (platform admins see every one).

use axle_core::http::{ApiError, ApiResult, Caller, ErrorBody, Json, Path};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use chrono::Duration;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{AppState, not_found, sees};
use crate::domain::application::{ApiKey, Application, consumer_name};
use crate::domain::subscription::{Status, Subscription};
use crate::domain::version::Status as VersionStatus;
use crate::events;
use crate::store::Record;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/applications", get(list).post(create))
        .route("/applications/{id}", get(fetch))
        .route("/applications/{id}/keys", get(list_keys).post(create_key))
        .route("/applications/{id}/keys/{key_id}", delete(revoke_key))
        .route("/applications/{id}/keys/{key_id}/rotate", post(rotate_key))
        .route(
            "/applications/{id}/subscriptions",
            get(list_subscriptions).post(subscribe),
        )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApplication {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

/// An application, and the gateway consumer it calls as.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApplicationView {
    #[serde(flatten)]
    pub application: Record<Application>,
    pub consumer: String,
}

impl From<Record<Application>> for ApplicationView {
    fn from(application: Record<Application>) -> Self {
        ApplicationView {
            consumer: consumer_name(application.id),
            application,
        }
    }
}

/// Create an application, owned by the caller for the caller's organisation. Emits
/// `axle.market.application_created.v1`.
#[utoipa::path(post, path = "/applications", tag = "applications", operation_id = "create_application",
    request_body = NewApplication, params(("Idempotency-Key" = Option<String>, Header, description = "Retry-safe key")),
    responses((status = 201, body = ApplicationView), (status = 422, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(new): Json<NewApplication>,
) -> ApiResult<(StatusCode, Json<ApplicationView>)> {
    let application = Application {
        name: new.name,
        description: new.description,
        owner: caller.subject.clone(),
        owner_name: caller.name.clone(),
        organisation: caller.org.clone(),
    }
    .checked()?;
    let record = Record::new(application, axle_core::id::new_id(), axle_core::time::now());
    let event = events::changed(&record, events::APPLICATION_CREATED, &caller.name)
        .map_err(ApiError::internal)?;
    state.store.create_application(&record, &event).await?;
    state.changed().await;
    Ok((StatusCode::CREATED, Json(record.into())))
}

/// The caller's applications, oldest first.
#[utoipa::path(get, path = "/applications", tag = "applications", operation_id = "list_applications",
    responses((status = 200, body = [ApplicationView])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<ApplicationView>>> {
    let apps = state.store.applications_of(&caller.subject).await?;
    Ok(Json(apps.into_iter().map(Into::into).collect()))
}

/// Fetch one of the caller's applications.
#[utoipa::path(get, path = "/applications/{id}", tag = "applications", operation_id = "fetch_application",
    params(("id" = Uuid, Path)), responses((status = 200, body = ApplicationView), (status = 404, body = ErrorBody)))]
pub async fn fetch(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<ApplicationView>> {
    Ok(Json(owned(&state, &caller, id).await?.into()))
}

/// The application `id` if the caller owns it (or is a platform admin); 404 otherwise.
pub(super) async fn owned(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
) -> ApiResult<Record<Application>> {
    match state.store.application(id).await? {
        Some(app) if app.item.owner == caller.subject || caller.has_role("platform-admin") => {
            Ok(app)
        }
        _ => Err(not_found("application", id)),
    }
}

/// A new key: shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct NewKey {
    #[serde(flatten)]
    pub record: Record<ApiKey>,
    /// The key: send it as the `apikey` header (or query parameter). It is not kept and is
    /// not shown again.
    pub key: String,
}

/// Make a new API key for the application. Emits `axle.market.key_created.v1`.
#[utoipa::path(post, path = "/applications/{id}/keys", tag = "applications", operation_id = "create_key",
    params(("id" = Uuid, Path)),
    responses((status = 201, body = NewKey), (status = 404, body = ErrorBody),
        (status = 503, description = "MARKET_GATEWAY_UNAVAILABLE: nothing was made", body = ErrorBody)))]
pub async fn create_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<(StatusCode, Json<NewKey>)> {
    let app = owned(&state, &caller, id).await?;
    let key = new_key(&state, &caller, &app, events::KEY_CREATED).await?;
    Ok((StatusCode::CREATED, Json(key)))
}

/// Makes a key: the gateway gets it first (the market keeps only its hash, so that is the
/// only moment it can), then the store.
async fn new_key(
    state: &AppState,
    caller: &Caller,
    app: &Record<Application>,
    event_type: &str,
) -> ApiResult<NewKey> {
    let (key, kept) = ApiKey::generate(app.id);
    let record = Record::new(kept, axle_core::id::new_id(), axle_core::time::now());
    let event = events::changed(&record, event_type, &caller.name).map_err(ApiError::internal)?;
    state.gateway.add_key(app, record.id, &key).await?;
    if let Err(e) = state.store.create_key(&record, &event).await {
        // Not kept, so it must not work: the next sync takes it out too should this fail.
        let mut lapsed = record.clone();
        lapsed.item.expires_at = Some(record.created_at);
        let _ = state.gateway.remove_key(&lapsed).await;
        return Err(e.into());
    }
    state.outbox.wake();
    Ok(NewKey { record, key })
}

/// The application's keys (never the keys themselves), expired ones too.
#[utoipa::path(get, path = "/applications/{id}/keys", tag = "applications", operation_id = "list_keys",
    params(("id" = Uuid, Path)), responses((status = 200, body = [Record<ApiKey>]), (status = 404, body = ErrorBody)))]
pub async fn list_keys(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Vec<Record<ApiKey>>>> {
    owned(&state, &caller, id).await?;
    Ok(Json(state.store.keys_of(id).await?))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    /// How long the old key keeps working, in seconds (default a day, at most 7 days).
    pub overlap_secs: Option<i64>,
}

/// Rotate a key: a new key, and the old one working on through the overlap. Emits
/// `axle.market.key_created.v1` and `axle.market.key_rotated.v1`.
#[utoipa::path(post, path = "/applications/{id}/keys/{key_id}/rotate", tag = "applications", operation_id = "rotate_key",
    params(("id" = Uuid, Path), ("key_id" = Uuid, Path)), request_body = Rotation,
    responses((status = 201, body = NewKey), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn rotate_key(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, key_id)): Path<(Uuid, Uuid)>,
    Json(rotation): Json<Rotation>,
) -> ApiResult<(StatusCode, Json<NewKey>)> {
    let app = owned(&state, &caller, id).await?;
    let old = key_of(&state, id, key_id).await?;
    let now = axle_core::time::now();
    let overlap = Duration::seconds(rotation.overlap_secs.unwrap_or(86_400));
    let mut rotated = old.clone();
    rotated.item = old.item.clone().rotated(now, overlap)?;
    rotated.version += 1;
    rotated.updated_at = now;
    let key = new_key(&state, &caller, &app, events::KEY_CREATED).await?;
    let event =
        events::changed(&rotated, events::KEY_ROTATED, &caller.name).map_err(ApiError::internal)?;
    state.store.save_key(&rotated, old.version, &event).await?;
    state.changed().await;
    Ok((StatusCode::CREATED, Json(key)))
}

/// Revoke a key: it stops working at once. Emits `axle.market.key_revoked.v1`.
#[utoipa::path(delete, path = "/applications/{id}/keys/{key_id}", tag = "applications", operation_id = "revoke_key",
    params(("id" = Uuid, Path), ("key_id" = Uuid, Path)),
    responses((status = 200, body = Record<ApiKey>), (status = 404, body = ErrorBody)))]
pub async fn revoke_key(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, key_id)): Path<(Uuid, Uuid)>,
) -> ApiResult<Json<Record<ApiKey>>> {
    owned(&state, &caller, id).await?;
    let key = key_of(&state, id, key_id).await?;
    let now = axle_core::time::now();
    if !key.item.works_at(now) {
        return Ok(Json(key));
    }
    let mut revoked = key.clone();
    revoked.item.expires_at = Some(now);
    revoked.version += 1;
    revoked.updated_at = now;
    let event =
        events::changed(&revoked, events::KEY_REVOKED, &caller.name).map_err(ApiError::internal)?;
    state.store.save_key(&revoked, key.version, &event).await?;
    state.changed().await;
    Ok(Json(revoked))
}

async fn key_of(state: &AppState, app: Uuid, key_id: Uuid) -> ApiResult<Record<ApiKey>> {
    match state.store.key(key_id).await? {
        Some(key) if key.item.application_id == app => Ok(key),
        _ => Err(not_found("key", key_id)),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSubscription {
    pub plan_id: Uuid,
}

/// Subscribe the application to a plan: approved at once under an automatic plan, else
/// waiting for a publisher. Emits `axle.market.subscription_requested.v1` or `…_approved.v1`.
#[utoipa::path(post, path = "/applications/{id}/subscriptions", tag = "applications", operation_id = "subscribe",
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header, description = "Retry-safe key")), request_body = NewSubscription,
    responses((status = 201, body = Record<Subscription>), (status = 403, description = "MARKET_PLAN_NOT_ALLOWED", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "MARKET_SUBSCRIPTION_EXISTS, MARKET_VERSION_RETIRED, MARKET_NOT_PUBLISHED", body = ErrorBody)))]
pub async fn subscribe(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(new): Json<NewSubscription>,
) -> ApiResult<(StatusCode, Json<Record<Subscription>>)> {
    let app = owned(&state, &caller, id).await?;
    let plan = state
        .store
        .plan(new.plan_id)
        .await?
        .ok_or_else(|| not_found("plan", new.plan_id))?;
    let product = match state.store.product(plan.item.product_id).await? {
        Some(p) if sees(&caller, &p) => p,
        _ => return Err(not_found("plan", new.plan_id)),
    };
    plan.item.plan.admits(app.item.organisation.as_deref())?;
    // Something must serve: a product whose versions are all retired takes no one new.
    let versions = state.store.versions_of(product.id).await?;
    if !versions.iter().any(|v| v.item.status.serves()) {
        let retired = versions
            .iter()
            .find(|v| matches!(v.item.status, VersionStatus::Retired { .. }));
        if let Some(retired) = retired {
            retired
                .item
                .status
                .takes_subscriptions(&retired.item.number)?;
        }
        return Err(ApiError::conflict(
            "MARKET_NOT_PUBLISHED",
            format!("{} has no published version yet", product.item.slug),
        ));
    }
    let status = Status::requested(plan.item.plan.approval);
    let record = Record::new(
        Subscription {
            application_id: app.id,
            product_id: product.id,
            plan_id: plan.id,
            status,
            reason: None,
            requested_by: caller.name.clone(),
            decided_by: (status == Status::Approved).then(|| "auto".to_string()),
        },
        axle_core::id::new_id(),
        axle_core::time::now(),
    );
    let event = events::changed(&record, events::subscription(status), &caller.name)
        .map_err(ApiError::internal)?;
    state.store.create_subscription(&record, &event).await?;
    state.changed().await;
    Ok((StatusCode::CREATED, Json(record)))
}

/// The application's subscriptions, oldest first.
#[utoipa::path(get, path = "/applications/{id}/subscriptions", tag = "applications", operation_id = "list_application_subscriptions",
    params(("id" = Uuid, Path)), responses((status = 200, body = [Record<Subscription>]), (status = 404, body = ErrorBody)))]
pub async fn list_subscriptions(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Vec<Record<Subscription>>>> {
    owned(&state, &caller, id).await?;
    Ok(Json(state.store.subscriptions_of(id).await?))
}
