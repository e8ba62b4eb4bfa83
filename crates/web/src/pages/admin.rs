//! `/admin/…`: users, organisations, clients and roles, for platform administrators — tables
//! with paging, and a form to add one.

use askama::Template;
use axle_core::http::Caller;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Router};
use axum_extra::extract::CookieJar;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppState, FlashQuery, Viewer, answer, done, forbidden, refused_form, shell};
use crate::{FlashKind, Html, Shell};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/users", get(users).post(create_user))
        .route("/admin/users/{id}", get(user).post(update_user))
        .route(
            "/admin/organisations",
            get(organisations).post(create_organisation),
        )
        .route("/admin/clients", get(clients).post(create_client))
        .route("/admin/roles", get(roles))
}

/// One table of a list page: its columns and rows as text, and the next page's cursor.
pub struct Table {
    pub columns: Vec<&'static str>,
    pub rows: Vec<Row>,
    pub next: Option<String>,
}

/// A row: its cells, and where its first cell links to (its own page), if anywhere.
pub struct Row {
    pub href: Option<String>,
    pub cells: Vec<String>,
}

/// What the list pages' form asks for.
pub struct Field {
    pub name: &'static str,
    pub label: &'static str,
    pub kind: &'static str,
    pub required: bool,
    pub hint: &'static str,
}

#[derive(Template)]
#[template(path = "admin_list.html")]
struct ListPage {
    shell: Shell,
    heading: &'static str,
    what: &'static str,
    path: &'static str,
    table: Table,
    csrf: String,
    fields: Vec<Field>,
    /// A secret to show once (a new client's).
    secret: Option<String>,
}

const fn field(
    name: &'static str,
    label: &'static str,
    kind: &'static str,
    required: bool,
    hint: &'static str,
) -> Field {
    Field {
        name,
        label,
        kind,
        required,
        hint,
    }
}

/// A list page's definition: where its API is and how its rows read.
struct Listing {
    heading: &'static str,
    what: &'static str,
    path: &'static str,
    api: &'static str,
    columns: Vec<&'static str>,
    row: fn(&Value) -> Vec<String>,
    /// A row's own page, if it has one.
    href: fn(&Value) -> Option<String>,
    fields: fn() -> Vec<Field>,
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

fn users_listing() -> Listing {
    Listing {
        heading: "Users",
        what: "user",
        path: "/admin/users",
        api: "/users",
        columns: vec!["Username", "Name", "Roles", "Status", "Locked until"],
        row: |u| {
            vec![
                text(&u["username"]),
                text(&u["display_name"]),
                text(&u["roles"]),
                text(&u["status"]),
                text(&u["locked_until"]),
            ]
        },
        href: |u| u["id"].as_str().map(|id| format!("/admin/users/{id}")),
        fields: || {
            vec![
                field("username", "Username", "text", true, ""),
                field("display_name", "Name", "text", false, ""),
                field("email", "E-mail", "email", false, ""),
                field(
                    "password",
                    "Password",
                    "password",
                    true,
                    "12 characters or more",
                ),
                field(
                    "roles",
                    "Roles",
                    "text",
                    false,
                    "comma-separated, e.g. dealer, finance",
                ),
                field("org_id", "Organisation id", "text", false, ""),
            ]
        },
    }
}

fn organisations_listing() -> Listing {
    Listing {
        heading: "Organisations",
        what: "organisation",
        path: "/admin/organisations",
        api: "/organisations",
        columns: vec!["Name", "Id", "Deposit account", "Status"],
        row: |o| {
            vec![
                text(&o["name"]),
                text(&o["id"]),
                text(&o["deposit_account"]),
                text(&o["status"]),
            ]
        },
        href: |_| None,
        fields: || {
            vec![
                field("name", "Name", "text", true, ""),
                field("deposit_account", "Deposit account", "text", false, ""),
            ]
        },
    }
}

fn clients_listing() -> Listing {
    Listing {
        heading: "Clients",
        what: "client",
        path: "/admin/clients",
        api: "/clients",
        columns: vec![
            "Client id",
            "Name",
            "Kind",
            "Grants",
            "Redirect URIs",
            "Status",
        ],
        row: |c| {
            vec![
                text(&c["id"]),
                text(&c["name"]),
                text(&c["kind"]),
                text(&c["grants"]),
                text(&c["redirect_uris"]),
                text(&c["status"]),
            ]
        },
        href: |_| None,
        fields: || {
            vec![
                field("id", "Client id", "text", true, "letters, digits, - _ ."),
                field("name", "Name", "text", true, ""),
                field("kind", "Kind", "text", true, "confidential or public"),
                field(
                    "grants",
                    "Grants",
                    "text",
                    true,
                    "comma-separated: authorization_code, refresh_token, client_credentials",
                ),
                field(
                    "redirect_uris",
                    "Redirect URIs",
                    "text",
                    false,
                    "comma-separated",
                ),
                field(
                    "scopes",
                    "Scopes",
                    "text",
                    false,
                    "comma-separated, e.g. openid, profile",
                ),
                field("roles", "Roles", "text", false, "for client credentials"),
            ]
        },
    }
}

/// Renders a list page: the API's page of items as a table.
async fn list(
    state: &AppState,
    jar: CookieJar,
    caller: &Caller,
    listing: Listing,
    q: &FlashQuery,
    error: Option<&str>,
    secret: Option<String>,
) -> Response {
    let mut path = format!("{}?limit=20", listing.api);
    if let Some(cursor) = &q.cursor {
        path.push_str("&cursor=");
        path.push_str(&form_urlencoded::byte_serialize(cursor.as_bytes()).collect::<String>());
    }
    let page = match answer(state.call(caller, reqwest::Method::GET, &path).send().await).await {
        Ok((StatusCode::OK, page)) => page,
        Ok((StatusCode::FORBIDDEN, _)) => return forbidden(),
        Ok((_, error)) => {
            return super::error_page(
                StatusCode::BAD_GATEWAY,
                "Could not list",
                error["message"].as_str().unwrap_or_default(),
            );
        }
        Err(page) => return page,
    };
    let rows = page["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|item| Row {
                    href: (listing.href)(item),
                    cells: (listing.row)(item),
                })
                .collect()
        })
        .unwrap_or_default();
    let mut shell = shell(listing.heading, caller, q.flash.as_ref());
    if let Some(error) = error {
        shell = shell.with_flash(FlashKind::Error, error);
    }
    let (jar, csrf) = state.csrf.token(jar, "/", state.secure);
    let page = ListPage {
        shell,
        heading: listing.heading,
        what: listing.what,
        path: listing.path,
        table: Table {
            columns: listing.columns,
            rows,
            next: page["next_cursor"].as_str().map(String::from),
        },
        csrf,
        fields: (listing.fields)(),
        secret,
    };
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    (status, jar, Html::from(&page)).into_response()
}

async fn show(
    state: State<AppState>,
    jar: CookieJar,
    caller: Caller,
    q: FlashQuery,
    listing: Listing,
) -> Response {
    if !caller.has_role("platform-admin") {
        return forbidden();
    }
    list(&state, jar, &caller, listing, &q, None, None).await
}

async fn users(
    state: State<AppState>,
    jar: CookieJar,
    Viewer(caller): Viewer,
    Query(q): Query<FlashQuery>,
) -> Response {
    show(state, jar, caller, q, users_listing()).await
}

async fn organisations(
    state: State<AppState>,
    jar: CookieJar,
    Viewer(caller): Viewer,
    Query(q): Query<FlashQuery>,
) -> Response {
    show(state, jar, caller, q, organisations_listing()).await
}

async fn clients(
    state: State<AppState>,
    jar: CookieJar,
    Viewer(caller): Viewer,
    Query(q): Query<FlashQuery>,
) -> Response {
    show(state, jar, caller, q, clients_listing()).await
}

/// The form's fields, by name (blank ones left out).
#[derive(Debug, Deserialize)]
pub struct AddForm {
    csrf: Option<String>,
    #[serde(flatten)]
    fields: std::collections::HashMap<String, String>,
}

fn list_of(text: Option<&String>) -> Vec<String> {
    text.map(|t| {
        t.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    })
    .unwrap_or_default()
}

/// Posts the form as the API's JSON; on success back to the list, else the list with the
/// API's message.
async fn add(
    State(state): State<AppState>,
    jar: CookieJar,
    caller: Caller,
    form: AddForm,
    listing: Listing,
    body: fn(&std::collections::HashMap<String, String>) -> Value,
) -> Response {
    if !state.csrf.verify(&jar, form.csrf.as_deref()) {
        return refused_form();
    }
    if !caller.has_role("platform-admin") {
        return forbidden();
    }
    let fields: std::collections::HashMap<String, String> = form
        .fields
        .into_iter()
        .filter(|(_, v)| !v.trim().is_empty())
        .collect();
    let request = state
        .call(&caller, reqwest::Method::POST, listing.api)
        .json(&body(&fields));
    match answer(request.send().await).await {
        Ok((StatusCode::CREATED, created)) => match created["client_secret"].as_str() {
            // Shown once, on this answer.
            Some(secret) => {
                list(
                    &state,
                    jar,
                    &caller,
                    listing,
                    &FlashQuery::default(),
                    None,
                    Some(secret.to_string()),
                )
                .await
            }
            None => done(listing.path, "created"),
        },
        Ok((_, error)) => {
            let message = error["message"]
                .as_str()
                .unwrap_or("It was not created.")
                .to_string();
            list(
                &state,
                jar,
                &caller,
                listing,
                &FlashQuery::default(),
                Some(&message),
                None,
            )
            .await
        }
        Err(page) => page,
    }
}

async fn create_user(
    state: State<AppState>,
    jar: CookieJar,
    Viewer(caller): Viewer,
    Form(form): Form<AddForm>,
) -> Response {
    add(state, jar, caller, form, users_listing(), |f| {
        let mut body = json!({"username": f.get("username"), "password": f.get("password"), "roles": list_of(f.get("roles"))});
        for name in ["display_name", "email", "org_id"] {
            if let Some(value) = f.get(name) {
                body[name] = value.clone().into();
            }
        }
        body
    })
    .await
}

async fn create_organisation(
    state: State<AppState>,
    jar: CookieJar,
    Viewer(caller): Viewer,
    Form(form): Form<AddForm>,
) -> Response {
    add(
        state,
        jar,
        caller,
        form,
        organisations_listing(),
        |f| json!({"name": f.get("name"), "deposit_account": f.get("deposit_account")}),
    )
    .await
}

async fn create_client(
    state: State<AppState>,
    jar: CookieJar,
    Viewer(caller): Viewer,
    Form(form): Form<AddForm>,
) -> Response {
    add(state, jar, caller, form, clients_listing(), |f| {
        json!({
            "id": f.get("id"), "name": f.get("name"), "kind": f.get("kind"),
            "grants": list_of(f.get("grants")), "redirect_uris": list_of(f.get("redirect_uris")),
            "scopes": list_of(f.get("scopes")), "roles": list_of(f.get("roles")),
        })
    })
    .await
}

#[derive(Template)]
#[template(path = "admin_roles.html")]
struct RolesPage {
    shell: Shell,
    roles: Vec<(String, String)>,
}

async fn roles(State(state): State<AppState>, Viewer(caller): Viewer) -> Response {
    if !caller.has_role("platform-admin") {
        return forbidden();
    }
    let roles = match answer(
        state
            .call(&caller, reqwest::Method::GET, "/roles")
            .send()
            .await,
    )
    .await
    {
        Ok((_, Value::Array(roles))) => roles
            .iter()
            .map(|r| (text(&r["name"]), text(&r["description"])))
            .collect(),
        Ok(_) => Vec::new(),
        Err(page) => return page,
    };
    let page = RolesPage {
        shell: shell("Roles", &caller, None),
        roles,
    };
    Html::from(&page).into_response()
}

#[derive(Template)]
#[template(path = "admin_user.html")]
struct UserPage {
    shell: Shell,
    csrf: String,
    id: String,
    username: String,
    display_name: String,
    roles: String,
    suspended: bool,
    locked_until: String,
}

async fn show_user(
    state: &AppState,
    jar: CookieJar,
    caller: &Caller,
    id: uuid::Uuid,
    error: Option<&str>,
) -> Response {
    let user = match answer(
        state
            .call(caller, reqwest::Method::GET, &format!("/users/{id}"))
            .send()
            .await,
    )
    .await
    {
        Ok((StatusCode::OK, user)) => user,
        Ok((StatusCode::FORBIDDEN, _)) => return forbidden(),
        Ok(_) => {
            return super::error_page(
                StatusCode::NOT_FOUND,
                "No such user",
                "It may have been removed.",
            );
        }
        Err(page) => return page,
    };
    let mut shell = shell("User", caller, None);
    if let Some(error) = error {
        shell = shell.with_flash(FlashKind::Error, error);
    }
    let (jar, csrf) = state.csrf.token(jar, "/", state.secure);
    let page = UserPage {
        shell,
        csrf,
        id: id.to_string(),
        username: text(&user["username"]),
        display_name: text(&user["display_name"]),
        roles: text(&user["roles"]),
        suspended: user["status"] == "suspended",
        locked_until: text(&user["locked_until"]),
    };
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    (status, jar, Html::from(&page)).into_response()
}

async fn user(
    State(state): State<AppState>,
    jar: CookieJar,
    Viewer(caller): Viewer,
    axum::extract::Path(id): axum::extract::Path<uuid::Uuid>,
) -> Response {
    if !caller.has_role("platform-admin") {
        return forbidden();
    }
    show_user(&state, jar, &caller, id, None).await
}

/// A user's roles, status and lock, as the edit form sends them.
#[derive(Debug, Deserialize)]
pub struct UserForm {
    csrf: Option<String>,
    roles: String,
    status: String,
    unlock: Option<String>,
}

async fn update_user(
    State(state): State<AppState>,
    jar: CookieJar,
    Viewer(caller): Viewer,
    axum::extract::Path(id): axum::extract::Path<uuid::Uuid>,
    Form(form): Form<UserForm>,
) -> Response {
    if !state.csrf.verify(&jar, form.csrf.as_deref()) {
        return refused_form();
    }
    if !caller.has_role("platform-admin") {
        return forbidden();
    }
    let mut patch = json!({"roles": list_of(Some(&form.roles)), "status": form.status});
    if form.unlock.is_some() {
        patch["unlock"] = true.into();
    }
    let request = state
        .call(&caller, reqwest::Method::PATCH, &format!("/users/{id}"))
        .json(&patch);
    match answer(request.send().await).await {
        Ok((StatusCode::OK, _)) => done(&format!("/admin/users/{id}"), "saved"),
        Ok((_, error)) => {
            let message = error["message"]
                .as_str()
                .unwrap_or("It was not saved.")
                .to_string();
            show_user(&state, jar, &caller, id, Some(&message)).await
        }
        Err(page) => page,
    }
}
