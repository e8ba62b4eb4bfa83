//! The pages as a person uses them, in headless Chromium (through chromedriver): sign in on
//! Axle's page, see the navigation of one's role, administer, sign out; a form posted without
//! the page's CSRF token is refused.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{ClientBuilder, Locator};
use serde_json::json;

use crate::helpers::*;

const PASSWORD: &str = "correct horse battery staple";

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn browser(chromedriver: &str) -> (fantoccini::Client, Driver) {
    let port = free_port();
    let driver = Driver(
        Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut capabilities = serde_json::Map::new();
    let mut options = json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
        "--disable-dev-shm-usage", "--window-size=1280,900"]});
    if let Ok(binary) = std::env::var("AXLE_TEST_CHROMIUM") {
        options["binary"] = binary.into();
    }
    capabilities.insert("goog:chromeOptions".into(), options);
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    for _ in 0..100 {
        let client = ClientBuilder::new(connector.clone())
            .capabilities(capabilities.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await;
        if let Ok(client) = client {
            return (client, driver);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not start");
}

/// Fills in and sends the sign-in form the browser is on.
async fn sign_in(page: &fantoccini::Client, username: &str, password: &str) {
    page.wait()
        .for_element(Locator::Css("input[name=username]"))
        .await
        .unwrap();
    for (field, value) in [("username", username), ("password", password)] {
        let input = page
            .find(Locator::Css(&format!("input[name={field}]")))
            .await
            .unwrap();
        input.clear().await.unwrap();
        input.send_keys(value).await.unwrap();
    }
    page.find(Locator::Css("form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn nav_labels(page: &fantoccini::Client) -> Vec<String> {
    let mut labels = Vec::new();
    for link in page.find_all(Locator::Css("header nav a")).await.unwrap() {
        labels.push(link.text().await.unwrap());
    }
    labels
}

/// Waits for the page whose heading is `expected` (a click's navigation takes a moment).
async fn on_page(page: &fantoccini::Client, expected: &str) {
    let mut last = String::new();
    for _ in 0..100 {
        if let Ok(h1) = page.find(Locator::Css("main h1")).await
            && let Ok(text) = h1.text().await
        {
            if text == expected {
                return;
            }
            last = text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let url = page
        .current_url()
        .await
        .map(|u| u.to_string())
        .unwrap_or_default();
    let source = page.source().await.unwrap_or_default();
    panic!("never reached the page {expected:?}; the last heading was {last:?} at {url}: {source}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_sees_their_roles_pages_and_signs_out() {
    let Some(chromedriver) = axle_core::testing::tool("AXLE_TEST_CHROMEDRIVER", "chromedriver")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::serve(
        dir.path(),
        free_port(),
        &[("AXLE_ADMIN_PASSWORD", PASSWORD.into())],
    )
    .await;
    let site = format!("http://127.0.0.1:{}", server.gateway_port);
    let (page, _driver) = browser(&chromedriver).await;

    // The pages send a stranger to sign in, then back.
    page.goto(&format!("{site}/")).await.unwrap();
    on_page(&page, "Sign in").await;
    sign_in(&page, "admin", "a wrong password!").await;
    let flash = page
        .wait()
        .for_element(Locator::Css(".flash-error"))
        .await
        .unwrap();
    assert!(
        flash
            .text()
            .await
            .unwrap()
            .contains("wrong username or password")
    );
    sign_in(&page, "admin", PASSWORD).await;
    on_page(&page, "Welcome, admin").await;
    let nav = nav_labels(&page).await;
    assert!(
        nav.contains(&"Users".to_string()) && nav.contains(&"Sign out".to_string()),
        "{nav:?}"
    );
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(
        shots.join("pages-home.png"),
        page.screenshot().await.unwrap(),
    )
    .unwrap();

    // An administrator adds a dealer from the users page.
    page.find(Locator::LinkText("Users"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    on_page(&page, "Users").await;
    assert!(page.source().await.unwrap().contains(">admin</a></td>"));
    page.find(Locator::Css("details summary"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let form = page.form(Locator::Css("details form")).await.unwrap();
    form.set_by_name("username", "dealer7").await.unwrap();
    form.set_by_name("password", "a long dealer passphrase")
        .await
        .unwrap();
    form.set_by_name("roles", "dealer").await.unwrap();
    form.submit().await.unwrap();
    page.wait()
        .for_element(Locator::Css(".flash-info"))
        .await
        .unwrap();
    assert!(page.source().await.unwrap().contains(">dealer7</a></td>"));
    std::fs::write(
        shots.join("pages-users.png"),
        page.screenshot().await.unwrap(),
    )
    .unwrap();

    // A form posted without the page's CSRF token is refused (a forged cross-site post).
    let status = page
        .execute_async(
            "const done = arguments[0]; fetch('/account/password', {method: 'POST', \
             headers: {'content-type': 'application/x-www-form-urlencoded'}, \
             body: 'current_password=x&new_password=yyyyyyyyyyyyy&confirm_password=yyyyyyyyyyyyy'}) \
             .then(r => done(r.status))",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, json!(403));

    // Sign out: Axle asks to confirm, then back to the start, which asks to sign in again.
    page.find(Locator::LinkText("Sign out"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    on_page(&page, "Sign out").await;
    page.find(Locator::Css("form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    on_page(&page, "Sign in").await;

    // The dealer: no administration in the navigation, and its pages refused.
    sign_in(&page, "dealer7", "a long dealer passphrase").await;
    on_page(&page, "Welcome, dealer7").await;
    let nav = nav_labels(&page).await;
    assert!(!nav.contains(&"Users".to_string()), "{nav:?}");
    page.goto(&format!("{site}/admin/users")).await.unwrap();
    on_page(&page, "Not for your role").await;
    page.goto(&format!("{site}/account")).await.unwrap();
    on_page(&page, "My account").await;
    assert!(
        page.source()
            .await
            .unwrap()
            .contains("Where you are signed in")
    );
    std::fs::write(
        shots.join("pages-account.png"),
        page.screenshot().await.unwrap(),
    )
    .unwrap();
    page.close().await.unwrap();
    assert!(server.terminate().status.success());
}

/// Clicks the element `css` once it is there.
async fn click(page: &fantoccini::Client, css: &str) {
    page.wait()
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}

/// The text of the element `css`, once it is there.
async fn text_of(page: &fantoccini::Client, css: &str) -> String {
    page.wait()
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

/// A pet shop's backend for the Swagger Petstore document.
async fn pet_shop() -> String {
    let app = axum::Router::new().route(
        "/shop/pets",
        axum::routing::get(|| async { axum::Json(json!([{"id": 1, "name": "Rex"}])) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/shop")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dealer_finds_an_api_subscribes_and_tries_it_in_the_market_pages() {
    let Some(chromedriver) = axle_core::testing::tool("AXLE_TEST_CHROMEDRIVER", "chromedriver")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::serve(
        dir.path(),
        free_port(),
        &[("AXLE_ADMIN_PASSWORD", PASSWORD.into())],
    )
    .await;
    let site = format!("http://127.0.0.1:{}", server.gateway_port);
    let admin = server.token(dir.path());
    let http = reqwest::Client::new();
    let call = |path: &str, body: serde_json::Value| {
        http.post(format!("{site}{path}"))
            .bearer_auth(&admin)
            .json(&body)
            .send()
    };
    let made = |r: Result<reqwest::Response, reqwest::Error>| async move {
        let r = r.unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        r.json::<serde_json::Value>().await.unwrap()
    };
    // A publisher's product: the Swagger Petstore (the OpenAPI Initiative's document, as
    // written) in front of a pet shop, with a plan approved at once and one by a publisher.
    made(
        call(
            "/api/identity/users",
            json!({"username": "dana.dealer",
        "password": "a long dealer passphrase", "roles": ["dealer"]}),
        )
        .await,
    )
    .await;
    let product = made(
        call(
            "/api/market/products",
            json!({"slug": "petstore", "title": "Swagger Petstore", "owner_team": "pets",
                   "description": "Pets, listed and shown"}),
        )
        .await,
    )
    .await;
    let pid = product["id"].as_str().unwrap();
    let petstore = include_str!("../../../market/tests/openapi/petstore.yaml");
    let version = made(
        call(
            &format!("/api/market/products/{pid}/versions"),
            json!({"number": "1.0.0", "document": petstore, "backend": {"url": pet_shop().await}}),
        )
        .await,
    )
    .await;
    let vid = version["id"].as_str().unwrap();
    made(call(&format!("/api/market/versions/{vid}/publish"), json!({})).await).await;
    for (name, approval) in [("Free", "auto"), ("Gold", "manual")] {
        made(
            call(
                &format!("/api/market/products/{pid}/plans"),
                json!({"name": name, "approval": approval, "limit": {"count": 100, "period": "day"}}),
            )
            .await,
        )
        .await;
    }

    let (page, _driver) = browser(&chromedriver).await;
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    page.goto(&format!("{site}/market")).await.unwrap();
    sign_in(&page, "dana.dealer", "a long dealer passphrase").await;
    on_page(&page, "API market").await;
    // Find it, open it.
    let search = page.find(Locator::Css("input[name=q]")).await.unwrap();
    search.send_keys("pets").await.unwrap();
    click(&page, "form[role=search] button").await;
    page.wait()
        .for_element(Locator::LinkText("Swagger Petstore"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    on_page(&page, "Swagger Petstore").await;
    assert!(page.source().await.unwrap().contains("/market/petstore/v1"));
    // An application and its key, shown once.
    page.wait()
        .for_element(Locator::LinkText("Make an application first"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    on_page(&page, "My applications").await;
    let form = page.form(Locator::Css("details form")).await.unwrap();
    form.set_by_name("name", "Pet shop app").await.unwrap();
    form.submit().await.unwrap();
    on_page(&page, "Pet shop app").await;
    let app_url = page.current_url().await.unwrap().to_string();
    click(&page, "form button[type=submit]").await;
    let key = text_of(&page, "#new-key").await;
    assert!(key.starts_with("axk_"), "{key}");
    // Subscribe to Free: approved at once.
    page.goto(&format!("{site}/market/products/{pid}"))
        .await
        .unwrap();
    on_page(&page, "Swagger Petstore").await;
    click(&page, "tbody tr:first-child form button").await;
    on_page(&page, "Pet shop app").await;
    assert!(
        text_of(&page, ".flash-info")
            .await
            .starts_with("Subscribed")
    );
    // The rendered reference, and a call tried from it through the gateway with the key.
    page.goto(&format!("{site}/market/products/{pid}"))
        .await
        .unwrap();
    page.find(Locator::LinkText("API reference"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    on_page(&page, "Swagger Petstore 1.0.0").await;
    assert_eq!(text_of(&page, ".opblock-summary-path").await, "/pets");
    // Code to call each operation with, through the gateway.
    let source = page.source().await.unwrap();
    assert!(
        source.contains("requests.get(")
            && source.contains("/market/petstore/v1/pets")
            && source.contains("await fetch("),
        "the snippets"
    );
    click(&page, "button.authorize").await;
    page.wait()
        .for_element(Locator::Css("#api_key_value"))
        .await
        .unwrap()
        .send_keys(&key)
        .await
        .unwrap();
    click(&page, ".modal-ux button.authorize").await;
    click(&page, ".modal-ux button.btn-done").await;
    click(&page, ".opblock-summary-control").await;
    if text_of(&page, "button.try-out__btn")
        .await
        .contains("Try it out")
    {
        click(&page, "button.try-out__btn").await;
    }
    click(&page, "button.execute").await;
    let status = text_of(
        &page,
        ".live-responses-table .response .response-col_status",
    )
    .await;
    assert_eq!(status, "200", "the try-it call through the gateway");
    std::fs::write(
        shots.join("market-reference.png"),
        page.screenshot().await.unwrap(),
    )
    .unwrap();
    // Its usage shows on the application's page once the gateway reported it.
    let mut requests = String::new();
    for _ in 0..50 {
        page.goto(&app_url).await.unwrap();
        requests = text_of(&page, ".numbers div:first-child strong").await;
        if requests == "1" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(requests, "1");
    std::fs::write(
        shots.join("market-app.png"),
        page.screenshot().await.unwrap(),
    )
    .unwrap();

    // Gold waits for a publisher, who approves it from the approvals page.
    page.goto(&format!("{site}/market/apps")).await.unwrap();
    click(&page, "details summary").await;
    let form = page.form(Locator::Css("details form")).await.unwrap();
    form.set_by_name("name", "Back office").await.unwrap();
    form.submit().await.unwrap();
    on_page(&page, "Back office").await;
    page.goto(&format!("{site}/market/products/{pid}"))
        .await
        .unwrap();
    on_page(&page, "Swagger Petstore").await;
    let gold = page
        .find(Locator::Css("tbody tr:nth-child(2) form"))
        .await
        .unwrap();
    let select = gold
        .find(Locator::Css("select[name=application_id]"))
        .await
        .unwrap();
    select.select_by_label("Back office").await.unwrap();
    gold.find(Locator::Css("button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    on_page(&page, "Back office").await;
    assert!(text_of(&page, ".flash-info").await.starts_with("Requested"));
    assert!(page.source().await.unwrap().contains("<td>requested</td>"));
    page.goto(&format!("{site}/market/approvals"))
        .await
        .unwrap();
    on_page(&page, "Not for your role").await;

    page.goto(&format!("{site}/logout")).await.unwrap();
    click(&page, "form button[type=submit]").await;
    on_page(&page, "Sign in").await;
    sign_in(&page, "admin", PASSWORD).await;
    page.goto(&format!("{site}/market/approvals"))
        .await
        .unwrap();
    on_page(&page, "Approvals").await;
    assert!(page.source().await.unwrap().contains("dana.dealer"));
    click(&page, "tbody form button").await;
    on_page(&page, "Approvals").await;
    assert_eq!(text_of(&page, ".flash-info").await, "Done.");
    assert!(
        page.source()
            .await
            .unwrap()
            .contains("Nothing waits for a decision.")
    );
    page.close().await.unwrap();
    assert!(server.terminate().status.success());
}

/// Signs the browser out (Axle asks to confirm) and back in as `username`.
async fn switch_user(page: &fantoccini::Client, username: &str, password: &str) {
    click(page, "header nav a[href='/logout']").await;
    on_page(page, "Sign out").await;
    click(page, "form button[type=submit]").await;
    on_page(page, "Sign in").await;
    sign_in(page, username, password).await;
    on_page(page, &format!("Welcome, {username}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_follows_a_settlement_through_sagas_orders_and_finance_pages() {
    let Some(chromedriver) = axle_core::testing::tool("AXLE_TEST_CHROMEDRIVER", "chromedriver")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::serve_with(
        dir.path(),
        free_port(),
        &["--demo"],
        &[("AXLE_ADMIN_PASSWORD", PASSWORD.into())],
    )
    .await;
    let site = format!("http://127.0.0.1:{}", server.gateway_port);
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let (page, _driver) = browser(&chromedriver).await;
    const DEMO: &str = "axle demo passphrase";

    // The operator: the demo's settlement in the sagas, with its four steps done.
    page.goto(&format!("{site}/")).await.unwrap();
    sign_in(&page, "zhao.ops", DEMO).await;
    on_page(&page, "Welcome, zhao.ops").await;
    let nav = nav_labels(&page).await;
    for label in ["Orders", "Finance", "Sagas"] {
        assert!(nav.contains(&label.to_string()), "{nav:?}");
    }
    click(&page, "header nav a[href='/sagas']").await;
    on_page(&page, "Sagas").await;
    for _ in 0..100 {
        if page.source().await.unwrap().contains("demo-lot-1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        page.refresh().await.unwrap();
    }
    std::fs::write(
        shots.join("pages-sagas.png"),
        page.screenshot().await.unwrap(),
    )
    .unwrap();
    click(&page, "main table tbody a").await;
    on_page(&page, "settlement demo-lot-1").await;
    for _ in 0..100 {
        if text_of(&page, "#saga-status").await == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        page.refresh().await.unwrap();
    }
    assert_eq!(text_of(&page, "#saga-status").await, "completed");
    let calls = page
        .find_all(Locator::Css("main table tbody tr"))
        .await
        .unwrap();
    assert_eq!(calls.len(), 4, "one call per step");
    std::fs::write(
        shots.join("pages-saga.png"),
        page.screenshot().await.unwrap(),
    )
    .unwrap();

    // Filtering: no compensated settlement in the demo.
    page.goto(&format!("{site}/sagas?status=compensated"))
        .await
        .unwrap();
    on_page(&page, "Sagas").await;
    assert!(page.source().await.unwrap().contains("No saga matches."));

    // The order it created, awaiting payment, with its history.
    click(&page, "header nav a[href='/orders']").await;
    on_page(&page, "Orders").await;
    // Organisations by name, not by id.
    assert!(
        page.source()
            .await
            .unwrap()
            .contains("Beijing Chaoyang Auto Trading")
    );
    std::fs::write(
        shots.join("pages-orders.png"),
        page.screenshot().await.unwrap(),
    )
    .unwrap();
    click(&page, "main table tbody a").await;
    assert_eq!(text_of(&page, "#order-status").await, "awaiting_payment");
    assert!(page.source().await.unwrap().contains("demo-lot-1"));
    std::fs::write(
        shots.join("pages-order.png"),
        page.screenshot().await.unwrap(),
    )
    .unwrap();

    // Finance: both dealers' deposits, a statement, the receivable.
    click(&page, "header nav a[href='/finance/accounts']").await;
    on_page(&page, "Deposit accounts").await;
    let accounts = page
        .find_all(Locator::Css("main table tbody tr"))
        .await
        .unwrap();
    assert_eq!(accounts.len(), 2);
    std::fs::write(
        shots.join("pages-accounts.png"),
        page.screenshot().await.unwrap(),
    )
    .unwrap();
    click(&page, "main table tbody a").await;
    assert_eq!(text_of(&page, "#available").await, "200000.00 CNY");
    assert!(page.source().await.unwrap().contains("demo deposit"));
    std::fs::write(
        shots.join("pages-account-statement.png"),
        page.screenshot().await.unwrap(),
    )
    .unwrap();
    page.goto(&format!("{site}/finance/receivables"))
        .await
        .unwrap();
    on_page(&page, "Receivables").await;
    assert!(page.source().await.unwrap().contains(">open<"));
    std::fs::write(
        shots.join("pages-receivables.png"),
        page.screenshot().await.unwrap(),
    )
    .unwrap();

    // The finance clerk records a top-up from the statement page.
    switch_user(&page, "wang.finance", DEMO).await;
    page.goto(&format!("{site}/finance/accounts"))
        .await
        .unwrap();
    click(&page, "main table tbody a").await;
    click(&page, "details summary").await;
    let form = page.form(Locator::Css("details form")).await.unwrap();
    form.set_by_name("amount", "1,000.50").await.unwrap();
    form.set_by_name("reference", "bank transfer 7781")
        .await
        .unwrap();
    form.submit().await.unwrap();
    page.wait()
        .for_element(Locator::Css(".flash-info"))
        .await
        .unwrap();
    assert_eq!(text_of(&page, "#available").await, "201000.50 CNY");

    // The buying dealer sees its own order and account; the selling dealer no order.
    switch_user(&page, "zhang.min", DEMO).await;
    let nav = nav_labels(&page).await;
    assert!(!nav.contains(&"Sagas".to_string()), "{nav:?}");
    page.goto(&format!("{site}/orders")).await.unwrap();
    on_page(&page, "Orders").await;
    assert_eq!(
        page.find_all(Locator::Css("main table tbody tr"))
            .await
            .unwrap()
            .len(),
        1
    );
    page.goto(&format!("{site}/finance/accounts"))
        .await
        .unwrap();
    assert_eq!(
        page.find_all(Locator::Css("main table tbody tr"))
            .await
            .unwrap()
            .len(),
        1
    );
    page.goto(&format!("{site}/sagas")).await.unwrap();
    on_page(&page, "Not for your role").await;
    page.goto(&format!("{site}/")).await.unwrap();
    switch_user(&page, "li.wei", DEMO).await;
    page.goto(&format!("{site}/orders")).await.unwrap();
    on_page(&page, "Orders").await;
    assert!(page.source().await.unwrap().contains("No order matches."));
    page.close().await.unwrap();
    assert!(server.terminate().status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_aborts_a_settlement_stuck_on_an_unreachable_participant() {
    let Some(chromedriver) = axle_core::testing::tool("AXLE_TEST_CHROMEDRIVER", "chromedriver")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let vehicle = free_port();
    // Finance is nowhere: its steps fail (connection refused) and are retried.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let server = Server::serve(
        dir.path(),
        vehicle,
        &[
            ("AXLE_ADMIN_PASSWORD", PASSWORD.into()),
            ("AXLE__SERVICES__SAGA__FINANCE_URL", nowhere),
        ],
    )
    .await;
    let site = format!("http://127.0.0.1:{}", server.gateway_port);
    let token = server.token(dir.path());
    let http = reqwest::Client::new();
    let post = |path: String, body: serde_json::Value| {
        http.post(format!("{site}/api{path}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let cny = |amount: i64| json!({"amount": amount, "currency": "CNY"});
    let created: serde_json::Value = post(
        "/vehicle/vehicles".into(),
        json!({"vin": "1HGCM82633A004352", "make": "Honda", "model": "Accord", "year": 2003}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let id = created["id"].as_str().unwrap();
    post(
        format!("/vehicle/vehicles/{id}/inspection/start"),
        json!({}),
    )
    .await
    .unwrap();
    post(
        format!("/vehicle/vehicles/{id}/inspection"),
        json!({"inspector": "i", "grade": "B", "completed_at": "2026-12-01T10:00:00Z",
               "items": [{"name": "engine", "result": "ok"}]}),
    )
    .await
    .unwrap();
    http.put(format!("{site}/api/vehicle/vehicles/{id}/pricing"))
        .bearer_auth(&token)
        .json(&json!({"guide_price": cny(9_800_000), "reserve_suggestion": cny(9_000_000)}))
        .send()
        .await
        .unwrap();
    post(format!("/vehicle/vehicles/{id}/list"), json!({}))
        .await
        .unwrap();
    let pool: serde_json::Value = post(
        "/vehicle/pools".into(),
        json!({"name": "yard", "capacity": 5}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let started = post(
        "/saga/settlements".into(),
        json!({"lot_id": "lot-stuck", "vehicle_id": id, "pool_id": pool["id"],
               "buyer_org": "dealer-1", "seller_org": "seller-1", "price": cny(9_500_000)}),
    )
    .await
    .unwrap();
    assert_eq!(started.status(), 201);
    let saga: serde_json::Value = started.json().await.unwrap();

    let (page, _driver) = browser(&chromedriver).await;
    page.goto(&format!("{site}/sagas/{}", saga["id"].as_str().unwrap()))
        .await
        .unwrap();
    sign_in(&page, "admin", PASSWORD).await;
    on_page(&page, "settlement lot-stuck").await;
    // It reaches the receivable and keeps retrying it.
    for _ in 0..100 {
        if page
            .source()
            .await
            .unwrap()
            .contains("at create_receivable")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        page.refresh().await.unwrap();
    }
    assert_eq!(text_of(&page, "#saga-status").await, "running");
    assert!(
        page.source()
            .await
            .unwrap()
            .contains("finance: error sending request")
    );
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(
        shots.join("pages-saga-stuck.png"),
        page.screenshot().await.unwrap(),
    )
    .unwrap();

    // The operator gives up on it: what was done is undone, last first — starting with the
    // receivable's cancellation, which keeps failing while finance is away, so nothing before
    // it is undone yet (never out of order).
    click(&page, "form input[value=abort] + button").await;
    page.wait()
        .for_element(Locator::Css(".flash-info"))
        .await
        .unwrap();
    assert_eq!(text_of(&page, "#saga-status").await, "compensating");
    assert!(
        page.find(Locator::Css("form input[value=abort]"))
            .await
            .is_err()
    );
    assert_eq!(
        text_of(&page, "ol.steps li.step-undoing").await,
        "create_receivable undoing"
    );
    let vehicle: serde_json::Value = http
        .get(format!("{site}/api/vehicle/vehicles/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(vehicle["state"], "sold", "undone only after the receivable");
    std::fs::write(
        shots.join("pages-saga-aborted.png"),
        page.screenshot().await.unwrap(),
    )
    .unwrap();
    page.close().await.unwrap();
    assert!(server.terminate().status.success());
}
