//! `/sagas`: the orchestrator's instances for operators — filtered by type, status, flag and
//! age — and one instance's timeline (every call, its outcome and error), with the buttons to
//! retry it now or abort it (undo what it did). Every page calls the orchestrator's API as the
//! signed-in user.

use askama::Template;
use axle_core::http::Caller;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Router};
use axum_extra::extract::CookieJar;
use serde::Deserialize;
use serde_json::Value;

use super::{
    AppState, FlashQuery, FormFields, Submit, Viewer, error_page, fetch, refused_form, shell, text,
    when,
};
use crate::{Html, Shell};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/sagas", get(list))
        .route("/sagas/{id}", get(detail).post(operate))
}

/// Who sees the sagas (operators act on them).
pub(crate) fn watcher(caller: &Caller) -> bool {
    ["operator", "auctioneer", "finance", "platform-admin"]
        .iter()
        .any(|r| caller.has_role(r))
}

fn operator(caller: &Caller) -> bool {
    caller.has_role("operator") || caller.has_role("platform-admin")
}

#[derive(Template)]
#[template(path = "sagas.html")]
struct ListPage {
    shell: Shell,
    filter: Filter,
    counts: Vec<(String, String)>,
    flagged: String,
    rows: Vec<Row>,
    next: Option<String>,
}

struct Row {
    id: String,
    saga: String,
    key: String,
    status: String,
    step: String,
    flagged: bool,
    error: String,
    created: String,
}

#[derive(Debug, Default, Deserialize)]
struct Filter {
    #[serde(default)]
    status: String,
    #[serde(default)]
    saga: String,
    #[serde(default)]
    flagged: String,
    /// Minutes.
    #[serde(default)]
    older_than: String,
    cursor: Option<String>,
}

impl Filter {
    fn query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (name, value) in [
            ("status", &self.status),
            ("saga", &self.saga),
            ("flagged", &self.flagged),
        ] {
            if !value.is_empty() {
                q.append_pair(name, value);
            }
        }
        if let Ok(minutes) = self.older_than.trim().parse::<u64>() {
            q.append_pair("older_than_secs", &(minutes * 60).to_string());
        }
        if let Some(cursor) = &self.cursor {
            q.append_pair("cursor", cursor);
        }
        q.finish()
    }

    /// This filter's page after `cursor`.
    fn next(&self, cursor: &str) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (name, value) in [
            ("status", &self.status),
            ("saga", &self.saga),
            ("flagged", &self.flagged),
            ("older_than", &self.older_than),
        ] {
            if !value.is_empty() {
                q.append_pair(name, value);
            }
        }
        q.append_pair("cursor", cursor);
        format!("/sagas?{}", q.finish())
    }
}

/// The step an instance is at, by name.
fn step_name(instance: &Value, steps: Option<&Value>) -> String {
    let n = instance["step"].as_u64().unwrap_or(0) as usize;
    match instance["status"].as_str() {
        Some("completed" | "compensated") => String::new(),
        _ => steps
            .and_then(|s| s.get(n))
            .map(text)
            .unwrap_or_else(|| format!("step {}", n + 1)),
    }
}

async fn list(
    State(state): State<AppState>,
    Viewer(caller): Viewer,
    Query(filter): Query<Filter>,
) -> Response {
    if !watcher(&caller) {
        return error_page(
            StatusCode::FORBIDDEN,
            "Not for your role",
            "Sagas are for operators.",
        );
    }
    let path = format!("/sagas?limit=50&{}", filter.query());
    let (page, stats) = match (
        fetch(&state, &state.saga, &caller, &path).await,
        fetch(&state, &state.saga, &caller, "/sagas/stats").await,
    ) {
        (Ok(page), Ok(stats)) => (page, stats),
        (Err(page), _) | (_, Err(page)) => return page,
    };
    let rows = page["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| Row {
            id: text(&i["id"]),
            saga: text(&i["saga"]),
            key: text(&i["key"]),
            status: text(&i["status"]),
            step: step_name(i, None),
            flagged: i["flagged"].as_bool().unwrap_or(false),
            error: text(&i["last_error"]),
            created: when(&i["created_at"]),
        })
        .collect();
    let counts = stats["by_status"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| (text(&c["status"]), text(&c["count"])))
        .collect();
    let next = page["next_cursor"].as_str().map(|c| filter.next(c));
    let page = ListPage {
        shell: shell("Sagas", &caller, None),
        counts,
        flagged: text(&stats["flagged"]),
        rows,
        next,
        filter,
    };
    Html::from(&page).into_response()
}

#[derive(Template)]
#[template(path = "saga.html")]
struct DetailPage {
    shell: Shell,
    id: String,
    saga: String,
    key: String,
    status: String,
    step: String,
    flagged: bool,
    error: String,
    due: String,
    input: String,
    steps: Vec<(String, String)>,
    timeline: Vec<Attempt>,
    may_retry: bool,
    may_abort: bool,
    csrf: String,
}

struct Attempt {
    at: String,
    step: String,
    phase: String,
    attempt: String,
    outcome: String,
    status: String,
    error: String,
    ms: String,
}

async fn detail(
    State(state): State<AppState>,
    jar: CookieJar,
    Viewer(caller): Viewer,
    Path(id): Path<uuid::Uuid>,
    Query(q): Query<FlashQuery>,
) -> Response {
    if !watcher(&caller) {
        return error_page(
            StatusCode::FORBIDDEN,
            "Not for your role",
            "Sagas are for operators.",
        );
    }
    let i = match fetch(&state, &state.saga, &caller, &format!("/sagas/{id}")).await {
        Ok(i) => i,
        Err(page) => return page,
    };
    let status = text(&i["status"]);
    let at = i["step"].as_u64().unwrap_or(0) as usize;
    let steps = i["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(n, name)| {
            let done = i["results"].get(text(name)).is_some();
            // Compensation runs from the last step back: past the current one, undone.
            let mark = match (status.as_str(), done) {
                ("running", _) if n == at => "now",
                ("compensating", _) if n == at => "undoing",
                ("compensating", true) if n > at => "undone",
                ("compensated", true) => "undone",
                (_, true) => "done",
                _ => "",
            };
            (text(name), mark.to_string())
        })
        .collect();
    let timeline = i["timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| Attempt {
            at: when(&a["started_at"]),
            step: text(&a["step_name"]),
            phase: text(&a["phase"]),
            attempt: text(&a["attempt"]),
            outcome: text(&a["outcome"]),
            status: text(&a["status_code"]),
            error: text(&a["error"]),
            ms: text(&a["duration_ms"]),
        })
        .collect();
    let unfinished = matches!(status.as_str(), "running" | "compensating");
    let (jar, csrf) = state.csrf.token(jar, "/", state.secure);
    let page = DetailPage {
        shell: shell("Saga", &caller, q.flash.as_ref()),
        id: id.to_string(),
        saga: text(&i["saga"]),
        key: text(&i["key"]),
        step: step_name(&i, Some(&i["steps"])),
        flagged: i["flagged"].as_bool().unwrap_or(false),
        error: text(&i["last_error"]),
        due: if unfinished {
            when(&i["due_at"])
        } else {
            String::new()
        },
        input: serde_json::to_string_pretty(&i["input"]).unwrap_or_default(),
        steps,
        timeline,
        may_retry: unfinished && operator(&caller),
        may_abort: status == "running" && operator(&caller),
        csrf,
        status,
    };
    (jar, Html::from(&page)).into_response()
}

async fn operate(
    State(state): State<AppState>,
    jar: CookieJar,
    Viewer(caller): Viewer,
    Path(id): Path<uuid::Uuid>,
    Form(form): Form<FormFields>,
) -> Response {
    if !state.csrf.verify(&jar, form.csrf.as_deref()) {
        return refused_form();
    }
    let action = match form.get("action") {
        a @ ("retry" | "abort") => a,
        _ => return error_page(StatusCode::BAD_REQUEST, "Not a form of this page", ""),
    };
    let path = format!("/sagas/{id}/{action}");
    let submit = Submit {
        base: &state.saga,
        path: &path,
        body: None,
        expected: StatusCode::OK,
        flash: "decided",
        refused: "Not done",
    };
    submit
        .send(&state, &caller, |_| format!("/sagas/{id}"))
        .await
}
