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
//! - [`admin_client`]: the admin API client.
//! - [`controller`]: the reconcile loop, finalizer, backoff and metrics.

pub mod admin_client;
pub mod config;
pub mod controller;
pub mod crd;
pub mod desired;

use std::future::Future;
use std::sync::Arc;

use confab_runtime::admin::{self, Readiness};
use confab_runtime::shutdown::{self, Shutdown};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{watcher, Controller};
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
    confab_runtime::metrics::initialize("confab-operator");
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
    let admin = tokio::spawn(admin::serve(admin_listener, readiness, shutdown.wait()));
    let ctx = Arc::new(controller::Context::new(client, config)?);
    let owned = format!("{}={}", desired::MANAGED_BY.0, desired::MANAGED_BY.1);
    tracing::info!("operator watching applications");
    Controller::new(apps, watcher::Config::default())
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
