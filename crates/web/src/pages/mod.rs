//! The pages at `/`: home, the signed-in user's account, and the administration of users,
//! organisations, clients and roles — each a template and a thin handler calling a service's
//! API with the user's own token.
//!
//! The gateway signs browsers in before a page is reached (`openid-connect`, the authorization
//! code flow with PKCE against the identity service, the session in an encrypted cookie) and
//! passes the user's access token on; each handler verifies it again ([`Caller`]) and shows
//! only what the user's roles allow.

mod account;
mod admin;
mod market;

use askama::Template;
use axle_core::http::Caller;
use axum::Router;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::csrf::CsrfKey;
use crate::{FlashKind, Html, Link, Shell};

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The identity service's API (its issuer URL).
    pub identity: String,
    /// The market's API, and the gateway as browsers reach it (where the market's APIs are
    /// called).
    pub market: String,
    pub site: String,
    pub http: reqwest::Client,
    pub csrf: CsrfKey,
    /// Cookies only over HTTPS.
    pub secure: bool,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(home))
        .merge(account::router())
        .merge(admin::router())
        .merge(market::router())
        .merge(crate::assets::router())
        .fallback(not_found)
        .layer(axum::middleware::from_fn(crate::security::headers))
        .with_state(state)
}

/// The signed-in user's shell: navigation by role.
pub(crate) fn shell(title: &str, caller: &Caller, flash: Option<&Flash>) -> Shell {
    let mut nav = vec![
        link("/", "Home"),
        link("/market", "Market"),
        link("/market/apps", "Apps"),
    ];
    if caller.has_role("api-publisher") || caller.has_role("platform-admin") {
        nav.push(link("/market/approvals", "Approvals"));
    }
    nav.push(link("/account", "Account"));
    if caller.has_role("platform-admin") {
        nav.extend([
            link("/admin/users", "Users"),
            link("/admin/organisations", "Organisations"),
            link("/admin/clients", "Clients"),
            link("/admin/roles", "Roles"),
        ]);
    }
    nav.push(link("/logout", "Sign out"));
    let mut shell = Shell::new(title, crate::assets::base(""));
    shell.nav = nav;
    shell.user = Some(caller.name.clone());
    if let Some(flash) = flash {
        shell = shell.with_flash(flash.kind(), flash.text());
    }
    shell
}

fn link(href: &str, label: &str) -> Link {
    Link {
        href: href.into(),
        label: label.into(),
    }
}

/// The message a page shows after a form's redirect (`?flash=…`): fixed texts, so a link
/// cannot put words on the page.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Flash {
    PasswordChanged,
    SessionEnded,
    Created,
    Saved,
    Subscribed,
    Requested,
    Decided,
    Revoked,
}

impl Flash {
    fn text(self) -> &'static str {
        match self {
            Flash::PasswordChanged => "Your password is changed.",
            Flash::SessionEnded => "The session is ended.",
            Flash::Created => "Created.",
            Flash::Saved => "Saved.",
            Flash::Subscribed => "Subscribed: the application may call the API now.",
            Flash::Requested => "Requested: a publisher will approve or reject it.",
            Flash::Decided => "Done.",
            Flash::Revoked => "Revoked: it no longer works.",
        }
    }

    fn kind(self) -> FlashKind {
        FlashKind::Info
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct FlashQuery {
    pub flash: Option<Flash>,
    pub cursor: Option<String>,
}

#[derive(Template)]
#[template(path = "home.html")]
struct HomePage {
    shell: Shell,
    name: String,
    roles: Vec<String>,
    admin: bool,
}

async fn home(caller: Result<Caller, Response>, Query(q): Query<FlashQuery>) -> Response {
    let caller = match caller {
        Ok(caller) => caller,
        Err(_) => {
            return error_page(
                StatusCode::UNAUTHORIZED,
                "Sign in to continue",
                "Your session has ended: open the page again to sign in.",
            );
        }
    };
    let page = HomePage {
        shell: shell("Home", &caller, q.flash.as_ref()),
        name: caller.name.clone(),
        admin: caller.has_role("platform-admin"),
        roles: caller.roles.clone(),
    };
    Html::from(&page).into_response()
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    shell: Shell,
    heading: String,
    text: String,
}

/// A page for what went wrong, in the shell, with its status.
pub(crate) fn error_page(status: StatusCode, heading: &str, text: &str) -> Response {
    let mut shell = Shell::new(heading, crate::assets::base(""));
    shell.nav = vec![link("/", "Home")];
    let page = ErrorPage {
        shell,
        heading: heading.into(),
        text: text.into(),
    };
    (status, Html::from(&page)).into_response()
}

async fn not_found() -> Response {
    error_page(StatusCode::NOT_FOUND, "Not found", "There is no page here.")
}

/// The signed-in user of a page (the token the gateway passed on, verified); without one, the
/// page that says so.
pub(crate) struct Viewer(pub Caller);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match Caller::from_request_parts(parts, state).await {
            Ok(caller) => Ok(Viewer(caller)),
            Err(_) => Err(error_page(
                StatusCode::UNAUTHORIZED,
                "Sign in to continue",
                "Your session has ended: open the page again to sign in.",
            )),
        }
    }
}

/// A page refused for lack of a role.
pub(crate) fn forbidden() -> Response {
    error_page(
        StatusCode::FORBIDDEN,
        "Not for your role",
        "This page is for platform administrators.",
    )
}

/// A form without this browser's CSRF token.
pub(crate) fn refused_form() -> Response {
    error_page(
        StatusCode::FORBIDDEN,
        "This form has expired",
        "The form was not sent from this browser's own page. Go back, reload the page and try again.",
    )
}

/// After a form: back to `path` with a message.
pub(crate) fn done(path: &str, flash: &str) -> Response {
    Redirect::to(&format!("{path}?flash={flash}")).into_response()
}

impl AppState {
    /// Calls identity's API as the caller.
    pub(crate) fn call(
        &self,
        caller: &Caller,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.call_at(&self.identity, caller, method, path)
    }

    /// Calls the API at `base` as the caller.
    pub(crate) fn call_at(
        &self,
        base: &str,
        caller: &Caller,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{base}{path}"));
        match caller.bearer() {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }
}

/// What identity answered, or the page saying it could not be reached.
pub(crate) async fn answer(
    response: Result<reqwest::Response, reqwest::Error>,
) -> Result<(StatusCode, serde_json::Value), Response> {
    let unavailable = |e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, "a page could not reach a service");
        error_page(
            StatusCode::BAD_GATEWAY,
            "Try again in a moment",
            "A service behind this page did not answer.",
        )
    };
    let response = response.map_err(|e| unavailable(&e))?;
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    Ok((status, body))
}
