//! CORS: which browser pages may call the api.
//!
//! An origin is allowed for an application's routes when the application lists it (the admin
//! API's `allowed_origins`, the `Application` resource's `spec.allowedOrigins`) or when
//! `CONFAB_CORS_ALLOWED_ORIGINS` lists it for every application; routes that name no
//! application (creating one, the admin API) take the global list only.
//!
//! A request without an `Origin` header (a server, a mobile app, curl) is not touched. A request
//! whose `Origin` is not allowed is refused with `403 origin_not_allowed` before any handler
//! runs, and its answer carries no `Access-Control-Allow-Origin`. Refusing, rather than
//! answering without the header as CORS alone would, matters for what a browser sends without
//! asking first: a form or `text/plain` `POST` from any page, and WebSocket upgrades, which CORS
//! does not cover at all. Neither may write anything for a page the application did not allow.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
    VARY,
};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use confab_core::client_token::Unverified;
use confab_core::Token;

use crate::error::ApiError;
use crate::repo;
use crate::state::AppState;

/// What a page may send.
const ALLOW_METHODS: &str = "GET, POST, PUT, PATCH, DELETE, OPTIONS";
const ALLOW_HEADERS: &str =
    "Content-Type, Idempotency-Key, Last-Event-ID, X-Request-Id, If-None-Match, traceparent, tracestate";
/// What a page may read of an answer, beside the CORS-safelisted headers.
const EXPOSE_HEADERS: &str =
    "Link, Location, RateLimit, RateLimit-Policy, Retry-After, X-Request-Id, Idempotent-Replayed, ETag";
/// How long a browser may reuse a preflight's answer (10 minutes).
const MAX_AGE_SECS: &str = "600";

/// The check, before `next` (the handler): see the module's note. Called by the observation
/// middleware ([`crate::http::layers`]) rather than being a layer of its own.
pub async fn cors(state: &AppState, req: Request, next: Next) -> Response {
    let Some(origin) = req.headers().get(ORIGIN).cloned() else {
        return next.run(req).await;
    };
    let allowed = match origin.to_str() {
        Ok(text) => state.origin_allowed(text, req.uri().path()).await,
        Err(_) => false,
    };
    if !allowed {
        return ApiError::OriginNotAllowed.into_response();
    }
    let preflight = req.method() == Method::OPTIONS
        && req.headers().contains_key(ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOW_METHODS),
        );
        headers.insert(
            ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        headers.insert(
            ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(MAX_AGE_SECS),
        );
        response
    } else {
        next.run(req).await
    };
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE_HEADERS),
    );
    headers.append(VARY, HeaderValue::from_static("Origin"));
    response
}

/// The `{token}` segment of a tenant path (`/api/v1/applications/{token}/…` or
/// `/applications/{token}/…`), if the path has one.
fn token_segment(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/api/v1").unwrap_or(path);
    let rest = rest.strip_prefix("/applications/")?;
    let token = rest.split('/').next()?;
    (!token.is_empty()).then_some(token)
}

impl AppState {
    /// Whether a page at `origin` may call `path` (see the module's note). A token that names
    /// no application allows the global origins only.
    async fn origin_allowed(&self, origin: &str, path: &str) -> bool {
        if self.cors_origins.iter().any(|allowed| allowed == origin) {
            return true;
        }
        let Some(raw) = token_segment(path) else {
            return false;
        };
        let id = if let Some(client) = Unverified::parse(raw) {
            client.application_id()
        } else {
            let Some(token) = Token::parse(raw) else {
                return false;
            };
            match self.tenant(&token).await {
                Ok(tenant) => tenant.id,
                Err(_) => return false,
            }
        };
        match self.allowed_origins(id).await {
            Some(origins) => origins.iter().any(|allowed| allowed == origin),
            None => false,
        }
    }

    /// The origins application `id` allows (cached with its other settings).
    async fn allowed_origins(&self, id: u64) -> Option<Arc<[String]>> {
        if let Some(origins) = self.origins.get(&id) {
            return Some(origins);
        }
        let row = repo::application_by_id(&self.db, id).await.ok()??;
        self.remember_application(&row);
        self.origins.get(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::token_segment;

    #[test]
    fn the_token_is_the_segment_after_applications() {
        assert_eq!(
            token_segment("/api/v1/applications/abc/chats/1/messages"),
            Some("abc")
        );
        assert_eq!(token_segment("/applications/abc"), Some("abc"));
        assert_eq!(token_segment("/api/v1/applications"), None);
        assert_eq!(token_segment("/api/v1/applications/"), None);
        assert_eq!(token_segment("/admin/v1/applications/key"), None);
    }
}
