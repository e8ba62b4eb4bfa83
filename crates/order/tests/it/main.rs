//! The order service over HTTP, on fresh storage, on every backend.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod orders;
