//! `/account`: who I am, my password, my sign-on sessions.

use askama::Template;
use axle_core::http::Caller;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use axum_extra::extract::CookieJar;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppState, FlashQuery, Viewer, answer, done, error_page, shell};
use crate::{FlashKind, Html, Shell};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/account", get(account))
        .route("/account/password", post(change_password))
        .route("/account/sessions/{id}/end", post(end_session))
}

/// A session as the page lists it.
pub struct SessionRow {
    pub id: String,
    pub user_agent: String,
    pub created_at: String,
    pub last_seen_at: String,
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    shell: Shell,
    csrf: String,
    username: String,
    display_name: String,
    email: String,
    roles: Vec<String>,
    sessions: Vec<SessionRow>,
}

async fn render(
    state: &AppState,
    jar: CookieJar,
    caller: &Caller,
    shell: Shell,
    status: StatusCode,
) -> Response {
    let me = match answer(state.call(caller, reqwest::Method::GET, "/me").send().await).await {
        Ok((StatusCode::OK, me)) => me,
        Ok(_) => {
            return error_page(
                StatusCode::FORBIDDEN,
                "No account here",
                "This token belongs to a client, not a user.",
            );
        }
        Err(page) => return page,
    };
    let sessions = match answer(
        state
            .call(caller, reqwest::Method::GET, "/me/sessions")
            .send()
            .await,
    )
    .await
    {
        Ok((_, Value::Array(list))) => list,
        Ok(_) => Vec::new(),
        Err(page) => return page,
    };
    let text = |v: &Value, name: &str| v[name].as_str().unwrap_or_default().to_string();
    let (jar, csrf) = state.csrf.token(jar, "/", state.secure);
    let page = AccountPage {
        shell,
        csrf,
        username: text(&me, "username"),
        display_name: text(&me, "display_name"),
        email: text(&me, "email"),
        roles: me["roles"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default(),
        sessions: sessions
            .iter()
            .map(|s| SessionRow {
                id: text(s, "id"),
                user_agent: text(s, "user_agent"),
                created_at: text(s, "created_at"),
                last_seen_at: text(s, "last_seen_at"),
            })
            .collect(),
    };
    (status, jar, Html::from(&page)).into_response()
}

async fn account(
    State(state): State<AppState>,
    jar: CookieJar,
    Viewer(caller): Viewer,
    Query(q): Query<FlashQuery>,
) -> Response {
    let shell = shell("My account", &caller, q.flash.as_ref());
    render(&state, jar, &caller, shell, StatusCode::OK).await
}

#[derive(Debug, Deserialize)]
pub struct PasswordForm {
    csrf: Option<String>,
    current_password: String,
    new_password: String,
    confirm_password: String,
}

async fn change_password(
    State(state): State<AppState>,
    jar: CookieJar,
    Viewer(caller): Viewer,
    Form(form): Form<PasswordForm>,
) -> Response {
    if !state.csrf.verify(&jar, form.csrf.as_deref()) {
        return super::refused_form();
    }
    let refuse = |text: &str| {
        let shell = shell("My account", &caller, None).with_flash(FlashKind::Error, text);
        render(
            &state,
            jar.clone(),
            &caller,
            shell,
            StatusCode::UNPROCESSABLE_ENTITY,
        )
    };
    if form.new_password != form.confirm_password {
        return refuse("The new password and its confirmation differ.").await;
    }
    let body =
        json!({"current_password": form.current_password, "new_password": form.new_password});
    match answer(
        state
            .call(&caller, reqwest::Method::PUT, "/me/password")
            .json(&body)
            .send()
            .await,
    )
    .await
    {
        Ok((StatusCode::NO_CONTENT, _)) => done("/account", "password_changed"),
        Ok((_, error)) => {
            refuse(
                error["message"]
                    .as_str()
                    .unwrap_or("The password was not changed."),
            )
            .await
        }
        Err(page) => page,
    }
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    csrf: Option<String>,
}

async fn end_session(
    State(state): State<AppState>,
    jar: CookieJar,
    Viewer(caller): Viewer,
    Path(id): Path<uuid::Uuid>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !state.csrf.verify(&jar, form.csrf.as_deref()) {
        return super::refused_form();
    }
    match answer(
        state
            .call(
                &caller,
                reqwest::Method::DELETE,
                &format!("/me/sessions/{id}"),
            )
            .send()
            .await,
    )
    .await
    {
        Ok(_) => done("/account", "session_ended"),
        Err(page) => page,
    }
}
