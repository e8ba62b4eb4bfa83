//! A vehicle's whole life as master data sees it, and the faults it must absorb.

use axle_core::events::{CloudEvent, EventBus};
use axle_core::on_every_backend;
use axle_core::testing::{Backends, eventually};
use axle_vehicle_api::{VehicleChanged, types};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

on_every_backend!(whole_life);
async fn whole_life(backends: Backends) {
    let s = spawn_stack(backends).await;
    let id = s
        .receive(json!({
            "vin": vin(1), "make": "Volkswagen", "model": "Lavida", "year": 2021, "mileage_km": 42_000,
            "colour": "white", "seller_org": "dealer-9"
        }))
        .await;
    let path = |action: &str| format!("/vehicles/{id}/{action}");
    s.vehicle_post(&path("inspection/start"), json!({})).await;
    s.vehicle_post(&path("inspection"), json!({
        "inspector": "inspector-7", "grade": "B", "completed_at": "2026-11-21T10:00:00Z",
        "items": [{"name": "engine", "result": "ok"}, {"name": "body", "result": "attention", "note": "scratch"}],
        "defects": ["scratch, rear bumper"]
    })).await;
    s.call(
        &s.vehicle,
        Method::PUT,
        &path("pricing"),
        Some(json!({"guide_price": cny(98_000), "reserve_suggestion": cny(90_000)})),
        200,
    )
    .await;
    s.call(
        &s.vehicle,
        Method::PATCH,
        &format!("/vehicles/{id}"),
        Some(json!({"location": "Shanghai yard 3"})),
        200,
    )
    .await;
    s.vehicle_post(&path("list"), json!({})).await;
    s.vehicle_post(&path("reserve"), json!({"auction_id": "auction-2026-11"}))
        .await;
    s.vehicle_post(
        &path("sell"),
        json!({"sale_id": "lot-17", "price": cny(95_000)}),
    )
    .await;
    // Settlement retries are harmless: the same sale again changes nothing.
    let again = s
        .vehicle_post(
            &path("sell"),
            json!({"sale_id": "lot-17", "price": cny(95_000)}),
        )
        .await;
    assert_eq!(again["version"], 8);
    let refused = s
        .call(
            &s.vehicle,
            Method::POST,
            &path("inspection/start"),
            Some(json!({})),
            409,
        )
        .await;
    assert_eq!(refused["code"], "VEHICLE_ILLEGAL_TRANSITION");
    let delivered = s.vehicle_post(&path("deliver"), json!({})).await;
    assert_eq!(delivered["state"], "delivered");
    assert_eq!(delivered["version"], 9);

    let golden = s.golden_at(&id, 9).await;
    assert_eq!(golden["state"], "delivered");
    assert_eq!(golden["vin"], vin(1));
    let attrs = &golden["attributes"];
    assert_eq!(attrs["make"]["value"], "Volkswagen");
    assert_eq!(
        attrs["make"]["version"], 1,
        "set when the vehicle was received"
    );
    assert_eq!(attrs["location"]["value"], "Shanghai yard 3");
    assert_eq!(attrs["location"]["version"], 5);
    assert_eq!(attrs["location"]["source"], "/axle/vehicle");
    assert_eq!(
        attrs["pricing"]["value"]["guide_price"]["amount"],
        9_800_000
    );
    assert_eq!(attrs["sale"]["value"]["sale_id"], "lot-17");
    assert_eq!(attrs["inspection"]["value"]["grade"], "B");

    let timeline = s
        .call(
            &s.masterdata,
            Method::GET,
            &format!("/vehicles/{id}/timeline"),
            None,
            200,
        )
        .await;
    let entries = timeline["items"].as_array().unwrap();
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            types::RECEIVED,
            types::INSPECTION_STARTED,
            types::INSPECTION_COMPLETED,
            types::PRICED,
            types::UPDATED,
            types::LISTED,
            types::RESERVED,
            types::SOLD,
            types::DELIVERED,
        ]
    );
    assert!(
        entries
            .iter()
            .all(|e| e["actor"] == "ops-alice" && e["source"] == "/axle/vehicle")
    );
    let versions: Vec<i64> = entries
        .iter()
        .map(|e| e["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, (1..=9).collect::<Vec<_>>());

    // Queries: by VIN, state, make and seller.
    for query in [
        format!("vin={}", vin(1).to_lowercase()),
        "state=delivered".into(),
        "make=Volkswagen".into(),
        "seller_org=dealer-9".into(),
    ] {
        let found = s
            .call(
                &s.masterdata,
                Method::GET,
                &format!("/vehicles?{query}"),
                None,
                200,
            )
            .await;
        assert_eq!(found["items"].as_array().unwrap().len(), 1, "{query}");
    }
    let none = s
        .call(
            &s.masterdata,
            Method::GET,
            "/vehicles?state=listed",
            None,
            200,
        )
        .await;
    assert!(none["items"].as_array().unwrap().is_empty());

    let report = s.check().await;
    assert_eq!(report["in_sync"], true, "{report}");
    assert_eq!(report["checked"], 1);

    // Rebuilding from the event log gives the same record.
    let rebuilt = s
        .call(&s.masterdata, Method::POST, "/replay", None, 200)
        .await;
    assert_eq!(rebuilt["rebuilt"], 1);
    assert_eq!(s.golden(&id).await.unwrap(), golden);
}

on_every_backend!(duplicates_and_reordering_converge);
async fn duplicates_and_reordering_converge(backends: Backends) {
    let s = spawn_stack(backends).await;
    let created = s
        .call(
            &s.vehicle,
            Method::POST,
            "/vehicles",
            Some(json!({"vin": vin(2), "make": "BYD", "model": "Han", "year": 2024})),
            201,
        )
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    s.vehicle_post(&format!("/vehicles/{id}/inspection/start"), json!({}))
        .await;
    s.vehicle_post(&format!("/vehicles/{id}/withdraw"), json!({}))
        .await;
    s.golden_at(&id, 3).await;

    // Replay the vehicle's events to master data again, newest first and twice over: a late,
    // duplicated, reordered delivery.
    let timeline = s
        .call(
            &s.masterdata,
            Method::GET,
            &format!("/vehicles/{id}/timeline"),
            None,
            200,
        )
        .await;
    assert_eq!(timeline["items"].as_array().unwrap().len(), 3);
    let stale: Vec<CloudEvent> = [(2, "inspecting"), (1, "received")]
        .into_iter()
        .map(|(version, state)| vehicle_event(&created, version, json!({"state": state})))
        .collect();
    let bus: &EventBus = &s.platform.platform.bus;
    bus.publish(&stale).await.unwrap();
    bus.publish(&stale).await.unwrap();
    eventually(30, "the stale events to be recorded", || async {
        let t = s
            .call(
                &s.masterdata,
                Method::GET,
                &format!("/vehicles/{id}/timeline"),
                None,
                200,
            )
            .await;
        (t["items"].as_array().unwrap().len() == 5).then_some(())
    })
    .await;
    let golden = s.golden(&id).await.unwrap();
    assert_eq!(
        (golden["state"].clone(), golden["version"].clone()),
        (json!("withdrawn"), json!(3)),
        "older events never win"
    );
    assert_eq!(s.check().await["in_sync"], true);
}

on_every_backend!(poison_event_is_dead_lettered_and_replayable);
async fn poison_event_is_dead_lettered_and_replayable(backends: Backends) {
    let s = spawn_stack(backends).await;
    // An event whose payload is not a vehicle change can never be applied.
    let poison = CloudEvent::new(
        "vehicle",
        types::UPDATED,
        "not-a-vehicle",
        1,
        &json!({"oops": true}),
    )
    .unwrap();
    s.platform.platform.bus.publish(&[poison]).await.unwrap();
    eventually(30, "the poison event in the dead letters", || async {
        (s.dead_letters().await == 1).then_some(())
    })
    .await;
    // Healthy events keep flowing past it.
    let id = s
        .receive(json!({"vin": vin(3), "make": "NIO", "model": "ET5", "year": 2023}))
        .await;
    s.golden_at(&id, 1).await;
    // Replaying puts it back; it fails again and returns to the dead letters.
    let replayed = s
        .call(
            &s.masterdata,
            Method::POST,
            "/dead-letters/replay",
            None,
            200,
        )
        .await;
    assert_eq!(replayed["replayed"], 1);
    eventually(30, "the poison event back in the dead letters", || async {
        (s.dead_letters().await == 1).then_some(())
    })
    .await;
}

on_every_backend!(drift_is_reported);
async fn drift_is_reported(backends: Backends) {
    let s = spawn_stack(backends).await;
    let id = s
        .receive(json!({"vin": vin(4), "make": "Geely", "model": "Emgrand", "year": 2022}))
        .await;
    s.golden_at(&id, 1).await;
    assert_eq!(s.check().await["in_sync"], true);

    // Master data stops hearing about changes: the check sees the difference.
    s.platform.platform.shutdown.cancel();
    s.vehicle_post(&format!("/vehicles/{id}/withdraw"), json!({}))
        .await;
    let report = s.check().await;
    assert_eq!(report["in_sync"], false);
    assert_eq!(report["drifting"], 1);
    let fields: Vec<&str> = report["drift"][0]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["version", "state"]);
}

on_every_backend!(late_events_correct_provenance);
/// Versions 1 and 3 arrive, then the late version 2: the record stays at version 3, and the
/// attribute version 2 changed names version 2 as its origin (not 3, which only repeated it).
async fn late_events_correct_provenance(backends: Backends) {
    let s = spawn_stack(backends).await;
    let template = s
        .call(
            &s.vehicle,
            Method::POST,
            "/vehicles",
            Some(json!({"vin": vin(3), "make": "NIO", "model": "ET5", "year": 2023})),
            201,
        )
        .await;
    let id = uuid::Uuid::now_v7().to_string();
    let event = |version: i64, state: &str, location: &str| {
        let changes = json!({"id": id, "state": state, "location": location});
        vehicle_event(&template, version, changes)
    };
    let bus: &EventBus = &s.platform.platform.bus;
    bus.publish(&[event(1, "received", "Hangzhou")])
        .await
        .unwrap();
    s.golden_at(&id, 1).await;
    bus.publish(&[event(3, "inspecting", "Shanghai")])
        .await
        .unwrap();
    let early = s.golden_at(&id, 3).await;
    assert_eq!(early["attributes"]["location"]["version"], 3, "{early}");

    bus.publish(&[event(2, "received", "Shanghai")])
        .await
        .unwrap();
    let golden = eventually(30, "the late event to refine provenance", || async {
        let g = s.golden(&id).await?;
        (g["attributes"]["location"]["version"] == 2).then_some(g)
    })
    .await;
    assert_eq!(golden["version"], 3, "older events never win");
    assert_eq!(golden["state"], "inspecting");
    assert_eq!(golden["attributes"]["location"]["value"], "Shanghai");
    assert_eq!(golden["attributes"]["state"]["version"], 3);
    assert_eq!(golden["attributes"]["make"]["version"], 1);
}

/// An `updated` event for `vehicle` (a vehicle's JSON view) at `version`, with `changes` set.
fn vehicle_event(vehicle: &Value, version: i64, changes: Value) -> CloudEvent {
    let mut view = vehicle.clone();
    view["version"] = json!(version);
    for (field, value) in changes.as_object().unwrap() {
        view[field] = value.clone();
    }
    let change = VehicleChanged {
        vehicle: serde_json::from_value(view).unwrap(),
        actor: "replayer".into(),
    };
    let id = change.vehicle.id.to_string();
    CloudEvent::new("vehicle", types::UPDATED, &id, version, &change).unwrap()
}
