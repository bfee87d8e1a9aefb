//! The HTTP error shape and its status mapping, decided in exactly one place.
//!
//! Every error reaches the client as `{"error": {"code", "message"}}`. Internal failures reach
//! the client as a generic message and the log as the full cause chain.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use confab_core::validation::ValidationError;
use serde::Serialize;

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("{0}")]
    InvalidParameter(String),
    #[error("{0}")]
    InvalidQuery(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error(transparent)]
    Validation(#[from] ValidationError),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("the application reached its limit of {0} chats")]
    ChatLimit(u64),
    /// What was asked for is older than what the server keeps; the text says what to do.
    #[error("{0}")]
    Gone(&'static str),
    #[error("the application has {0} live subscriptions open, its limit")]
    SubscriptionLimit(u32),
    #[error("{what}; retry in {retry_after_secs} s")]
    RateLimited {
        /// What was exceeded, for the message.
        what: &'static str,
        retry_after_secs: u64,
        /// The limiter's state, for the `RateLimit-Policy` and `RateLimit` headers.
        rate: Option<confab_core::quota::RateLimitState>,
    },
    #[error("a valid admin bearer token is required")]
    Unauthorized,
    /// Turned off on this deployment; the text says what to use instead.
    #[error("{0}")]
    Forbidden(&'static str),
    /// A client token that is not valid (forged, altered, or signed before a rotation).
    #[error("the client token is not valid")]
    InvalidToken,
    #[error("the client token has expired; mint a new one")]
    TokenExpired,
    /// A client token used beyond its chats or rights; the text says what it lacks.
    #[error("{0}")]
    NotAllowed(String),
    /// A browser request from an origin the application does not allow (CORS).
    #[error(
        "requests from this origin are not allowed; add it to the application's allowed origins"
    )]
    OriginNotAllowed,
    /// Another request with this Idempotency-Key is still in progress.
    #[error("a request with this Idempotency-Key is in progress; retry in a moment")]
    IdempotencyKeyInUse,
    #[error("no route for this path")]
    NoRoute,
    #[error("method not allowed for this path")]
    MethodNotAllowed,
    #[error("this Idempotency-Key was used with another request body")]
    IdempotencyMismatch,
    #[error("request timed out")]
    Timeout,
    #[error("a dependency is unavailable: {0}")]
    Unavailable(String),
    /// Redis lost its data moments ago: numbers are handed out again once every number taken
    /// before the loss is stored or can no longer be ([`confab_core::sequence`]).
    #[error("numbering is recovering from a loss of Redis data; retry in {retry_after_secs} s")]
    Recovering { retry_after_secs: u64 },
    #[error(transparent)]
    Internal(#[from] Internal),
}

/// An unexpected failure; its cause chain is logged, never sent.
#[derive(Debug, thiserror::Error)]
pub enum Internal {
    #[error("database: {0}")]
    Database(#[source] sqlx::Error),
    #[error("redis: {0}")]
    Redis(#[source] redis::RedisError),
    #[error("{0}")]
    Other(String),
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        // Unreachable, overloaded, or a lock conflict InnoDB rolled back: the client may retry.
        if confab_runtime::db::classify(&error).is_transient() {
            Self::Unavailable(format!("database: {error}"))
        } else {
            Self::Internal(Internal::Database(error))
        }
    }
}

impl From<confab_search::QueryError> for ApiError {
    fn from(error: confab_search::QueryError) -> Self {
        match error {
            confab_search::QueryError::TooDeep => Self::InvalidParameter(error.to_string()),
            other => Self::InvalidQuery(other.to_string()),
        }
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(error: redis::RedisError) -> Self {
        if confab_runtime::cache::is_transient(&error) {
            Self::Unavailable(format!("redis: {error}"))
        } else {
            Self::Internal(Internal::Redis(error))
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `malformed_json`, `invalid_parameter`, `invalid_query`,
    /// `validation_failed`,
    /// `payload_too_large`, `not_found`, `gone`, `chat_limit_reached`, `rate_limited`,
    /// `subscription_limit_reached`, `unauthorized`,
    /// `method_not_allowed`, `idempotency_key_reused`, `timeout`, `unavailable`, `internal`.
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            Self::InvalidParameter(_) => (StatusCode::BAD_REQUEST, "invalid_parameter"),
            Self::InvalidQuery(_) => (StatusCode::BAD_REQUEST, "invalid_query"),
            Self::Validation(ValidationError::BodyTooLarge { .. }) | Self::PayloadTooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            Self::Validation(ValidationError::OutOfRange { .. }) => {
                (StatusCode::BAD_REQUEST, "invalid_parameter")
            }
            Self::Validation(_) | Self::Unprocessable(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed")
            }
            Self::IdempotencyMismatch => {
                (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
            }
            Self::NotFound(_) | Self::NoRoute => (StatusCode::NOT_FOUND, "not_found"),
            Self::ChatLimit(_) => (StatusCode::CONFLICT, "chat_limit_reached"),
            Self::Gone(_) => (StatusCode::GONE, "gone"),
            Self::SubscriptionLimit(_) => {
                (StatusCode::TOO_MANY_REQUESTS, "subscription_limit_reached")
            }
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) | Self::NotAllowed(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::InvalidToken => (StatusCode::UNAUTHORIZED, "invalid_token"),
            Self::TokenExpired => (StatusCode::UNAUTHORIZED, "token_expired"),
            Self::OriginNotAllowed => (StatusCode::FORBIDDEN, "origin_not_allowed"),
            Self::IdempotencyKeyInUse => (StatusCode::CONFLICT, "idempotency_key_in_use"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::Timeout => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Recovering { .. } => (StatusCode::SERVICE_UNAVAILABLE, "sequence_recovering"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// Sets `RateLimit-Policy` and `RateLimit` (IETF httpapi draft) from the limiter's state.
pub fn rate_limit_headers(
    headers: &mut axum::http::HeaderMap,
    rate: &confab_core::quota::RateLimitState,
) {
    use axum::http::HeaderName;
    for (name, value) in [
        (
            HeaderName::from_static("ratelimit-policy"),
            rate.policy_header(),
        ),
        (HeaderName::from_static("ratelimit"), rate.header()),
    ] {
        if let Ok(value) = axum::http::HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let retry_after = match &self {
            Self::RateLimited {
                retry_after_secs, ..
            }
            | Self::Recovering { retry_after_secs } => Some(*retry_after_secs),
            Self::IdempotencyKeyInUse => Some(1),
            _ if status == StatusCode::SERVICE_UNAVAILABLE => Some(1),
            _ => None,
        };
        let message = match &self {
            Self::Internal(cause) => {
                tracing::error!(error = %cause, source = ?std::error::Error::source(cause), "internal error");
                "internal error".to_owned()
            }
            Self::Unavailable(cause) => {
                tracing::warn!(error = %cause, "dependency unavailable");
                "a dependency is unavailable; retry later".to_owned()
            }
            other => other.to_string(),
        };
        let mut response = (
            status,
            Json(ErrorBody {
                error: ErrorDetail { code, message },
            }),
        )
            .into_response();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of an oversized body is not read, so this connection cannot carry another
            // request; say so, or a keep-alive client may send its next request into the closing
            // connection.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        if let Self::RateLimited {
            rate: Some(rate), ..
        } = &self
        {
            rate_limit_headers(response.headers_mut(), rate);
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_contract() {
        let s = |e: ApiError| e.status_and_code().0.as_u16();
        assert_eq!(s(ApiError::MalformedJson("x".into())), 400);
        assert_eq!(s(ValidationError::Blank { field: "name" }.into()), 422);
        assert_eq!(s(ValidationError::BodyTooLarge { max: 1 }.into()), 413);
        assert_eq!(s(ApiError::NotFound("chat")), 404);
        assert_eq!(s(ApiError::MethodNotAllowed), 405);
        assert_eq!(s(sqlx::Error::PoolTimedOut.into()), 503);
        assert_eq!(s(ApiError::ChatLimit(3)), 409);
        assert_eq!(
            s(ApiError::RateLimited {
                what: "a rate",
                retry_after_secs: 2,
                rate: None
            }),
            429
        );
        assert_eq!(s(ApiError::Unauthorized), 401);
        assert_eq!(s(ApiError::IdempotencyMismatch), 422);
    }
}
