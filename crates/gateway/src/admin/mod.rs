//! The Admin API, compatible with APISIX v3: `/apisix/admin/<kind>[/<id>[/<sub/path>]]` with
//! PUT, POST, GET (one, or a list with paging and filters), PATCH and DELETE, APISIX's
//! response shapes and error bodies (`{"error_msg": ...}`), the `X-API-KEY` check and the
//! `allow_admin` address list. Axle's own additions live under `/axle/admin`: the history of
//! every change, the difference between two revisions, and rollback. Its OpenAPI document is
//! [`openapi`]'s.

pub mod openapi;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::resource::{self, Kind};
use crate::store::{ConfigStore, Entry, Guard, StoreError};

/// How often a write is checked again after racing writes changed the store under its checks.
const ATTEMPTS: usize = 32;

#[derive(Clone)]
pub struct AdminState {
    pub store: Arc<ConfigStore>,
    pub key: Arc<SecretString>,
    pub allow: Arc<Vec<ipnet::IpNet>>,
    /// Writes through this Admin API take turns: they cannot race each other, only writers in
    /// other processes (whose races the store's guard catches).
    pub writing: Arc<tokio::sync::Mutex<()>>,
    /// The plugins' checks and schemas.
    pub plugins: &'static dyn resource::PluginCatalog,
    /// The revision this process's data plane serves, when it follows the same embedded store:
    /// a write is answered once it serves it (see [`served_before_answering`]).
    pub applied: Option<tokio::sync::watch::Receiver<i64>>,
}

/// How long a write's answer waits for the data plane to serve it.
const SERVED_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// An Admin API failure, with APISIX's status and body.
#[derive(Debug)]
pub enum AdminError {
    /// 400 `{"error_msg": ...}`.
    Bad(String),
    /// 404 `{"message": "Key not found"}`.
    NotFound,
    Unauthorized,
    Forbidden,
    /// 409: racing writes kept changing what this one was checked against.
    Busy,
    Store(StoreError),
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::ReadOnly(_) | StoreError::Compacted(_) => AdminError::Bad(e.to_string()),
            e => AdminError::Store(e),
        }
    }
}

impl From<resource::Invalid> for AdminError {
    fn from(e: resource::Invalid) -> Self {
        AdminError::Bad(e.to_string())
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            AdminError::Bad(msg) => (StatusCode::BAD_REQUEST, json!({ "error_msg": msg })),
            AdminError::NotFound => (StatusCode::NOT_FOUND, json!({"message": "Key not found"})),
            AdminError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                json!({"error_msg": "failed to check token"}),
            ),
            AdminError::Forbidden => (
                StatusCode::FORBIDDEN,
                json!({"error_msg": "access from this address is not allowed"}),
            ),
            AdminError::Busy => (
                StatusCode::CONFLICT,
                json!({"error_msg": "the configuration kept changing while this write was \
                                     checked; try again"}),
            ),
            AdminError::Store(e) => {
                tracing::error!(error = %e, "admin API: config store failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error_msg": "config store unavailable"}),
                )
            }
        };
        (status, axum::Json(body)).into_response()
    }
}

type Result<T> = std::result::Result<T, AdminError>;

pub fn router(state: AdminState) -> Router {
    let guarded = Router::new()
        .route(
            "/apisix/admin/{kind}",
            get(list).put(put_without_id).post(create),
        )
        .route(
            "/apisix/admin/{kind}/{id}",
            get(get_one).put(put).patch(patch).delete(delete),
        )
        .route("/apisix/admin/plugins/list", get(plugins_list))
        .route("/apisix/admin/plugins", get(all_plugin_schemas))
        .route("/apisix/admin/plugins/{name}", get(plugin_schema))
        .route("/apisix/admin/schema/plugins/{name}", get(plugin_schema))
        .route("/apisix/admin/schema/validate/{kind}", post(validate))
        .route("/apisix/admin/{kind}/{id}/{*path}", any(nested))
        .route("/axle/admin/history", get(history))
        .route("/axle/admin/diff", get(diff))
        .route("/axle/admin/rollback", post(rollback))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            served_before_answering,
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .layer(axum::middleware::map_response(in_apisix_shape));
    guarded.with_state(state)
}

/// A successful write is answered once this process's data plane serves it (up to
/// [`SERVED_WITHIN`]), so a client's next request through the gateway meets the change — what
/// the API market's approvals and revocations rely on. On etcd, or with the data plane
/// elsewhere (a control plane), the change reaches the data planes as the watch delivers it.
async fn served_before_answering(
    State(state): State<AdminState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    let response = next.run(request).await;
    if let (false, true, Some(applied)) = (reads, response.status().is_success(), &state.applied)
        && let Ok(revision) = state.store.revision().await
    {
        let mut applied = applied.clone();
        let served = applied.wait_for(|served| *served >= revision);
        if tokio::time::timeout(SERVED_WITHIN, served).await.is_err() {
            tracing::warn!(
                revision,
                "an Admin API write is answered before the data plane serves it"
            );
        }
    }
    response
}

/// The framework's own refusals (a body over the limit, a query that does not parse) as APISIX
/// words every error: `{"error_msg": ...}`.
async fn in_apisix_shape(response: Response) -> Response {
    let plain = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"text/plain"));
    if !(response.status().is_client_error() && plain) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let message = String::from_utf8_lossy(&text).into_owned();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    let body = axum::Json(json!({ "error_msg": message }));
    (parts, body).into_response()
}

/// `GET /apisix/admin/plugins/list`: the names of the plugins this gateway runs.
async fn plugins_list(State(state): State<AdminState>) -> axum::Json<Vec<&'static str>> {
    axum::Json(state.plugins.names())
}

#[derive(Debug, Deserialize)]
struct SchemaQuery {
    schema_type: Option<String>,
}

/// `GET /apisix/admin/schema/plugins/{name}[?schema_type=consumer]`: the JSON Schema of a
/// plugin's configuration on a route (or, for authentication plugins, on a consumer).
async fn plugin_schema(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    Query(q): Query<SchemaQuery>,
) -> Result<axum::Json<Value>> {
    use resource::SchemaType;
    let side = match q.schema_type.as_deref() {
        None | Some("route") => SchemaType::Route,
        Some("consumer") => SchemaType::Consumer,
        Some(other) => {
            return Err(AdminError::Bad(format!(
                "schema_type: {other:?} is not one of route, consumer"
            )));
        }
    };
    match state.plugins.schema(&name, side) {
        Some(schema) => Ok(axum::Json(schema)),
        None if state.plugins.names().contains(&name.as_str()) => Err(AdminError::Bad(format!(
            "plugin {name} has no configuration on a consumer"
        ))),
        None => Err(AdminError::Bad(format!("not found plugin {name}"))),
    }
}

#[derive(Debug, Deserialize)]
struct AllQuery {
    all: Option<String>,
}

/// `GET /apisix/admin/plugins?all=true`: every plugin's schema, by name (as APISIX's).
async fn all_plugin_schemas(
    State(state): State<AdminState>,
    Query(q): Query<AllQuery>,
) -> Result<axum::Json<Value>> {
    if q.all.as_deref() != Some("true") {
        return Err(AdminError::Bad(
            "all: true expected (or ask plugins/list)".into(),
        ));
    }
    let schemas = state
        .plugins
        .names()
        .into_iter()
        .filter_map(|name| {
            let schema = state.plugins.schema(name, resource::SchemaType::Route)?;
            Some((name.to_string(), json!({"schema": schema})))
        })
        .collect::<serde_json::Map<_, _>>();
    Ok(axum::Json(Value::Object(schemas)))
}

/// `POST /apisix/admin/schema/validate/{kind}`: checks a document as a write would, stores
/// nothing: 200, or 400 with the problem.
async fn validate(
    State(state): State<AdminState>,
    Path(segment): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let kind = Kind::from_segment(&segment)
        .ok_or_else(|| AdminError::Bad(format!("Unsupported resource type: {segment}")))?;
    let value = body_json(&body)?;
    resource::validate(kind, &value, state.plugins)?;
    Ok(StatusCode::OK.into_response())
}

/// `allow_admin`, then the key from `X-API-KEY` (or the `api_key` query parameter).
async fn guard(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    if !state.allow.iter().any(|net| net.contains(&peer.ip())) {
        return AdminError::Forbidden.into_response();
    }
    let from_header = request
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let from_query = request.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|p| p.strip_prefix("api_key=").map(str::to_string))
    });
    let given = from_header.or(from_query).unwrap_or_default();
    if !constant_time_eq(given.as_bytes(), state.key.expose_secret().as_bytes()) {
        return AdminError::Unauthorized.into_response();
    }
    next.run(request).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a request addresses: the resources of a kind (`/apisix/admin/<kind>`), or the
/// credentials of one consumer (`/apisix/admin/consumers/<username>/credentials`).
#[derive(Debug, Clone)]
struct Scope {
    kind: Kind,
    consumer: Option<String>,
}

impl Scope {
    fn top(segment: &str) -> Result<Scope> {
        let kind = Kind::from_segment(segment).ok_or(AdminError::NotFound)?;
        Ok(Scope {
            kind,
            consumer: None,
        })
    }

    fn credentials(username: String) -> Scope {
        Scope {
            kind: Kind::Credentials,
            consumer: Some(username),
        }
    }

    /// The store key of the resource `id` in this scope.
    fn key(&self, id: &str) -> String {
        match &self.consumer {
            Some(username) => self.kind.key(&format!("{username}/credentials/{id}")),
            None => self.kind.key(id),
        }
    }
}

/// The stored document `id` of `scope`, or 404.
async fn existing(state: &AdminState, scope: &Scope, id: &str) -> Result<Entry> {
    state
        .store
        .get(&scope.key(id))
        .await?
        .ok_or(AdminError::NotFound)
}

fn body_json(body: &Bytes) -> Result<Value> {
    serde_json::from_slice(body).map_err(|e| AdminError::Bad(format!("invalid request body: {e}")))
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A stored document as the Admin API shows it (see [`resource::redacted`]).
fn shown(key: &str, value: &Value) -> Value {
    match resource::parse_key(key) {
        Some((kind, _)) => resource::redacted(kind, value),
        None => value.clone(),
    }
}

fn item(entry: &Entry) -> Value {
    json!({
        "key": entry.key,
        "value": shown(&entry.key, &entry.value),
        "createdIndex": entry.created_index,
        "modifiedIndex": entry.modified_index,
    })
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    page: Option<usize>,
    page_size: Option<usize>,
    name: Option<String>,
    label: Option<String>,
    uri: Option<String>,
    /// `key=value&…` (URL-encoded once more): routes whose `service_id` or `upstream_id` is
    /// that, as APISIX's `list_filter_fields`; other fields are not filtered by.
    filter: Option<String>,
}

async fn list(
    State(state): State<AdminState>,
    Path(segment): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Response> {
    list_in(&state, &Scope::top(&segment)?, q).await
}

async fn list_in(state: &AdminState, scope: &Scope, q: ListQuery) -> Result<Response> {
    let kind = scope.kind;
    let entries = state.store.list(&scope.key("")).await?;
    let matching: Vec<&Entry> = entries
        .iter()
        // A consumer's credentials live under its key, but are not consumers.
        .filter(|e| resource::parse_key(&e.key).is_some_and(|(k, _)| k == kind))
        .filter(|e| {
            let v = &e.value;
            let name_ok = q.name.as_ref().is_none_or(|n| {
                v.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|name| name.contains(n.as_str()))
            });
            let label_ok = q.label.as_ref().is_none_or(|l| {
                let (k, want) = l
                    .split_once(':')
                    .map_or((l.as_str(), None), |(k, v)| (k, Some(v)));
                v.pointer(&format!("/labels/{k}"))
                    .and_then(Value::as_str)
                    .is_some_and(|have| want.is_none_or(|w| w == have))
            });
            let uri_ok = q.uri.as_ref().is_none_or(|u| {
                kind == Kind::Routes
                    && (v
                        .get("uri")
                        .and_then(Value::as_str)
                        .is_some_and(|x| x.contains(u.as_str()))
                        || v.get("uris").and_then(Value::as_array).is_some_and(|xs| {
                            xs.iter()
                                .filter_map(Value::as_str)
                                .any(|x| x.contains(u.as_str()))
                        }))
            });
            let filter_ok = q.filter.as_ref().is_none_or(|filter| {
                form_urlencoded::parse(filter.as_bytes())
                    .filter(|(k, _)| {
                        kind == Kind::Routes && matches!(&**k, "service_id" | "upstream_id")
                    })
                    .all(|(k, want)| {
                        v.get(&*k)
                            .and_then(resource::id_text)
                            .is_some_and(|have| have == want)
                    })
            });
            name_ok && label_ok && uri_ok && filter_ok
        })
        .collect();
    let total = matching.len();
    let page: Vec<Value> = match q.page_size {
        Some(size) => {
            if !(10..=500).contains(&size) {
                return Err(AdminError::Bad(
                    "page_size: must be between 10 and 500".into(),
                ));
            }
            let page = q.page.unwrap_or(1);
            if page == 0 {
                return Err(AdminError::Bad("page: must be at least 1".into()));
            }
            matching
                .iter()
                .skip((page - 1) * size)
                .take(size)
                .map(|e| item(e))
                .collect()
        }
        None => matching.iter().map(|e| item(e)).collect(),
    };
    Ok(axum::Json(json!({"total": total, "list": page})).into_response())
}

async fn get_one(
    State(state): State<AdminState>,
    Path((segment, id)): Path<(String, String)>,
) -> Result<Response> {
    get_in(&state, &Scope::top(&segment)?, &id).await
}

async fn get_in(state: &AdminState, scope: &Scope, id: &str) -> Result<Response> {
    let entry = existing(state, scope, id).await?;
    Ok(axum::Json(item(&entry)).into_response())
}

async fn put(
    State(state): State<AdminState>,
    Path((segment, id)): Path<(String, String)>,
    Query(w): Query<WriteQuery>,
    body: Bytes,
) -> Result<Response> {
    let edit = Edit::Replace(body_json(&body)?);
    write(&state, &Scope::top(&segment)?, id, edit, w.ttl()?).await
}

#[derive(Debug, Deserialize)]
struct WriteQuery {
    /// Seconds the written resource lives; then it is deleted (APISIX's `?ttl=`, an etcd lease).
    ttl: Option<String>,
}

impl WriteQuery {
    fn ttl(&self) -> Result<Option<u64>> {
        let Some(text) = self.ttl.as_deref() else {
            return Ok(None);
        };
        let seconds: u64 = text
            .parse()
            .map_err(|_| AdminError::Bad("invalid argument ttl: should be a number".into()))?;
        if !(1..=resource::MAX_SECONDS).contains(&seconds) {
            return Err(AdminError::Bad(format!(
                "invalid argument ttl: 1 to {} seconds expected",
                resource::MAX_SECONDS
            )));
        }
        Ok(Some(seconds))
    }
}

/// `PUT /apisix/admin/<kind>` with the id (or a consumer's username) in the body.
async fn put_without_id(
    State(state): State<AdminState>,
    Path(segment): Path<String>,
    Query(w): Query<WriteQuery>,
    body: Bytes,
) -> Result<Response> {
    put_without_id_in(&state, &Scope::top(&segment)?, body_json(&body)?, w.ttl()?).await
}

async fn put_without_id_in(
    state: &AdminState,
    scope: &Scope,
    value: Value,
    ttl: Option<u64>,
) -> Result<Response> {
    let kind = scope.kind;
    let Some(id) = value.get(kind.id_field()).and_then(resource::id_text) else {
        return Err(AdminError::Bad(format!(
            "missing {} {}",
            kind.noun(),
            kind.id_field()
        )));
    };
    write(state, scope, id, Edit::Replace(value), ttl).await
}

/// `POST`: a new resource with a generated id.
async fn create(
    State(state): State<AdminState>,
    Path(segment): Path<String>,
    Query(w): Query<WriteQuery>,
    body: Bytes,
) -> Result<Response> {
    create_in(&state, &Scope::top(&segment)?, body_json(&body)?, w.ttl()?).await
}

async fn create_in(
    state: &AdminState,
    scope: &Scope,
    mut value: Value,
    ttl: Option<u64>,
) -> Result<Response> {
    let kind = scope.kind;
    match kind {
        Kind::Consumers => {
            return Err(AdminError::Bad(
                "consumers are created with PUT and their username".into(),
            ));
        }
        Kind::PluginMetadata => {
            return Err(AdminError::Bad(
                "plugin metadata is written with PUT and the plugin's name".into(),
            ));
        }
        _ => {}
    }
    if value.get("id").is_some() {
        return Err(AdminError::Bad(format!(
            "wrong {} id, do not need it",
            kind.noun()
        )));
    }
    let id = uuid::Uuid::now_v7().simple().to_string();
    if let Some(map) = value.as_object_mut() {
        map.insert("id".into(), Value::String(id.clone()));
    }
    write(state, scope, id, Edit::Replace(value), ttl).await
}

/// What a write does to the stored document.
#[derive(Debug)]
enum Edit {
    /// PUT and POST: this document.
    Replace(Value),
    /// PATCH: merged into the stored document (RFC 7386).
    Merge(Value),
    /// PATCH of a sub-path: the value there replaced.
    At(String, Value),
}

/// Awaits the attempt `$attempt`, in this process's turn of writing, again while a racing
/// write in another process gets in its way (after a pause that grows, with jitter, so racing
/// writers do not keep meeting), [`ATTEMPTS`] times at most.
macro_rules! retried {
    ($state:expr, $attempt:expr) => {{
        let mut outcome = Err(AdminError::Busy);
        for attempt in 0..ATTEMPTS {
            let turn = $state.writing.lock().await;
            let done = $attempt.await;
            drop(turn);
            match done {
                Err(AdminError::Store(StoreError::Conflict)) => {
                    let most = 2u64 << attempt.min(6);
                    let pause = rand::random_range(1..=most);
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                }
                done => {
                    outcome = done;
                    break;
                }
            }
        }
        outcome
    }};
}

/// Makes and stores the document `id` of `scope`: validated, its references and credentials
/// checked, stamped with ids and times — and, should a racing write change the store while it
/// was checked, all of it again on the new state. With `ttl`, it lives that many seconds.
async fn write(
    state: &AdminState,
    scope: &Scope,
    id: String,
    edit: Edit,
    ttl: Option<u64>,
) -> Result<Response> {
    retried!(state, write_once(state, scope, &id, &edit, ttl))
}

async fn write_once(
    state: &AdminState,
    scope: &Scope,
    id: &str,
    edit: &Edit,
    ttl: Option<u64>,
) -> Result<Response> {
    let kind = scope.kind;
    let id_field = kind.id_field();
    let key = scope.key(id);
    let revision = state.store.revision().await?;
    let existing = state.store.get(&key).await?;
    let mut value = match (edit, &existing) {
        (Edit::Replace(value), _) => value.clone(),
        (Edit::Merge(_) | Edit::At(..), None) => return Err(AdminError::NotFound),
        (Edit::Merge(patch), Some(entry)) => {
            // A patch that is not an object replaces the whole document, which is then refused.
            let mut value = entry.value.clone();
            merge(&mut value, patch.clone());
            value
        }
        (Edit::At(path, replacement), Some(entry)) => {
            let mut value = entry.value.clone();
            let mut slot = &mut value;
            for segment in path.split('/').filter(|s| !s.is_empty()) {
                let Some(map) = slot.as_object_mut() else {
                    return Err(AdminError::Bad(format!("invalid sub path {path:?}")));
                };
                slot = map.entry(segment.to_string()).or_insert(Value::Null);
            }
            *slot = replacement.clone();
            value
        }
    };
    let Some(map) = value.as_object_mut() else {
        return Err(AdminError::Bad(
            "invalid configuration: the body must be a JSON object".into(),
        ));
    };
    if let Some(named) = map.get(id_field).and_then(resource::id_text)
        && named != id
    {
        return Err(AdminError::Bad(format!("wrong {} {id_field}", kind.noun())));
    }
    if !resource::valid_id(id) {
        return Err(AdminError::Bad(format!(
            "invalid configuration: {id_field} {id:?}: 1-64 characters of [a-zA-Z0-9-_.] expected"
        )));
    }
    map.insert(id_field.into(), Value::String(id.to_string()));
    let now = now_secs();
    let created = existing
        .as_ref()
        .and_then(|e| e.value.get("create_time").cloned())
        .unwrap_or(Value::from(now));
    map.insert("create_time".into(), created);
    map.insert("update_time".into(), Value::from(now));
    resource::with_defaults(kind, &mut value);
    resource::validate(kind, &value, state.plugins)?;

    let owner = scope
        .consumer
        .as_ref()
        .map(|username| (Kind::Consumers, username.clone()));
    let mut present = Vec::new();
    for (target, target_id) in owner.into_iter().chain(resource::references(kind, &value)) {
        let target_key = target.key(&target_id);
        if state.store.get(&target_key).await?.is_none() {
            return Err(AdminError::Bad(format!(
                "failed to fetch {} info by {} id [{target_id}], response code: 404",
                target.noun(),
                target.noun()
            )));
        }
        present.push(target_key);
    }
    check_identities(state, kind, &key, &value).await?;

    let guard = Guard { revision, present };
    let written = state
        .store
        .commit(&guard, &[(key.clone(), Some(value.clone()))], ttl)
        .await?;
    let status = match (edit, written.first()) {
        // A patch never creates; APISIX answers 200.
        (Edit::Replace(_), Some(w)) if !w.existed => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    let value = resource::redacted(kind, &value);
    Ok((status, axum::Json(json!({"key": key, "value": value}))).into_response())
}

/// Refuses a consumer or credential that would identify a client another consumer or
/// credential already identifies (the same key-auth `key`, basic-auth `username`…).
async fn check_identities(state: &AdminState, kind: Kind, key: &str, value: &Value) -> Result<()> {
    let identities = resource::identities(kind, value, state.plugins);
    if identities.is_empty() {
        return Ok(());
    }
    for other in state.store.list(&Kind::Consumers.key("")).await? {
        let Some((other_kind, other_id)) = resource::parse_key(&other.key) else {
            continue;
        };
        if other.key == key {
            continue;
        }
        let taken = resource::identities(other_kind, &other.value, state.plugins);
        if let Some((plugin, _)) = identities.iter().find(|i| taken.contains(i)) {
            let field = state.plugins.identity_field(plugin).unwrap_or("key");
            let holder = match other_kind {
                Kind::Credentials => format!("credential [{other_id}]"),
                _ => format!("consumer [{other_id}]"),
            };
            return Err(AdminError::Bad(format!(
                "invalid configuration: plugins.{plugin}.{field}: already used by {holder}"
            )));
        }
    }
    Ok(())
}

async fn patch(
    State(state): State<AdminState>,
    Path((segment, id)): Path<(String, String)>,
    Query(w): Query<WriteQuery>,
    body: Bytes,
) -> Result<Response> {
    let edit = Edit::Merge(body_json(&body)?);
    write(&state, &Scope::top(&segment)?, id, edit, w.ttl()?).await
}

/// Below `/apisix/admin/<kind>/<id>/`: a consumer's credentials
/// (`consumers/<username>/credentials[/<id>]`, every method), else `PATCH` of a sub-path.
async fn nested(
    State(state): State<AdminState>,
    method: Method,
    Path((segment, id, path)): Path<(String, String, String)>,
    Query(q): Query<ListQuery>,
    Query(w): Query<WriteQuery>,
    body: Bytes,
) -> Result<Response> {
    let ttl = w.ttl()?;
    let credential = (segment == "consumers")
        .then(|| path.strip_prefix("credentials"))
        .flatten()
        .filter(|rest| rest.is_empty() || rest.starts_with('/'))
        .map(|rest| rest.trim_start_matches('/').to_string());
    let Some(credential) = credential else {
        if method != Method::PATCH {
            return Err(AdminError::NotFound);
        }
        let edit = Edit::At(path, body_json(&body)?);
        return write(&state, &Scope::top(&segment)?, id, edit, ttl).await;
    };
    let scope = Scope::credentials(id);
    match (method, credential.is_empty()) {
        (Method::GET, true) => list_in(&state, &scope, q).await,
        (Method::PUT, true) => put_without_id_in(&state, &scope, body_json(&body)?, ttl).await,
        (Method::POST, true) => create_in(&state, &scope, body_json(&body)?, ttl).await,
        (Method::GET, false) => get_in(&state, &scope, &credential).await,
        (Method::PUT, false) => {
            let edit = Edit::Replace(body_json(&body)?);
            write(&state, &scope, credential, edit, ttl).await
        }
        (Method::PATCH, false) => {
            let edit = Edit::Merge(body_json(&body)?);
            write(&state, &scope, credential, edit, ttl).await
        }
        (Method::DELETE, false) => delete_in(&state, &scope, credential, false).await,
        _ => Err(AdminError::NotFound),
    }
}

/// JSON merge patch (RFC 7386): objects merge, `null` removes, anything else replaces.
fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(&k);
                } else {
                    merge(t.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p,
    }
}

#[derive(Debug, Deserialize)]
struct DeleteQuery {
    /// `true`: delete even what others refer to (APISIX's force deletion).
    force: Option<String>,
}

async fn delete(
    State(state): State<AdminState>,
    Path((segment, id)): Path<(String, String)>,
    Query(q): Query<DeleteQuery>,
) -> Result<Response> {
    let force = q.force.as_deref() == Some("true");
    delete_in(&state, &Scope::top(&segment)?, id, force).await
}

/// Deletes a resource nothing refers to (or anyway, when `force`); a consumer's credentials go
/// with it.
async fn delete_in(state: &AdminState, scope: &Scope, id: String, force: bool) -> Result<Response> {
    retried!(state, delete_once(state, scope, &id, force))
}

async fn delete_once(state: &AdminState, scope: &Scope, id: &str, force: bool) -> Result<Response> {
    let kind = scope.kind;
    let key = scope.key(id);
    let revision = state.store.revision().await?;
    let everything = state.store.list("/apisix/").await?;
    if !everything.iter().any(|e| e.key == key) {
        return Err(AdminError::NotFound);
    }
    let target = (kind, id.to_string());
    for entry in &everything {
        let Some((referrer, rid)) = resource::parse_key(&entry.key) else {
            continue;
        };
        if !force && resource::references(referrer, &entry.value).contains(&target) {
            return Err(AdminError::Bad(format!(
                "can not delete this {}, {} [{rid}] is still using it now",
                kind.noun(),
                referrer.noun()
            )));
        }
    }
    let mut changes = vec![(key.clone(), None)];
    if kind == Kind::Consumers {
        let credentials = Scope::credentials(id.to_string()).key("");
        let owned = everything
            .iter()
            .filter(|e| e.key.starts_with(&credentials));
        changes.extend(owned.map(|e| (e.key.clone(), None)));
    }
    let guard = Guard {
        revision,
        present: vec![key.clone()],
    };
    state.store.commit(&guard, &changes, None).await?;
    Ok(axum::Json(json!({"deleted": id, "key": key})).into_response())
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    before: Option<i64>,
    limit: Option<i64>,
}

async fn history(
    State(state): State<AdminState>,
    Query(q): Query<HistoryQuery>,
) -> Result<Response> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let mut changes = state.store.history(q.before, limit).await?;
    for change in &mut changes {
        change.value = change.value.as_ref().map(|v| shown(&change.key, v));
    }
    let revision = state.store.revision().await?;
    Ok(axum::Json(json!({"revision": revision, "changes": changes})).into_response())
}

#[derive(Debug, Deserialize)]
struct DiffQuery {
    from: i64,
    to: Option<i64>,
}

async fn diff(State(state): State<AdminState>, Query(q): Query<DiffQuery>) -> Result<Response> {
    let to = match q.to {
        Some(to) => to,
        None => state.store.revision().await?,
    };
    let differences = redact(state.store.diff(q.from, to).await?);
    Ok(axum::Json(json!({"from": q.from, "to": to, "differences": differences})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    revision: i64,
}

async fn rollback(State(state): State<AdminState>, body: Bytes) -> Result<Response> {
    let request: RollbackRequest = serde_json::from_slice(&body)
        .map_err(|e| AdminError::Bad(format!("invalid request body: {e}")))?;
    let current = state.store.revision().await?;
    if request.revision < 0 || request.revision > current {
        return Err(AdminError::Bad(format!(
            "revision: must be between 0 and the current revision {current}"
        )));
    }
    let changed = redact(retried!(state, async {
        Ok::<_, AdminError>(state.store.rollback(request.revision).await?)
    })?);
    let revision = state.store.revision().await?;
    Ok(axum::Json(
        json!({"revision": revision, "rolled_back_to": request.revision, "changes": changed}),
    )
    .into_response())
}

/// Differences as the Admin API shows them.
fn redact(mut differences: Vec<crate::store::Difference>) -> Vec<crate::store::Difference> {
    for d in &mut differences {
        d.before = d.before.as_ref().map(|v| shown(&d.key, v));
        d.after = d.after.as_ref().map(|v| shown(&d.key, v));
    }
    differences
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut v = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2]});
        merge(&mut v, json!({"a": null, "b": {"c": 5}, "e": [3]}));
        assert_eq!(v, json!({"b": {"c": 5, "d": 3}, "e": [3]}));
    }
}
