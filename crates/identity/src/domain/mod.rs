//! Identity's rules, free of I/O: who a user is and may do ([`Role`]), what a password must be
//! and when repeated failures lock an account ([`password`]), and what makes an OAuth request
//! acceptable ([`oauth`]).

pub mod oauth;
pub mod password;

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// What a user may do. Tokens carry them in `roles`; services check them for their operations.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything, including identity's own administration.
    PlatformAdmin,
    /// Runs the platform: gateway, replays, consistency checks, dead letters.
    Operator,
    /// Publishes API products in the market and approves subscriptions to them.
    ApiPublisher,
    /// Runs auction sessions.
    Auctioneer,
    /// A dealer company's staff: bids, buys, pays.
    Dealer,
    /// Receivables, payments, reconciliation, rebate approval.
    Finance,
    /// Customers, segments, campaigns, coupons.
    Marketing,
    /// After-sales bookings and parts.
    ServiceAdvisor,
    /// An end customer of the retail pages.
    Customer,
}

impl Role {
    pub const ALL: [Role; 9] = [
        Role::PlatformAdmin,
        Role::Operator,
        Role::ApiPublisher,
        Role::Auctioneer,
        Role::Dealer,
        Role::Finance,
        Role::Marketing,
        Role::ServiceAdvisor,
        Role::Customer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::PlatformAdmin => "platform-admin",
            Role::Operator => "operator",
            Role::ApiPublisher => "api-publisher",
            Role::Auctioneer => "auctioneer",
            Role::Dealer => "dealer",
            Role::Finance => "finance",
            Role::Marketing => "marketing",
            Role::ServiceAdvisor => "service-advisor",
            Role::Customer => "customer",
        }
    }

    /// What the role is for, as the admin pages and docs say it.
    pub fn describe(self) -> &'static str {
        match self {
            Role::PlatformAdmin => "everything, including users, organisations and clients",
            Role::Operator => "runs the platform: gateway, replays, consistency checks",
            Role::ApiPublisher => "publishes API products in the market, approves subscriptions",
            Role::Auctioneer => "runs auction sessions",
            Role::Dealer => "a dealer company's staff: bids, buys and pays",
            Role::Finance => "receivables, payments, reconciliation, rebate approval",
            Role::Marketing => "customers, segments, campaigns and coupons",
            Role::ServiceAdvisor => "after-sales bookings and parts",
            Role::Customer => "an end customer of the retail pages",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| DomainError::Invalid(format!("unknown role {s:?}")))
    }
}

/// Whether an account (user, organisation, client) may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    Active,
    Suspended,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Suspended => "suspended",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Status::Active),
            "suspended" => Some(Status::Suspended),
            _ => None,
        }
    }
}

/// A user as the admin API shows it (never the password hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: Uuid,
    pub username: String,
    pub email: Option<String>,
    pub display_name: String,
    pub org_id: Option<Uuid>,
    pub roles: Vec<Role>,
    pub status: Status,
    /// Until when sign-in is refused after repeated failures.
    pub locked_until: Option<DateTime<Utc>>,
    /// Counts changes; events carry it so consumers can order them.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An organisation: a dealer company, or one of the group's own units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Organisation {
    pub id: Uuid,
    pub name: String,
    pub status: Status,
    /// The deposit account auctions hold bids against (in finance).
    pub deposit_account: Option<String>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Whether a client can keep a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientKind {
    /// A server-side application: authenticates with its secret.
    Confidential,
    /// A browser or native application: no secret, PKCE (S256) required.
    Public,
}

/// An OAuth grant a client may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    AuthorizationCode,
    RefreshToken,
    ClientCredentials,
}

/// An OAuth client as the admin API shows it (never the secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Client {
    pub id: String,
    pub name: String,
    pub kind: ClientKind,
    /// Redirect URIs, matched exactly.
    pub redirect_uris: Vec<String>,
    /// Where the client may send users after they sign out.
    #[serde(default)]
    pub post_logout_redirect_uris: Vec<String>,
    pub grants: Vec<Grant>,
    /// The scopes it may ask for.
    pub scopes: Vec<String>,
    /// Roles its own tokens (client credentials) carry.
    #[serde(default)]
    pub roles: Vec<Role>,
    /// The organisation it acts for (client credentials).
    pub org_id: Option<Uuid>,
    /// Axle's own applications: users are not asked to consent.
    #[serde(default)]
    pub first_party: bool,
    pub status: Status,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Client {
    /// Checks what a client must be before it is stored.
    pub fn validate(&self) -> Result<(), DomainError> {
        check_name("client id", &self.id, 3, 64, |c| {
            c.is_ascii_alphanumeric() || "-_.".contains(c)
        })?;
        check_text("name", &self.name, 200)?;
        for uri in self
            .redirect_uris
            .iter()
            .chain(&self.post_logout_redirect_uris)
        {
            oauth::check_redirect_uri(uri)?;
        }
        if self.grants.contains(&Grant::AuthorizationCode) && self.redirect_uris.is_empty() {
            return Err(DomainError::Invalid(
                "a client with the authorization_code grant needs a redirect URI".into(),
            ));
        }
        if self.kind == ClientKind::Public && self.grants.contains(&Grant::ClientCredentials) {
            return Err(DomainError::Invalid(
                "a public client cannot use client_credentials: it has no secret".into(),
            ));
        }
        for scope in &self.scopes {
            oauth::check_scope_token(scope)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    WeakPassword(String),
}

/// A name of `min..=max` characters drawn from `allowed`.
pub fn check_name(
    what: &str,
    value: &str,
    min: usize,
    max: usize,
    allowed: impl Fn(char) -> bool,
) -> Result<(), DomainError> {
    let len = value.chars().count();
    if len < min || len > max {
        return Err(DomainError::Invalid(format!(
            "{what} must be {min} to {max} characters"
        )));
    }
    if let Some(c) = value.chars().find(|c| !allowed(*c)) {
        return Err(DomainError::Invalid(format!(
            "{what} may not contain {c:?}"
        )));
    }
    Ok(())
}

/// Free text: not blank, at most `max` characters, no control characters.
pub fn check_text(what: &str, value: &str, max: usize) -> Result<(), DomainError> {
    if value.trim().is_empty() {
        return Err(DomainError::Invalid(format!("{what} must not be blank")));
    }
    if value.chars().count() > max {
        return Err(DomainError::Invalid(format!(
            "{what} must be at most {max} characters"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(DomainError::Invalid(format!(
            "{what} may not contain control characters"
        )));
    }
    Ok(())
}

/// A username: 3–64 characters, letters, digits and `.-_@+`, compared case-insensitively
/// (stored lowercase).
pub fn normalize_username(value: &str) -> Result<String, DomainError> {
    let value = value.trim().to_lowercase();
    check_name("username", &value, 3, 64, |c| {
        c.is_alphanumeric() || ".-_@+".contains(c)
    })?;
    Ok(value)
}

/// An e-mail address, checked for shape only (one `@`, something on each side).
pub fn check_email(value: &str) -> Result<(), DomainError> {
    check_text("email", value, 254)?;
    match value.split_once('@') {
        Some((local, domain))
            if !local.is_empty()
                && domain.contains('.')
                && !domain.contains('@')
                && !value.contains(' ') =>
        {
            Ok(())
        }
        _ => Err(DomainError::Invalid(format!(
            "{value:?} is not an e-mail address"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_read_and_print_as_their_names() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            assert_eq!(
                serde_json::to_value(role).ok(),
                Some(serde_json::json!(role.as_str()))
            );
        }
        assert!("admin".parse::<Role>().is_err());
    }

    #[test]
    fn usernames_are_lowercased_and_checked() {
        assert_eq!(
            normalize_username(" Alice@Dealer.CN ").as_deref(),
            Ok("alice@dealer.cn")
        );
        assert!(normalize_username("ab").is_err());
        assert!(normalize_username("a b c").is_err());
        assert!(normalize_username("<script>").is_err());
    }

    #[test]
    fn emails_are_checked_for_shape() {
        assert!(check_email("a@b.cn").is_ok());
        assert!(check_email("a@b").is_err());
        assert!(check_email("@b.cn").is_err());
        assert!(check_email("a b@c.cn").is_err());
    }
}
