//! The deposit ledger under concurrent movements: whatever mix of top-ups, holds, releases
//! and captures runs at once, every movement's entries sum to zero, each balance is the sum
//! of its entries, the held balance is the sum of the active holds, and no hold ever takes
//! more than was available.

use axle_core::platform::Service;
use axle_core::testing::{Backends, TestPlatform, TestServer};
use futures::future::join_all;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

struct App {
    server: TestServer,
    _service: Service,
    _platform: TestPlatform,
}

async fn spawn(backends: Backends) -> App {
    let platform = TestPlatform::start(backends).await;
    let service = axle_finance::build(&platform.platform).await.unwrap();
    App {
        server: TestServer::spawn(&service).await,
        _service: service,
        _platform: platform,
    }
}

impl App {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .server
            .client
            .post(self.server.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> Value {
        let r = self
            .server
            .client
            .get(self.server.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.unwrap()
    }

    async fn account(&self, org: &str) -> String {
        let (status, a) = self
            .post("/accounts", json!({"org_id": org, "currency": "CNY"}))
            .await;
        assert_eq!(status, 201, "{a}");
        a["id"].as_str().unwrap().to_string()
    }
}

fn cny(amount: i64) -> Value {
    json!({"amount": amount, "currency": "CNY"})
}

#[derive(Debug, Clone)]
enum Op {
    TopUp(i64),
    Hold(i64),
    /// End the n-th hold placed so far (modulo their count), released or captured.
    Release(usize),
    Capture(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1i64..5_000).prop_map(Op::TopUp),
        (1i64..3_000).prop_map(Op::Hold),
        any::<usize>().prop_map(Op::Release),
        any::<usize>().prop_map(Op::Capture),
    ]
}

/// Runs `ops` in concurrent rounds of up to eight against a fresh account, then checks the
/// ledger against what was accepted.
async fn run_case(app: &App, case: usize, ops: Vec<Op>) {
    let account = app.account(&format!("dealer-{case}")).await;
    let mut holds: Vec<String> = Vec::new();
    let mut topped_up = 0;
    for round in ops.chunks(8) {
        let calls = round.iter().map(|op| {
            let hold = |n: usize| (!holds.is_empty()).then(|| holds[n % holds.len()].clone());
            let account = account.clone();
            let op = op.clone();
            async move {
                let answer = match &op {
                    Op::TopUp(a) => {
                        app.post(
                            &format!("/accounts/{account}/top-ups"),
                            json!({"amount": cny(*a), "reference": "bank"}),
                        )
                        .await
                    }
                    Op::Hold(a) => {
                        app.post(
                            &format!("/accounts/{account}/holds"),
                            json!({"amount": cny(*a), "reason": "leading", "reference": "lot"}),
                        )
                        .await
                    }
                    Op::Release(n) | Op::Capture(n) => {
                        let verb = if matches!(op, Op::Release(_)) {
                            "release"
                        } else {
                            "capture"
                        };
                        match hold(*n) {
                            Some(h) => app.post(&format!("/holds/{h}/{verb}"), json!({})).await,
                            None => (0, Value::Null),
                        }
                    }
                };
                (op, answer)
            }
        });
        for (op, (status, body)) in join_all(calls).await {
            match (op, status) {
                (Op::TopUp(a), 201) => topped_up += a,
                (Op::Hold(_), 201) => holds.push(body["id"].as_str().unwrap().to_string()),
                (Op::Hold(_), 409) => assert_eq!(body["code"], "ACCOUNT_INSUFFICIENT_FUNDS"),
                (Op::Release(_) | Op::Capture(_), 200 | 0) => {}
                // Ended the other way by a concurrent call.
                (Op::Release(_) | Op::Capture(_), 409) => assert_eq!(body["code"], "HOLD_SETTLED"),
                (op, status) => panic!("{op:?}: {status} {body}"),
            }
        }
    }
    let a = app.get(&format!("/accounts/{account}")).await;
    let (available, held) = (
        a["balances"]["available"].as_i64().unwrap(),
        a["balances"]["held"].as_i64().unwrap(),
    );
    let all_holds = app.get(&format!("/accounts/{account}/holds")).await;
    let sum = |status: &str| -> i64 {
        all_holds
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["status"] == status)
            .map(|h| h["amount"].as_i64().unwrap())
            .sum()
    };
    assert!(available >= 0, "never overdrawn: {a}");
    assert_eq!(held, sum("active"), "held = the active holds");
    assert_eq!(
        available + held + sum("captured"),
        topped_up,
        "nothing made or lost"
    );
    // The statement's entries sum to zero per movement and to the balances per book.
    let statement = app
        .get(&format!("/accounts/{account}/statement?limit=200"))
        .await;
    let mut books = std::collections::HashMap::<String, i64>::new();
    for m in statement["items"].as_array().unwrap() {
        let entries = m["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries
                .iter()
                .map(|e| e["amount"].as_i64().unwrap())
                .sum::<i64>(),
            0,
            "{m}"
        );
        for e in entries {
            *books.entry(e["book"].as_str().unwrap().into()).or_default() +=
                e["amount"].as_i64().unwrap();
        }
    }
    if statement["next_cursor"].is_null() {
        assert_eq!(books.get("available").copied().unwrap_or(0), available);
        assert_eq!(books.get("held").copied().unwrap_or(0), held);
    }
}

fn property(backends: fn() -> Option<Backends>) {
    let Some(backends) = backends() else { return };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = rt.block_on(spawn(backends));
    let mut runner = TestRunner::new(Config {
        cases: 24,
        ..Config::default()
    });
    let case = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(&proptest::collection::vec(op(), 1..40), |ops| {
            let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            rt.block_on(run_case(&app, n, ops));
            Ok(())
        })
        .unwrap();
}

#[test]
fn the_ledger_holds_its_invariants_under_concurrent_movements_sqlite() {
    property(|| Some(Backends::embedded()));
}

#[test]
fn the_ledger_holds_its_invariants_under_concurrent_movements_postgres() {
    property(Backends::scaled_out);
}

axle_core::on_every_backend!(holds_race_for_the_last_of_the_balance);

/// Twenty holds of 10 race for a balance of 100: exactly ten win.
async fn holds_race_for_the_last_of_the_balance(backends: Backends) {
    let app = spawn(backends).await;
    let account = app.account("dealer-race").await;
    let (status, _) = app
        .post(
            &format!("/accounts/{account}/top-ups"),
            json!({"amount": cny(100), "reference": "bank"}),
        )
        .await;
    assert_eq!(status, 201);
    let path = format!("/accounts/{account}/holds");
    let holds = (0..20).map(|i| {
        app.post(
            &path,
            json!({"amount": cny(10), "reason": "leading", "reference": format!("lot-{i}")}),
        )
    });
    let answers = join_all(holds).await;
    let won = answers.iter().filter(|(s, _)| *s == 201).count();
    let lost = answers
        .iter()
        .filter(|(s, b)| *s == 409 && b["code"] == "ACCOUNT_INSUFFICIENT_FUNDS")
        .count();
    assert_eq!((won, lost), (10, 10));
    let a = app.get(&format!("/accounts/{account}")).await;
    assert_eq!(
        a["balances"],
        json!({"available": 0, "held": 100, "total": 100})
    );

    // Bad input: clear 4xx.
    for (body, code) in [
        (
            json!({"amount": cny(0), "reason": "r", "reference": "x"}),
            "FINANCE_INVALID",
        ),
        (
            json!({"amount": {"amount": 5, "currency": "USD"}, "reason": "r", "reference": "x"}),
            "FINANCE_INVALID",
        ),
        (
            json!({"amount": cny(-5), "reason": "r", "reference": "x"}),
            "FINANCE_INVALID",
        ),
    ] {
        let (status, answer) = app.post(&format!("/accounts/{account}/holds"), body).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (422, Some(code)),
            "{answer}"
        );
    }
    let (status, answer) = app
        .post(
            &format!("/holds/{}/release", axle_core::id::new_id()),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (404, Some("FINANCE_NOT_FOUND"))
    );
    let (status, _) = app
        .post(
            "/accounts",
            json!({"org_id": "dealer-race", "currency": "CNY"}),
        )
        .await;
    assert_eq!(status, 409);
}
