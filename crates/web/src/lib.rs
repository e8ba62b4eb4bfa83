//! `axle-web`: the shell every Axle page stands in.
//!
//! Pages are rendered on the server with [askama] templates (checked when the crate compiles, so
//! a page cannot refer to a field its handler does not fill) and extend one layout,
//! `templates/layout.html`, whose [`Shell`] carries the title, the navigation for the signed-in
//! user's roles and the flash messages. The look is Pico CSS, and interactivity htmx, both
//! vendored under `assets/vendor` and served from the binary ([`assets`]); nothing is fetched
//! from a CDN and nothing needs a Node build. Forms carry a [`csrf`] token, and every response
//! gets the [`security`] headers.
//!
//! [`pages`] are the pages at `/` (home, my account, administration), a service of their own
//! ([`build`]) that the gateway signs browsers in to.
//!
//! A service crate with pages adds `"../web/templates"` to its `askama.toml` and
//! `{% extends "layout.html" %}`.

/// Axle's version, shown in the footer.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub mod assets;
pub mod csrf;
pub mod pages;
pub mod security;

use axle_core::platform::{Platform, Service, ServiceParts, StartError};

pub const NAME: &str = "web";

/// Builds the pages' service (served through the gateway at `/`, which signs browsers in).
pub async fn build(platform: &Platform) -> Result<Service, StartError> {
    let fail = |message: String| StartError::Service {
        service: NAME,
        message,
    };
    let config = &platform.config;
    let secret = config
        .web_session_secret()
        .map_err(|e| fail(format!("session secret: {e}")))?;
    let db = platform
        .open_db(NAME, &axle_core::db::Migrations::none())
        .await?;
    let api = pages::router(pages::AppState {
        identity: config.issuer(),
        market: format!("{}/api/market", config.site()),
        saga: format!("{}/api/saga", config.site()),
        order: format!("{}/api/order", config.site()),
        finance: format!("{}/api/finance", config.site()),
        site: config.site(),
        http: reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .unwrap_or_default(),
        csrf: csrf::CsrfKey::new(format!("csrf:{secret}").as_bytes()),
        secure: config.issuer().starts_with("https://"),
    });
    platform.assemble(ServiceParts {
        name: NAME,
        db,
        outbox: None,
        registry: prometheus::Registry::new(),
        api,
        openapi: serde_json::json!({
            "openapi": "3.1.0",
            "info": {"title": "Axle pages", "version": VERSION,
                "description": "Server-rendered pages; no JSON API."},
            "paths": {},
        }),
    })
}

/// What the layout needs from every page.
#[derive(Debug, Clone, Default)]
pub struct Shell {
    pub title: String,
    /// Where the assets are served, e.g. `/assets/3f2a9c1e`.
    pub assets: String,
    /// Links of the navigation bar (those the user's roles may use).
    pub nav: Vec<Link>,
    /// Who is signed in, if anyone.
    pub user: Option<String>,
    pub flash: Vec<Flash>,
    /// A page's own assets beyond the layout's (by name, see [`assets`]): stylesheets and
    /// scripts (deferred).
    pub styles: Vec<&'static str>,
    pub scripts: Vec<&'static str>,
}

impl Shell {
    pub fn new(title: impl Into<String>, assets: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            assets: assets.into(),
            ..Self::default()
        }
    }

    pub fn version(&self) -> &'static str {
        VERSION
    }

    pub fn with_flash(mut self, kind: FlashKind, text: impl Into<String>) -> Self {
        self.flash.push(Flash {
            kind,
            text: text.into(),
        });
        self
    }
}

#[derive(Debug, Clone)]
pub struct Link {
    pub href: String,
    pub label: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlashKind {
    Info,
    Error,
}

/// A message shown once at the top of a page.
#[derive(Debug, Clone)]
pub struct Flash {
    pub kind: FlashKind,
    pub text: String,
}

impl Flash {
    pub fn is_error(&self) -> bool {
        self.kind == FlashKind::Error
    }
}

/// A rendered page, answered as `text/html` (a template error is a 500 with no details).
#[derive(Debug)]
pub struct Html(pub Result<String, askama::Error>);

impl<T: askama::Template> From<&T> for Html {
    fn from(page: &T) -> Self {
        Html(page.render())
    }
}

impl axum::response::IntoResponse for Html {
    fn into_response(self) -> axum::response::Response {
        use axum::http::{StatusCode, header};
        match self.0 {
            Ok(body) => (
                [
                    (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                body,
            )
                .into_response(),
            Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response(),
        }
    }
}
