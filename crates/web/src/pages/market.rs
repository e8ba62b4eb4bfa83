//! `/market/…`: the API market's portal — the catalog, a product with its versions, plans and
//! interactive API reference (Swagger UI, trying calls through the gateway with an
//! application's key), the user's applications with their keys, subscriptions and usage chart
//! (uPlot); and for publishers, a product's versions and plans to manage, its consumers, and
//! the approvals queue. Every page calls the market's API as the signed-in user, so it shows
//! and allows exactly what the API does.

use std::collections::HashMap;

use askama::Template;
use axle_core::http::Caller;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Router};
use axum_extra::extract::CookieJar;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    AppState, FlashQuery, FormFields, Viewer, done, error_page, refused_form, shell, text,
};
use crate::{FlashKind, Html, Shell};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/market", get(catalog).post(create_product))
        .route("/market/products/{id}", get(product).post(manage_product))
        .route("/market/versions/{id}/reference", get(reference))
        .route("/market/versions/{id}/openapi.json", get(document))
        .route("/market/apps", get(apps).post(create_app))
        .route("/market/apps/{id}", get(app).post(manage_app))
        .route("/market/approvals", get(approvals).post(decide))
}

/// Whether the caller publishes (sees drafts, manages products, decides on subscriptions).
fn publisher(caller: &Caller) -> bool {
    caller.has_role("api-publisher") || caller.has_role("platform-admin")
}

/// Calls the market's API as the caller; its answer, or the page saying it did not answer.
async fn api(
    state: &AppState,
    caller: &Caller,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<(StatusCode, Value), Response> {
    super::api(state, &state.market, caller, method, path, body).await
}

/// A GET of the market's that must succeed; otherwise the page for its status.
async fn fetch(state: &AppState, caller: &Caller, path: &str) -> Result<Value, Response> {
    super::fetch(state, &state.market, caller, path).await
}

/// What a refused change says, for the page's flash.
fn refusal(body: &Value) -> String {
    super::refusal(body, "The market refused it.")
}

// The catalog.

#[derive(Template)]
#[template(path = "market_catalog.html")]
struct CatalogPage {
    shell: Shell,
    q: String,
    products: Vec<ProductRow>,
    publisher: bool,
    csrf: String,
}

struct ProductRow {
    href: String,
    title: String,
    slug: String,
    tags: String,
    team: String,
    description: String,
}

#[derive(Debug, Default, Deserialize)]
struct CatalogQuery {
    q: Option<String>,
    #[serde(flatten)]
    flash: FlashQuery,
}

async fn catalog(
    State(state): State<AppState>,
    jar: CookieJar,
    Viewer(caller): Viewer,
    Query(query): Query<CatalogQuery>,
) -> Response {
    catalog_page(
        &state,
        jar,
        &caller,
        query.q.unwrap_or_default(),
        &query.flash,
        None,
    )
    .await
}

async fn catalog_page(
    state: &AppState,
    jar: CookieJar,
    caller: &Caller,
    q: String,
    flash: &FlashQuery,
    problem: Option<&str>,
) -> Response {
    let path = format!(
        "/products?q={}",
        form_urlencoded::byte_serialize(q.as_bytes()).collect::<String>()
    );
    let found = match fetch(state, caller, &path).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    let products = found
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| ProductRow {
            href: format!("/market/products/{}", text(&p["id"])),
            title: text(&p["title"]),
            slug: text(&p["slug"]),
            tags: text(&p["tags"]),
            team: text(&p["owner_team"]),
            description: text(&p["description"]),
        })
        .collect();
    let (jar, csrf) = state.csrf.token(jar, "/", state.secure);
    let mut shell = shell("API market", caller, flash.flash.as_ref());
    if let Some(problem) = problem {
        shell = shell.with_flash(FlashKind::Error, problem);
    }
    let page = CatalogPage {
        shell,
        q,
        products,
        publisher: publisher(caller),
        csrf,
    };
    (jar, Html::from(&page)).into_response()
}

async fn create_product(
    State(state): State<AppState>,
    jar: CookieJar,
    Viewer(caller): Viewer,
    Form(form): Form<FormFields>,
) -> Response {
    if !state.csrf.verify(&jar, form.csrf.as_deref()) {
        return refused_form();
    }
    let tags: Vec<&str> = form
        .get("tags")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    let body = json!({"slug": form.get("slug"), "title": form.get("title"),
        "owner_team": form.get("owner_team"), "description": form.get("description"), "tags": tags});
    match api(
        &state,
        &caller,
        reqwest::Method::POST,
        "/products",
        Some(body),
    )
    .await
    {
        Ok((StatusCode::CREATED, created)) => done(
            &format!("/market/products/{}", text(&created["id"])),
            "created",
        ),
        Ok((_, refused)) => {
            let problem = refusal(&refused);
            catalog_page(
                &state,
                jar,
                &caller,
                String::new(),
                &FlashQuery::default(),
                Some(&problem),
            )
            .await
        }
        Err(page) => page,
    }
}

// A product.

#[derive(Template)]
#[template(path = "market_product.html")]
struct ProductPage {
    shell: Shell,
    id: String,
    title: String,
    description: String,
    endpoints: Vec<String>,
    versions: Vec<VersionRow>,
    plans: Vec<PlanRow>,
    apps: Vec<(String, String)>,
    publisher: bool,
    consumers: Vec<(String, String, String)>,
    csrf: String,
}

struct VersionRow {
    id: String,
    number: String,
    status: String,
    detail: String,
    operations: String,
    serves: bool,
    draft: bool,
}

struct PlanRow {
    id: String,
    name: String,
    limit: String,
    approval: String,
}

async fn product(
    State(state): State<AppState>,
    jar: CookieJar,
    Viewer(caller): Viewer,
    Path(id): Path<String>,
    Query(q): Query<FlashQuery>,
) -> Response {
    product_page(&state, jar, &caller, &id, &q, None).await
}

async fn product_page(
    state: &AppState,
    jar: CookieJar,
    caller: &Caller,
    id: &str,
    flash: &FlashQuery,
    problem: Option<&str>,
) -> Response {
    let product = match fetch(state, caller, &format!("/products/{id}")).await {
        Ok(p) => p,
        Err(page) => return page,
    };
    let apps = match fetch(state, caller, "/applications").await {
        Ok(apps) => apps,
        Err(page) => return page,
    };
    let versions = product["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            let status = text(&v["status"]);
            let mut detail = String::new();
            if let Some(sunset) = v["sunset"].as_str() {
                detail = format!("sunset {sunset}");
            }
            if let Some(weight) = v["weight"].as_u64() {
                detail = format!("canary, {weight} % of requests");
            }
            VersionRow {
                id: text(&v["id"]),
                number: text(&v["number"]),
                serves: status == "published" || status == "deprecated",
                draft: status == "draft",
                status,
                detail,
                operations: format!(
                    "{} operations, OpenAPI {}",
                    v["operations"],
                    text(&v["openapi"])
                ),
            }
        })
        .collect();
    let plans = product["plans"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| PlanRow {
            id: text(&p["id"]),
            name: text(&p["name"]),
            limit: match p["limit"].as_object() {
                Some(limit) => {
                    format!("{} requests per {}", limit["count"], text(&limit["period"]))
                }
                None => "no limit".into(),
            },
            approval: match p["approval"].as_str() {
                Some("auto") => "approved at once".into(),
                _ => "approved by a publisher".into(),
            },
        })
        .collect();
    let apps = apps
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| (text(&a["id"]), text(&a["name"])))
        .collect();
    let consumers = match publisher(caller) {
        true => match fetch(state, caller, &format!("/products/{id}/usage")).await {
            Ok(usage) => usage["applications"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(app, s)| {
                    (
                        app.clone(),
                        s["requests"].to_string(),
                        s["errors"].to_string(),
                    )
                })
                .collect(),
            Err(page) => return page,
        },
        false => Vec::new(),
    };
    let endpoints = product["base_paths"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| format!("{}{}", state.site, text(p)))
        .collect();
    let (jar, csrf) = state.csrf.token(jar, "/", state.secure);
    let title = text(&product["title"]);
    let mut shell = shell(&title, caller, flash.flash.as_ref());
    if let Some(problem) = problem {
        shell = shell.with_flash(FlashKind::Error, problem);
    }
    let page = ProductPage {
        shell,
        id: id.to_string(),
        title,
        description: text(&product["description"]),
        endpoints,
        versions,
        plans,
        apps,
        publisher: publisher(caller),
        consumers,
        csrf,
    };
    (jar, Html::from(&page)).into_response()
}

/// A product page's forms: `subscribe`, and for publishers `version`, `publish`, `deprecate`,
/// `retire`, `weight`, `plan`.
async fn manage_product(
    State(state): State<AppState>,
    jar: CookieJar,
    Viewer(caller): Viewer,
    Path(id): Path<String>,
    Form(form): Form<FormFields>,
) -> Response {
    if !state.csrf.verify(&jar, form.csrf.as_deref()) {
        return refused_form();
    }
    let version = form.get("version_id");
    let post = reqwest::Method::POST;
    let (method, path, body, flash) = match form.get("action") {
        "subscribe" => {
            let app = form.get("application_id");
            let path = format!("/applications/{app}/subscriptions");
            (
                post,
                path,
                json!({"plan_id": form.get("plan_id")}),
                "subscribed",
            )
        }
        "weight" => (
            reqwest::Method::PUT,
            format!("/versions/{version}/weight"),
            json!({"weight": form.get("weight").parse::<u8>().ok()}),
            "saved",
        ),
        "version" => (
            post,
            format!("/products/{id}/versions"),
            json!({"number": form.get("number"), "document": form.get("document"),
                   "backend": {"url": form.get("backend")}}),
            "created",
        ),
        "publish" => (
            post,
            format!("/versions/{version}/publish"),
            json!({}),
            "saved",
        ),
        "retire" => (
            post,
            format!("/versions/{version}/retire"),
            json!({}),
            "saved",
        ),
        "deprecate" => (
            post,
            format!("/versions/{version}/deprecate"),
            json!({"sunset": format!("{}T00:00:00Z", form.get("sunset"))}),
            "saved",
        ),
        "plan" => {
            let limit = match form.get("count").parse::<u64>() {
                Ok(count) => json!({"count": count, "period": form.get("period")}),
                Err(_) => Value::Null,
            };
            (
                post,
                format!("/products/{id}/plans"),
                json!({"name": form.get("name"), "limit": limit, "approval": form.get("approval")}),
                "created",
            )
        }
        _ => return error_page(StatusCode::BAD_REQUEST, "Not a form of this page", ""),
    };
    match api(&state, &caller, method, &path, Some(body)).await {
        Ok((status, answer)) if status.is_success() => {
            if form.get("action") == "subscribe" {
                let app = form.get("application_id");
                let flash = match answer["status"].as_str() {
                    Some("approved") => "subscribed",
                    _ => "requested",
                };
                return done(&format!("/market/apps/{app}"), flash);
            }
            done(&format!("/market/products/{id}"), flash)
        }
        Ok((_, refused)) => {
            let problem = refusal(&refused);
            product_page(
                &state,
                jar,
                &caller,
                &id,
                &FlashQuery::default(),
                Some(&problem),
            )
            .await
        }
        Err(page) => page,
    }
}

// The API reference.

#[derive(Template)]
#[template(path = "market_reference.html")]
struct ReferencePage {
    shell: Shell,
    title: String,
    document: String,
    product: String,
    snippets: Vec<Snippets>,
}

/// How to call one operation: with curl, Python (requests) and JavaScript (fetch).
struct Snippets {
    operation: String,
    curl: String,
    python: String,
    javascript: String,
}

const METHODS: [&str; 7] = ["get", "put", "post", "delete", "patch", "head", "options"];

/// The snippets of every operation of `document`, served at `base`.
fn snippets(document: &Value, base: &str) -> Vec<Snippets> {
    let mut all = Vec::new();
    for (path, item) in document["paths"].as_object().into_iter().flatten() {
        for method in METHODS.iter().filter(|m| item.get(**m).is_some()) {
            let url = format!("{base}{path}");
            let upper = method.to_uppercase();
            let body = matches!(*method, "post" | "put" | "patch");
            all.push(Snippets {
                operation: format!("{upper} {path}"),
                curl: format!(
                    "curl -X {upper} '{url}' -H 'apikey: YOUR_KEY'{}",
                    if body { " -H 'content-type: application/json' -d '{}'" } else { "" }
                ),
                python: format!(
                    "import requests\n\nr = requests.{method}(\n    '{url}',\n    headers={{'apikey': 'YOUR_KEY'}},{}\n)\nprint(r.status_code, r.text)",
                    if body { "\n    json={}," } else { "" }
                ),
                javascript: format!(
                    "const r = await fetch('{url}', {{\n  method: '{upper}',\n  headers: {{apikey: 'YOUR_KEY'{}}},{}\n}});\nconsole.log(r.status, await r.text());",
                    if body { ", 'content-type': 'application/json'" } else { "" },
                    if body { "\n  body: JSON.stringify({})," } else { "" }
                ),
            });
        }
    }
    all
}

async fn reference(
    State(state): State<AppState>,
    Viewer(caller): Viewer,
    Path(id): Path<String>,
) -> Response {
    let version = match fetch(&state, &caller, &format!("/versions/{id}")).await {
        Ok(v) => v,
        Err(page) => return page,
    };
    let served = match served_document(&state, &caller, &id, &version).await {
        Ok(d) => d,
        Err(page) => return page,
    };
    let base = text(&served["servers"][0]["url"]);
    let title = format!("{} {}", text(&version["title"]), text(&version["number"]));
    let mut shell = shell(&title, &caller, None);
    shell.styles = vec!["swagger-ui.css"];
    shell.scripts = vec!["swagger-ui-bundle.js", "market.js"];
    let page = ReferencePage {
        shell,
        title,
        document: format!("/market/versions/{id}/openapi.json"),
        product: format!("/market/products/{}", text(&version["product_id"])),
        snippets: snippets(&served, &base),
    };
    Html::from(&page).into_response()
}

/// The version's document as the reference shows it: served from the gateway's path for the
/// version (so "Try it out" calls it there), with the market's key scheme (`apikey` header).
async fn document(
    State(state): State<AppState>,
    Viewer(caller): Viewer,
    Path(id): Path<String>,
) -> Response {
    let version = match fetch(&state, &caller, &format!("/versions/{id}")).await {
        Ok(v) => v,
        Err(page) => return page,
    };
    match served_document(&state, &caller, &id, &version).await {
        Ok(document) => axum::Json(document).into_response(),
        Err(page) => page,
    }
}

/// The version's document served at the gateway's path for its major, with the key scheme.
async fn served_document(
    state: &AppState,
    caller: &Caller,
    id: &str,
    version: &Value,
) -> Result<Value, Response> {
    let product_path = format!("/products/{}", text(&version["product_id"]));
    let product = fetch(state, caller, &product_path).await?;
    let mut document = fetch(state, caller, &format!("/versions/{id}/openapi")).await?;
    let major = text(&version["number"])
        .split('.')
        .next()
        .unwrap_or("1")
        .to_string();
    let base = format!("{}/market/{}/v{major}", state.site, text(&product["slug"]));
    document["servers"] = json!([{"url": base, "description": "through the Axle gateway"}]);
    document["components"]["securitySchemes"]["apikey"] = json!({"type": "apiKey", "in": "header", "name": "apikey",
               "description": "An application's key, from My applications"});
    document["security"] = json!([{"apikey": []}]);
    Ok(document)
}

// Applications.

#[derive(Template)]
#[template(path = "market_apps.html")]
struct AppsPage {
    shell: Shell,
    apps: Vec<(String, String, String)>,
    csrf: String,
}

async fn apps(
    State(state): State<AppState>,
    jar: CookieJar,
    Viewer(caller): Viewer,
    Query(q): Query<FlashQuery>,
) -> Response {
    let found = match fetch(&state, &caller, "/applications").await {
        Ok(found) => found,
        Err(page) => return page,
    };
    let apps = found
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| (text(&a["id"]), text(&a["name"]), text(&a["created_at"])))
        .collect();
    let (jar, csrf) = state.csrf.token(jar, "/", state.secure);
    let page = AppsPage {
        shell: shell("My applications", &caller, q.flash.as_ref()),
        apps,
        csrf,
    };
    (jar, Html::from(&page)).into_response()
}

async fn create_app(
    State(state): State<AppState>,
    jar: CookieJar,
    Viewer(caller): Viewer,
    Form(form): Form<FormFields>,
) -> Response {
    if !state.csrf.verify(&jar, form.csrf.as_deref()) {
        return refused_form();
    }
    let body = json!({"name": form.get("name"), "description": form.get("description")});
    match api(
        &state,
        &caller,
        reqwest::Method::POST,
        "/applications",
        Some(body),
    )
    .await
    {
        Ok((StatusCode::CREATED, created)) => {
            done(&format!("/market/apps/{}", text(&created["id"])), "created")
        }
        Ok((_, refused)) => error_page(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Not created",
            &refusal(&refused),
        ),
        Err(page) => page,
    }
}

#[derive(Template)]
#[template(path = "market_app.html")]
struct AppPage {
    shell: Shell,
    id: String,
    name: String,
    consumer: String,
    /// A key just made: shown this once.
    new_key: Option<String>,
    keys: Vec<(String, String, String, bool)>,
    subscriptions: Vec<(String, String, String, String, bool)>,
    numbers: Vec<(&'static str, String)>,
    series: String,
    csrf: String,
}

async fn app(
    State(state): State<AppState>,
    jar: CookieJar,
    Viewer(caller): Viewer,
    Path(id): Path<String>,
    Query(q): Query<FlashQuery>,
) -> Response {
    app_page(&state, jar, &caller, &id, &q, None, None).await
}

async fn app_page(
    state: &AppState,
    jar: CookieJar,
    caller: &Caller,
    id: &str,
    flash: &FlashQuery,
    new_key: Option<String>,
    problem: Option<&str>,
) -> Response {
    let loaded = async {
        let app = fetch(state, caller, &format!("/applications/{id}")).await?;
        let keys = fetch(state, caller, &format!("/applications/{id}/keys")).await?;
        let subs = fetch(state, caller, &format!("/applications/{id}/subscriptions")).await?;
        let usage = fetch(
            state,
            caller,
            &format!("/applications/{id}/usage?minutes=60"),
        )
        .await?;
        let catalog = fetch(state, caller, "/products").await?;
        Ok::<_, Response>((app, keys, subs, usage, catalog))
    };
    let (app, keys, subs, usage, catalog) = match loaded.await {
        Ok(loaded) => loaded,
        Err(page) => return page,
    };
    let now = chrono::Utc::now();
    let keys = keys
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .map(|k| {
            let expires = text(&k["expires_at"]);
            let works = match chrono::DateTime::parse_from_rfc3339(&expires) {
                Ok(at) => at > now,
                Err(_) => true,
            };
            let state = match (expires.is_empty(), works) {
                (true, _) => "works".to_string(),
                (false, true) => format!("works until {expires}"),
                (false, false) => format!("stopped {expires}"),
            };
            (text(&k["id"]), text(&k["prefix"]), state, works)
        })
        .collect();
    let product_names: HashMap<String, String> = catalog
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| (text(&p["id"]), text(&p["title"])))
        .collect();
    let subscriptions = subs
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .map(|s| {
            let status = text(&s["status"]);
            let product = text(&s["product_id"]);
            (
                text(&s["id"]),
                product_names.get(&product).cloned().unwrap_or(product),
                status.clone(),
                text(&s["reason"]),
                matches!(status.as_str(), "requested" | "approved" | "suspended"),
            )
        })
        .collect();
    let ms = |v: &Value| v.as_u64().map_or("–".into(), |n| format!("≤ {n} ms"));
    let numbers = vec![
        ("Requests, last hour", usage["requests"].to_string()),
        ("Errors", usage["errors"].to_string()),
        (
            "Error rate",
            format!(
                "{:.1} %",
                usage["error_rate"].as_f64().unwrap_or(0.0) * 100.0
            ),
        ),
        ("p50 latency", ms(&usage["p50_ms"])),
        ("p99 latency", ms(&usage["p99_ms"])),
    ];
    let (jar, csrf) = state.csrf.token(jar, "/", state.secure);
    let name = text(&app["name"]);
    let mut shell = shell(&name, caller, flash.flash.as_ref());
    shell.styles = vec!["uPlot.min.css"];
    shell.scripts = vec!["uPlot.iife.min.js", "market.js"];
    if let Some(problem) = problem {
        shell = shell.with_flash(FlashKind::Error, problem);
    }
    let page = AppPage {
        shell,
        id: id.to_string(),
        name,
        consumer: text(&app["consumer"]),
        new_key,
        keys,
        subscriptions,
        numbers,
        series: usage["series"].to_string(),
        csrf,
    };
    (jar, Html::from(&page)).into_response()
}

/// An application page's forms: `key` (a new key, shown once), `revoke_key`,
/// `revoke_subscription`.
async fn manage_app(
    State(state): State<AppState>,
    jar: CookieJar,
    Viewer(caller): Viewer,
    Path(id): Path<String>,
    Form(form): Form<FormFields>,
) -> Response {
    if !state.csrf.verify(&jar, form.csrf.as_deref()) {
        return refused_form();
    }
    let (method, path, body) = match form.get("action") {
        "key" => (
            reqwest::Method::POST,
            format!("/applications/{id}/keys"),
            json!({}),
        ),
        "revoke_key" => (
            reqwest::Method::DELETE,
            format!("/applications/{id}/keys/{}", form.get("key_id")),
            json!({}),
        ),
        "revoke_subscription" => (
            reqwest::Method::POST,
            format!("/subscriptions/{}/revoke", form.get("subscription_id")),
            json!({"reason": "revoked by the application's owner"}),
        ),
        _ => return error_page(StatusCode::BAD_REQUEST, "Not a form of this page", ""),
    };
    let body = (method != reqwest::Method::DELETE).then_some(body);
    match api(&state, &caller, method, &path, body).await {
        Ok((status, made)) if status.is_success() => match made["key"].as_str() {
            // Shown once, on this answer.
            Some(key) => {
                let key = Some(key.to_string());
                app_page(&state, jar, &caller, &id, &FlashQuery::default(), key, None).await
            }
            None => done(&format!("/market/apps/{id}"), "revoked"),
        },
        Ok((_, refused)) => {
            let problem = refusal(&refused);
            app_page(
                &state,
                jar,
                &caller,
                &id,
                &FlashQuery::default(),
                None,
                Some(&problem),
            )
            .await
        }
        Err(page) => page,
    }
}

// Approvals.

#[derive(Template)]
#[template(path = "market_approvals.html")]
struct ApprovalsPage {
    shell: Shell,
    waiting: Vec<(String, String, String, String)>,
    csrf: String,
}

async fn approvals(
    State(state): State<AppState>,
    jar: CookieJar,
    Viewer(caller): Viewer,
    Query(q): Query<FlashQuery>,
) -> Response {
    if !publisher(&caller) {
        return error_page(
            StatusCode::FORBIDDEN,
            "Not for your role",
            "The approvals are for API publishers.",
        );
    }
    let (queue, catalog) = match (
        fetch(&state, &caller, "/subscriptions").await,
        fetch(&state, &caller, "/products").await,
    ) {
        (Ok(queue), Ok(catalog)) => (queue, catalog),
        (Err(page), _) | (_, Err(page)) => return page,
    };
    let names: HashMap<String, String> = catalog
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| (text(&p["id"]), text(&p["title"])))
        .collect();
    let waiting = queue
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let product = text(&s["product_id"]);
            (
                text(&s["id"]),
                names.get(&product).cloned().unwrap_or(product),
                text(&s["requested_by"]),
                text(&s["created_at"]),
            )
        })
        .collect();
    let (jar, csrf) = state.csrf.token(jar, "/", state.secure);
    let page = ApprovalsPage {
        shell: shell("Approvals", &caller, q.flash.as_ref()),
        waiting,
        csrf,
    };
    (jar, Html::from(&page)).into_response()
}

async fn decide(
    State(state): State<AppState>,
    jar: CookieJar,
    Viewer(caller): Viewer,
    Form(form): Form<FormFields>,
) -> Response {
    if !state.csrf.verify(&jar, form.csrf.as_deref()) {
        return refused_form();
    }
    let decision = match form.get("decision") {
        d @ ("approve" | "reject") => d,
        _ => return error_page(StatusCode::BAD_REQUEST, "Not a form of this page", ""),
    };
    let path = format!("/subscriptions/{}/{decision}", form.get("subscription_id"));
    let reason = form.get("reason");
    let body = json!({"reason": (!reason.is_empty()).then_some(reason)});
    match api(&state, &caller, reqwest::Method::POST, &path, Some(body)).await {
        Ok((status, _)) if status.is_success() => done("/market/approvals", "decided"),
        Ok((_, refused)) => error_page(StatusCode::CONFLICT, "Not done", &refusal(&refused)),
        Err(page) => page,
    }
}
