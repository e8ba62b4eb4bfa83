//! `Idempotency-Key` for mutating requests, with Stripe's semantics.
//!
//! The first request with a key runs and its response is stored; a retry with the same key and
//! the same request gets the stored response again (with `Idempotent-Replayed: true`) without
//! running twice. The same key with a different request is a client bug: 422. A retry while the
//! first is still running: 409. Server errors (5xx) are not stored, so they can be retried.
//! Keys are scoped per consumer (the gateway's `X-Consumer-Username`) and kept for 24 hours.
//! A claim names the process that made it: one whose request never finished because the
//! process died is given back when that process starts again ([`release_claims`]), else after
//! a minute.

use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::ApiError;
use crate::db::Db;
use crate::time::{now_text, to_text};

/// How long a key is remembered.
pub const RETENTION: Duration = Duration::from_secs(24 * 3600);
/// A first request that has not finished after this long is presumed dead (its process
/// crashed), and a retry may take its key over.
const ABANDONED_AFTER: Duration = Duration::from_secs(60);
const MAX_KEY_LEN: usize = 255;
const MAX_BODY: usize = 1024 * 1024;

/// What the middleware needs: the service's database and this process's name.
#[derive(Debug, Clone)]
pub struct Keys {
    pub db: Db,
    pub node: std::sync::Arc<str>,
}

/// Middleware: `axum::middleware::from_fn_with_state(keys, idempotency::layer)`.
pub async fn layer(State(keys): State<Keys>, request: Request, next: Next) -> Response {
    let mutating = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    let Some(key) = request.headers().get("idempotency-key").cloned() else {
        return next.run(request).await;
    };
    if !mutating {
        return next.run(request).await;
    }
    match run_once(&keys, key, request, next).await {
        Ok(response) | Err(response) => response,
    }
}

async fn run_once(
    keys: &Keys,
    key: HeaderValue,
    request: Request,
    next: Next,
) -> Result<Response, Response> {
    let key = match key.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= MAX_KEY_LEN => k.to_string(),
        _ => {
            return Err(ApiError::bad_request(
                "IDEMPOTENCY_KEY_INVALID",
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            )
            .into_response());
        }
    };
    // Keys are per caller (the verified token's subject), so one caller's key never replays
    // another's response.
    let consumer = super::auth::verified_subject(&request)
        .await
        .unwrap_or_default();
    let scoped_key = format!("{consumer}\n{key}");
    let db = &keys.db;

    let (parts, body) = request.into_parts();
    let body = to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            "request body too large",
        )
        .into_response()
    })?;
    let mut hasher = Sha256::new();
    hasher.update(parts.method.as_str());
    hasher.update(b" ");
    hasher.update(parts.uri.to_string());
    hasher.update(b"\n");
    hasher.update(&body);
    let fingerprint = format!("{:x}", hasher.finalize());

    if let Some(replay) = claim(keys, &scoped_key, &fingerprint)
        .await
        .map_err(IntoResponse::into_response)?
    {
        return Ok(replay);
    }

    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    let (mut parts, body) = response.into_parts();
    let body = match to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            forget(db, &scoped_key).await;
            return Err(ApiError::internal(e).into_response());
        }
    };
    let text = std::str::from_utf8(&body).ok();
    if parts.status.is_server_error() || text.is_none() {
        forget(db, &scoped_key).await;
    } else {
        let content_type = parts
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok());
        let stored = sqlx::query(
            "UPDATE axle_idempotency_keys SET status = $1, content_type = $2, body = $3 WHERE key = $4",
        )
        .bind(i64::from(parts.status.as_u16()))
        .bind(content_type)
        .bind(text)
        .bind(&scoped_key)
        .execute(db.pool())
        .await;
        if let Err(e) = stored {
            // The change itself is committed; only the replay record is missing.
            tracing::error!(error = %e, "could not store the idempotent response");
        }
    }
    parts.headers.remove("content-length");
    Ok(Response::from_parts(parts, Body::from(body)))
}

/// Reserves the key for this request; `Some(response)` when the request must not run.
async fn claim(keys: &Keys, key: &str, fingerprint: &str) -> Result<Option<Response>, ApiError> {
    let db = &keys.db;
    loop {
        let inserted = sqlx::query(
            "INSERT INTO axle_idempotency_keys (key, fingerprint, created_at, claimed_by) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(key)
        .bind(fingerprint)
        .bind(now_text())
        .bind(&*keys.node)
        .execute(db.pool())
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(None);
        }
        let Some(row) = sqlx::query(
            "SELECT fingerprint, status, content_type, body, created_at FROM axle_idempotency_keys \
             WHERE key = $1",
        )
        .bind(key)
        .fetch_optional(db.pool())
        .await?
        else {
            continue; // deleted in between (a 5xx or an abandoned claim): try again
        };
        if row.get::<String, _>("fingerprint") != fingerprint {
            return Err(ApiError::unprocessable(
                "IDEMPOTENCY_KEY_REUSED",
                "this Idempotency-Key was used with a different request",
            ));
        }
        let Some(status) = row.get::<Option<i64>, _>("status") else {
            let abandoned = to_text(
                Utc::now() - chrono::Duration::from_std(ABANDONED_AFTER).unwrap_or_default(),
            );
            if row.get::<String, _>("created_at") < abandoned {
                forget(db, key).await;
                continue;
            }
            return Err(ApiError::conflict(
                "IDEMPOTENCY_KEY_IN_USE",
                "a request with this Idempotency-Key is still being processed",
            ));
        };
        let status =
            StatusCode::from_u16(u16::try_from(status).unwrap_or(500)).unwrap_or(StatusCode::OK);
        let mut response = Response::new(Body::from(
            row.get::<Option<String>, _>("body").unwrap_or_default(),
        ));
        *response.status_mut() = status;
        if let Some(ct) = row
            .get::<Option<String>, _>("content_type")
            .and_then(|c| HeaderValue::from_str(&c).ok())
        {
            response.headers_mut().insert("content-type", ct);
        }
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        return Ok(Some(response));
    }
}

async fn forget(db: &Db, key: &str) {
    if let Err(e) = sqlx::query("DELETE FROM axle_idempotency_keys WHERE key = $1")
        .bind(key)
        .execute(db.pool())
        .await
    {
        tracing::error!(error = %e, "could not release an idempotency key");
    }
}

/// Gives back the claims `node` made before `started` and never finished: their requests
/// died with the process, so a retry may run now. Run once when a service starts.
pub async fn release_claims(db: &Db, node: &str, started: &str) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM axle_idempotency_keys WHERE claimed_by = $1 AND status IS NULL AND created_at < $2",
    )
    .bind(node)
    .bind(started)
    .execute(db.pool())
    .await?
    .rows_affected())
}

/// Deletes keys older than [`RETENTION`]; run periodically by each service.
pub async fn purge_expired(db: &Db) -> Result<u64, sqlx::Error> {
    let cutoff = to_text(Utc::now() - chrono::Duration::from_std(RETENTION).unwrap_or_default());
    Ok(
        sqlx::query("DELETE FROM axle_idempotency_keys WHERE created_at < $1")
            .bind(cutoff)
            .execute(db.pool())
            .await?
            .rows_affected(),
    )
}
