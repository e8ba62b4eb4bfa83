//! axle-core integration tests, against real servers when `AXLE_TEST_*` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod events;
mod helpers;
mod http;
mod idempotency;
mod kv;
