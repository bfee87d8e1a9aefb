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

    /// Sends a body larger than the server will read, the way a careful client does: it reads
    /// the answer while it is still writing, and a write cut short by the server's close is not
    /// an error. (An HTTP client that stops at the failed write would report a broken pipe
    /// instead of the 413 the server sent before closing.)
    pub async fn oversized(&self, method: &Method, path: &str, body: &str) -> (StatusCode, Value) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let authority = self
            .base
            .strip_prefix("http://")
            .expect("plain-HTTP base URL");
        let stream = tokio::net::TcpStream::connect(authority)
            .await
            .expect("connected");
        let (mut reader, mut writer) = stream.into_split();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let write = tokio::spawn(async move {
            // Cut short once the server has answered and closed: expected, not a failure.
            let _ = writer.write_all(request.as_bytes()).await;
        });
        let mut answer = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
                // A reset after the answer arrived ends the read, not the test.
                Err(e) if !answer.is_empty() => {
                    eprintln!("read ended by {e} after {} bytes", answer.len());
                    break;
                }
                Err(e) => panic!("no answer to the oversized request: {e}"),
            }
        }
        write.abort();
        let text = String::from_utf8_lossy(&answer);
        let (head, payload) = text.split_once("\r\n\r\n").expect("a whole response head");
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        (
            StatusCode::from_u16(status).expect("a valid status"),
            serde_json::from_str(payload).unwrap_or(Value::Null),
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
        let path = format!("/api/v1/applications/{token}/chats");
        let (status, body) = self
            .after_recovery(|| self.send(Method::POST, &path, None))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["number"].as_u64().expect("number")
    }

    /// Sends a creation again while it answers `503 sequence_recovering` (Redis lost its data
    /// moments ago and no number was taken, so repeating is safe), as a client honouring
    /// `Retry-After` would, for at most a minute.
    async fn after_recovery<F, Fut>(&self, send: F) -> (StatusCode, Value)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = (StatusCode, Value)>,
    {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let (status, body) = send().await;
            let recovering = status == StatusCode::SERVICE_UNAVAILABLE
                && body["error"]["code"] == "sequence_recovering";
            if !recovering || std::time::Instant::now() > deadline {
                return (status, body);
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
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
        let (status, body) = self
            .after_recovery(|| self.try_create_message(token, chat, text))
            .await;
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
