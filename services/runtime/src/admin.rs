//! The admin server every service runs on `CONFAB_ADMIN_ADDR`.
//!
//! - `/healthz`: the process is alive (always 200 while it serves).
//! - `/readyz`: 200 only when the service's dependencies answer; 503 with the failing ones named.
//! - `/metrics`: the service's registry, in Prometheus text format.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;

use crate::metrics::Registry;

/// One named dependency check.
pub type Check = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// The readiness checks of a service.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, Check)>,
}

impl Readiness {
    pub fn with<F, Fut>(mut self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        self.checks
            .push((name, Arc::new(move || Box::pin(check()) as Pin<Box<_>>)));
        self
    }

    /// Ready when MySQL answers a `SELECT 1`.
    pub fn mysql(self, pool: &sqlx::MySqlPool) -> Self {
        let pool = pool.clone();
        self.with("mysql", move || {
            let pool = pool.clone();
            async move { crate::db::ping(&pool).await }
        })
    }

    /// Ready when Redis answers a `PING`.
    pub fn redis(self, conn: &crate::cache::Redis) -> Self {
        let conn = conn.clone();
        self.with("redis", move || {
            let conn = conn.clone();
            async move { crate::cache::ping(&conn).await }
        })
    }

    /// Ready while the NATS connection is up.
    pub fn nats(self, client: &async_nats::Client) -> Self {
        let client = client.clone();
        self.with("nats", move || {
            let ok = crate::jetstream::connected(&client);
            async move { ok }
        })
    }

    /// Runs every check concurrently and returns the names of those that failed.
    pub async fn failing(&self) -> Vec<&'static str> {
        let results = futures::future::join_all(
            self.checks
                .iter()
                .map(|(name, check)| async move { (*name, check().await) }),
        )
        .await;
        results
            .into_iter()
            .filter_map(|(name, ok)| (!ok).then_some(name))
            .collect()
    }
}

/// What the admin routes serve: the readiness checks and the service's own metric registry.
#[derive(Clone)]
struct AdminState {
    readiness: Readiness,
    registry: Registry,
}

pub fn router(readiness: Readiness, registry: Registry) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(AdminState {
            readiness,
            registry,
        })
}

async fn ready(State(AdminState { readiness, .. }): State<AdminState>) -> impl IntoResponse {
    let failing = readiness.failing().await;
    if failing.is_empty() {
        (StatusCode::OK, Json(json!({"status": "ready"})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "failing": failing})),
        )
    }
}

async fn metrics(State(AdminState { registry, .. }): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(&registry),
    )
}

/// Serves the admin router until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    readiness: Readiness,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(readiness, registry))
        .with_graceful_shutdown(shutdown)
        .await
}
