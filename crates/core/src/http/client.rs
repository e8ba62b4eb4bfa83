//! Calling other services as a service: an access token of the trusted issuer by the OAuth
//! client-credentials grant, fetched when first needed and kept until shortly before it
//! expires.
//!
//! A service that acts on its own (the saga orchestrator driving a settlement, with no user
//! behind the request) calls the others' public APIs with this token, so they check its roles
//! like anyone else's. With token verification off (`auth.verify_tokens = false`) no token is
//! sent.

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::config::Config;

/// A token is renewed this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ClientTokenError {
    #[error("the client secret of {client} cannot be read: {reason}")]
    Secret { client: String, reason: String },
    #[error("the issuer refused or could not be reached: {0}")]
    Issuer(String),
}

/// Where the client's secret comes from.
#[derive(Debug, Clone)]
pub enum ClientSecret {
    Given(SecretString),
    /// A file another service writes (read at every fetch, so it may appear after start).
    File(std::path::PathBuf),
}

/// A client-credentials token, shared by a service's callers.
#[derive(Debug)]
pub struct ClientToken {
    /// `None`: verification is off, calls carry no token.
    token_url: Option<String>,
    client_id: String,
    secret: ClientSecret,
    http: reqwest::Client,
    cached: Mutex<Option<(SecretString, Instant)>>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: Option<u64>,
}

impl ClientToken {
    pub fn new(config: &Config, client_id: &str, secret: ClientSecret) -> Self {
        Self {
            token_url: config
                .auth
                .verify_tokens
                .then(|| format!("{}/token", config.trusted_issuer())),
            client_id: client_id.into(),
            secret,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            cached: Mutex::new(None),
        }
    }

    /// The bearer token to send, `None` when verification is off.
    pub async fn bearer(&self) -> Result<Option<SecretString>, ClientTokenError> {
        let Some(url) = &self.token_url else {
            return Ok(None);
        };
        let mut cached = self.cached.lock().await;
        if let Some((token, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(Some(token.clone()));
        }
        let secret = match &self.secret {
            ClientSecret::Given(s) => s.expose_secret().to_string(),
            ClientSecret::File(path) => std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .map_err(|e| ClientTokenError::Secret {
                    client: self.client_id.clone(),
                    reason: format!("{}: {e}", path.display()),
                })?,
        };
        let response = self
            .http
            .post(url)
            .basic_auth(&self.client_id, Some(secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .map_err(|e| ClientTokenError::Issuer(e.to_string()))?;
        if !response.status().is_success() {
            return Err(ClientTokenError::Issuer(format!(
                "{url} answered {}",
                response.status()
            )));
        }
        let answer: TokenAnswer = response
            .json()
            .await
            .map_err(|e| ClientTokenError::Issuer(e.to_string()))?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(300));
        let until = Instant::now() + lifetime.saturating_sub(RENEW_BEFORE).max(lifetime / 2);
        let token = SecretString::from(answer.access_token);
        *cached = Some((token.clone(), until));
        Ok(Some(token))
    }

    /// Forgets the kept token (after a participant answered 401 with it).
    pub async fn forget(&self) {
        *self.cached.lock().await = None;
    }
}
