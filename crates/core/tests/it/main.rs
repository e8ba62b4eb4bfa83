//! axle-core integration tests, against real servers when `AXLE_TEST_*` is set.

mod events;
mod helpers;
mod kv;
