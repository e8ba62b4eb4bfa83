//! Vehicle service integration tests: the real service on port 0, over HTTP, on every backend.

mod helpers;
mod vehicles;
