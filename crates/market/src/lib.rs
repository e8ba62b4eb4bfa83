//! `axle-market`: the API market — API products with their versions and OpenAPI documents,
//! plans with their limits, and applications' subscriptions, which become gateway
//! configuration when approved.
//!
//! Built so far: the [`domain`] rules (pure, no I/O), and the [`store`] of products, their
//! versions and plans with the [`events`] of their changes. The API, applications and
//! subscriptions in the store, the gateway configuration it writes, metering and the portal
//! pages come next (issue M1).

pub mod domain;
pub mod events;
pub mod store;

use axle_core::db::Migrations;

pub const NAME: &str = "market";

/// The service's migrations, embedded in the binary: one SQL for both engines (portable types
/// only), so one directory.
pub fn migrations() -> Migrations {
    Migrations {
        sqlite: sqlx::migrate!("./migrations"),
        postgres: sqlx::migrate!("./migrations"),
    }
}
