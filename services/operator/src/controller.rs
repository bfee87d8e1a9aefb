//! The controller: watches `Application` resources (and the Secrets it owns) and reconciles each
//! into a registered application, its token Secret and a status.
//!
//! One reconcile: finalizer first (kube's `finalizer` helper); then `PUT` the application to the
//! admin API (idempotent by the resource's UID), rotate the token if a new rotation is
//! requested (idempotent by its request id), server-side apply the Secret, server-side apply the
//! status. An api failure is reported as `Ready=False` and retried with exponential backoff.
//! Deletion applies the policy: `Delete` deletes the application; `Retain` keeps it and orphans
//! the Secret so tenants keep their token. Each step that changes something is told as a
//! Kubernetes Event ([`crate::events`]). A resource with the pause annotation is left alone
//! (finalizer and deletion included) and says so in its `Synced` condition.
//!
//! Run one replica (the Deployment uses the `Recreate` strategy): every step is idempotent, so a
//! brief overlap during a rollout is harmless, but there is no leader election.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use confab_core::admin::{AdminApplication, RotateRequest};
use confab_runtime::backoff::Backoff;
use confab_runtime::metrics::Registry;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::admin_client::{AdminClient, ClientError};
use crate::config::OperatorConfig;
use crate::crd::{Application, ApplicationStatus, DeletionPolicy};
use crate::desired::{self, reason, Outcome};
use crate::events::{self, Notice};
use crate::watch::Heartbeat;

/// The finalizer that lets the operator apply the deletion policy.
pub const FINALIZER: &str = "confab.dev/application";
/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "confab-operator";
/// The longest retry delay after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Admin(#[from] ClientError),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("the resource has no {0}")]
    Missing(&'static str),
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub admin: AdminClient,
    pub config: OperatorConfig,
    /// The one event recorder of the controller (it folds repeated events into series).
    pub recorder: Recorder,
    /// Progress of the watch and the reconciles, for the liveness probe.
    pub heartbeat: Arc<Heartbeat>,
    /// Consecutive failures per resource (`namespace/name`), for the backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Readiness per resource, for the `confab_operator_applications` gauge.
    ready: Mutex<HashMap<String, bool>>,
    /// The operator's metrics, and the registry its `/metrics` serves them from.
    pub metrics: crate::metrics::Metrics,
    pub registry: Registry,
}

impl Context {
    pub fn new(client: Client, config: OperatorConfig) -> Result<Self, ClientError> {
        let registry = confab_runtime::metrics::registry();
        Ok(Self {
            metrics: crate::metrics::Metrics::register(&registry),
            registry,
            admin: AdminClient::new(
                &config.api_url,
                config.admin_token.clone(),
                config.http_timeout,
            )?,
            recorder: Recorder::new(client.clone(), Reporter::from(FIELD_MANAGER)),
            heartbeat: Arc::default(),
            client,
            config,
            failures: Mutex::default(),
            ready: Mutex::default(),
        })
    }

    fn record(&self, app: &Application, ready: Option<bool>) {
        let name = object_name(app);
        let mut map = self
            .ready
            .lock()
            .expect("readiness map lock is never poisoned");
        match ready {
            Some(ready) => map.insert(name, ready),
            None => map.remove(&name),
        };
        let ready = map.values().filter(|r| **r).count();
        let gauge = &self.metrics.applications;
        gauge.with_label_values(&["true"]).set(ready as i64);
        gauge
            .with_label_values(&["false"])
            .set((map.len() - ready) as i64);
    }

    fn failed(&self, app: &Application) -> u32 {
        let mut map = self
            .failures
            .lock()
            .expect("failure map lock is never poisoned");
        let count = map.entry(object_name(app)).or_insert(0);
        *count += 1;
        *count
    }

    fn succeeded(&self, app: &Application) {
        self.failures
            .lock()
            .expect("failure map lock is never poisoned")
            .remove(&object_name(app));
    }
}

fn object_name(app: &Application) -> String {
    format!("{}/{}", app.namespace().unwrap_or_default(), app.name_any())
}

/// Retry delays after failures: from 1 s, doubling, up to five minutes, jittered.
pub const RETRY: Backoff = Backoff::new(Duration::from_secs(1), MAX_BACKOFF);

/// The delay before retrying after `failures` consecutive failures.
pub fn backoff(failures: u32) -> Duration {
    RETRY.delay(failures)
}

/// Reconciles one resource.
#[tracing::instrument(skip_all, fields(namespace = app.namespace(), name = %app.name_any()))]
pub async fn reconcile(app: Arc<Application>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = app.namespace().ok_or(Error::Missing("namespace"))?;
    let api: Api<Application> = Api::namespaced(ctx.client.clone(), &ns);
    let result = if app.paused() {
        pause(&app, &ctx).await
    } else {
        finalizer(&api, FINALIZER, app.clone(), |event| {
            let ctx = ctx.clone();
            async move {
                match event {
                    FinalizerEvent::Apply(app) => apply(&app, &ctx).await,
                    FinalizerEvent::Cleanup(app) => cleanup(&app, &ctx).await,
                }
            }
        })
        .await
        .map_err(|error| Error::Finalizer(Box::new(error)))
    };
    ctx.heartbeat.beat();
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics
        .reconciliations
        .with_label_values(&[outcome])
        .inc();
    if result.is_ok() {
        ctx.succeeded(&app);
    }
    result
}

/// Retries a failed reconcile with exponential backoff; never gives up, never crashes.
pub fn error_policy(app: Arc<Application>, error: &Error, ctx: Arc<Context>) -> Action {
    let delay = backoff(ctx.failed(&app));
    tracing::warn!(%error, retry_in_secs = delay.as_secs(), "reconcile failed");
    Action::requeue(delay)
}

/// The pause annotation is set: only report it. No finalizer is added or removed, so a paused
/// resource being deleted waits for the pause to end (Crossplane's and Strimzi's behaviour), and
/// nothing is requeued: removing the annotation is a change that wakes the controller.
async fn pause(app: &Application, ctx: &Context) -> Result<Action, Error> {
    let status = desired::status(app, &Outcome::Paused, Utc::now());
    let notices = events::after_reconcile(app, &status, None);
    patch_status(app, ctx, status).await?;
    events::publish(&ctx.recorder, app, notices).await;
    tracing::info!("reconciliation paused");
    Ok(Action::await_change())
}

async fn apply(app: &Application, ctx: &Context) -> Result<Action, Error> {
    let key = app.uid().ok_or(Error::Missing("uid"))?;
    let (registered, rotated) = match register(app, &key, ctx).await {
        Ok(done) => done,
        Err(error) => {
            let outcome = Outcome::Failed {
                reason: match error {
                    ClientError::Unavailable(_) => reason::API_UNAVAILABLE,
                    ClientError::Rejected { .. } => reason::REJECTED,
                },
                message: error.to_string(),
            };
            let status = desired::status(app, &outcome, Utc::now());
            finish(app, ctx, status, None).await?;
            return Err(error.into());
        }
    };
    let secret = desired::secret(app, &registered, &ctx.config.public_api_url);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace(app)?);
    secrets
        .patch(
            &desired::secret_name(app),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await?;
    let status = desired::status(app, &Outcome::Synced(&registered), Utc::now());
    finish(app, ctx, status, rotated.as_ref()).await?;
    Ok(Action::requeue(ctx.config.resync))
}

/// Writes the status, tells what changed as events and updates the readiness gauge.
async fn finish(
    app: &Application,
    ctx: &Context,
    status: ApplicationStatus,
    rotated: Option<&RotateRequest>,
) -> Result<(), Error> {
    let notices = events::after_reconcile(app, &status, rotated);
    let ready = desired::find(Some(&status), reason::READY).is_some_and(|c| c.status == "True");
    patch_status(app, ctx, status).await?;
    events::publish(&ctx.recorder, app, notices).await;
    ctx.record(app, Some(ready));
    Ok(())
}

/// Registers (creates or updates) the application, then rotates its token if that is due;
/// returns the application and the rotation performed.
async fn register(
    app: &Application,
    key: &str,
    ctx: &Context,
) -> Result<(AdminApplication, Option<RotateRequest>), ClientError> {
    let registered = ctx.admin.put(key, &app.spec.admin_spec()).await?;
    match desired::rotation(app, &registered, ctx.config.token_grace_secs) {
        Some(request) => {
            let rotated = ctx.admin.rotate(key, &request).await?;
            ctx.metrics.token_rotations.inc();
            tracing::info!("token rotated");
            Ok((rotated, Some(request)))
        }
        None => Ok((registered, None)),
    }
}

async fn cleanup(app: &Application, ctx: &Context) -> Result<Action, Error> {
    let notice = match app.spec.deletion_policy {
        DeletionPolicy::Delete => {
            ctx.admin
                .delete(&app.uid().ok_or(Error::Missing("uid"))?)
                .await?;
            tracing::info!("application deleted");
            Notice::normal(
                events::DELETED,
                "application deleted with its chats and messages; its tokens no longer work".into(),
            )
        }
        DeletionPolicy::Retain => {
            orphan_secret(app, ctx).await?;
            tracing::info!("application retained");
            Notice::normal(
                events::RETAINED,
                format!(
                    "application kept; Secret {} no longer belongs to this resource and stays",
                    desired::secret_name(app)
                ),
            )
        }
    };
    events::publish(&ctx.recorder, app, vec![notice]).await;
    ctx.record(app, None);
    Ok(Action::await_change())
}

/// Removes the Secret's owner reference. This must succeed before the finalizer goes: once the
/// resource is gone, Kubernetes' garbage collector deletes every object that still names it as
/// owner, whatever the deletion policy says. An error here keeps the finalizer (the reconcile
/// fails and is retried).
async fn orphan_secret(app: &Application, ctx: &Context) -> Result<(), Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace(app)?);
    let orphan = json!({ "metadata": { "ownerReferences": null } });
    match secrets
        .patch(
            &desired::secret_name(app),
            &PatchParams::default(),
            &Patch::Merge(&orphan),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(other) => Err(other.into()),
    }
}

async fn patch_status(
    app: &Application,
    ctx: &Context,
    status: ApplicationStatus,
) -> Result<(), Error> {
    let api: Api<Application> = Api::namespaced(ctx.client.clone(), &namespace(app)?);
    let patch = json!({
        "apiVersion": "confab.dev/v1alpha1",
        "kind": "Application",
        "status": status,
    });
    api.patch_status(
        &app.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

fn namespace(app: &Application) -> Result<String, Error> {
    app.namespace().ok_or(Error::Missing("namespace"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes_jittered() {
        assert_eq!(RETRY.ceiling(1), Duration::from_secs(1));
        assert_eq!(RETRY.ceiling(2), Duration::from_secs(2));
        assert_eq!(RETRY.ceiling(5), Duration::from_secs(16));
        assert_eq!(RETRY.ceiling(40), MAX_BACKOFF);
        let delay = backoff(5);
        assert!(delay >= Duration::from_secs(8) && delay <= Duration::from_secs(16));
    }
}
