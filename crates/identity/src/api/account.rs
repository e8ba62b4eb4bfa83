//! The signed-in user's own account: who am I, change my password, my sessions; and password
//! reset by a one-time link.

use axle_core::http::{ApiError, ApiResult, ErrorBody, Json, Path};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post, put};
use chrono::Duration;
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{AppState, Caller};
use crate::domain::{User, password};
use crate::provider::random_secret;
use crate::store::{Change, Session};

/// How long a password reset link works.
const RESET_TTL_MINUTES: i64 = 30;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/me", get(me))
        .route("/me/password", put(change_password))
        .route("/me/sessions", get(sessions))
        .route("/me/sessions/{id}", delete(end_session))
        .route("/password-reset", post(request_reset))
        .route("/password-reset/confirm", post(reset_password))
}

/// The signed-in user.
#[utoipa::path(get, path = "/me", tag = "account", security(("bearer" = [])),
    responses((status = 200, body = User), (status = 401, body = ErrorBody)))]
pub async fn me(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<User>> {
    let id = caller.user_id()?;
    let account = state.provider.store.user(id).await?;
    account
        .map(|a| Json(a.user))
        .ok_or_else(|| ApiError::not_found("IDENTITY_NOT_FOUND", "no such user"))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    pub current_password: String,
    pub new_password: String,
}

/// Change my password (the current one is asked again). Other sessions stay signed in.
#[utoipa::path(put, path = "/me/password", tag = "account", security(("bearer" = [])),
    request_body = PasswordChange,
    responses((status = 204), (status = 403, description = "IDENTITY_WRONG_PASSWORD", body = ErrorBody),
        (status = 422, description = "IDENTITY_WEAK_PASSWORD", body = ErrorBody)))]
pub async fn change_password(
    State(state): State<AppState>,
    caller: Caller,
    Json(change): Json<PasswordChange>,
) -> ApiResult<StatusCode> {
    let id = caller.user_id()?;
    let account = state
        .provider
        .store
        .user(id)
        .await?
        .ok_or_else(|| ApiError::not_found("IDENTITY_NOT_FOUND", "no such user"))?;
    if !password::verify(&change.current_password, &account.password_hash) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "IDENTITY_WRONG_PASSWORD",
            "the current password is wrong",
        ));
    }
    set_password(&state, account.user, &change.new_password, &caller.name()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Checks, hashes and saves a new password for `user`, audited as `actor`.
pub(super) async fn set_password(
    state: &AppState,
    mut user: User,
    new_password: &str,
    actor: &str,
) -> ApiResult<()> {
    password::check_new(new_password, &user.username)?;
    let pw = new_password.to_string();
    let hash = tokio::task::spawn_blocking(move || password::hash(&pw))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    user.version += 1;
    user.updated_at = axle_core::time::now();
    user.locked_until = None;
    let change = Change {
        actor,
        action: "password_changed",
        target: format!("user:{}", user.id),
        version: user.version,
        detail: serde_json::json!({}),
        notice: None,
    };
    state
        .provider
        .store
        .save_user(&user, Some(&hash), &change)
        .await?;
    state.outbox.wake();
    Ok(())
}

/// My live sign-on sessions.
#[utoipa::path(get, path = "/me/sessions", tag = "account", security(("bearer" = [])),
    responses((status = 200, body = Vec<Session>)))]
pub async fn sessions(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<Session>>> {
    Ok(Json(
        state.provider.store.sessions_of(caller.user_id()?).await?,
    ))
}

/// End one of my sessions (and the refresh tokens issued in it).
#[utoipa::path(delete, path = "/me/sessions/{id}", tag = "account", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn end_session(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    if state
        .provider
        .store
        .end_session(caller.user_id()?, id)
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(
            "IDENTITY_NOT_FOUND",
            "no such live session",
        ))
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    pub username: String,
}

/// Ask for a password reset link. Always 202 (whether the user exists is not told); the link
/// goes to the user through the notification outbox as `axle.identity.password_reset_requested.v1`.
#[utoipa::path(post, path = "/password-reset", tag = "account", request_body = ResetRequest,
    responses((status = 202)))]
pub async fn request_reset(
    State(state): State<AppState>,
    Json(request): Json<ResetRequest>,
) -> ApiResult<StatusCode> {
    send_reset_link(&state, &request.username).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Sends `username` a reset link, if there is such a user.
pub(super) async fn send_reset_link(state: &AppState, username: &str) -> ApiResult<()> {
    let store = &state.provider.store;
    let username = username.trim().to_lowercase();
    if let Some(account) = store.user_by_name(&username).await? {
        let token = random_secret();
        let expires = axle_core::time::now() + Duration::minutes(RESET_TTL_MINUTES);
        store.insert_reset(&token, account.user.id, expires).await?;
        // The notification (with the link) is the event; the log says only that one was sent.
        let change = Change {
            actor: "identity",
            action: "password_reset_requested",
            target: format!("user:{}", account.user.id),
            version: account.user.version,
            detail: serde_json::json!({ "expires_at": expires }),
            notice: Some(serde_json::json!({
                "channel": "email",
                "to": account.user.email,
                "template": "password_reset",
                "link": format!("{}/reset?token={token}", state.provider.settings.issuer),
            })),
        };
        store.record(&change).await?;
        state.outbox.wake();
        tracing::info!(user = %account.user.id, "password reset link sent");
    }
    Ok(())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetConfirm {
    pub token: String,
    pub new_password: String,
}

/// Set a new password with a reset link's token (once; the link then stops working).
#[utoipa::path(post, path = "/password-reset/confirm", tag = "account", request_body = ResetConfirm,
    responses((status = 204), (status = 400, description = "IDENTITY_RESET_INVALID", body = ErrorBody),
        (status = 422, description = "IDENTITY_WEAK_PASSWORD", body = ErrorBody)))]
pub async fn reset_password(
    State(state): State<AppState>,
    Json(confirm): Json<ResetConfirm>,
) -> ApiResult<StatusCode> {
    reset_with_token(&state, &confirm.token, &confirm.new_password).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sets a new password with a reset link's token; the link then stops working.
pub(super) async fn reset_with_token(
    state: &AppState,
    token: &str,
    new_password: &str,
) -> ApiResult<()> {
    let store = &state.provider.store;
    let invalid = || {
        ApiError::bad_request(
            "IDENTITY_RESET_INVALID",
            "the reset link is unknown, used or expired",
        )
    };
    // Check the password before using up the link, so a weak one can be corrected.
    let user = match store.reset_user(token).await? {
        Some(id) => store.user(id).await?.ok_or_else(invalid)?.user,
        None => return Err(invalid()),
    };
    password::check_new(new_password, &user.username)?;
    if store.take_reset(token).await?.is_none() {
        return Err(invalid());
    }
    set_password(state, user, new_password, "password-reset").await
}
