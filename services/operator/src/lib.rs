//! `confab-operator`: reconciles `Application` custom resources (`applications.confab.dev`) into
//! applications registered with the api's admin API, token Secrets and statuses.
//!
//! ```text
//!  kubectl apply ─▶ Application ──watch──▶ controller ──PUT/rotate/DELETE──▶ api /admin/v1
//!                        ▲ status (SSA)        │ Secret (SSA, owned) ──▶ tenant pods
//! ```
//!
//! - [`crd`]: the resource's Rust types, from which `crds/` is generated.
//! - [`desired`]: pure decisions (the Secret, the status, whether a rotation is due).
//! - [`events`]: which Kubernetes Events a reconcile tells, and publishing them.
//! - [`watch`]: what wakes the controller, the relisting watch and the liveness heartbeat.
//! - [`admin_client`]: the admin API client.
//! - [`controller`]: the reconcile loop, finalizer, backoff and metrics.

pub mod admin_client;
pub mod config;
pub mod controller;
pub mod crd;
pub mod desired;
pub mod events;
pub mod metrics;
pub mod watch;

use std::future::Future;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use confab_runtime::admin::{self, Readiness};
use confab_runtime::shutdown::{self, Shutdown};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{reflector, watcher, Controller, PredicateConfig, WatchStreamExt};
use kube::{Api, Client};
use tokio::net::TcpListener;

pub use config::OperatorConfig;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("admin client: {0}")]
    Admin(#[from] admin_client::ClientError),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs the controller until `shutdown` resolves, with the Kubernetes client from the
/// environment (in-cluster service account, or `KUBECONFIG`).
pub async fn run(
    config: OperatorConfig,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let client = Client::try_default().await?;
    run_with_client(client, config, admin_listener, shutdown).await
}

/// [`run`] with a given client (tests and tools).
pub async fn run_with_client(
    client: Client,
    config: OperatorConfig,
    admin_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let shutdown = Shutdown::new(shutdown);
    let (apps, secrets): (Api<crd::Application>, Api<Secret>) = match &config.watch_namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let readiness = Readiness::default().with("kubernetes", {
        let client = client.clone();
        move || {
            let client = client.clone();
            async move { client.apiserver_version().await.is_ok() }
        }
    });
    let ctx = Arc::new(controller::Context::new(client, config)?);
    let admin = tokio::spawn({
        let router = admin_router(readiness, ctx.clone());
        let stop = shutdown.wait();
        async move {
            axum::serve(admin_listener, router)
                .with_graceful_shutdown(stop)
                .await
        }
    });
    let owned = format!("{}={}", desired::MANAGED_BY.0, desired::MANAGED_BY.1);
    let (store, writer) = reflector::store();
    let heartbeat = ctx.heartbeat.clone();
    let applications = watch::relisting(apps, watcher::Config::default(), ctx.config.relist)
        .inspect(move |event| {
            if event.is_ok() {
                heartbeat.beat();
            }
        })
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(watch::reconcile_trigger, PredicateConfig::default());
    tracing::info!("operator watching applications");
    Controller::for_stream(applications, store)
        .owns(secrets, watcher::Config::default().labels(&owned))
        .graceful_shutdown_on(shutdown.wait())
        .run(controller::reconcile, controller::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile ended with an error");
            }
        })
        .await;
    shutdown::drain(&shutdown, None, vec![admin]).await?;
    tracing::info!("operator stopped");
    Ok(())
}

/// The shared admin routes (`/healthz`, `/readyz`, `/metrics`) plus `/livez`: 200 while the
/// watch or a reconcile made progress within [`OperatorConfig::stall_limit`], else 503 (the
/// chart's liveness probe), so a stuck watch restarts the pod.
pub fn admin_router(readiness: Readiness, ctx: Arc<controller::Context>) -> Router {
    admin::router(readiness, ctx.registry.clone()).route(
        "/livez",
        get(move || {
            let ctx = ctx.clone();
            async move {
                let silence = ctx.heartbeat.silence();
                if ctx.heartbeat.alive(ctx.config.stall_limit()) {
                    (
                        StatusCode::OK,
                        format!("ok: last progress {}s ago\n", silence.as_secs()),
                    )
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("stalled: no watch progress for {}s\n", silence.as_secs()),
                    )
                }
            }
        }),
    )
}
