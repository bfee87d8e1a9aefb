//! The Confab HTTP API.
//!
//! Applications are written to MySQL synchronously. Chat and message creation resolve the token
//! (cached), take a number from a Redis sequence ([`numbering`]), publish the event to JetStream
//! and answer once the stream acknowledged it ([`publish`]): MySQL is never written on that path;
//! the persister does it. Reads come from MySQL.
//!
//! [`run`] starts the tenant API and the admin server on listeners the caller bound, and returns
//! after `shutdown` resolved and in-flight requests finished.

pub mod access;
pub mod admin;
pub mod allocate;
pub mod config;
pub mod cors;
pub mod error;
pub mod extract;
pub mod http;
pub mod idempotency;
pub mod live;
pub mod metrics;
pub mod numbering;
pub mod openapi;
pub mod publish;
pub mod reads;
pub mod repo;
pub mod resolve;
pub mod routes;
pub mod state;
pub mod views;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use confab_core::keys::Keys;
use confab_runtime::admin::{self as admin_server, Readiness};
use confab_runtime::shutdown::{self, Shutdown};
use confab_runtime::{cache, db, jetstream};
use confab_search::elastic::Elastic;
use confab_search::remote::Remote;
use confab_search::SearchBackend;
use tokio::net::TcpListener;

pub use config::ApiConfig;
use state::{AppState, StateParts};

/// Why the api could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("jetstream: {0}")]
    JetStream(#[from] jetstream::Error),
    #[error("search: {0}")]
    Search(#[from] confab_search::Error),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// The listeners the api serves on; bound by the caller so tests can use port 0.
pub struct Listeners {
    pub http: TcpListener,
    pub admin: TcpListener,
}

/// The whole tenant service for a state: its routes with the panic net and the observation and
/// timeout layers, inside the body limit and compression.
pub fn app(
    state: AppState,
    request_timeout: std::time::Duration,
    compress: bool,
) -> http::Outer<Router> {
    let (metrics, limit) = (state.metrics.clone(), state.max_request_bytes);
    let cors = Some(state.clone());
    http::outer(
        http::layers(routes::router(state), request_timeout, metrics, cors),
        limit,
        compress,
    )
}

/// Connects to MySQL, Redis and NATS, and builds the state; its parts record into `metrics`.
pub async fn connect(config: &ApiConfig, metrics: metrics::Metrics) -> Result<AppState, Error> {
    let db = db::pool(&config.common)?;
    if config.migrate {
        db::migrate(&db).await?;
    }
    let redis = cache::connect(&config.common).await?;
    let reads = reads::Reads::primary(db.clone(), metrics.clone());
    let reads = match &config.common.database_read_url {
        None => reads,
        Some(url) => reads.with_replica(
            db::pool_at(&config.common, url.expose())?,
            (redis.clone(), Keys::new(config.common.redis_prefix.clone())),
            config.common.read_replica_max_lag,
            config.common.stream.clock_skew,
        ),
    };
    let js =
        jetstream::connect(&config.common.nats_url, "confab-api", &config.common.stream).await?;
    let (search, search_label) = search_backend(config)?;
    let records =
        jetstream::records_stream(&js, &config.idempotency_stream, config.idempotency_ttl).await?;
    Ok(AppState::new(StateParts {
        db,
        reads,
        redis,
        publisher: publish::Publisher::new(js.clone(), metrics.clone()),
        idempotency: idempotency::Idempotency::new(js, records, metrics.clone()),
        metrics,
        keys: Keys::new(config.common.redis_prefix.clone()),
        limits: config.limits.clone(),
        max_request_bytes: config.max_request_bytes(),
        token_cache_ttl: config.token_cache_ttl,
        search,
        search_label,
        list_tokens: config.list_tokens,
        tenancy: config.tenancy.clone(),
        admin_token: config.admin_token.clone(),
        quota_defaults: config.quota_defaults,
        hard_max_body_bytes: config.hard_max_body_bytes(),
        live: config.live.clone(),
        cors_origins: config.cors_origins.clone(),
    }))
}

/// The search backend queries go to: Elasticsearch, or the indexer serving the embedded index.
fn search_backend(config: &ApiConfig) -> Result<(Arc<dyn SearchBackend>, &'static str), Error> {
    Ok(match &config.search {
        // The search timeout bounds Elasticsearch queries as it bounds the indexer's endpoint.
        config::SearchConfig::Elasticsearch(es) => (
            Arc::new(Elastic::new(&es.url, &es.index, config.search_timeout)?),
            "elasticsearch",
        ),
        config::SearchConfig::Indexer { url } => (
            Arc::new(
                Remote::new(url, config.search_timeout)?
                    .with_token(config.internal_token.as_ref().map(|t| t.expose().clone())),
            ),
            "embedded",
        ),
    })
}

/// Runs the api until `shutdown` resolves.
pub async fn run(
    config: ApiConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let shutdown = Shutdown::new(shutdown);
    let registry = confab_runtime::metrics::registry();
    let state = connect(&config, metrics::Metrics::register(&registry)).await?;
    let readiness = readiness(&state);
    let admin = tokio::spawn(admin_server::serve(
        listeners.admin,
        readiness,
        registry,
        shutdown.wait(),
    ));
    // Live streams never finish on their own: at shutdown they end with a reconnect hint, so
    // the graceful shutdown below can drain their connections.
    tokio::spawn({
        let (live, closing) = (state.live.clone(), shutdown.wait());
        async move {
            closing.await;
            live.close();
        }
    });
    tracing::info!(addr = %listeners.http.local_addr()?, "api listening");
    // With the peer address, which the per-client limit on application creation keys on.
    let serve = axum::serve(
        listeners.http,
        axum::ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<
            std::net::SocketAddr,
        >(app(state.clone(), config.request_timeout, config.compress)),
    )
    .with_graceful_shutdown(shutdown.wait());
    // In-flight requests finish within the request timeout and live streams end within two
    // heartbeat intervals (what their end and close frames may take); a connection whose client
    // stopped reading could hold the drain for good, so it is not waited for past that.
    let drain = config.request_timeout.max(2 * config.live.heartbeat) + Duration::from_secs(1);
    let deadline = {
        let begun = shutdown.wait();
        async move {
            begun.await;
            tokio::time::sleep(drain).await;
        }
    };
    tokio::select! {
        served = std::future::IntoFuture::into_future(serve) => served?,
        () = deadline => tracing::warn!(
            drain_secs = drain.as_secs(),
            "connections still open after the drain; not waiting for them"
        ),
    }
    // Upgraded (WebSocket) connections are no longer the server's to wait for: their streams
    // are, so that their clients get the end and its reconnect hint before the process exits.
    if tokio::time::timeout(drain, state.live.closed())
        .await
        .is_err()
    {
        tracing::warn!("live streams still open after the drain; not waiting for them");
    }
    shutdown::drain(
        &shutdown,
        Some(&state.publisher.jetstream().client),
        vec![admin],
    )
    .await?;
    tracing::info!("api stopped");
    Ok(())
}

fn readiness(state: &AppState) -> Readiness {
    Readiness::default()
        .mysql(&state.db)
        .redis(&state.redis)
        .nats(&state.publisher.jetstream().client)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::{Duration, Instant};

    use confab_runtime::config::env;
    use confab_search::SearchRequest;

    use super::*;

    #[tokio::test]
    async fn an_elasticsearch_that_never_answers_fails_a_search_within_the_search_timeout() {
        // Accepts connections, never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let config = ApiConfig::from_env(&env(&[
            ("ELASTICSEARCH_URL", &url),
            ("CONFAB_SEARCH_TIMEOUT_MS", "300"),
        ]))
        .unwrap();
        let (search, label) = search_backend(&config).unwrap();
        assert_eq!(label, "elasticsearch");
        let request = SearchRequest::new(1, 2, "hello", 10, 0).unwrap();
        let started = Instant::now();
        let outcome = tokio::time::timeout(Duration::from_secs(10), search.search(&request))
            .await
            .expect("the search must not outlive its timeout");
        assert!(
            matches!(outcome, Err(confab_search::Error::Unavailable(_))),
            "{outcome:?}"
        );
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
}
