//! The indexer's internal endpoints, for the api and operators (not exposed to tenants):
//!
//! - `GET /internal/search?application_id=&chat_number=&q=&limit=&offset=`: query the index;
//! - `POST /internal/reindex`: start a rebuild from MySQL (202; 409 if one is running);
//! - `GET /internal/reindex`: the rebuild's progress.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use confab_runtime::metrics;
use confab_search::remote::RemoteQuery;
use confab_search::{QueryError, SearchBackend};
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
    query: Result<Query<RemoteQuery>, QueryRejection>,
) -> axum::response::Response {
    // Ids and the page come from the query string: a value that is not a number of its type
    // (negative, too large) or a page beyond the result window is the caller's error.
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_parameter", e.body_text()),
    };
    let request = match q.into_request() {
        Ok(r) => r,
        Err(e @ QueryError::TooDeep) => {
            return error(StatusCode::BAD_REQUEST, "invalid_parameter", e.to_string())
        }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use confab_search::{Hit, SearchDoc, SearchRequest};
    use futures::future::BoxFuture;
    use sqlx::mysql::MySqlPoolOptions;

    use super::*;

    /// A backend that finds nothing and accepts everything.
    struct Empty;

    impl SearchBackend for Empty {
        fn index<'a>(&'a self, _: &'a [SearchDoc]) -> BoxFuture<'a, confab_search::Result<()>> {
            Box::pin(async { Ok(()) })
        }
        fn search<'a>(
            &'a self,
            _: &'a SearchRequest,
        ) -> BoxFuture<'a, confab_search::Result<Vec<Hit>>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn delete_application(&self, _: u64) -> BoxFuture<'_, confab_search::Result<()>> {
            Box::pin(async { Ok(()) })
        }
    }

    /// Serves the internal endpoints on a free port, with MySQL down (nothing listens on port
    /// 1); returns the base URL.
    async fn serve() -> String {
        let db = MySqlPoolOptions::new()
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy("mysql://root@127.0.0.1:1/confab")
            .unwrap();
        let state = SearchState {
            backend: Arc::new(Empty),
            backend_label: "embedded",
            db,
            progress: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router(state)).await });
        base
    }

    #[tokio::test]
    async fn out_of_range_pages_and_ids_are_refused_with_400() {
        let base = serve().await;
        let get = |query: &'static str| {
            let url =
                format!("{base}/internal/search?application_id=1&chat_number=2&q=hello&{query}");
            async move {
                let response = reqwest::get(url).await.unwrap();
                let status = response.status().as_u16();
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                (
                    status,
                    body["error"]["code"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            }
        };
        assert_eq!(get("limit=10&offset=0").await.0, 200);
        for query in [
            // offset + limit overflows u64.
            "limit=10&offset=18446744073709551615",
            "limit=4294967295&offset=18446744073709551615",
            // Within u64, beyond the result window.
            "limit=10&offset=9991",
            // Not a number of the parameter's type.
            "limit=10&offset=18446744073709551616",
            "limit=-1&offset=0",
            "limit=4294967296&offset=0",
        ] {
            assert_eq!(
                get(query).await,
                (400, "invalid_parameter".to_owned()),
                "{query}"
            );
        }
    }

    #[tokio::test]
    async fn a_failed_reindex_is_reported_as_an_error() {
        let base = serve().await;
        let outcome = crate::reindex::through_indexer(&base, Duration::from_millis(50)).await;
        let error = outcome
            .expect_err("MySQL is down, so the reindex fails")
            .to_string();
        assert!(error.contains("reindex failed"), "{error}");
        // The failure is visible in the status too, and a new run may start.
        let status: serde_json::Value = reqwest::get(format!("{base}/internal/reindex"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(status["running"], false);
        assert!(status["error"].is_string(), "{status}");
    }
}
