//! The indexer's internal endpoints, for the api and operators (not exposed to tenants):
//!
//! - `GET /internal/search?application_id=&chat_number=&q=&limit=&offset=`: query the index;
//! - `POST /internal/reindex`: start a rebuild from MySQL (202; 409 if one is running);
//! - `GET /internal/reindex`: the rebuild's progress.
//!
//! With `CONFAB_INTERNAL_TOKEN` set, every route requires it as `Authorization: Bearer` (401
//! otherwise): the endpoint has no tenant credential and addresses chats by internal ids, so
//! besides the network policy that admits only the api, a caller must know the shared secret.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use confab_runtime::{metrics, Secret};
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
    /// `CONFAB_INTERNAL_TOKEN`: required of every caller when set.
    pub internal_token: Option<Secret<String>>,
    pub metrics: metrics::Search,
}

pub fn router(state: SearchState) -> Router {
    if state.internal_token.is_none() {
        tracing::warn!(
            "the internal endpoints accept any caller: set CONFAB_INTERNAL_TOKEN on the indexer and the api"
        );
    }
    Router::new()
        .route("/internal/search", get(search))
        .route("/internal/reindex", get(reindex_status).post(reindex_start))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

/// Refuses a request without the internal token, when one is configured.
async fn require_token(
    State(s): State<SearchState>,
    request: Request,
    next: Next,
) -> axum::response::Response {
    let Some(expected) = &s.internal_token else {
        return next.run(request).await;
    };
    if expected.is_bearer_of(request.headers()) {
        return next.run(request).await;
    }
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "the internal endpoints require the internal token".into(),
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
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
    s.metrics
        .query_duration
        .with_label_values(&[s.backend_label])
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(hits) => Json(hits).into_response(),
        Err(e) => {
            s.metrics
                .failures
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
        fn delete(&self, _: confab_search::Scope) -> BoxFuture<'_, confab_search::Result<()>> {
            Box::pin(async { Ok(()) })
        }
    }

    /// Serves the internal endpoints on a free port, with MySQL down (nothing listens on port
    /// 1); returns the base URL.
    async fn serve() -> String {
        serve_with(None).await
    }

    async fn serve_with(token: Option<&str>) -> String {
        let db = MySqlPoolOptions::new()
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy("mysql://root@127.0.0.1:1/confab")
            .unwrap();
        let state = SearchState {
            backend: Arc::new(Empty),
            backend_label: "embedded",
            db,
            progress: Arc::default(),
            internal_token: token.map(|t| Secret::new(t.to_owned())),
            metrics: confab_runtime::metrics::Search::register(
                &confab_runtime::metrics::registry(),
                &["query"],
            ),
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
        let outcome = crate::reindex::through_indexer(&base, None, Duration::from_millis(50)).await;
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

    #[tokio::test]
    async fn with_a_token_every_internal_route_refuses_callers_without_it() {
        let base = serve_with(Some("s3cret")).await;
        let http = reqwest::Client::new();
        let search = format!(
            "{base}/internal/search?application_id=1&chat_number=2&q=hello&limit=10&offset=0"
        );
        let reindex = format!("{base}/internal/reindex");
        for credential in [None, Some("wrong"), Some("s3cret2"), Some("")] {
            for request in [http.get(&search), http.get(&reindex), http.post(&reindex)] {
                let request = match credential {
                    Some(token) => request.bearer_auth(token),
                    None => request,
                };
                let response = request.send().await.unwrap();
                assert_eq!(response.status().as_u16(), 401, "{credential:?}");
                assert_eq!(response.headers()["www-authenticate"], "Bearer");
            }
        }
        // The api's client and `confab-indexer reindex` send it.
        let remote = confab_search::remote::Remote::new(&base, Duration::from_secs(5)).unwrap();
        let request = SearchRequest::new(1, 2, "hello", 10, 0).unwrap();
        let refused = remote.search(&request).await.unwrap_err().to_string();
        assert!(refused.contains("401"), "{refused}");
        let remote = remote.with_token(Some("s3cret".into()));
        assert_eq!(remote.search(&request).await.unwrap(), Vec::new());
        let token = Secret::new("s3cret".to_owned());
        let outcome =
            crate::reindex::through_indexer(&base, Some(&token), Duration::from_millis(50)).await;
        let error = outcome.expect_err("MySQL is down").to_string();
        assert!(
            error.contains("reindex failed"),
            "past the token check: {error}"
        );
        let outcome = crate::reindex::through_indexer(&base, None, Duration::from_millis(50)).await;
        let error = outcome.expect_err("no token").to_string();
        assert!(error.contains("401"), "{error}");
    }
}
