//! Who is calling: the identity the gateway verified and passed on.
//!
//! The gateway authenticates the caller (key-auth, jwt-auth, ...) and sets
//! `X-Consumer-Username`, stripping any copy the client sent. A service reached directly (tests,
//! the single-machine default before the gateway is in front) sees no header: `anonymous`.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

/// The verified caller's name, recorded as the actor of changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(pub String);

pub const CONSUMER_HEADER: &str = "x-consumer-username";

impl<S: Send + Sync> FromRequestParts<S> for Actor {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let name = parts
            .headers
            .get(CONSUMER_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .unwrap_or("anonymous");
        Ok(Actor(name.to_string()))
    }
}
