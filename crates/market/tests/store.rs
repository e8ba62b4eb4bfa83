//! The store of products, versions and plans on SQLite and, when `AXLE_TEST_POSTGRES_URL` (with the
//! other scaled-out servers) is named, PostgreSQL: records round-trip, names are unique, a
//! version's or a subscription's change is saved once when two race, and every change leaves
//! its event.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use axle_core::testing::{Backends, TestPlatform};
use axle_market::domain::application::{ApiKey, Application};
use axle_market::domain::plan::{Approval, Limit, Period, Plan, ProductPlan};
use axle_market::domain::product::{Product, Visibility};
use axle_market::domain::subscription::{self, Subscription};
use axle_market::domain::version::{ApiVersion, Backend, Command, Status};
use axle_market::events;
use axle_market::store::{MarketStore, Record, StoreError};
use serde_json::json;

fn product(slug: &str) -> Product {
    Product {
        slug: slug.into(),
        title: "Vehicle data".into(),
        description: String::new(),
        owner_team: "platform".into(),
        tags: vec!["vehicles".into()],
        visibility: Visibility::Public,
    }
}

async fn outbox_types(store_db: &axle_core::db::Db) -> Vec<String> {
    use sqlx::Row;
    let rows = sqlx::query("SELECT payload FROM axle_outbox ORDER BY seq")
        .fetch_all(store_db.pool())
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            let payload: String = r.try_get("payload").unwrap();
            serde_json::from_str::<serde_json::Value>(&payload).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

async fn products_versions_and_plans(backends: Backends) {
    let platform = TestPlatform::start(backends).await;
    let db = platform
        .platform
        .open_db(axle_market::NAME, &axle_market::migrations())
        .await
        .unwrap();
    let store = MarketStore::new(db.clone());
    let now = axle_core::time::now();

    let vehicles = Record::new(product("vehicle-data"), axle_core::id::new_id(), now);
    let event = events::changed(&vehicles, events::PRODUCT_CREATED, "alice").unwrap();
    store.create_product(&vehicles, &event).await.unwrap();
    assert_eq!(
        store.product(vehicles.id).await.unwrap(),
        Some(vehicles.clone())
    );
    let again = Record::new(product("vehicle-data"), axle_core::id::new_id(), now);
    let e = store.create_product(&again, &event).await.unwrap_err();
    assert!(matches!(e, StoreError::SlugExists(_)), "{e}");
    let parts = Record::new(product("parts"), axle_core::id::new_id(), now);
    let event = events::changed(&parts, events::PRODUCT_CREATED, "alice").unwrap();
    store.create_product(&parts, &event).await.unwrap();
    let first = store.products(None, 1).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0], vehicles);
    assert_eq!(
        store.products(Some(vehicles.id), 10).await.unwrap(),
        std::slice::from_ref(&parts)
    );

    let document =
        json!({"openapi": "3.0.3", "info": {"title": "Vehicles", "version": "1.0.0"}, "paths": {}});
    let v1 = Record::new(
        ApiVersion {
            product_id: vehicles.id,
            number: "1.0.0".into(),
            status: Status::Draft,
            openapi: "3.0.3".into(),
            title: "Vehicles".into(),
            operations: 0,
            backend: Backend {
                url: "http://127.0.0.1:8080".into(),
            },
            weight: None,
        },
        axle_core::id::new_id(),
        now,
    );
    let event = events::changed(&v1, events::VERSION_CREATED, "alice").unwrap();
    store.create_version(&v1, &document, &event).await.unwrap();
    let e = store
        .create_version(
            &Record::new(v1.item.clone(), axle_core::id::new_id(), now),
            &document,
            &event,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::NumberExists(_)), "{e}");
    assert_eq!(store.document(v1.id).await.unwrap(), Some(document));
    assert_eq!(
        store.versions_of(vehicles.id).await.unwrap(),
        std::slice::from_ref(&v1)
    );

    // Two publishers publish the version read at the same record version: one wins.
    let read = store.api_version(v1.id).await.unwrap().unwrap();
    let published = Record {
        version: read.version + 1,
        updated_at: now,
        item: ApiVersion {
            status: read.item.status.apply(Command::Publish, now).unwrap(),
            ..read.item.clone()
        },
        ..read.clone()
    };
    let event = events::changed(&published, events::VERSION_PUBLISHED, "alice").unwrap();
    store
        .save_version(&published, read.version, &event)
        .await
        .unwrap();
    let e = store
        .save_version(&published, read.version, &event)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict), "{e}");
    let stored = store.api_version(v1.id).await.unwrap().unwrap();
    assert!(stored.item.status.serves());
    assert_eq!(stored.version, 2);

    let gold = Record::new(
        ProductPlan {
            product_id: vehicles.id,
            plan: Plan {
                name: "Gold".into(),
                limit: Some(Limit {
                    count: 100_000,
                    period: Period::Day,
                }),
                approval: Approval::Manual,
                organisations: Some(vec!["org-dealer".into()]),
            },
        },
        axle_core::id::new_id(),
        now,
    );
    let event = events::changed(&gold, events::PLAN_CREATED, "alice").unwrap();
    store.create_plan(&gold, &event).await.unwrap();
    let twice = Record::new(gold.item.clone(), axle_core::id::new_id(), now);
    let e = store.create_plan(&twice, &event).await.unwrap_err();
    assert!(matches!(e, StoreError::PlanExists(_)), "{e}");
    // The same name on another product is another plan.
    let elsewhere = Record::new(
        ProductPlan {
            product_id: parts.id,
            ..gold.item.clone()
        },
        axle_core::id::new_id(),
        now,
    );
    let event = events::changed(&elsewhere, events::PLAN_CREATED, "alice").unwrap();
    store.create_plan(&elsewhere, &event).await.unwrap();
    assert_eq!(
        store.plans_of(vehicles.id).await.unwrap(),
        std::slice::from_ref(&gold)
    );

    assert_eq!(
        outbox_types(&db).await,
        [
            events::PRODUCT_CREATED,
            events::PRODUCT_CREATED,
            events::VERSION_CREATED,
            events::VERSION_PUBLISHED,
            events::PLAN_CREATED,
            events::PLAN_CREATED,
        ]
    );
}

#[tokio::test]
async fn products_versions_and_plans_on_sqlite() {
    products_versions_and_plans(Backends::embedded()).await;
}

#[tokio::test]
async fn products_versions_and_plans_on_postgres() {
    if let Some(backends) = Backends::scaled_out() {
        products_versions_and_plans(backends).await;
    }
}

async fn applications_keys_and_subscriptions(backends: Backends) {
    let platform = TestPlatform::start(backends).await;
    let db = platform
        .platform
        .open_db(axle_market::NAME, &axle_market::migrations())
        .await
        .unwrap();
    let store = MarketStore::new(db.clone());
    let now = axle_core::time::now();
    let product = Record::new(product("fleet"), axle_core::id::new_id(), now);
    let event = events::changed(&product, events::PRODUCT_CREATED, "alice").unwrap();
    store.create_product(&product, &event).await.unwrap();
    let plan = Record::new(
        ProductPlan {
            product_id: product.id,
            plan: Plan {
                name: "Free".into(),
                limit: None,
                approval: Approval::Manual,
                organisations: None,
            },
        },
        axle_core::id::new_id(),
        now,
    );
    let event = events::changed(&plan, events::PLAN_CREATED, "alice").unwrap();
    store.create_plan(&plan, &event).await.unwrap();

    let app = Record::new(
        Application {
            name: "Dealer app".into(),
            description: String::new(),
            owner: "sub-li".into(),
            owner_name: "li.wei".into(),
            organisation: Some("org-dealer".into()),
        },
        axle_core::id::new_id(),
        now,
    );
    let event = events::changed(&app, events::APPLICATION_CREATED, "li.wei").unwrap();
    store.create_application(&app, &event).await.unwrap();
    assert_eq!(
        store.applications_of("sub-li").await.unwrap(),
        std::slice::from_ref(&app)
    );
    assert!(store.applications_of("sub-other").await.unwrap().is_empty());

    // A key is kept as its hash; once lapsed, it is listed until the gateway dropped it.
    let (secret, kept) = ApiKey::generate(app.id);
    let key = Record::new(kept, axle_core::id::new_id(), now);
    let event = events::changed(&key, events::KEY_CREATED, "li.wei").unwrap();
    store.create_key(&key, &event).await.unwrap();
    let stored: String = {
        use sqlx::Row;
        sqlx::query("SELECT doc FROM api_keys")
            .fetch_one(db.pool())
            .await
            .unwrap()
            .try_get("doc")
            .unwrap()
    };
    assert!(!stored.contains(&secret[4..]), "the key itself is not kept");
    assert!(store.lapsed_keys(now).await.unwrap().is_empty());
    let mut revoked = key.clone();
    revoked.item.expires_at = Some(now);
    revoked.version += 1;
    let event = events::changed(&revoked, events::KEY_REVOKED, "li.wei").unwrap();
    store.save_key(&revoked, key.version, &event).await.unwrap();
    let e = store
        .save_key(&revoked, key.version, &event)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict), "{e}");
    assert_eq!(store.lapsed_keys(now).await.unwrap(), [revoked.clone()]);
    store.key_removed(key.id).await.unwrap();
    assert!(store.lapsed_keys(now).await.unwrap().is_empty());

    // One live subscription per application and product; two approvals racing, one wins.
    let sub = Record::new(
        Subscription {
            application_id: app.id,
            product_id: product.id,
            plan_id: plan.id,
            status: subscription::Status::Requested,
            reason: None,
            requested_by: "li.wei".into(),
            decided_by: None,
        },
        axle_core::id::new_id(),
        now,
    );
    let event = events::changed(&sub, events::subscription(sub.item.status), "li.wei").unwrap();
    store.create_subscription(&sub, &event).await.unwrap();
    let second = Record::new(sub.item.clone(), axle_core::id::new_id(), now);
    let e = store
        .create_subscription(&second, &event)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::SubscriptionExists), "{e}");
    assert_eq!(
        store
            .subscriptions_in(subscription::Status::Requested)
            .await
            .unwrap(),
        std::slice::from_ref(&sub)
    );
    let mut approved = sub.clone();
    approved.item.status = subscription::Status::Approved;
    approved.item.decided_by = Some("alice".into());
    approved.version += 1;
    let event = events::changed(
        &approved,
        events::subscription(approved.item.status),
        "alice",
    )
    .unwrap();
    let (a, b) = tokio::join!(
        store.save_subscription(&approved, sub.version, &event),
        store.save_subscription(&approved, sub.version, &event),
    );
    assert!(
        a.is_ok() != b.is_ok(),
        "exactly one approval wins: {a:?} {b:?}"
    );
    assert_eq!(
        store.subscriptions_of(app.id).await.unwrap(),
        [approved.clone()]
    );
    // Once revoked, the application may subscribe to the product again.
    let mut revoked = approved.clone();
    revoked.item.status = subscription::Status::Revoked;
    revoked.version += 1;
    let event =
        events::changed(&revoked, events::subscription(revoked.item.status), "alice").unwrap();
    store
        .save_subscription(&revoked, approved.version, &event)
        .await
        .unwrap();
    let event =
        events::changed(&second, events::subscription(second.item.status), "li.wei").unwrap();
    store.create_subscription(&second, &event).await.unwrap();
}

#[tokio::test]
async fn applications_keys_and_subscriptions_on_sqlite() {
    applications_keys_and_subscriptions(Backends::embedded()).await;
}

#[tokio::test]
async fn applications_keys_and_subscriptions_on_postgres() {
    if let Some(backends) = Backends::scaled_out() {
        applications_keys_and_subscriptions(backends).await;
    }
}
