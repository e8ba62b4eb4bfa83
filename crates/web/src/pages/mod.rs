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
mod finance;
mod market;
mod orders;
mod sagas;

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
    /// The saga orchestrator's, order's and finance's APIs (through the gateway).
    pub saga: String,
    pub order: String,
    pub finance: String,
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
        .merge(orders::router())
        .merge(finance::router())
        .merge(sagas::router())
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
    if orders::buyer_or_staff(caller) {
        nav.push(link("/orders", "Orders"));
    }
    if finance::sees_finance(caller) {
        nav.push(link("/finance/accounts", "Finance"));
    }
    if sagas::watcher(caller) {
        nav.push(link("/sagas", "Sagas"));
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

/// Calls the API at `base` as the caller; its answer, or the page saying it did not answer.
pub(crate) async fn api(
    state: &AppState,
    base: &str,
    caller: &Caller,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(StatusCode, serde_json::Value), Response> {
    let mut request = state.call_at(base, caller, method, path);
    if let Some(body) = body {
        request = request.json(&body);
    }
    answer(request.send().await).await
}

/// A GET at `base` that must succeed; otherwise the page for its status.
pub(crate) async fn fetch(
    state: &AppState,
    base: &str,
    caller: &Caller,
    path: &str,
) -> Result<serde_json::Value, Response> {
    match api(state, base, caller, reqwest::Method::GET, path, None).await? {
        (StatusCode::OK, body) => Ok(body),
        (StatusCode::NOT_FOUND, _) => Err(error_page(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such thing, or it is not shown to you.",
        )),
        (status, body) => Err(error_page(
            status,
            "It cannot be shown",
            body["message"].as_str().unwrap_or("The service refused."),
        )),
    }
}

/// A JSON value as a page shows it.
pub(crate) fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        serde_json::Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// What a refused change says, for the page's flash.
pub(crate) fn refusal(body: &serde_json::Value, otherwise: &str) -> String {
    body["message"].as_str().unwrap_or(otherwise).to_string()
}

/// A form's fields by name, with its CSRF token to check.
#[derive(Debug, Deserialize)]
pub(crate) struct FormFields {
    pub csrf: Option<String>,
    #[serde(flatten)]
    pub fields: std::collections::HashMap<String, String>,
}

impl FormFields {
    pub fn get(&self, name: &str) -> &str {
        self.fields.get(name).map(|s| s.trim()).unwrap_or_default()
    }
}

/// Money as the APIs send it (`{"amount": minor units, "currency": …}`), as people read it.
pub(crate) fn money(v: &serde_json::Value) -> String {
    serde_json::from_value::<axle_core::money::Money>(v.clone())
        .map(|m| m.to_string())
        .unwrap_or_default()
}

/// Minor units of `currency`, as people read them.
pub(crate) fn minor(amount: &serde_json::Value, currency: &serde_json::Value) -> String {
    money(&serde_json::json!({"amount": amount, "currency": currency}))
}

/// An RFC 3339 time as a page shows it: to the second, in UTC.
pub(crate) fn when(v: &serde_json::Value) -> String {
    v.as_str()
        .and_then(axle_core::time::from_text)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

/// `text` as one query-string value.
pub(crate) fn urlencoded(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Organisations' names by id, as far as the caller may read them (staff: the directory; a
/// dealer: its own), for pages whose records hold organisation ids.
pub(crate) struct OrgNames(std::collections::HashMap<String, String>);

impl OrgNames {
    pub async fn load(state: &AppState, caller: &Caller) -> Self {
        let staff = [
            "platform-admin",
            "operator",
            "auctioneer",
            "finance",
            "api-publisher",
        ]
        .iter()
        .any(|r| caller.has_role(r));
        let path = match (&caller.org, staff) {
            (_, true) => "/organisations?limit=200".to_string(),
            (Some(org), false) => format!("/organisations/{org}"),
            (None, false) => return OrgNames(Default::default()),
        };
        let answer = api(
            state,
            &state.identity,
            caller,
            reqwest::Method::GET,
            &path,
            None,
        )
        .await;
        let body = match answer {
            Ok((StatusCode::OK, body)) => body,
            _ => return OrgNames(Default::default()),
        };
        let orgs = match body.get("items").and_then(|i| i.as_array()) {
            Some(items) => items.clone(),
            None => vec![body],
        };
        OrgNames(
            orgs.iter()
                .map(|o| (text(&o["id"]), text(&o["name"])))
                .collect(),
        )
    }

    /// The name of the organisation `id` names, else the id itself.
    pub fn of(&self, id: &serde_json::Value) -> String {
        let id = text(id);
        self.0.get(&id).cloned().unwrap_or(id)
    }
}

/// What a form asks of a service: `path` at `base`, POSTed with `body` as the caller. On
/// `expected`, back to the page `then` names (from the answer) with `flash`; otherwise the page
/// saying why, in the service's words.
pub(crate) struct Submit<'a> {
    pub base: &'a str,
    pub path: &'a str,
    pub body: Option<serde_json::Value>,
    pub expected: StatusCode,
    pub flash: &'a str,
    /// What the page says when the service refuses.
    pub refused: &'a str,
}

impl Submit<'_> {
    pub async fn send(
        self,
        state: &AppState,
        caller: &Caller,
        then: impl FnOnce(&serde_json::Value) -> String,
    ) -> Response {
        let method = reqwest::Method::POST;
        match api(state, self.base, caller, method, self.path, self.body).await {
            Ok((status, answer)) if status == self.expected => done(&then(&answer), self.flash),
            Ok((status, answer)) => error_page(
                status,
                self.refused,
                &refusal(&answer, "The service refused it."),
            ),
            Err(page) => page,
        }
    }
}
