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
    match &state.admin_token {
        Some(expected) if expected.is_bearer_of(request.headers()) => Ok(next.run(request).await),
        _ => Err(ApiError::Unauthorized),
    }
}
