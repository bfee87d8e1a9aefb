//! The admin API (`/admin/v1`): how the operator, and platform teams' scripts, create
//! applications with chosen quotas, change them, rotate tokens and delete applications.
//!
//! It is separate from the tenant API: its own path prefix (an Ingress exposes only `/api`), its
//! own credential (`CONFAB_ADMIN_TOKEN`, a bearer token compared in constant time), and its own
//! OpenAPI tag. Applications are addressed by a caller-chosen key, so every write is idempotent.

pub mod routes;
pub mod store;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

/// The admin routes, behind the bearer-credential check.
pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route(
            "/admin/v1/applications/{key}",
            get(routes::show).put(routes::put).delete(routes::delete),
        )
        .route("/admin/v1/applications/{key}/rotate", post(routes::rotate))
        .layer(axum::middleware::from_fn_with_state(state, authenticate))
}

/// Lets a request through only with `Authorization: Bearer <CONFAB_ADMIN_TOKEN>`.
async fn authenticate(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    match (&state.admin_token, presented) {
        (Some(expected), Some(presented)) if credential_matches(expected.expose(), presented) => {
            Ok(next.run(request).await)
        }
        _ => Err(ApiError::Unauthorized),
    }
}

/// Constant-time in the presented value (and its length leaks only through `ct_eq`'s length
/// check, which reveals nothing about the content).
fn credential_matches(expected: &str, presented: &str) -> bool {
    bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_credential_matches() {
        assert!(credential_matches("s3cret", "s3cret"));
        assert!(!credential_matches("s3cret", "s3cre"));
        assert!(!credential_matches("s3cret", "s3cret!"));
        assert!(!credential_matches("s3cret", ""));
    }
}
