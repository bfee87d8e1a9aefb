//! The tenant API's routes, served under `/api/v1` and, for clients written against the original
//! challenge, without the prefix.

pub mod applications;
pub mod chats;
pub mod client_tokens;
pub mod events;
pub mod messages;
pub mod search;

use axum::routing::{get, post};
use axum::{Json, Router};

use crate::error::ApiError;
use crate::state::AppState;

/// The headers of a `201`: `Location` (the created item's path: the request's path and its
/// number) and, for an answer replayed from an earlier request with the same `Idempotency-Key`,
/// `Idempotent-Replayed: true`.
pub fn created_headers(
    response: &mut axum::response::Response,
    request_path: &str,
    id: &str,
    replayed: bool,
) {
    use axum::http::{header::LOCATION, HeaderName, HeaderValue};
    let location = format!("{}/{id}", request_path.trim_end_matches('/'));
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(LOCATION, value);
    }
    if replayed {
        response.headers_mut().insert(
            HeaderName::from_static("idempotent-replayed"),
            HeaderValue::from_static("true"),
        );
    }
}

/// The resources under `prefix` (`""` or `/api/v1`). Each prefix's routes are registered in full
/// rather than nested: a nested router strips its prefix from every request (a new URI to parse)
/// and routes it a second time, which was 5 % of a message post's instructions.
fn resources(router: Router<AppState>, prefix: &str) -> Router<AppState> {
    let at = |path: &str| format!("{prefix}{path}");
    router
        .route(
            &at("/applications"),
            get(applications::list).post(applications::create),
        )
        .route(
            &at("/applications/{token}"),
            get(applications::show)
                .patch(applications::update)
                .put(applications::update),
        )
        .route(
            &at("/applications/{token}/client_tokens"),
            post(client_tokens::mint),
        )
        .route(
            &at("/applications/{token}/chats"),
            get(chats::list).post(chats::create),
        )
        .route(
            &at("/applications/{token}/chats/{number}"),
            get(chats::show).delete(chats::delete),
        )
        .route(
            &at("/applications/{token}/chats/{number}/messages"),
            get(messages::list).post(messages::create),
        )
        .route(
            &at("/applications/{token}/chats/{number}/events"),
            get(events::events),
        )
        .route(
            &at("/applications/{token}/chats/{number}/messages/search"),
            get(search::search),
        )
        .route(
            &at("/applications/{token}/chats/{number}/messages/{message_number}"),
            get(messages::show)
                .patch(messages::update)
                .put(messages::update)
                .delete(messages::delete),
        )
}

/// Every tenant route, with JSON errors for unknown paths (404) and methods (405). CORS is
/// checked by the observation layer ([`crate::http::layers`]), and the request body limit wraps
/// the whole service ([`crate::http::outer`]), not each route.
pub fn router(state: AppState) -> Router {
    let api = resources(Router::new(), "/api/v1").route(
        "/api/v1/openapi.json",
        get(|| async { Json(crate::openapi::document()) }),
    );
    resources(api, "")
        .merge(crate::admin::router(state.clone()))
        .fallback(|| async { ApiError::NoRoute })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
}
