//! The operator beyond the happy path: the Secret template, the pause annotation, the `Retain`
//! pitfall (an owner reference left on the Secret gets it garbage-collected), and the liveness
//! of the watch.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use confab_operator::crd::{Application, QuotaSpec, SecretTemplate, PAUSE_ANNOTATION};
use confab_operator::watch::{self, Heartbeat};
use futures::StreamExt;
use http::{Request, Response};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use serde_json::{json, Value};

use super::mock::*;
use crate::quotas::admin_env;

/// An api URL nothing listens on: a reconcile that calls the api fails.
fn nowhere() -> String {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    url
}

fn deleting(mut app: Application) -> Application {
    app.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    app
}

/// The API server's answer to the finalizer's removal.
fn finalized(app: &Application) -> Value {
    let mut done = app.clone();
    done.metadata.finalizers = None;
    serde_json::to_value(done).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_template_names_labels_and_annotates_the_token_secret() {
    let env = admin_env().await;
    let api = env.spawn_api().await;
    let (ctx, handle) = context(&api.base);
    let mut app = with_finalizer(application("templated", spec(QuotaSpec::default())));
    app.spec.secret_template = Some(SecretTemplate {
        name: Some("shop-credentials".into()),
        labels: BTreeMap::from([("backup".into(), "daily".into())]),
        annotations: BTreeMap::from([("team".into(), "payments".into())]),
    });
    let mut secret = Value::Null;
    let mut status = Value::Null;
    let (result, handle) = reconcile_with(&ctx, handle, &app, |mut h| async {
        (secret, status) = expect_secret_and_status(&mut h, &app, "shop-credentials").await;
        let events = expect_events(&mut h, &app, &["Registered"]).await;
        assert!(events[0]["note"]
            .as_str()
            .unwrap()
            .contains("shop-credentials"));
        h
    })
    .await;
    result.unwrap();
    let labels = &secret["metadata"]["labels"];
    assert_eq!(labels["backup"], "daily");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "confab-operator");
    assert_eq!(labels["confab.dev/application"], "templated");
    assert_eq!(secret["metadata"]["annotations"]["team"], "payments");
    assert_eq!(status["secretName"], "shop-credentials");

    // Retain orphans the Secret by its templated name.
    let app = deleting(with_status(app, &status));
    let (result, _) = reconcile_with(&ctx, handle, &app, |mut h| async {
        expect_call(
            &mut h,
            "PATCH",
            &format!("{SECRETS}/shop-credentials"),
            &json!({}),
        )
        .await;
        expect_events(&mut h, &app, &["Retained"]).await;
        expect_call(
            &mut h,
            "PATCH",
            &format!("{APPS}/templated"),
            &finalized(&app),
        )
        .await;
        h
    })
    .await;
    result.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_resource_is_left_alone_and_says_so_until_the_pause_ends() {
    let env = admin_env().await;
    let api = env.spawn_api().await;
    let (ctx, handle) = context(&api.base);
    let mut app = application("paused", spec(QuotaSpec::default()));
    app.metadata.annotations = Some(BTreeMap::from([(PAUSE_ANNOTATION.into(), "true".into())]));

    // No finalizer, no api call, no Secret: only the status and one event.
    let mut status = Value::Null;
    let (result, handle) = reconcile_with(&ctx, handle, &app, |mut h| async {
        let answer = serde_json::to_value(&app).unwrap();
        status =
            expect_apply(&mut h, &format!("{APPS}/paused/status"), &answer).await["status"].clone();
        expect_events(&mut h, &app, &["ReconciliationPaused"]).await;
        h
    })
    .await;
    assert_eq!(
        result.unwrap(),
        Action::await_change(),
        "nothing to do until it changes"
    );
    assert_eq!(
        condition(&status, "Synced"),
        ("False", "ReconciliationPaused")
    );
    assert_eq!(
        condition(&status, "Ready"),
        ("Unknown", "ReconciliationPaused")
    );
    let c = confab_tests::Client::new(&api.base);
    let (_, listed) = c.get("/api/v1/applications").await;
    assert_eq!(listed, json!([]), "nothing was registered");

    // Deleting a paused resource waits: the finalizer stays (no call removes it), and the
    // pause is not told twice.
    let paused = deleting(with_finalizer(with_status(app.clone(), &status)));
    let (result, handle) = reconcile_with(&ctx, handle, &paused, |mut h| async {
        let answer = serde_json::to_value(&paused).unwrap();
        expect_apply(&mut h, &format!("{APPS}/paused/status"), &answer).await;
        h
    })
    .await;
    result.unwrap();

    // The pause ends: a normal reconcile.
    let mut resumed = with_finalizer(with_status(app, &status));
    resumed.metadata.annotations = None;
    let (result, _) = reconcile_with(&ctx, handle, &resumed, |mut h| async {
        let (_, status) = expect_secret_and_status(&mut h, &resumed, "paused-confab-token").await;
        assert_eq!(condition(&status, "Synced"), ("True", "ReconcileSuccess"));
        expect_events(&mut h, &resumed, &["Registered"]).await;
        h
    })
    .await;
    result.unwrap();
    env.cleanup().await;
}

/// Kubernetes garbage-collects a Secret that still names a deleted owner, whatever the operator
/// meant: with `Retain` the owner reference must be gone before the finalizer is. If removing it
/// fails, the finalizer stays and the deletion is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_removes_the_owner_reference_before_the_finalizer() {
    let (ctx, handle) = context(&nowhere());
    let app = deleting(with_finalizer(application(
        "kept",
        spec(QuotaSpec::default()),
    )));
    let secret = format!("{SECRETS}/kept-confab-token");

    // The orphaning patch fails: the reconcile fails and makes no further call (a finalizer
    // removal would block it: the scenario does not answer one).
    let (result, handle) = reconcile_with(&ctx, handle, &app, |mut h| async {
        let (_, body) =
            next_call(&mut h, "PATCH", &secret, 500, &failure(500, "etcd timeout")).await;
        assert_eq!(body, json!({"metadata": {"ownerReferences": null}}));
        h
    })
    .await;
    assert!(
        result.is_err(),
        "the finalizer is kept when the Secret keeps its owner"
    );

    // The retry: owner reference removed, then the finalizer, in that order.
    let (result, _) = reconcile_with(&ctx, handle, &app, |mut h| async {
        let (request, _) = next_call(&mut h, "PATCH", &secret, 200, &json!({})).await;
        assert_eq!(
            request.headers[http::header::CONTENT_TYPE],
            "application/merge-patch+json"
        );
        expect_events(&mut h, &app, &["Retained"]).await;
        let patch = expect_call(&mut h, "PATCH", &format!("{APPS}/kept"), &finalized(&app)).await;
        assert!(patch.to_string().contains("remove"), "{patch}");
        h
    })
    .await;
    result.unwrap();
}

#[tokio::test]
async fn livez_fails_when_the_watch_made_no_progress_for_too_long() {
    let long_ago = Instant::now() - Duration::from_secs(3600);
    let (ctx, _handle) = context_with(&nowhere(), |ctx| {
        ctx.heartbeat = Arc::new(Heartbeat::since(long_ago));
    });
    let ctx = Arc::new(ctx);
    assert_eq!(ctx.config.stall_limit(), Duration::from_secs(900));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/livez", listener.local_addr().unwrap());
    let router = confab_operator::admin_router(Default::default(), ctx.clone());
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let livez = || async { reqwest::get(&url).await.unwrap().status().as_u16() };
    assert_eq!(livez().await, 503);
    ctx.heartbeat.beat();
    assert_eq!(livez().await, 200);
    server.abort();
}

/// The watch starts over with a LIST every period, and every list is progress: an idle but
/// healthy operator stays alive.
#[tokio::test]
async fn the_watch_relists_every_period_and_each_list_beats_the_heartbeat() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let lists = Arc::new(AtomicUsize::new(0));
    let server = tokio::spawn({
        let lists = lists.clone();
        async move {
            // Watches are held open and never answered, like a quiet cluster's.
            let mut watches = Vec::new();
            while let Some((request, respond)) = handle.next_request().await {
                assert_eq!(
                    request.uri().path(),
                    "/apis/confab.dev/v1alpha1/namespaces/team-a/applications"
                );
                if request
                    .uri()
                    .query()
                    .unwrap_or_default()
                    .contains("watch=true")
                {
                    watches.push(respond);
                    continue;
                }
                lists.fetch_add(1, Ordering::SeqCst);
                let empty = json!({
                    "apiVersion": "confab.dev/v1alpha1", "kind": "ApplicationList",
                    "metadata": {"resourceVersion": "1"}, "items": [],
                });
                respond.send_response(Response::new(Body::from(
                    serde_json::to_vec(&empty).unwrap(),
                )));
            }
        }
    });
    let api: kube::Api<Application> = kube::Api::namespaced(client, "team-a");
    let heartbeat = Heartbeat::since(Instant::now() - Duration::from_secs(3600));
    let period = Duration::from_millis(300);
    let mut stream = Box::pin(watch::relisting(api, watcher::Config::default(), period));
    let started = Instant::now();
    let mut completed_lists = 0;
    while completed_lists < 3 {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the watch starts over")
            .expect("the watch never ends")
            .expect("the lists succeed");
        heartbeat.beat();
        if matches!(event, watcher::Event::InitDone) {
            completed_lists += 1;
        }
    }
    assert!(
        started.elapsed() >= period * 2,
        "one list per period, not more"
    );
    assert!(heartbeat.alive(Duration::from_secs(1)));
    assert_eq!(lists.load(Ordering::SeqCst), 3);
    drop(stream);
    server.abort();
}
