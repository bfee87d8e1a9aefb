//! A thin HTTP client for the tenant API, used by the tests and the load generator.

use reqwest::{Method, StatusCode};
use serde_json::Value;

#[derive(Clone)]
pub struct Client {
    pub base: String,
    http: reqwest::Client,
    /// Sent as `Authorization: Bearer …` (the admin API's credential).
    bearer: Option<String>,
}

impl Client {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(1024)
                .build()
                .expect("client builds"),
            bearer: None,
        }
    }

    /// A client that authenticates every request with `Authorization: Bearer <token>`.
    pub fn with_bearer(base: &str, token: &str) -> Self {
        Self {
            bearer: Some(token.to_owned()),
            ..Self::new(base)
        }
    }

    /// Like [`Client::raw`], with the response headers.
    pub async fn full(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.bearer {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("body read");
        (
            status,
            headers,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Sends a request with an optional raw body; returns the status and the parsed JSON
    /// (`Value::Null` when the body is not JSON).
    pub async fn raw(&self, method: Method, path: &str, body: Option<&str>) -> (StatusCode, Value) {
        let (status, _, body) = self.full(method, path, body).await;
        (status, body)
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let body = body.map(|b| b.to_string());
        self.raw(method, path, body.as_deref()).await
    }

    pub async fn create_app(&self, name: &str) -> String {
        let (status, body) = self
            .send(
                Method::POST,
                "/api/v1/applications",
                Some(serde_json::json!({"name": name})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["token"].as_str().expect("token").to_owned()
    }

    pub async fn create_chat(&self, token: &str) -> u64 {
        let (status, body) = self
            .send(
                Method::POST,
                &format!("/api/v1/applications/{token}/chats"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["number"].as_u64().expect("number")
    }

    /// The status of a chat creation (for tests that expect it to fail).
    pub async fn create_chat_status(&self, token: &str) -> StatusCode {
        self.send(
            Method::POST,
            &format!("/api/v1/applications/{token}/chats"),
            None,
        )
        .await
        .0
    }

    pub async fn create_message(&self, token: &str, chat: u64, text: &str) -> u64 {
        let (status, body) = self.try_create_message(token, chat, text).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["number"].as_u64().expect("number")
    }

    pub async fn try_create_message(
        &self,
        token: &str,
        chat: u64,
        text: &str,
    ) -> (StatusCode, Value) {
        self.send(
            Method::POST,
            &format!("/api/v1/applications/{token}/chats/{chat}/messages"),
            Some(serde_json::json!({"body": text})),
        )
        .await
    }

    /// A POST carrying `Idempotency-Key: key`.
    pub async fn post_idempotent(
        &self,
        path: &str,
        body: &Value,
        key: &str,
    ) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("idempotency-key", key)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("request sent");
        let status = resp.status();
        let bytes = resp.bytes().await.expect("body read");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(Method::GET, path, None).await
    }
}
