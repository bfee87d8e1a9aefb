//! A client of the api's admin API (`/admin/v1`), the operator's only way to change Confab.

use std::time::Duration;

use confab_core::admin::{AdminApplication, ApplicationSpec, RotateRequest};
use confab_runtime::Secret;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The api could not be reached or failed (network, timeout, 5xx): retry later.
    #[error("the api is unavailable: {0}")]
    Unavailable(String),
    /// The api refused the request (4xx): the resource must change before a retry can help.
    #[error("the api rejected the request ({status}): {message}")]
    Rejected { status: u16, message: String },
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[derive(Clone)]
pub struct AdminClient {
    http: reqwest::Client,
    base: String,
    token: Secret<String>,
}

impl AdminClient {
    pub fn new(base: &str, token: Secret<String>, timeout: Duration) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| ClientError::Unavailable(e.to_string()))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: token.clone(),
        })
    }

    /// Creates or updates the application `key`.
    pub async fn put(&self, key: &str, spec: &ApplicationSpec) -> Result<AdminApplication> {
        self.call(Method::PUT, key, "", Some(spec)).await
    }

    /// Rotates the token of `key` (idempotent per `request_id`).
    pub async fn rotate(&self, key: &str, request: &RotateRequest) -> Result<AdminApplication> {
        self.call(Method::POST, key, "/rotate", Some(request)).await
    }

    /// Deletes `key`; an application that is already gone is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self
            .call::<serde_json::Value, ()>(Method::DELETE, key, "", None)
            .await
        {
            Ok(_) => Ok(()),
            Err(ClientError::Rejected { status: 404, .. }) => Ok(()),
            Err(other) => Err(other),
        }
    }

    async fn call<T: DeserializeOwned, B: Serialize>(
        &self,
        method: Method,
        key: &str,
        suffix: &str,
        body: Option<&B>,
    ) -> Result<T> {
        let url = format!("{}/admin/v1/applications/{key}{suffix}", self.base);
        let mut request = self
            .http
            .request(method, url)
            .bearer_auth(self.token.expose());
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| ClientError::Unavailable(e.without_url().to_string()))?;
        let status = response.status();
        if status.is_server_error() {
            return Err(ClientError::Unavailable(format!("status {status}")));
        }
        if status.is_client_error() {
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            return Err(ClientError::Rejected {
                status: status.as_u16(),
                message: body["error"]["message"]
                    .as_str()
                    .unwrap_or("no message")
                    .to_owned(),
            });
        }
        if status == StatusCode::NO_CONTENT {
            return serde_json::from_value(serde_json::Value::Null)
                .map_err(|e| ClientError::Unavailable(e.to_string()));
        }
        response
            .json()
            .await
            .map_err(|e| ClientError::Unavailable(format!("unreadable answer: {e}")))
    }
}
