//! The indexer's internal endpoints, for the api and operators (not exposed to tenants):
//!
//! - `GET /internal/search?application_id=&chat_number=&q=&limit=&offset=`: query the index;
//! - `POST /internal/reindex`: start a rebuild from MySQL (202; 409 if one is running);
//! - `GET /internal/reindex`: the rebuild's progress.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use confab_runtime::metrics;
use confab_search::remote::RemoteQuery;
use confab_search::SearchBackend;
use serde_json::json;
use sqlx::MySqlPool;

use crate::reindex::{self, Progress};

#[derive(Clone)]
pub struct SearchState {
    pub backend: Arc<dyn SearchBackend>,
    pub backend_label: &'static str,
    pub db: MySqlPool,
    pub progress: Arc<Progress>,
}

pub fn router(state: SearchState) -> Router {
    Router::new()
        .route("/internal/search", get(search))
        .route("/internal/reindex", get(reindex_status).post(reindex_start))
        .with_state(state)
}

fn error(status: StatusCode, code: &str, message: String) -> axum::response::Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

async fn search(
    State(s): State<SearchState>,
    Query(q): Query<RemoteQuery>,
) -> axum::response::Response {
    let request = match q.into_request() {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_query", e.to_string()),
    };
    let started = Instant::now();
    let result = s.backend.search(&request).await;
    metrics::SEARCH_QUERY_DURATION
        .with_label_values(&[s.backend_label])
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(hits) => Json(hits).into_response(),
        Err(e) => {
            metrics::SEARCH_FAILURES
                .with_label_values(&["query", "unavailable"])
                .inc();
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            )
        }
    }
}

async fn reindex_start(State(s): State<SearchState>) -> axum::response::Response {
    if reindex::start(s.db.clone(), s.backend.clone(), s.progress.clone()) {
        (StatusCode::ACCEPTED, Json(s.progress.status())).into_response()
    } else {
        error(
            StatusCode::CONFLICT,
            "conflict",
            "a reindex is already running".into(),
        )
    }
}

async fn reindex_status(State(s): State<SearchState>) -> impl IntoResponse {
    Json(s.progress.status())
}
