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
