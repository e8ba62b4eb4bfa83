//! The gateway's Admin API (APISIX v3's), as the market calls it over HTTP: the market does
//! not link the gateway, so it works the same with the gateway in this process or on another
//! machine, on any of its config stores.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("the gateway's Admin API cannot be reached: {0}")]
    Unreachable(String),
    #[error("the gateway's Admin API refused {what}: {status} {message}")]
    Refused {
        what: String,
        status: u16,
        message: String,
    },
}

#[derive(Debug, Clone)]
pub struct AdminApi {
    base: String,
    key: SecretString,
    http: reqwest::Client,
}

impl AdminApi {
    /// The Admin API at `base` (`http://127.0.0.1:9180`), called with `key`.
    pub fn new(base: String, key: SecretString) -> AdminApi {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        AdminApi { base, key, http }
    }

    /// The ids of `kind` (`routes`, `consumers`…) that start with `prefix`.
    pub async fn ids(&self, kind: &str, prefix: &str) -> Result<Vec<String>, AdminError> {
        let path = format!("/apisix/admin/{kind}");
        let body = self.call(reqwest::Method::GET, &path, None).await?;
        let items = body["list"].as_array().cloned().unwrap_or_default();
        Ok(items
            .iter()
            .filter_map(|item| {
                let key = item["key"].as_str()?;
                let id = key.rsplit('/').next()?;
                id.starts_with(prefix).then(|| id.to_string())
            })
            .collect())
    }

    /// The document at `path`, if there is one.
    pub async fn get(&self, path: &str) -> Result<Option<Value>, AdminError> {
        match self.call(reqwest::Method::GET, path, None).await {
            Ok(body) => Ok(Some(body["value"].clone())),
            Err(AdminError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn put(&self, path: &str, document: &Value) -> Result<(), AdminError> {
        self.call(reqwest::Method::PUT, path, Some(document))
            .await
            .map(|_| ())
    }

    /// Deletes `path`; one already gone is not an error.
    pub async fn delete(&self, path: &str) -> Result<(), AdminError> {
        match self.call(reqwest::Method::DELETE, path, None).await {
            Err(AdminError::Refused { status: 404, .. }) | Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, AdminError> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .header("X-API-KEY", self.key.expose_secret());
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| AdminError::Unreachable(e.without_url().to_string()))?;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(body);
        }
        Err(AdminError::Refused {
            what: format!("{method} {path}"),
            status,
            message: body["error_msg"]
                .as_str()
                .unwrap_or("no message")
                .to_string(),
        })
    }
}
