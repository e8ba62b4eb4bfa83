//! `axle-market`: the API market — API products with their versions and OpenAPI documents,
//! plans with their limits, and applications' subscriptions, which become gateway
//! configuration when approved.
//!
//! Built so far: the [`domain`] rules (pure, no I/O). The store, the API, the gateway
//! configuration it writes, metering and the portal pages come next (issue M1).

pub mod domain;
