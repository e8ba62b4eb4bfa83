//! The gateway's outbound HTTP client: connections to upstream nodes and to the services
//! plugins fetch from (key sets, discovery documents, introspection), kept alive in a
//! [`pool`], spoken over the HTTP/1 writer and parser in [`http1`] (whose parsing helpers the
//! data plane's server shares), with the response header [`fields`] plugins read and set.
//!
//! It sits below both the plugins and the data plane: a plugin that fetches uses [`fetch`]
//! and never reaches into the proxy.

pub mod fetch;
pub mod fields;
pub mod http1;
pub mod pool;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// A body with nothing in it.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A body of `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}
