//! Applications — what calls the market's APIs, owned by a user for an organisation — and
//! their API keys.
//!
//! An application is one gateway consumer (named [`consumer_name`]); each of its keys is one
//! `key-auth` credential of that consumer. A key is shown once, when made; the market keeps
//! only its SHA-256 (keys are 256 random bits, so a fast hash is enough) and its first
//! characters, to tell keys apart. Rotating a key makes a new one and lets the old one work
//! on for an overlap window, so callers can switch without an outage.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{DomainError, invalid, text};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Application {
    pub name: String,
    pub description: String,
    /// The owner's subject (`sub`) and name.
    pub owner: String,
    pub owner_name: String,
    /// The organisation the application calls for, which plans may be restricted to.
    pub organisation: Option<String>,
}

impl Application {
    pub fn checked(self) -> Result<Application, DomainError> {
        Ok(Application {
            name: text("name", &self.name, 100)?,
            description: self.description.trim().to_string(),
            ..self
        })
    }
}

/// The gateway consumer an application is: `market_` and its id (APISIX usernames allow
/// letters, digits, `_` and `-`).
pub fn consumer_name(application: Uuid) -> String {
    format!("market_{}", application.simple())
}

/// The longest overlap a rotation may give the old key.
pub const MAX_OVERLAP: Duration = Duration::days(7);

/// An API key of an application, as kept (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiKey {
    pub application_id: Uuid,
    /// The key's first characters, to tell keys apart on pages.
    pub prefix: String,
    /// SHA-256 of the key, hex.
    pub hash: String,
    /// When the key stops working: set by rotation (after the overlap) or revocation (now).
    pub expires_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    /// A new key for `application`: the key to show once, and what is kept of it.
    pub fn generate(application: Uuid) -> (String, ApiKey) {
        let secret: [u8; 32] = rand::random();
        let key = format!("axk_{}", hex(&secret));
        let kept = ApiKey {
            application_id: application,
            prefix: key[..12].to_string(),
            hash: hash(&key),
            expires_at: None,
        };
        (key, kept)
    }

    pub fn works_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }

    /// The key's end when it is rotated at `now` with `overlap`.
    pub fn rotated(mut self, now: DateTime<Utc>, overlap: Duration) -> Result<ApiKey, DomainError> {
        if overlap < Duration::zero() || overlap > MAX_OVERLAP {
            return Err(invalid("overlap_secs", "must be 0 to 604800 (7 days)"));
        }
        if !self.works_at(now) {
            return Err(DomainError::IllegalTransition {
                noun: "key",
                from: "expired",
                action: "rotate",
            });
        }
        self.expires_at = Some(now + overlap);
        Ok(self)
    }
}

/// SHA-256 of `key`, hex.
pub fn hash(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_kept_as_their_hash() {
        let app = Uuid::now_v7();
        let (key, kept) = ApiKey::generate(app);
        let (other, _) = ApiKey::generate(app);
        assert_ne!(key, other);
        assert_eq!(key.len(), 4 + 64);
        assert!(key.starts_with(&kept.prefix));
        assert_eq!(kept.hash, hash(&key));
        assert!(!kept.hash.contains(&key[4..]));
    }

    #[test]
    fn a_rotated_key_works_through_its_overlap() {
        let now: DateTime<Utc> = "2026-12-07T00:00:00Z".parse().unwrap();
        let (_, kept) = ApiKey::generate(Uuid::now_v7());
        let rotated = kept.clone().rotated(now, Duration::hours(1)).unwrap();
        assert!(rotated.works_at(now + Duration::minutes(59)));
        assert!(!rotated.works_at(now + Duration::hours(1)));
        assert!(kept.clone().rotated(now, Duration::days(8)).is_err());
        let expired = kept.rotated(now, Duration::zero()).unwrap();
        assert!(expired.rotated(now, Duration::hours(1)).is_err());
    }

    #[test]
    fn an_application_is_a_consumer_of_its_own() {
        let id: Uuid = "0193f0e6-1c2d-7e3f-8a4b-5c6d7e8f9a0b".parse().unwrap();
        assert_eq!(consumer_name(id), "market_0193f0e61c2d7e3f8a4b5c6d7e8f9a0b");
    }
}
