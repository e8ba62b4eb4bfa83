//! HTTP scaffolding shared by every service.
//!
//! [`service_router`] takes a service's API routes and returns the router it serves, adding:
//! - `/healthz` (the process is up), `/readyz` (its backends answer), `/metrics` (Prometheus
//!   text), `/openapi.json` (the service's OpenAPI 3.1 document, generated from code);
//! - a request id on every request (`X-Request-Id`, generated as UUIDv7 when absent, echoed on
//!   the response) and a span carrying it and the W3C trace id, continued from `traceparent`;
//! - one log line and the `axle_http_*` metrics per request, labelled by route template;
//! - JSON errors for unknown routes, wrong methods, oversized bodies and panics.
//!
//! Handlers use [`Json`], [`Path`] and [`Query`] from here so that bad input becomes a 4xx
//! in the shape of [`ErrorBody`].

pub mod auth;
pub mod client;
mod error;
pub mod idempotency;
mod page;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tracing::Instrument;

pub use auth::{Caller, Verifier};
pub use error::{ApiError, ApiResult, ErrorBody, Json, Path, Query};
pub use page::{Page, PageQuery};

use error::REQUEST_ID;

/// Checks a service's backends; `Err` names the one that does not answer.
pub type Readiness = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

#[derive(Clone)]
struct RequestMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl RequestMetrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new("axle_http_requests_total", "HTTP requests served"),
            &["method", "route", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "axle_http_request_duration_seconds",
                "Time to serve an HTTP request",
            ),
            &["method", "route"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self { requests, duration })
    }
}

/// Everything [`service_router`] needs besides the routes.
pub struct ServiceHttp {
    pub openapi: serde_json::Value,
    pub registry: Registry,
    pub readiness: Readiness,
    pub body_limit_bytes: usize,
}

/// The router a service serves: its API plus the endpoints and layers every service has.
pub fn service_router(api: Router, http: ServiceHttp) -> Result<Router, prometheus::Error> {
    let metrics = RequestMetrics::register(&http.registry)?;
    let openapi = Arc::new(http.openapi);
    let registry = http.registry;
    let readiness = http.readiness;
    let router = api
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route(
            "/readyz",
            get(move || {
                let readiness = readiness.clone();
                async move {
                    match readiness().await {
                        Ok(()) => Json(serde_json::json!({"status": "ready"})).into_response(),
                        Err(why) => {
                            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "NOT_READY", why)
                                .into_response()
                        }
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || async move { prometheus_text(&registry) }),
        )
        .route(
            "/openapi.json",
            get(move || async move { axum::Json(openapi.as_ref().clone()) }),
        )
        .fallback(|| async { ApiError::not_found("NOT_FOUND", "no such resource") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "method not allowed",
            )
        })
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal("handler panicked").into_response()
        }))
        .layer(DefaultBodyLimit::max(http.body_limit_bytes))
        .layer(middleware::from_fn_with_state(metrics, request_context))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeUuidV7));
    Ok(router)
}

/// Renders a registry in the Prometheus text format.
pub fn prometheus_text(registry: &Registry) -> Response {
    let mut buffer = Vec::new();
    match TextEncoder::new().encode(&registry.gather(), &mut buffer) {
        Ok(()) => ([("content-type", prometheus::TEXT_FORMAT)], buffer).into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

#[derive(Clone, Copy)]
struct MakeUuidV7;

impl MakeRequestId for MakeUuidV7 {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&crate::id::new_id().to_string())
            .ok()
            .map(RequestId::new)
    }
}

/// Runs the request inside its span and request-id scope, then logs and counts it.
async fn request_context(
    State(metrics): State<RequestMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    // The route template, not the path, keeps label cardinality bounded.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().clone();
    let span = tracing::info_span!(
        "request",
        method = %method,
        path = %request.uri().path(),
        request_id = %request_id,
        trace_id = tracing::field::Empty,
    );
    crate::telemetry::continue_trace(&span, request.headers());
    let started = Instant::now();
    let response = REQUEST_ID
        .scope(request_id, async {
            if let Some(trace_id) = crate::telemetry::current_trace_id() {
                tracing::Span::current().record("trace_id", trace_id);
            }
            let response = next.run(request).await;
            let status = response.status().as_u16();
            tracing::info!(
                status,
                elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                "request served"
            );
            response
        })
        .instrument(span)
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    metrics
        .requests
        .with_label_values(&[method.as_str(), &route, response.status().as_str()])
        .inc();
    metrics
        .duration
        .with_label_values(&[method.as_str(), &route])
        .observe(elapsed);
    response
}

/// Serves `router` on `listener` until `shutdown`, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}
