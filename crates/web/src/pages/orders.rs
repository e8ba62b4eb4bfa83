//! `/orders`: orders as their buyers and staff see them — a list by status, and one order with
//! its lines and history. Staff see every order, a dealer its organisation's: the pages show
//! what the order service's API answers the signed-in user.

use askama::Template;
use axle_core::http::Caller;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::{AppState, OrgNames, Viewer, fetch, money, shell, text, when};
use crate::{Html, Shell};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/orders", get(list))
        .route("/orders/{id}", get(detail))
}

/// Who has orders to see.
pub(crate) fn buyer_or_staff(caller: &Caller) -> bool {
    [
        "dealer",
        "operator",
        "auctioneer",
        "finance",
        "platform-admin",
    ]
    .iter()
    .any(|r| caller.has_role(r))
}

#[derive(Template)]
#[template(path = "orders.html")]
struct ListPage {
    shell: Shell,
    status: String,
    rows: Vec<Row>,
    next: Option<String>,
}

struct Row {
    id: String,
    created: String,
    buyer: String,
    source: String,
    amount: String,
    status: String,
}

#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    #[serde(default)]
    status: String,
    cursor: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    Viewer(caller): Viewer,
    Query(q): Query<ListQuery>,
) -> Response {
    let path = {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("limit", "50");
        if !q.status.is_empty() {
            query.append_pair("status", &q.status);
        }
        if let Some(cursor) = &q.cursor {
            query.append_pair("cursor", cursor);
        }
        format!("/orders?{}", query.finish())
    };
    let page = match fetch(&state, &state.order, &caller, &path).await {
        Ok(page) => page,
        Err(page) => return page,
    };
    let names = OrgNames::load(&state, &caller).await;
    let rows = page["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| Row {
            id: text(&o["id"]),
            created: when(&o["created_at"]),
            buyer: names.of(&o["buyer_org"]),
            source: format!(
                "{} {}",
                text(&o["source"]["kind"]),
                text(&o["source"]["reference"])
            ),
            amount: money(&o["amount"]),
            status: text(&o["status"]),
        })
        .collect();
    let next = page["next_cursor"].as_str().map(|c| {
        let mut next = form_urlencoded::Serializer::new(String::new());
        if !q.status.is_empty() {
            next.append_pair("status", &q.status);
        }
        next.append_pair("cursor", c);
        format!("/orders?{}", next.finish())
    });
    let page = ListPage {
        shell: shell("Orders", &caller, None),
        status: q.status,
        rows,
        next,
    };
    Html::from(&page).into_response()
}

#[derive(Template)]
#[template(path = "order.html")]
struct DetailPage {
    shell: Shell,
    id: String,
    status: String,
    buyer: String,
    seller: String,
    source: String,
    amount: String,
    deadline: String,
    payment: String,
    lines: Vec<(String, String, String, String)>,
    history: Vec<(String, String, String, String)>,
}

async fn detail(
    State(state): State<AppState>,
    Viewer(caller): Viewer,
    Path(id): Path<uuid::Uuid>,
) -> Response {
    let o = match fetch(&state, &state.order, &caller, &format!("/orders/{id}")).await {
        Ok(o) => o,
        Err(page) => return page,
    };
    let lines = o["lines"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            (
                text(&l["description"]),
                text(&l["quantity"]),
                money(&l["unit_price"]),
                text(&l["vehicle_id"]),
            )
        })
        .collect();
    let history = o["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            (
                when(&t["at"]),
                text(&t["to"]),
                text(&t["actor"]),
                text(&t["reason"]),
            )
        })
        .collect();
    let status = text(&o["status"]);
    let names = OrgNames::load(&state, &caller).await;
    let page = DetailPage {
        shell: shell("Order", &caller, None),
        id: id.to_string(),
        deadline: if status == "awaiting_payment" {
            when(&o["payment_deadline"])
        } else {
            String::new()
        },
        status,
        buyer: names.of(&o["buyer_org"]),
        seller: names.of(&o["seller_org"]),
        source: format!(
            "{} {}",
            text(&o["source"]["kind"]),
            text(&o["source"]["reference"])
        ),
        amount: money(&o["amount"]),
        payment: text(&o["payment_reference"]),
        lines,
        history,
    };
    Html::from(&page).into_response()
}
