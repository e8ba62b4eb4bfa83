//! `axle-core`: the floor every Axle service stands on.
//!
//! A service crate is mostly domain code because this crate provides the rest:
//!
//! | module | what |
//! | --- | --- |
//! | [`config`] | typed, layered configuration (defaults → TOML → `AXLE__*` env), validated |
//! | [`telemetry`] | JSON logs, W3C trace context, OTLP export |
//! | [`http`] | the error model, extractors, health/readiness/metrics/OpenAPI, request ids, `Idempotency-Key`, pagination |
//! | [`db`] | one database per service: SQLite file or PostgreSQL schema, migrations |
//! | [`files`] | the data directory and files holding secrets, private to Axle's user |
//! | [`events`] | CloudEvents, the outbox, the bus (embedded or RabbitMQ), idempotent consumers |
//! | [`kv`] | counters, locks with fencing tokens (memory or Redis) |
//! | [`platform`] | what `axle serve` gives a service and what a service gives back |
//! | [`id`], [`money`], [`time`] | UUIDv7 ids, integer money, UTC time |
//! | `testing` | (feature `testing`) fresh databases and backends for tests |

pub mod audit;
pub mod config;
pub mod db;
pub mod events;
pub mod files;
pub mod http;
pub mod id;
pub mod kv;
pub mod money;
pub mod platform;
pub mod telemetry;
pub mod time;

#[cfg(feature = "testing")]
pub mod testing;
