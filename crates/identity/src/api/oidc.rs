//! The OpenID Connect and OAuth endpoints a client library talks to: discovery, the JWKS, the
//! token endpoint (code, refresh, client credentials), userinfo, revocation (RFC 7009) and
//! introspection (RFC 7662). Their errors are OAuth's (`{"error": "invalid_grant", ...}`),
//! not Axle's error body, because that is what clients parse.

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use super::AppState;
use crate::domain::oauth::OAuthError;
use crate::provider::{TokenError, TokenRequest, TokenResponse};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/token", post(token))
        .route("/userinfo", get(userinfo).post(userinfo))
        .route("/revoke", post(revoke))
        .route("/introspect", post(introspect))
}

/// The discovery document (OpenID Connect Discovery 1.0).
#[utoipa::path(get, path = "/.well-known/openid-configuration", tag = "oidc",
    responses((status = 200, description = "The provider's metadata")))]
pub async fn discovery(State(state): State<AppState>) -> Response {
    let issuer = &state.provider.settings.issuer;
    let body = json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "userinfo_endpoint": format!("{issuer}/userinfo"),
        "jwks_uri": format!("{issuer}/jwks"),
        "revocation_endpoint": format!("{issuer}/revoke"),
        "introspection_endpoint": format!("{issuer}/introspect"),
        "end_session_endpoint": format!("{issuer}/logout"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "sid",
            "name", "preferred_username", "email", "email_verified", "org", "roles"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": true,
    });
    cached(axum::Json(body).into_response(), 300)
}

/// The public keys tokens are signed with, including rotated-out keys whose tokens may still
/// be alive.
#[utoipa::path(get, path = "/jwks", tag = "oidc", responses((status = 200, description = "A JWK set")))]
pub async fn jwks(State(state): State<AppState>) -> Response {
    cached(
        axum::Json(state.provider.keys.jwks(axle_core::time::now())).into_response(),
        300,
    )
}

fn cached(mut response: Response, secs: u32) -> Response {
    if let Ok(value) = HeaderValue::from_str(&format!("public, max-age={secs}")) {
        response.headers_mut().insert(header::CACHE_CONTROL, value);
    }
    response
}

/// An OAuth error response: 400, or 401 for a client that failed to authenticate.
fn oauth_error(error: &OAuthError, basic: bool) -> Response {
    let status = if error.code == "invalid_client" {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::BAD_REQUEST
    };
    let mut response = (
        status,
        axum::Json(json!({ "error": error.code, "error_description": error.description })),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED && basic {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"axle\""),
        );
    }
    no_store(response)
}

fn no_store(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// A form body's fields; a field given twice is refused (RFC 6749 §3.1).
fn form(body: &[u8]) -> Result<BTreeMap<String, String>, OAuthError> {
    let mut fields = BTreeMap::new();
    for (name, value) in form_urlencoded::parse(body) {
        if fields
            .insert(name.to_string(), value.into_owned())
            .is_some()
        {
            return Err(OAuthError::new(
                "invalid_request",
                format!("{name} is given more than once"),
            ));
        }
    }
    Ok(fields)
}

/// The client's credentials: HTTP Basic (each half form-decoded, RFC 6749 §2.3.1) or the
/// `client_id`/`client_secret` form fields. Answers whether Basic was used.
fn client_credentials(
    headers: &HeaderMap,
    fields: &mut BTreeMap<String, String>,
) -> Result<(Option<String>, Option<String>, bool), OAuthError> {
    let bad = || OAuthError::new("invalid_client", "malformed client credentials");
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| bad())?;
        let (scheme, encoded) = value.split_once(' ').ok_or_else(bad)?;
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = STANDARD.decode(encoded.trim()).map_err(|_| bad())?;
            let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
            let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
            let unescape = |s: &str| {
                form_urlencoded::parse(format!("v={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            if fields.contains_key("client_secret") {
                return Err(OAuthError::new(
                    "invalid_request",
                    "use one client authentication method",
                ));
            }
            return Ok((Some(unescape(id)), Some(unescape(secret)), true));
        }
    }
    Ok((
        fields.remove("client_id"),
        fields.remove("client_secret"),
        false,
    ))
}

/// The token endpoint: `authorization_code` (with PKCE), `refresh_token` (rotating: each use
/// answers a new refresh token; a used one presented again revokes its family) and
/// `client_credentials`.
#[utoipa::path(post, path = "/token", tag = "oidc",
    request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, body = TokenResponse),
        (status = 400, description = "invalid_request, invalid_grant, invalid_scope, unauthorized_client, unsupported_grant_type"),
        (status = 401, description = "invalid_client"),
    ))]
pub async fn token(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let mut fields = match form(&body) {
        Ok(f) => f,
        Err(e) => return oauth_error(&e, false),
    };
    let (id, secret, basic) = match client_credentials(&headers, &mut fields) {
        Ok(c) => c,
        Err(e) => return oauth_error(&e, false),
    };
    let provider = &state.provider;
    let client = match provider
        .authenticate_client(id.as_deref(), secret.as_deref())
        .await
    {
        Ok(c) => c,
        Err(TokenError::OAuth(e)) => return oauth_error(&e, basic),
        Err(e) => return server_error(e),
    };
    let mut take = |name: &str| fields.remove(name);
    let request = TokenRequest {
        grant_type: take("grant_type"),
        code: take("code"),
        redirect_uri: take("redirect_uri"),
        code_verifier: take("code_verifier"),
        refresh_token: take("refresh_token"),
        scope: take("scope"),
        client_id: None,
        client_secret: None,
    };
    match provider.token(&client, &request).await {
        Ok(tokens) => no_store(axum::Json(tokens).into_response()),
        Err(TokenError::OAuth(e)) => oauth_error(&e, basic),
        Err(e) => server_error(e),
    }
}

fn server_error(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "token endpoint failed");
    oauth_error_status(StatusCode::INTERNAL_SERVER_ERROR, "server_error")
}

fn oauth_error_status(status: StatusCode, code: &str) -> Response {
    no_store((status, axum::Json(json!({ "error": code }))).into_response())
}

/// The signed-in user's claims, as the access token's scope releases them.
#[utoipa::path(get, path = "/userinfo", tag = "oidc", security(("bearer" = [])),
    responses((status = 200, description = "The user's claims"), (status = 401, description = "invalid_token")))]
pub async fn userinfo(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let invalid = || {
        let mut r = StatusCode::UNAUTHORIZED.into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
        r
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_string());
    let Some(token) = token else { return invalid() };
    let claims = match state.provider.verify_access(&token).await {
        Ok(Some(c)) => c,
        Ok(None) => return invalid(),
        Err(e) => return server_error(e),
    };
    match state.provider.userinfo(&claims).await {
        Ok(Some(info)) => no_store(axum::Json(info).into_response()),
        Ok(None) => invalid(),
        Err(e) => server_error(e),
    }
}

/// The form of revocation and introspection requests (for the OpenAPI document: the handlers
/// read the fields one by one, to refuse a field given twice).
#[allow(dead_code)]
#[derive(Debug, utoipa::ToSchema)]
pub struct TokenForm {
    pub token: String,
    pub token_type_hint: Option<String>,
}

/// Revokes a refresh token (and its family) or an access token (RFC 7009). Unknown tokens
/// are not an error.
#[utoipa::path(post, path = "/revoke", tag = "oidc",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "Revoked (or unknown)"), (status = 401, description = "invalid_client")))]
pub async fn revoke(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let (client, fields, _) = match authenticated(&state, &headers, &body).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(token) = fields.get("token") else {
        return oauth_error(
            &OAuthError::new("invalid_request", "token is missing"),
            false,
        );
    };
    match state.provider.revoke(&client, token).await {
        Ok(()) => no_store(StatusCode::OK.into_response()),
        Err(e) => server_error(e),
    }
}

/// What a token is (RFC 7662), for a confidential client.
#[utoipa::path(post, path = "/introspect", tag = "oidc",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "`{\"active\": …}` and the token's claims"), (status = 401, description = "invalid_client")))]
pub async fn introspect(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (client, fields, _) = match authenticated(&state, &headers, &body).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if client.kind != crate::domain::ClientKind::Confidential {
        return oauth_error(
            &OAuthError::new(
                "invalid_client",
                "introspection needs a confidential client",
            ),
            false,
        );
    }
    let Some(token) = fields.get("token") else {
        return oauth_error(
            &OAuthError::new("invalid_request", "token is missing"),
            false,
        );
    };
    match state.provider.introspect(&client, token).await {
        Ok(answer) => no_store(axum::Json(answer).into_response()),
        Err(e) => server_error(e),
    }
}

type Authenticated = (crate::domain::Client, BTreeMap<String, String>, bool);

async fn authenticated(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Authenticated, Response> {
    let mut fields = form(body).map_err(|e| oauth_error(&e, false))?;
    let (id, secret, basic) =
        client_credentials(headers, &mut fields).map_err(|e| oauth_error(&e, false))?;
    match state
        .provider
        .authenticate_client(id.as_deref(), secret.as_deref())
        .await
    {
        Ok(client) => Ok((client, fields, basic)),
        Err(TokenError::OAuth(e)) => Err(oauth_error(&e, basic)),
        Err(e) => Err(server_error(e)),
    }
}
