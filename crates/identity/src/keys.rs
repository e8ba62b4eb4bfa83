//! Signing keys: RS256 keys that sign every token, published as a JWKS, rotated.
//!
//! One key is active and signs; keys rotated out stay published until the last token they
//! signed has expired (`retires_at`), so a verifier holding a token from before a rotation still
//! finds its key. A rotation happens on request (`POST /keys/rotate`) and on a schedule
//! (`key_rotation_days`). Private keys live in the service's database and in memory only; they
//! are never logged or returned (their `Debug` prints the kid).
//!
//! RS256 because OpenID Connect requires every provider to support it (Core §15.1) and every
//! client library does; RSA-2048 signatures also verify fastest of the common algorithms, which
//! is what the gateway does on every request.

use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// A signing key pair.
pub struct SigningKey {
    pub kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// The public half as a JWK.
    pub jwk: Value,
    pub created_at: DateTime<Utc>,
    /// When it stopped signing (`None`: it is the active key).
    pub retired_at: Option<DateTime<Utc>>,
    /// When it stops being published.
    pub retires_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// A new key as stored: the private key (PKCS#1 DER, base64) and the public JWK.
pub struct NewKey {
    pub kid: String,
    pub private_der: String,
    pub jwk: Value,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("generating a key: {0}")]
    Generate(String),
    #[error("stored key {0} is unreadable")]
    Corrupt(String),
    #[error("no active signing key")]
    NoActiveKey,
    #[error("signing: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// Generates an RSA-2048 key pair (a kid from its creation time and randomness).
pub fn generate() -> Result<NewKey, KeyError> {
    let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    let der = private
        .to_pkcs1_der()
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    let kid = format!(
        "{}-{}",
        Utc::now().format("%Y%m%d%H%M%S"),
        &axle_core::id::new_id().simple().to_string()[24..]
    );
    let jwk = json!({
        "kty": "RSA",
        "use": "sig",
        "alg": "RS256",
        "kid": kid,
        "n": URL_SAFE_NO_PAD.encode(private.n().to_bytes_be()),
        "e": URL_SAFE_NO_PAD.encode(private.e().to_bytes_be()),
    });
    Ok(NewKey {
        kid,
        private_der: STANDARD.encode(der.as_bytes()),
        jwk,
    })
}

impl SigningKey {
    /// A stored key, read back.
    pub fn from_stored(
        kid: String,
        private_der: &str,
        jwk: Value,
        created_at: DateTime<Utc>,
        retired_at: Option<DateTime<Utc>>,
        retires_at: Option<DateTime<Utc>>,
    ) -> Result<Self, KeyError> {
        let corrupt = || KeyError::Corrupt(kid.clone());
        let der = STANDARD.decode(private_der).map_err(|_| corrupt())?;
        let (n, e) = (
            jwk.get("n").and_then(Value::as_str).ok_or_else(corrupt)?,
            jwk.get("e").and_then(Value::as_str).ok_or_else(corrupt)?,
        );
        let decoding = DecodingKey::from_rsa_components(n, e).map_err(|_| corrupt())?;
        Ok(Self {
            encoding: EncodingKey::from_rsa_der(&der),
            decoding,
            jwk,
            kid,
            created_at,
            retired_at,
            retires_at,
        })
    }
}

/// The keys in use, swapped whole when they change.
#[derive(Debug, Default)]
pub struct KeyRing {
    keys: ArcSwap<Vec<Arc<SigningKey>>>,
}

impl KeyRing {
    pub fn replace(&self, keys: Vec<SigningKey>) {
        self.keys
            .store(Arc::new(keys.into_iter().map(Arc::new).collect()));
    }

    fn active(&self) -> Result<Arc<SigningKey>, KeyError> {
        self.keys
            .load()
            .iter()
            .filter(|k| k.retired_at.is_none())
            .max_by_key(|k| k.created_at)
            .cloned()
            .ok_or(KeyError::NoActiveKey)
    }

    /// When the active key was made.
    pub fn active_since(&self) -> Option<DateTime<Utc>> {
        self.active().ok().map(|k| k.created_at)
    }

    /// `claims` signed with the active key.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, KeyError> {
        let key = self.active()?;
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(key.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &key.encoding)?)
    }

    /// The JWKS: every key still published at `now`.
    pub fn jwks(&self, now: DateTime<Utc>) -> Value {
        let loaded = self.keys.load();
        let keys: Vec<&Value> = loaded
            .iter()
            .filter(|k| k.retires_at.is_none_or(|t| t > now))
            .map(|k| &k.jwk)
            .collect();
        json!({ "keys": keys })
    }

    /// Verifies a token this issuer signed (signature by a published key, `iss`, `exp`) and
    /// reads its claims. `audience`: checked when given.
    pub fn verify<T: DeserializeOwned>(
        &self,
        token: &str,
        issuer: &str,
        audience: Option<&str>,
    ) -> Option<T> {
        let kid = jsonwebtoken::decode_header(token).ok()?.kid?;
        let keys = self.keys.load();
        let key = keys
            .iter()
            .find(|k| k.kid == kid && k.retires_at.is_none_or(|t| t > Utc::now()))?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[issuer]);
        validation.leeway = 30;
        match audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        jsonwebtoken::decode::<T>(token, &key.decoding, &validation)
            .ok()
            .map(|data| data.claims)
    }
}

impl KeyRing {
    /// The `aud` of an ID token this issuer signed, even an expired one (a logout's
    /// `id_token_hint` may be).
    pub fn audience_of(&self, token: &str, issuer: &str) -> Option<String> {
        let kid = jsonwebtoken::decode_header(token).ok()?.kid?;
        let keys = self.keys.load();
        let key = keys.iter().find(|k| k.kid == kid)?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[issuer]);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<Value>(token, &key.decoding, &validation)
            .ok()?
            .claims;
        match &claims["aud"] {
            Value::String(aud) => Some(aud.clone()),
            Value::Array(auds) => auds.first().and_then(Value::as_str).map(String::from),
            _ => None,
        }
    }
}

/// When a key rotated out at `now` stops being published: after the longest-lived token it
/// may have signed, and a margin for clocks.
pub fn retirement(now: DateTime<Utc>, longest_token: Duration) -> DateTime<Utc> {
    now + longest_token + Duration::minutes(5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_with_its_key_until_the_key_is_unpublished() {
        let now = Utc::now();
        let stored = |k: &NewKey, retired: Option<DateTime<Utc>>, retires| {
            SigningKey::from_stored(
                k.kid.clone(),
                &k.private_der,
                k.jwk.clone(),
                now,
                retired,
                retires,
            )
            .expect("readable")
        };
        let (old, new) = (generate().expect("key"), generate().expect("key"));
        let ring = KeyRing::default();
        ring.replace(vec![stored(&old, None, None)]);
        let claims = json!({"iss": "https://id", "sub": "u1", "exp": now.timestamp() + 600});
        let token = ring.sign(&claims).expect("signs");
        let read: Option<Value> = ring.verify(&token, "https://id", None);
        assert_eq!(
            read.and_then(|c| c["sub"].as_str().map(String::from))
                .as_deref(),
            Some("u1")
        );
        assert!(
            ring.verify::<Value>(&token, "https://other", None)
                .is_none(),
            "issuer checked"
        );

        // Rotated: the old key still verifies, the new one signs, both are published.
        ring.replace(vec![
            stored(&old, Some(now), Some(now + Duration::hours(2))),
            SigningKey::from_stored(
                new.kid.clone(),
                &new.private_der,
                new.jwk.clone(),
                now + Duration::seconds(1),
                None,
                None,
            )
            .expect("readable"),
        ]);
        assert!(ring.verify::<Value>(&token, "https://id", None).is_some());
        let fresh = ring.sign(&claims).expect("signs");
        assert_eq!(
            jsonwebtoken::decode_header(&fresh).ok().and_then(|h| h.kid),
            Some(new.kid.clone())
        );
        assert_eq!(ring.jwks(now)["keys"].as_array().map(Vec::len), Some(2));

        // Past its retirement: gone from the JWKS, its tokens refused.
        ring.replace(vec![stored(
            &old,
            Some(now),
            Some(now - Duration::seconds(1)),
        )]);
        assert!(ring.verify::<Value>(&token, "https://id", None).is_none());
        assert_eq!(ring.jwks(now)["keys"].as_array().map(Vec::len), Some(0));
    }

    #[test]
    fn debug_output_names_the_key_never_its_secret() {
        let key = generate().expect("key");
        let printed = format!("{key:?}");
        assert!(printed.contains(&key.kid));
        assert!(!printed.contains(&key.private_der[..20]));
    }
}
