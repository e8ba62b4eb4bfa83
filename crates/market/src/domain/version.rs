//! A product's versions: numbered by semver, each served under its major version's path, and
//! moving one way through draft → published → deprecated → retired.
//!
//! A deprecated version still serves, and tells its callers so with the `Deprecation`
//! (RFC 9745) and `Sunset` (RFC 8594) headers; a retired one answers 410 and takes no new
//! subscriptions.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{DomainError, invalid};

/// A version number: semver, `1.4.0` or `2.0.0-beta.1`.
pub fn number(text: &str) -> Result<semver::Version, DomainError> {
    semver::Version::parse(text.trim())
        .map_err(|e| invalid("version", format!("not a semantic version ({e}): {text}")))
}

/// Where the gateway serves the versions of `product` with major version `major`.
pub fn base_path(product: &str, major: u64) -> String {
    format!("/market/{product}/v{major}")
}

/// Where a version is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    /// Being prepared: not served, not in the catalog.
    Draft,
    Published {
        at: DateTime<Utc>,
    },
    /// Served with warnings until `sunset`.
    Deprecated {
        at: DateTime<Utc>,
        sunset: DateTime<Utc>,
    },
    /// Answered with 410; its subscriptions end.
    Retired {
        at: DateTime<Utc>,
    },
}

/// What a publisher does to a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Publish,
    Deprecate { sunset: DateTime<Utc> },
    Retire,
}

impl Status {
    pub fn name(&self) -> &'static str {
        match self {
            Status::Draft => "draft",
            Status::Published { .. } => "published",
            Status::Deprecated { .. } => "deprecated",
            Status::Retired { .. } => "retired",
        }
    }

    /// Whether the gateway routes calls to it.
    pub fn serves(&self) -> bool {
        matches!(self, Status::Published { .. } | Status::Deprecated { .. })
    }

    /// The status after `command` at `now`; a command the status does not allow is refused.
    pub fn apply(self, command: Command, now: DateTime<Utc>) -> Result<Status, DomainError> {
        let refused = |action| DomainError::IllegalTransition {
            noun: "version",
            from: self.name(),
            action,
        };
        match (self, command) {
            (Status::Draft, Command::Publish) => Ok(Status::Published { at: now }),
            (Status::Published { .. }, Command::Deprecate { sunset }) => {
                if sunset <= now {
                    return Err(invalid("sunset", "must be in the future"));
                }
                Ok(Status::Deprecated { at: now, sunset })
            }
            (Status::Published { .. } | Status::Deprecated { .. }, Command::Retire) => {
                Ok(Status::Retired { at: now })
            }
            (_, Command::Publish) => Err(refused("publish")),
            (_, Command::Deprecate { .. }) => Err(refused("deprecate")),
            (_, Command::Retire) => Err(refused("retire")),
        }
    }

    /// The headers a deprecated version's responses carry: `Deprecation` as `@<unix time>`
    /// (RFC 9745) and `Sunset` as an HTTP date (RFC 8594). None for the other statuses.
    pub fn deprecation_headers(&self) -> Option<[(&'static str, String); 2]> {
        let Status::Deprecated { at, sunset } = self else {
            return None;
        };
        let sunset = SystemTime::UNIX_EPOCH + Duration::from_secs(sunset.timestamp().max(0) as u64);
        Some([
            ("Deprecation", format!("@{}", at.timestamp())),
            ("Sunset", httpdate::fmt_http_date(sunset)),
        ])
    }

    /// Whether a new subscription may name the version: not once it is retired.
    pub fn takes_subscriptions(&self, number: &str) -> Result<(), DomainError> {
        match self {
            Status::Retired { .. } => Err(DomainError::Retired(number.to_string())),
            _ => Ok(()),
        }
    }
}

/// A version of a product, as the catalog shows it: its number, where it is in its life, and
/// what its OpenAPI document says of itself (the document is kept beside it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiVersion {
    pub product_id: uuid::Uuid,
    pub number: String,
    #[serde(flatten)]
    pub status: Status,
    /// The document's `openapi`, `info.title` and operation count.
    pub openapi: String,
    pub title: String,
    pub operations: usize,
    /// Where the gateway sends the version's requests.
    pub backend: Backend,
    /// A canary's share of its major version's requests, in percent; none for a version that
    /// takes what the canaries leave (see [`crate::gateway::config`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u8>,
}

/// Checks a canary's weight: 0 to 100 percent.
pub fn weight(weight: Option<u8>) -> Result<Option<u8>, DomainError> {
    match weight {
        Some(w) if w > 100 => Err(invalid("weight", "must be 0 to 100 (percent)")),
        w => Ok(w),
    }
}

/// The service behind a version: its base URL, `http` or `https`; a request to
/// `/market/<product>/v<major>/pets/1` goes to `<url>/pets/1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Backend {
    pub url: String,
}

impl Backend {
    /// Checks the URL: http or https, a host, no query or fragment; the path loses its trailing
    /// `/`.
    pub fn checked(self) -> Result<Backend, DomainError> {
        let bad = |reason: &str| invalid("backend.url", format!("{reason}: {}", self.url));
        let url = url::Url::parse(self.url.trim()).map_err(|e| bad(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("must be an http or https URL"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("names no host"));
        }
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err(bad("takes no query, fragment or credentials"));
        }
        let mut text = url.to_string();
        while text.ends_with('/') {
            text.pop();
        }
        Ok(Backend { url: text })
    }

    /// `(scheme, host:port, path)`: the path is empty or starts with `/`.
    pub fn parts(&self) -> Option<(String, String, String)> {
        let url = url::Url::parse(&self.url).ok()?;
        let host = match url.host()? {
            url::Host::Ipv6(ip) => format!("[{ip}]"),
            host => host.to_string(),
        };
        let port = url.port_or_known_default()?;
        let path = url.path().trim_end_matches('/').to_string();
        Some((url.scheme().to_string(), format!("{host}:{port}"), path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn numbers_are_semver() {
        assert_eq!(number("2.1.0").unwrap().major, 2);
        assert_eq!(number("1.0.0-beta.1").unwrap().pre.as_str(), "beta.1");
        assert!(number("v2").is_err() && number("2.1").is_err());
        assert_eq!(base_path("vehicle-data", 2), "/market/vehicle-data/v2");
    }

    #[test]
    fn a_version_moves_one_way() {
        let now = at("2026-12-01T00:00:00Z");
        let sunset = at("2027-03-01T00:00:00Z");
        let published = Status::Draft.apply(Command::Publish, now).unwrap();
        assert!(published.serves());
        let deprecated = published.apply(Command::Deprecate { sunset }, now).unwrap();
        assert!(deprecated.serves());
        let retired = deprecated.apply(Command::Retire, now).unwrap();
        assert!(!retired.serves());
        let e = retired.apply(Command::Publish, now).unwrap_err();
        assert_eq!(e.to_string(), "cannot publish a version that is retired");
        assert_eq!(e.code(), "MARKET_ILLEGAL_TRANSITION");
        assert!(Status::Draft.apply(Command::Retire, now).is_err());
        assert!(
            published
                .apply(Command::Deprecate { sunset: now }, now)
                .is_err()
        );
    }

    #[test]
    fn deprecation_is_announced_in_headers() {
        let status = Status::Deprecated {
            at: at("2026-12-01T00:00:00Z"),
            sunset: at("2027-03-01T00:00:00Z"),
        };
        let [deprecation, sunset] = status.deprecation_headers().unwrap();
        assert_eq!(deprecation, ("Deprecation", "@1796083200".to_string()));
        assert_eq!(
            sunset,
            ("Sunset", "Mon, 01 Mar 2027 00:00:00 GMT".to_string())
        );
        assert!(Status::Draft.deprecation_headers().is_none());
    }

    #[test]
    fn a_backend_is_an_http_url() {
        let b = Backend {
            url: "https://api.example.com/v2/".into(),
        }
        .checked()
        .unwrap();
        assert_eq!(b.url, "https://api.example.com/v2");
        assert_eq!(
            b.parts().unwrap(),
            ("https".into(), "api.example.com:443".into(), "/v2".into())
        );
        let plain = Backend {
            url: "http://127.0.0.1:8080".into(),
        }
        .checked()
        .unwrap();
        assert_eq!(plain.parts().unwrap().2, "");
        for bad in ["ftp://x", "127.0.0.1:80", "http://x/?a=1", "http://u:p@x/"] {
            let e = Backend { url: bad.into() }.checked().unwrap_err();
            assert_eq!(e.code(), "MARKET_INVALID", "{bad}");
        }
    }

    #[test]
    fn retired_versions_take_no_subscriptions() {
        let retired = Status::Retired {
            at: at("2026-12-01T00:00:00Z"),
        };
        let e = retired.takes_subscriptions("1.2.0").unwrap_err();
        assert_eq!(e.code(), "MARKET_VERSION_RETIRED");
        assert!(Status::Draft.takes_subscriptions("1.2.0").is_ok());
    }
}
