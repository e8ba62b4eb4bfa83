//! The store of products, versions and plans on SQLite and, when `AXLE_TEST_POSTGRES_URL` (with the
//! other scaled-out servers) is named, PostgreSQL: records round-trip, names are unique, a
//! version's change is saved once when two race, and every change leaves its event.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use axle_core::testing::{Backends, TestPlatform};
use axle_market::domain::plan::{Approval, Period, Plan, ProductPlan, Quota};
use axle_market::domain::product::{Product, Visibility};
use axle_market::domain::version::{ApiVersion, Command, Status};
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
                rate_per_second: Some(50),
                quota: Some(Quota {
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
