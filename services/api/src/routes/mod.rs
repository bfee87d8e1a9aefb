//! The tenant API's routes, served under `/api/v1` and, for clients written against the original
//! challenge, without the prefix.

pub mod applications;
pub mod chats;
pub mod events;
pub mod messages;
pub mod search;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::{Json, Router};

use crate::error::ApiError;
use crate::state::AppState;

fn resources() -> Router<AppState> {
    Router::new()
        .route(
            "/applications",
            get(applications::list).post(applications::create),
        )
        .route(
            "/applications/{token}",
            get(applications::show)
                .patch(applications::update)
                .put(applications::update),
        )
        .route(
            "/applications/{token}/chats",
            get(chats::list).post(chats::create),
        )
        .route(
            "/applications/{token}/chats/{number}",
            get(chats::show).delete(chats::delete),
        )
        .route(
            "/applications/{token}/chats/{number}/messages",
            get(messages::list).post(messages::create),
        )
        .route(
            "/applications/{token}/chats/{number}/events",
            get(events::events),
        )
        .route(
            "/applications/{token}/chats/{number}/messages/search",
            get(search::search),
        )
        .route(
            "/applications/{token}/chats/{number}/messages/{message_number}",
            get(messages::show)
                .patch(messages::update)
                .put(messages::update)
                .delete(messages::delete),
        )
}

/// Every tenant route, with JSON errors for unknown paths (404) and methods (405).
pub fn router(state: AppState) -> Router {
    let limit = state.max_request_bytes;
    let v1 = resources().route(
        "/openapi.json",
        get(|| async { Json(crate::openapi::document()) }),
    );
    Router::new()
        .nest("/api/v1", v1)
        .merge(resources())
        .merge(crate::admin::router(state.clone()))
        .fallback(|| async { ApiError::NoRoute })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}
