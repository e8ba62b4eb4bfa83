//! The `axle` binary as a user runs it: commands, start-up failures, serving, stopping.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod gateway;
mod helpers;
mod identity;
mod market;
mod pages;
mod serve;
mod settlement;
mod settlement_kill;
