//! Passwords: the rules a new one must meet, Argon2id hashing, and the lockout that slows down
//! guessing.
//!
//! The rules follow NIST SP 800-63B: length matters, composition rules do not; a password that
//! is the username, one character repeated, or among the most common ones is refused.
//! Repeated failures lock the account with a back-off that doubles: after
//! [`FREE_ATTEMPTS`] failures, 30 s, then 1 min, 2 min, … up to an hour. A success resets it.

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use chrono::{DateTime, Duration, Utc};

use super::DomainError;

pub const MIN_LENGTH: usize = 12;
/// Long enough for any passphrase, short enough that hashing cannot be made expensive.
pub const MAX_LENGTH: usize = 128;
/// Failures allowed before the first lock.
pub const FREE_ATTEMPTS: i64 = 5;
const FIRST_LOCK_SECS: i64 = 30;
const MAX_LOCK_SECS: i64 = 3600;

/// Passwords seen most often in breaches that are long enough to pass the length rule.
const COMMON: &[&str] = &[
    "123456789012",
    "1234567890123",
    "password1234",
    "passwordpassword",
    "qwertyuiopas",
    "qwerty123456",
    "iloveyou1234",
    "administrator",
    "changemechangeme",
    "letmein12345",
    "welcome12345",
    "1q2w3e4r5t6y",
];

/// Checks a new password against the rules.
pub fn check_new(password: &str, username: &str) -> Result<(), DomainError> {
    let len = password.chars().count();
    if len < MIN_LENGTH {
        return Err(DomainError::WeakPassword(format!(
            "a password needs at least {MIN_LENGTH} characters"
        )));
    }
    if len > MAX_LENGTH {
        return Err(DomainError::WeakPassword(format!(
            "a password has at most {MAX_LENGTH} characters"
        )));
    }
    let lower = password.to_lowercase();
    if !username.is_empty() && lower.contains(&username.to_lowercase()) {
        return Err(DomainError::WeakPassword(
            "a password must not contain the username".into(),
        ));
    }
    let mut chars = password.chars();
    if let Some(first) = chars.next()
        && chars.all(|c| c == first)
    {
        return Err(DomainError::WeakPassword(
            "a password must not be one character repeated".into(),
        ));
    }
    if COMMON.contains(&lower.as_str()) {
        return Err(DomainError::WeakPassword(
            "this password is among the most common ones".into(),
        ));
    }
    Ok(())
}

/// The Argon2id hash of `password` (a PHC string with its own random salt and parameters).
pub fn hash(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Whether `password` matches `phc`. A malformed stored hash matches nothing.
pub fn verify(password: &str, phc: &str) -> bool {
    if password.len() > MAX_LENGTH * 4 {
        return false;
    }
    PasswordHash::new(phc)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// After the `failures`-th consecutive failure at `now`: until when the account is locked, if
/// it is.
pub fn lock_after(failures: i64, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if failures < FREE_ATTEMPTS {
        return None;
    }
    let doublings = (failures - FREE_ATTEMPTS).min(20) as u32;
    let secs = FIRST_LOCK_SECS
        .saturating_mul(1_i64 << doublings)
        .min(MAX_LOCK_SECS);
    Some(now + Duration::seconds(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_repeated_common_or_username_passwords_are_refused() {
        assert!(check_new("correct horse battery", "alice").is_ok());
        assert!(check_new("short", "alice").is_err());
        assert!(check_new(&"x".repeat(129), "alice").is_err());
        assert!(check_new("aaaaaaaaaaaaaaa", "alice").is_err());
        assert!(check_new("Password1234", "alice").is_err());
        assert!(check_new("my-name-is-ALICE!", "alice").is_err());
    }

    #[test]
    fn a_hash_verifies_its_password_only() {
        let phc = hash("correct horse battery").expect("hashes");
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify("correct horse battery", &phc));
        assert!(!verify("correct horse battery!", &phc));
        assert!(!verify("correct horse battery", "not a hash"));
        assert_ne!(
            phc,
            hash("correct horse battery").expect("hashes"),
            "salted"
        );
    }

    #[test]
    fn the_lock_doubles_from_the_sixth_failure_up_to_an_hour() {
        let now = Utc::now();
        let lock = |n| lock_after(n, now).map(|t| (t - now).num_seconds());
        assert_eq!(lock(4), None);
        assert_eq!(lock(5), Some(30));
        assert_eq!(lock(6), Some(60));
        assert_eq!(lock(7), Some(120));
        assert_eq!(lock(12), Some(3600));
        assert_eq!(lock(1000), Some(3600));
    }
}
