//! Gateway integration tests: the Admin API and the data plane on port 0, upstreams on port 0,
//! talking HTTP to them; store-backed tests run on SQLite and on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod admin;
mod admin_guards;
mod api_breaker;
mod conformance;
mod health;
mod helpers;
mod jwt_auth;
mod layers;
mod limits;
mod loggers;
mod opentelemetry;
mod plugins;
mod prometheus;
mod proxy;
mod proxy_mirror;
mod settings;
mod stores;
mod tls;
mod traffic_split;
