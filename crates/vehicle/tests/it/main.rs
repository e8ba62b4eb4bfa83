//! Vehicle service integration tests: the real service on port 0, over HTTP, on every backend.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod helpers;
mod vehicles;
