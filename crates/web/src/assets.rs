//! Static assets, embedded in the binary and served under a path that changes with their
//! content (`/assets/<hash>/…`), so browsers may keep them for a year.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

/// (name, content type, bytes).
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "pico.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/vendor/pico-2.1.1/pico.min.css"),
    ),
    (
        "htmx.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/vendor/htmx-2.0.8/htmx.min.js"),
    ),
    (
        "swagger-ui-bundle.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/vendor/swagger-ui-dist-5.36.0/swagger-ui-bundle.js"),
    ),
    (
        "swagger-ui.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/vendor/swagger-ui-dist-5.36.0/swagger-ui.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/vendor/uplot-1.6.32/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/vendor/uplot-1.6.32/uPlot.min.css"),
    ),
    (
        "axle.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/axle.css"),
    ),
    (
        "market.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/market.js"),
    ),
];

/// The first 8 hex digits of the SHA-256 of every asset: the path segment that changes when
/// any of them does.
pub static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut hash = Sha256::new();
    for (name, _, bytes) in FILES {
        hash.update(name.as_bytes());
        hash.update(bytes);
    }
    hash.finalize()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
});

/// Where the assets are, under `prefix` (the path the router is mounted at).
pub fn base(prefix: &str) -> String {
    format!("{}/assets/{}", prefix.trim_end_matches('/'), *VERSION)
}

/// `/assets/{version}/{name}`: an asset, cached for a year; an outdated version is 404 so a
/// stale page never mixes old markup with new styles.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/assets/{version}/{name}", get(serve))
}

async fn serve(Path((version, name)): Path<(String, String)>) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, bytes)) if version == *VERSION => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            *bytes,
        )
            .into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}
