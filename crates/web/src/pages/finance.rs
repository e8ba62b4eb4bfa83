//! `/finance/…`: receivables, and deposit accounts with their statements. Finance opens
//! accounts and records top-ups; dealers see their organisation's accounts and what they owe.
//! Every page calls the finance service's API as the signed-in user.

use askama::Template;
use axle_core::http::Caller;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Router};
use axum_extra::extract::CookieJar;
use serde_json::json;

use super::{
    AppState, FlashQuery, FormFields, OrgNames, Submit, Viewer, error_page, fetch, minor, money,
    refused_form, shell, text, when,
};
use crate::{Html, Shell};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/finance/receivables", get(receivables))
        .route("/finance/accounts", get(accounts).post(open))
        .route("/finance/accounts/{id}", get(account).post(top_up))
}

/// Who has money to see here.
pub(crate) fn sees_finance(caller: &Caller) -> bool {
    [
        "dealer",
        "finance",
        "operator",
        "auctioneer",
        "platform-admin",
    ]
    .iter()
    .any(|r| caller.has_role(r))
}

fn finance(caller: &Caller) -> bool {
    caller.has_role("finance") || caller.has_role("platform-admin")
}

#[derive(Template)]
#[template(path = "receivables.html")]
struct ReceivablesPage {
    shell: Shell,
    rows: Vec<(String, String, String, String, String, String)>,
    next: Option<String>,
}

async fn receivables(
    State(state): State<AppState>,
    Viewer(caller): Viewer,
    Query(q): Query<FlashQuery>,
) -> Response {
    let cursor = q
        .cursor
        .map(|c| format!("&cursor={}", super::urlencoded(&c)))
        .unwrap_or_default();
    let page = match fetch(
        &state,
        &state.finance,
        &caller,
        &format!("/receivables?limit=50{cursor}"),
    )
    .await
    {
        Ok(page) => page,
        Err(page) => return page,
    };
    let names = OrgNames::load(&state, &caller).await;
    let rows = page["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                when(&r["created_at"]),
                names.of(&r["debtor_org"]),
                money(&r["amount"]),
                text(&r["due_date"]),
                text(&r["status"]),
                text(&r["order_id"]),
            )
        })
        .collect();
    let page = ReceivablesPage {
        shell: shell("Receivables", &caller, None),
        rows,
        next: page["next_cursor"]
            .as_str()
            .map(|c| format!("/finance/receivables?cursor={}", super::urlencoded(c))),
    };
    Html::from(&page).into_response()
}

#[derive(Template)]
#[template(path = "deposit_accounts.html")]
struct AccountsPage {
    shell: Shell,
    rows: Vec<AccountRow>,
    finance: bool,
    csrf: String,
}

struct AccountRow {
    id: String,
    org: String,
    available: String,
    held: String,
    total: String,
}

async fn accounts(
    State(state): State<AppState>,
    jar: CookieJar,
    Viewer(caller): Viewer,
    Query(q): Query<FlashQuery>,
) -> Response {
    let page = match fetch(&state, &state.finance, &caller, "/accounts?limit=200").await {
        Ok(page) => page,
        Err(page) => return page,
    };
    let names = OrgNames::load(&state, &caller).await;
    let rows = page["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let b = &a["balances"];
            AccountRow {
                id: text(&a["id"]),
                org: names.of(&a["org_id"]),
                available: minor(&b["available"], &a["currency"]),
                held: minor(&b["held"], &a["currency"]),
                total: minor(&b["total"], &a["currency"]),
            }
        })
        .collect();
    let (jar, csrf) = state.csrf.token(jar, "/", state.secure);
    let page = AccountsPage {
        shell: shell("Deposit accounts", &caller, q.flash.as_ref()),
        rows,
        finance: finance(&caller),
        csrf,
    };
    (jar, Html::from(&page)).into_response()
}

async fn open(
    State(state): State<AppState>,
    jar: CookieJar,
    Viewer(caller): Viewer,
    Form(form): Form<FormFields>,
) -> Response {
    if !state.csrf.verify(&jar, form.csrf.as_deref()) {
        return refused_form();
    }
    let body = json!({"org_id": form.get("org_id"), "currency": form.get("currency")});
    let submit = Submit {
        base: &state.finance,
        path: "/accounts",
        body: Some(body),
        expected: StatusCode::CREATED,
        flash: "created",
        refused: "Not opened",
    };
    submit
        .send(&state, &caller, |a| {
            format!("/finance/accounts/{}", text(&a["id"]))
        })
        .await
}

#[derive(Template)]
#[template(path = "deposit_account.html")]
struct AccountPage {
    shell: Shell,
    id: String,
    org: String,
    currency: String,
    available: String,
    held: String,
    total: String,
    holds: Vec<(String, String, String, String, String)>,
    movements: Vec<Movement>,
    next: Option<String>,
    finance: bool,
    csrf: String,
}

struct Movement {
    at: String,
    kind: String,
    amount: String,
    reference: String,
    actor: String,
    entries: String,
}

async fn account(
    State(state): State<AppState>,
    jar: CookieJar,
    Viewer(caller): Viewer,
    Path(id): Path<uuid::Uuid>,
    Query(q): Query<FlashQuery>,
) -> Response {
    let cursor = q
        .cursor
        .map(|c| format!("&cursor={}", super::urlencoded(&c)))
        .unwrap_or_default();
    let (a, holds, statement) = match (
        fetch(&state, &state.finance, &caller, &format!("/accounts/{id}")).await,
        fetch(
            &state,
            &state.finance,
            &caller,
            &format!("/accounts/{id}/holds?status=active"),
        )
        .await,
        fetch(
            &state,
            &state.finance,
            &caller,
            &format!("/accounts/{id}/statement?limit=50{cursor}"),
        )
        .await,
    ) {
        (Ok(a), Ok(h), Ok(s)) => (a, h, s),
        (Err(page), _, _) | (_, Err(page), _) | (_, _, Err(page)) => return page,
    };
    let currency = &a["currency"];
    let holds = holds
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            (
                when(&h["created_at"]),
                minor(&h["amount"], currency),
                text(&h["reason"]),
                text(&h["reference"]),
                text(&h["status"]),
            )
        })
        .collect();
    let movements = statement["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| Movement {
            at: when(&m["created_at"]),
            kind: text(&m["kind"]).replace('_', " "),
            amount: minor(&m["amount"], currency),
            reference: text(&m["reference"]),
            actor: text(&m["actor"]),
            entries: m["entries"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    format!(
                        "{} {:+}",
                        text(&e["book"]).replace('_', " "),
                        e["amount"].as_i64().unwrap_or(0)
                    )
                })
                .collect::<Vec<_>>()
                .join(" · "),
        })
        .collect();
    let b = &a["balances"];
    let names = OrgNames::load(&state, &caller).await;
    let (jar, csrf) = state.csrf.token(jar, "/", state.secure);
    let page = AccountPage {
        shell: shell("Deposit account", &caller, q.flash.as_ref()),
        id: id.to_string(),
        org: names.of(&a["org_id"]),
        currency: text(currency),
        available: minor(&b["available"], currency),
        held: minor(&b["held"], currency),
        total: minor(&b["total"], currency),
        holds,
        movements,
        next: statement["next_cursor"]
            .as_str()
            .map(|c| format!("/finance/accounts/{id}?cursor={}", super::urlencoded(c))),
        finance: finance(&caller),
        csrf,
    };
    (jar, Html::from(&page)).into_response()
}

async fn top_up(
    State(state): State<AppState>,
    jar: CookieJar,
    Viewer(caller): Viewer,
    Path(id): Path<uuid::Uuid>,
    Form(form): Form<FormFields>,
) -> Response {
    if !state.csrf.verify(&jar, form.csrf.as_deref()) {
        return refused_form();
    }
    // Amounts are typed in major units ("1000.50"); the API takes minor units.
    let Some(amount) = parse_major(form.get("amount")) else {
        return error_page(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Not recorded",
            "amount: a positive number with up to two decimals",
        );
    };
    let body = json!({"amount": {"amount": amount, "currency": form.get("currency")}, "reference": form.get("reference")});
    let path = format!("/accounts/{id}/top-ups");
    let submit = Submit {
        base: &state.finance,
        path: &path,
        body: Some(body),
        expected: StatusCode::CREATED,
        flash: "saved",
        refused: "Not recorded",
    };
    submit
        .send(&state, &caller, |_| format!("/finance/accounts/{id}"))
        .await
}

/// "1,000.50" → 100050 (two-decimal currencies).
fn parse_major(text: &str) -> Option<i64> {
    let text = text.replace(',', "");
    let (units, cents) = match text.split_once('.') {
        Some((u, c)) if !c.is_empty() && c.len() <= 2 && c.bytes().all(|b| b.is_ascii_digit()) => (
            u,
            if c.len() == 1 {
                format!("{c}0")
            } else {
                c.to_string()
            },
        ),
        Some(_) => return None,
        None => (text.as_str(), "00".to_string()),
    };
    if units.is_empty() || !units.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount = units
        .parse::<i64>()
        .ok()?
        .checked_mul(100)?
        .checked_add(cents.parse().ok()?)?;
    (amount > 0).then_some(amount)
}

#[cfg(test)]
mod tests {
    #[test]
    fn amounts_are_read_in_major_units() {
        use super::parse_major;
        assert_eq!(parse_major("1,000.5"), Some(100_050));
        assert_eq!(parse_major("20000"), Some(2_000_000));
        assert_eq!(parse_major("0.01"), Some(1));
        for bad in ["", "0", "-5", "1.234", "1e3", "abc", "1."] {
            assert_eq!(parse_major(bad), None, "{bad}");
        }
    }
}
