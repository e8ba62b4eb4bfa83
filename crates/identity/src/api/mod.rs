//! Identity's HTTP API: the OpenID Connect endpoints ([`oidc`]), the pages of the sign-in flow
//! ([`pages`]), the signed-in user's own account ([`account`]) and the administration of users,
//! organisations, clients and keys ([`admin`]). Errors become HTTP here, in one place.

mod account;
mod admin;
mod oidc;
mod pages;

pub use admin::{NewClient, build_client};

use axle_core::events::Outbox;
use axle_core::http::ApiError;
use axle_web::csrf::CsrfKey;
use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use utoipa::OpenApi;

use crate::domain::{DomainError, Role};
use crate::provider::{AccessClaims, Provider};
use crate::store::StoreError;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub provider: Provider,
    pub outbox: Outbox,
    pub csrf: CsrfKey,
    /// The issuer URL's path (`/api/identity`): where cookies and pages live as browsers see
    /// them.
    pub public_path: String,
    /// Cookies only over HTTPS (when the issuer is https).
    pub secure_cookies: bool,
}

impl AppState {
    /// Where the pages' assets are, as browsers see them.
    pub fn assets(&self) -> String {
        axle_web::assets::base(&self.public_path)
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(oidc::router())
        .merge(pages::router())
        .merge(account::router())
        .merge(admin::router())
        .merge(axle_web::assets::router())
        .layer(axum::middleware::from_fn(axle_web::security::headers))
        .with_state(state)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Axle identity service",
        description = "Single sign-on for Axle: an OpenID Connect provider (discovery, JWKS, \
            authorization code with PKCE, client credentials, refresh-token rotation, revocation, \
            introspection, userinfo, logout) and the administration of users, organisations, \
            roles and OAuth clients."
    ),
    paths(
        oidc::discovery,
        oidc::jwks,
        oidc::token,
        oidc::userinfo,
        oidc::revoke,
        oidc::introspect,
        account::me,
        account::change_password,
        account::sessions,
        account::end_session,
        account::request_reset,
        account::reset_password,
        admin::create_user,
        admin::list_users,
        admin::fetch_user,
        admin::update_user,
        admin::create_organisation,
        admin::list_organisations,
        admin::fetch_organisation,
        admin::update_organisation,
        admin::create_client,
        admin::list_clients,
        admin::fetch_client,
        admin::update_client,
        admin::new_client_secret,
        admin::roles,
        admin::rotate_keys,
        admin::audit,
    ),
    components(schemas(axle_core::http::ErrorBody)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The caller of an API operation: a verified access token of this issuer.
#[derive(Debug, Clone)]
pub struct Caller(pub AccessClaims);

impl Caller {
    /// The caller's name for the audit trail.
    pub fn name(&self) -> String {
        self.0
            .preferred_username
            .clone()
            .unwrap_or_else(|| format!("client:{}", self.0.client_id))
    }

    /// Refuses (403) a caller with none of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.iter().any(|r| self.0.has_role(*r)) {
            Ok(())
        } else {
            Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "FORBIDDEN",
                format!(
                    "this operation needs the role {}",
                    roles
                        .iter()
                        .map(|r| r.as_str())
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            ))
        }
    }

    /// The signed-in user's id (403 for a client's own token).
    pub fn user_id(&self) -> Result<uuid::Uuid, ApiError> {
        uuid::Uuid::parse_str(&self.0.sub).map_err(|_| {
            ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "FORBIDDEN",
                "this operation is for signed-in users, not clients",
            )
        })
    }
}

/// 401 with `WWW-Authenticate: Bearer`, as RFC 6750 asks.
fn unauthenticated(message: &str) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut response = ApiError::new(
        axum::http::StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
        message,
    )
    .into_response();
    response.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    response
}

/// The bearer token of a request, if it has one.
fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = axum::response::Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        use axum::response::IntoResponse;
        let Some(token) = bearer(parts) else {
            return Err(unauthenticated("a bearer access token is required"));
        };
        match state.provider.verify_access(token).await {
            Ok(Some(claims)) => Ok(Caller(claims)),
            Ok(None) => Err(unauthenticated(
                "the access token is invalid, expired or revoked",
            )),
            Err(e) => Err(ApiError::from(e).into_response()),
        }
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        let message = e.to_string();
        match e {
            DomainError::Invalid(_) => ApiError::unprocessable("IDENTITY_INVALID", message),
            DomainError::WeakPassword(_) => {
                ApiError::unprocessable("IDENTITY_WEAK_PASSWORD", message)
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::Exists(_) => ApiError::conflict("IDENTITY_EXISTS", message),
            StoreError::NotFound(_) => ApiError::not_found("IDENTITY_NOT_FOUND", message),
            StoreError::Conflict => ApiError::conflict("IDENTITY_CONCURRENT_UPDATE", message),
            StoreError::Corrupt(_) | StoreError::Key(_) => ApiError::internal(e),
            StoreError::Sql(e) => e.into(),
        }
    }
}
