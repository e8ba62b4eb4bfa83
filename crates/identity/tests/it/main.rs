//! Identity integration tests: the real service on port 0, over HTTP, on every backend — its
//! sign-in form driven as a browser would, its tokens checked by what a client sees.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod admin;
mod authlib;
mod flows;
mod helpers;
