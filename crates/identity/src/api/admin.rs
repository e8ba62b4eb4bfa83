//! Administration: users, organisations, OAuth clients, roles, signing keys and the audit
//! trail. Every operation needs the `platform-admin` role; every change is audited and
//! published as an event (`axle.identity.<action>.v1`).

use axle_core::http::{ApiError, ApiResult, ErrorBody, Json, Page, PageQuery, Path, Query};
use axle_core::time::now;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::{AppState, Caller};
use crate::domain::{self, Client, ClientKind, Grant, Organisation, Role, Status, User, password};
use crate::provider::random_secret;
use crate::store::{AuditEntry, Change, digest};

const ADMIN: &[Role] = &[Role::PlatformAdmin];
/// Who may read the directory of organisations (to show names where records hold ids); any
/// user may read their own organisation.
const DIRECTORY: &[Role] = &[
    Role::PlatformAdmin,
    Role::Operator,
    Role::Auctioneer,
    Role::Finance,
    Role::ApiPublisher,
];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/users", get(list_users).post(create_user))
        .route("/users/{id}", get(fetch_user).patch(update_user))
        .route(
            "/organisations",
            get(list_organisations).post(create_organisation),
        )
        .route(
            "/organisations/{id}",
            get(fetch_organisation).patch(update_organisation),
        )
        .route("/clients", get(list_clients).post(create_client))
        .route("/clients/{id}", get(fetch_client).patch(update_client))
        .route("/clients/{id}/secret", post(new_client_secret))
        .route("/roles", get(roles))
        .route("/keys/rotate", post(rotate_keys))
        .route("/audit", get(audit))
}

fn not_found(what: &str) -> ApiError {
    ApiError::not_found("IDENTITY_NOT_FOUND", format!("no such {what}"))
}

// --- users ---------------------------------------------------------------------------------

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub username: String,
    pub password: String,
    pub email: Option<String>,
    /// Defaults to the username.
    pub display_name: Option<String>,
    pub org_id: Option<Uuid>,
    #[serde(default)]
    pub roles: Vec<Role>,
}

/// Builds a user from `new`, checked; answers it with its password's hash.
pub async fn build_user(state: &AppState, new: NewUser) -> ApiResult<(User, String)> {
    let username = domain::normalize_username(&new.username)?;
    if let Some(email) = &new.email {
        domain::check_email(email)?;
    }
    let display_name = new.display_name.unwrap_or_else(|| username.clone());
    domain::check_text("display_name", &display_name, 200)?;
    password::check_new(&new.password, &username)?;
    if let Some(org) = new.org_id {
        state
            .provider
            .store
            .organisation(org)
            .await?
            .ok_or_else(|| {
                ApiError::unprocessable("IDENTITY_INVALID", "org_id names no organisation")
            })?;
    }
    let pw = new.password;
    let hash = tokio::task::spawn_blocking(move || password::hash(&pw))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let at = now();
    let mut roles = new.roles;
    roles.sort();
    roles.dedup();
    Ok((
        User {
            id: axle_core::id::new_id(),
            username,
            email: new.email,
            display_name,
            org_id: new.org_id,
            roles,
            status: Status::Active,
            locked_until: None,
            version: 1,
            created_at: at,
            updated_at: at,
        },
        hash,
    ))
}

fn user_change<'a>(actor: &'a str, action: &'static str, user: &User) -> Change<'a> {
    Change {
        actor,
        action,
        target: format!("user:{}", user.id),
        version: user.version,
        detail: json!({
            "username": user.username,
            "org_id": user.org_id,
            "roles": user.roles,
            "status": user.status,
        }),
        notice: None,
    }
}

/// Create a user. Emits `axle.identity.user_created.v1`.
#[utoipa::path(post, path = "/users", tag = "admin", security(("bearer" = [])), request_body = NewUser,
    responses((status = 201, body = User), (status = 403, body = ErrorBody),
        (status = 409, description = "IDENTITY_EXISTS", body = ErrorBody),
        (status = 422, description = "IDENTITY_INVALID, IDENTITY_WEAK_PASSWORD", body = ErrorBody)))]
pub async fn create_user(
    State(state): State<AppState>,
    caller: Caller,
    Json(new): Json<NewUser>,
) -> ApiResult<(StatusCode, Json<User>)> {
    caller.require(ADMIN)?;
    let (user, hash) = build_user(&state, new).await?;
    let actor = caller.name();
    state
        .provider
        .store
        .create_user(&user, &hash, &user_change(&actor, "user_created", &user))
        .await?;
    state.outbox.wake();
    Ok((StatusCode::CREATED, Json(user)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UserQuery {
    /// Only the users of this organisation.
    pub org_id: Option<Uuid>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// List users.
#[utoipa::path(get, path = "/users", tag = "admin", security(("bearer" = [])), params(UserQuery),
    responses((status = 200, body = Page<User>), (status = 403, body = ErrorBody)))]
pub async fn list_users(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<UserQuery>,
) -> ApiResult<Json<Page<User>>> {
    caller.require(ADMIN)?;
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    };
    let limit = page.limit()?;
    let users = state
        .provider
        .store
        .users(q.org_id, page.after()?, limit)
        .await?;
    Ok(Json(Page::from_overfetch(users, limit, |u| {
        u.id.to_string()
    })))
}

/// Fetch one user.
#[utoipa::path(get, path = "/users/{id}", tag = "admin", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = User), (status = 404, body = ErrorBody)))]
pub async fn fetch_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<User>> {
    caller.require(ADMIN)?;
    let account = state
        .provider
        .store
        .user(id)
        .await?
        .ok_or_else(|| not_found("user"))?;
    Ok(Json(account.user))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    pub email: Option<String>,
    pub display_name: Option<String>,
    pub org_id: Option<Uuid>,
    pub roles: Option<Vec<Role>>,
    pub status: Option<Status>,
    /// `true` lifts a lock from failed sign-ins.
    pub unlock: Option<bool>,
    /// A new password (the user's sessions stay).
    pub password: Option<String>,
}

/// Change a user: profile, organisation, roles, status, lock, password. Emits
/// `axle.identity.user_updated.v1`.
#[utoipa::path(patch, path = "/users/{id}", tag = "admin", security(("bearer" = [])), params(("id" = Uuid, Path)),
    request_body = UserPatch,
    responses((status = 200, body = User), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn update_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(patch): Json<UserPatch>,
) -> ApiResult<Json<User>> {
    caller.require(ADMIN)?;
    let store = &state.provider.store;
    let mut user = store.user(id).await?.ok_or_else(|| not_found("user"))?.user;
    if let Some(email) = patch.email {
        domain::check_email(&email)?;
        user.email = Some(email);
    }
    if let Some(name) = patch.display_name {
        domain::check_text("display_name", &name, 200)?;
        user.display_name = name;
    }
    if let Some(org) = patch.org_id {
        store.organisation(org).await?.ok_or_else(|| {
            ApiError::unprocessable("IDENTITY_INVALID", "org_id names no organisation")
        })?;
        user.org_id = Some(org);
    }
    if let Some(mut roles) = patch.roles {
        roles.sort();
        roles.dedup();
        if user.id == caller.user_id().unwrap_or_default() && !roles.contains(&Role::PlatformAdmin)
        {
            return Err(ApiError::conflict(
                "IDENTITY_SELF_LOCKOUT",
                "you cannot take the platform-admin role from yourself",
            ));
        }
        user.roles = roles;
    }
    if let Some(status) = patch.status {
        user.status = status;
    }
    if patch.unlock == Some(true) {
        user.locked_until = None;
    }
    let hash = match patch.password {
        Some(pw) => {
            password::check_new(&pw, &user.username)?;
            Some(
                tokio::task::spawn_blocking(move || password::hash(&pw))
                    .await
                    .map_err(ApiError::internal)?
                    .map_err(ApiError::internal)?,
            )
        }
        None => None,
    };
    user.version += 1;
    user.updated_at = now();
    let actor = caller.name();
    let mut change = user_change(&actor, "user_updated", &user);
    change.detail["password_changed"] = hash.is_some().into();
    store.save_user(&user, hash.as_deref(), &change).await?;
    state.outbox.wake();
    Ok(Json(user))
}

// --- organisations -------------------------------------------------------------------------

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrganisation {
    pub name: String,
    pub deposit_account: Option<String>,
}

fn org_change<'a>(actor: &'a str, action: &'static str, org: &Organisation) -> Change<'a> {
    Change {
        actor,
        action,
        target: format!("organisation:{}", org.id),
        version: org.version,
        detail: json!({ "name": org.name, "status": org.status, "deposit_account": org.deposit_account }),
        notice: None,
    }
}

/// Create an organisation (a dealer company). Emits `axle.identity.organisation_created.v1`.
#[utoipa::path(post, path = "/organisations", tag = "admin", security(("bearer" = [])), request_body = NewOrganisation,
    responses((status = 201, body = Organisation), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_organisation(
    State(state): State<AppState>,
    caller: Caller,
    Json(new): Json<NewOrganisation>,
) -> ApiResult<(StatusCode, Json<Organisation>)> {
    caller.require(ADMIN)?;
    domain::check_text("name", &new.name, 200)?;
    if let Some(account) = &new.deposit_account {
        domain::check_text("deposit_account", account, 64)?;
    }
    let at = now();
    let org = Organisation {
        id: axle_core::id::new_id(),
        name: new.name.trim().to_string(),
        status: Status::Active,
        deposit_account: new.deposit_account,
        version: 1,
        created_at: at,
        updated_at: at,
    };
    let actor = caller.name();
    state
        .provider
        .store
        .create_organisation(&org, &org_change(&actor, "organisation_created", &org))
        .await?;
    state.outbox.wake();
    Ok((StatusCode::CREATED, Json(org)))
}

/// List organisations (staff).
#[utoipa::path(get, path = "/organisations", tag = "admin", security(("bearer" = [])), params(PageQuery),
    responses((status = 200, body = Page<Organisation>)))]
pub async fn list_organisations(
    State(state): State<AppState>,
    caller: Caller,
    Query(page): Query<PageQuery>,
) -> ApiResult<Json<Page<Organisation>>> {
    caller.require(DIRECTORY)?;
    let limit = page.limit()?;
    let orgs = state
        .provider
        .store
        .organisations(page.after()?, limit)
        .await?;
    Ok(Json(Page::from_overfetch(orgs, limit, |o| {
        o.id.to_string()
    })))
}

/// Fetch one organisation (staff, or its own users).
#[utoipa::path(get, path = "/organisations/{id}", tag = "admin", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = Organisation), (status = 404, body = ErrorBody)))]
pub async fn fetch_organisation(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Organisation>> {
    if caller.0.org != Some(id) {
        caller.require(DIRECTORY)?;
    }
    Ok(Json(
        state
            .provider
            .store
            .organisation(id)
            .await?
            .ok_or_else(|| not_found("organisation"))?,
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrganisationPatch {
    pub name: Option<String>,
    pub deposit_account: Option<String>,
    pub status: Option<Status>,
}

/// Change an organisation. Emits `axle.identity.organisation_updated.v1`.
#[utoipa::path(patch, path = "/organisations/{id}", tag = "admin", security(("bearer" = [])), params(("id" = Uuid, Path)),
    request_body = OrganisationPatch,
    responses((status = 200, body = Organisation), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update_organisation(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    Json(patch): Json<OrganisationPatch>,
) -> ApiResult<Json<Organisation>> {
    caller.require(ADMIN)?;
    let store = &state.provider.store;
    let mut org = store
        .organisation(id)
        .await?
        .ok_or_else(|| not_found("organisation"))?;
    if let Some(name) = patch.name {
        domain::check_text("name", &name, 200)?;
        org.name = name.trim().to_string();
    }
    if let Some(account) = patch.deposit_account {
        domain::check_text("deposit_account", &account, 64)?;
        org.deposit_account = Some(account);
    }
    if let Some(status) = patch.status {
        org.status = status;
    }
    org.version += 1;
    org.updated_at = now();
    let actor = caller.name();
    store
        .save_organisation(&org, &org_change(&actor, "organisation_updated", &org))
        .await?;
    state.outbox.wake();
    Ok(Json(org))
}

// --- clients -------------------------------------------------------------------------------

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewClient {
    /// The `client_id`: 3–64 letters, digits, `-_.`.
    pub id: String,
    pub name: String,
    pub kind: ClientKind,
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    #[serde(default)]
    pub post_logout_redirect_uris: Vec<String>,
    pub grants: Vec<Grant>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub roles: Vec<Role>,
    pub org_id: Option<Uuid>,
    #[serde(default)]
    pub first_party: bool,
}

/// A client, with its secret when one was just made (shown this once; only its hash is kept).
#[derive(Debug, Serialize, ToSchema)]
pub struct ClientWithSecret {
    #[serde(flatten)]
    pub client: Client,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
}

fn client_change<'a>(actor: &'a str, action: &'static str, client: &Client) -> Change<'a> {
    Change {
        actor,
        action,
        target: format!("client:{}", client.id),
        version: client.version,
        detail: json!({
            "kind": client.kind, "grants": client.grants, "scopes": client.scopes,
            "redirect_uris": client.redirect_uris, "roles": client.roles, "status": client.status,
        }),
        notice: None,
    }
}

/// Make a client from `new` (checked), with its secret when confidential.
pub fn build_client(new: NewClient) -> Result<(Client, Option<String>), domain::DomainError> {
    let at = now();
    let client = Client {
        id: new.id,
        name: new.name,
        kind: new.kind,
        redirect_uris: new.redirect_uris,
        post_logout_redirect_uris: new.post_logout_redirect_uris,
        grants: new.grants,
        scopes: new.scopes,
        roles: new.roles,
        org_id: new.org_id,
        first_party: new.first_party,
        status: Status::Active,
        version: 1,
        created_at: at,
        updated_at: at,
    };
    client.validate()?;
    let secret = (client.kind == ClientKind::Confidential).then(random_secret);
    Ok((client, secret))
}

/// Register an OAuth client. A confidential client's secret is in this answer only. Emits
/// `axle.identity.client_created.v1`.
#[utoipa::path(post, path = "/clients", tag = "admin", security(("bearer" = [])), request_body = NewClient,
    responses((status = 201, body = ClientWithSecret), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_client(
    State(state): State<AppState>,
    caller: Caller,
    Json(new): Json<NewClient>,
) -> ApiResult<(StatusCode, Json<ClientWithSecret>)> {
    caller.require(ADMIN)?;
    let (client, secret) = build_client(new)?;
    let actor = caller.name();
    let hash = secret.as_deref().map(digest);
    state
        .provider
        .store
        .create_client(
            &client,
            hash.as_deref(),
            &client_change(&actor, "client_created", &client),
        )
        .await?;
    state.outbox.wake();
    Ok((
        StatusCode::CREATED,
        Json(ClientWithSecret {
            client,
            client_secret: secret,
        }),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ClientQuery {
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// List clients.
#[utoipa::path(get, path = "/clients", tag = "admin", security(("bearer" = [])), params(ClientQuery),
    responses((status = 200, body = Page<Client>)))]
pub async fn list_clients(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ClientQuery>,
) -> ApiResult<Json<Page<Client>>> {
    caller.require(ADMIN)?;
    let limit = PageQuery {
        limit: q.limit,
        cursor: None,
    }
    .limit()?;
    let clients = state
        .provider
        .store
        .clients(q.cursor.as_deref(), limit)
        .await?;
    Ok(Json(Page::from_overfetch(clients, limit, |c| c.id.clone())))
}

/// Fetch one client (never its secret).
#[utoipa::path(get, path = "/clients/{id}", tag = "admin", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, body = Client), (status = 404, body = ErrorBody)))]
pub async fn fetch_client(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Client>> {
    caller.require(ADMIN)?;
    let (client, _) = state
        .provider
        .store
        .client(&id)
        .await?
        .ok_or_else(|| not_found("client"))?;
    Ok(Json(client))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientPatch {
    pub name: Option<String>,
    pub redirect_uris: Option<Vec<String>>,
    pub post_logout_redirect_uris: Option<Vec<String>>,
    pub grants: Option<Vec<Grant>>,
    pub scopes: Option<Vec<String>>,
    pub roles: Option<Vec<Role>>,
    pub org_id: Option<Uuid>,
    pub first_party: Option<bool>,
    pub status: Option<Status>,
}

/// Change a client. Emits `axle.identity.client_updated.v1`.
#[utoipa::path(patch, path = "/clients/{id}", tag = "admin", security(("bearer" = [])), params(("id" = String, Path)),
    request_body = ClientPatch,
    responses((status = 200, body = Client), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn update_client(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(patch): Json<ClientPatch>,
) -> ApiResult<Json<Client>> {
    caller.require(ADMIN)?;
    let store = &state.provider.store;
    let (mut client, _) = store
        .client(&id)
        .await?
        .ok_or_else(|| not_found("client"))?;
    let ClientPatch {
        name,
        redirect_uris,
        post_logout_redirect_uris,
        grants,
        scopes,
        roles,
        org_id,
        first_party,
        status,
    } = patch;
    if let Some(v) = name {
        client.name = v;
    }
    if let Some(v) = redirect_uris {
        client.redirect_uris = v;
    }
    if let Some(v) = post_logout_redirect_uris {
        client.post_logout_redirect_uris = v;
    }
    if let Some(v) = grants {
        client.grants = v;
    }
    if let Some(v) = scopes {
        client.scopes = v;
    }
    if let Some(v) = roles {
        client.roles = v;
    }
    if org_id.is_some() {
        client.org_id = org_id;
    }
    if let Some(v) = first_party {
        client.first_party = v;
    }
    if let Some(v) = status {
        client.status = v;
    }
    client.validate()?;
    client.version += 1;
    client.updated_at = now();
    let actor = caller.name();
    store
        .save_client(
            &client,
            None,
            &client_change(&actor, "client_updated", &client),
        )
        .await?;
    state.outbox.wake();
    Ok(Json(client))
}

/// Issue a confidential client a new secret (the old one stops working at once); the secret
/// is in this answer only.
#[utoipa::path(post, path = "/clients/{id}/secret", tag = "admin", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, body = ClientWithSecret), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn new_client_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ClientWithSecret>> {
    caller.require(ADMIN)?;
    let store = &state.provider.store;
    let (mut client, _) = store
        .client(&id)
        .await?
        .ok_or_else(|| not_found("client"))?;
    if client.kind != ClientKind::Confidential {
        return Err(ApiError::conflict(
            "IDENTITY_PUBLIC_CLIENT",
            "a public client has no secret",
        ));
    }
    let secret = random_secret();
    client.version += 1;
    client.updated_at = now();
    let actor = caller.name();
    store
        .save_client(
            &client,
            Some(&digest(&secret)),
            &client_change(&actor, "client_secret_rotated", &client),
        )
        .await?;
    state.outbox.wake();
    Ok(Json(ClientWithSecret {
        client,
        client_secret: Some(secret),
    }))
}

// --- roles, keys, audit --------------------------------------------------------------------

#[derive(Debug, Serialize, ToSchema)]
pub struct RoleInfo {
    pub name: Role,
    pub description: &'static str,
}

/// The roles users and clients can hold.
#[utoipa::path(get, path = "/roles", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = Vec<RoleInfo>)))]
pub async fn roles(_caller: Caller) -> Json<Vec<RoleInfo>> {
    Json(
        Role::ALL
            .into_iter()
            .map(|name| RoleInfo {
                name,
                description: name.describe(),
            })
            .collect(),
    )
}

/// Rotate the signing key now: new tokens are signed with a new key; the old one stays in the
/// JWKS until the tokens it signed have expired.
#[utoipa::path(post, path = "/keys/rotate", tag = "admin", security(("bearer" = [])),
    responses((status = 200, description = "`{\"kid\": …}` of the new key"), (status = 403, body = ErrorBody)))]
pub async fn rotate_keys(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<serde_json::Value>> {
    caller.require(ADMIN)?;
    let kid = state.provider.rotate_keys(&caller.name()).await?;
    state.outbox.wake();
    Ok(Json(json!({ "kid": kid })))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only changes of this target, e.g. `user:0190…`.
    pub target: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// The audit trail, oldest first: who changed what, when.
#[utoipa::path(get, path = "/audit", tag = "admin", security(("bearer" = [])), params(AuditQuery),
    responses((status = 200, body = Page<AuditEntry>)))]
pub async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Page<AuditEntry>>> {
    caller.require(ADMIN)?;
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    };
    let limit = page.limit()?;
    let entries = state
        .provider
        .store
        .audit_trail(q.target.as_deref(), page.after()?, limit)
        .await?;
    Ok(Json(Page::from_overfetch(entries, limit, |e| {
        e.id.to_string()
    })))
}
