//! Master data integration tests: the vehicle and master data services together, on SQLite +
//! the embedded bus and on PostgreSQL + RabbitMQ.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod catalog;
mod golden;
mod helpers;
