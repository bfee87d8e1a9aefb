//! The operator's reconcile against a mocked Kubernetes API server (tower-test, in the style of
//! kube-rs's controller example; see `operator/mock.rs`) and the real api's admin API: a new
//! resource gets its application, Secret, Ready and Synced conditions and a `Registered` event;
//! quota and allowed-origin updates and rotations reach the api and are told as events (the
//! allowed origin lets a page in, another is refused); deletion with each policy;
//! an api outage is a `Synced=False` condition, a warning event and a retry, not a crash.
//! `operator/lifecycle.rs` has the Secret template, the pause annotation, the Retain pitfall and
//! the liveness of the watch.
//!
//! The real-cluster test at the bottom runs only with `CONFAB_TEST_KUBECONFIG`.

mod lifecycle;
pub(crate) mod mock;

use std::sync::Arc;
use std::time::Duration;

use confab_operator::controller;
use confab_operator::crd::{Application, DeletionPolicy, QuotaSpec, TokenRotation};
use confab_operator::OperatorConfig;
use confab_tests::{eventually, Client};
use kube::runtime::controller::Action;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::quotas::{admin_env, ADMIN_TOKEN};
use mock::*;

/// The token the Secret of a successful reconcile holds, and the status applied.
async fn reconciled(h: &mut Handle, app: &Application) -> (String, Value) {
    let secret = format!("{}-confab-token", app.metadata.name.as_deref().unwrap());
    let (secret, status) = expect_secret_and_status(h, app, &secret).await;
    (decode(&secret["data"]["token"]), status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_resource_gets_an_application_a_secret_and_a_ready_status() {
    let env = admin_env().await;
    let api = env.spawn_api().await;
    let (ctx, handle) = context(&api.base);
    let app = application("shop", spec(QuotaSpec::default()));

    // First pass: only the finalizer is added.
    let (result, handle) = reconcile_with(&ctx, handle, &app, |mut h| async {
        let answer = serde_json::to_value(with_finalizer(app.clone())).unwrap();
        let patch = expect_call(&mut h, "PATCH", &format!("{APPS}/shop"), &answer).await;
        assert!(patch.to_string().contains(controller::FINALIZER), "{patch}");
        h
    })
    .await;
    result.unwrap();

    // Second pass: registered, Secret applied, Ready and Synced, and told as an event.
    let app = with_finalizer(app);
    let mut token = String::new();
    let mut status = Value::Null;
    let mut events = Vec::new();
    let (result, handle) = reconcile_with(&ctx, handle, &app, |mut h| async {
        (token, status) = reconciled(&mut h, &app).await;
        events = expect_events(&mut h, &app, &["Registered"]).await;
        h
    })
    .await;
    assert!(result.is_ok());
    assert_eq!(condition(&status, "Ready"), ("True", "Registered"));
    assert_eq!(condition(&status, "Synced"), ("True", "ReconcileSuccess"));
    for c in status["conditions"].as_array().unwrap() {
        assert_eq!(c["observedGeneration"], 1, "{c}");
    }
    assert_eq!(events[0]["type"], "Normal");
    assert!(events[0]["note"]
        .as_str()
        .unwrap()
        .contains("shop-confab-token"));
    assert_eq!(status["secretName"], "shop-confab-token");
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(
        status["quotas"]["maxChats"], 100_000,
        "defaults are reported"
    );
    assert_eq!(status["quotas"]["maxSubscriptions"], 1_000);

    // A resync with nothing new writes the same conditions (same transition times) and tells
    // nothing: no event call comes, or the reconcile would block on it.
    let app = with_status(app, &status);
    let (result, _) = reconcile_with(&ctx, handle, &app, |mut h| async {
        let (_, again) = reconciled(&mut h, &app).await;
        assert_eq!(again["conditions"], status["conditions"]);
        h
    })
    .await;
    result.unwrap();

    // The token in the Secret is a working tenant token.
    let c = Client::new(&api.base);
    let (code, body) = c.get(&format!("/api/v1/applications/{token}")).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["name"], "Shop");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_updates_and_token_rotation_reach_the_api_and_are_told_as_events() {
    let env = admin_env().await;
    let api = env.spawn_api().await;
    let (ctx, mut handle) = context(&api.base);
    let c = Client::new(&api.base);
    let mut app = with_finalizer(application(
        "limited",
        spec(QuotaSpec {
            max_chats: Some(1),
            ..QuotaSpec::default()
        }),
    ));
    let mut token = String::new();
    let mut status = Value::Null;
    (_, handle) = reconcile_with(&ctx, handle, &app, |mut h| async {
        (token, status) = reconciled(&mut h, &app).await;
        expect_events(&mut h, &app, &["Registered"]).await;
        h
    })
    .await;
    app = with_status(app, &status);
    assert_eq!(c.create_chat_status(&token).await, StatusCode::CREATED);
    assert_eq!(c.create_chat_status(&token).await, StatusCode::CONFLICT);

    // The platform team raises the quota.
    app.spec.quotas.max_chats = Some(2);
    app.metadata.generation = Some(2);
    let mut events = Vec::new();
    (_, handle) = reconcile_with(&ctx, handle, &app, |mut h| async {
        (_, status) = reconciled(&mut h, &app).await;
        events = expect_events(&mut h, &app, &["QuotasChanged"]).await;
        h
    })
    .await;
    app = with_status(app, &status);
    assert_eq!(events[0]["note"], "maxChats 1 -> 2");
    assert_eq!(status["quotas"]["maxChats"], 2);
    assert_eq!(status["observedGeneration"], 2);
    eventually(Duration::from_secs(5), "new quota applies", || async {
        c.create_chat_status(&token).await == StatusCode::CREATED
    })
    .await;

    // The tenant's web app goes live: its origin reaches the api, which lets its pages in.
    let page = "https://chat.example.com";
    app.spec.allowed_origins = vec![page.into()];
    app.metadata.generation = Some(3);
    (_, handle) = reconcile_with(&ctx, handle, &app, |mut h| async {
        (_, status) = reconciled(&mut h, &app).await;
        events = expect_events(&mut h, &app, &["AllowedOriginsChanged"]).await;
        h
    })
    .await;
    app = with_status(app, &status);
    assert_eq!(events[0]["note"], format!("allowed {page}"));
    assert_eq!(status["allowedOrigins"], json!([page]));
    let admin = Client::with_bearer(&api.base, ADMIN_TOKEN);
    let key = app.metadata.uid.clone().unwrap();
    let (_, shown) = admin.get(&format!("/admin/v1/applications/{key}")).await;
    assert_eq!(shown["allowed_origins"], json!([page]), "{shown}");
    eventually(Duration::from_secs(5), "the page is let in", || async {
        from_page(&api.base, &token, page).await == (StatusCode::OK, Some(page.to_owned()))
    })
    .await;
    assert_eq!(
        from_page(&api.base, &token, "https://elsewhere.example").await,
        (StatusCode::FORBIDDEN, None)
    );

    // A rotation request: a new token in the Secret, the old one still valid for its grace.
    app.spec.token_rotation = Some(TokenRotation {
        request_id: "2026-11-26".into(),
        grace_seconds: Some(600),
    });
    let mut rotated = String::new();
    (_, handle) = reconcile_with(&ctx, handle, &app, |mut h| async {
        (rotated, status) = reconciled(&mut h, &app).await;
        events = expect_events(&mut h, &app, &["TokenRotated"]).await;
        h
    })
    .await;
    app = with_status(app, &status);
    assert!(events[0]["note"].as_str().unwrap().contains("2026-11-26"));
    assert_ne!(rotated, token);
    assert_eq!(status["lastRotation"], "2026-11-26");
    for t in [&token, &rotated] {
        let (code, _) = c.get(&format!("/api/v1/applications/{t}")).await;
        assert_eq!(code, StatusCode::OK);
    }
    // Reconciling again does not rotate again (and tells nothing).
    let mut again = String::new();
    let (result, _) = reconcile_with(&ctx, handle, &app, |mut h| async {
        (again, _) = reconciled(&mut h, &app).await;
        h
    })
    .await;
    result.unwrap();
    assert_eq!(again, rotated);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_applies_the_policy() {
    let env = admin_env().await;
    let api = env.spawn_api().await;
    let c = Client::new(&api.base);
    for policy in [DeletionPolicy::Delete, DeletionPolicy::Retain] {
        let (ctx, handle) = context(&api.base);
        let mut app = with_finalizer(application("gone", spec(QuotaSpec::default())));
        app.spec.deletion_policy = policy;
        let mut token = String::new();
        let (_, handle) = reconcile_with(&ctx, handle, &app, |mut h| async {
            (token, _) = reconciled(&mut h, &app).await;
            expect_events(&mut h, &app, &["Registered"]).await;
            h
        })
        .await;
        assert_eq!(c.create_chat_status(&token).await, StatusCode::CREATED);

        app.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        let (result, _) = reconcile_with(&ctx, handle, &app, |mut h| async {
            if policy == DeletionPolicy::Retain {
                let orphan = expect_call(
                    &mut h,
                    "PATCH",
                    &format!("{SECRETS}/gone-confab-token"),
                    &json!({}),
                )
                .await;
                assert_eq!(orphan["metadata"]["ownerReferences"], Value::Null);
                assert!(
                    orphan["metadata"].get("ownerReferences").is_some(),
                    "{orphan}"
                );
            }
            let told = match policy {
                DeletionPolicy::Delete => "Deleted",
                DeletionPolicy::Retain => "Retained",
            };
            expect_events(&mut h, &app, &[told]).await;
            let mut done = app.clone();
            done.metadata.finalizers = None;
            let answer = serde_json::to_value(done).unwrap();
            let patch = expect_call(&mut h, "PATCH", &format!("{APPS}/gone"), &answer).await;
            assert!(patch.to_string().contains("remove"), "{patch}");
            h
        })
        .await;
        result.unwrap();
        let expected = match policy {
            DeletionPolicy::Delete => StatusCode::NOT_FOUND,
            DeletionPolicy::Retain => StatusCode::CREATED,
        };
        eventually(Duration::from_secs(5), "policy applied", || async {
            c.create_chat_status(&token).await == expected
        })
        .await;
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_outage_is_a_not_synced_condition_a_warning_and_a_retry_with_backoff() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (ctx, handle) = context(&url);
    let app = with_finalizer(application("down", spec(QuotaSpec::default())));
    let (result, _) = reconcile_with(&ctx, handle, &app, |mut h| async {
        let answer = serde_json::to_value(&app).unwrap();
        let status = expect_apply(&mut h, &format!("{APPS}/down/status"), &answer).await;
        assert_eq!(
            condition(&status["status"], "Ready"),
            ("False", "ApiUnavailable")
        );
        assert_eq!(
            condition(&status["status"], "Synced"),
            ("False", "ApiUnavailable")
        );
        let events = expect_events(&mut h, &app, &["ApiUnavailable"]).await;
        assert_eq!(events[0]["type"], "Warning");
        assert!(
            events[0]["note"].as_str().unwrap().contains("unavailable"),
            "{}",
            events[0]
        );
        h
    })
    .await;
    let error = result.expect_err("the reconcile fails");
    let app = Arc::new(app);
    let first = controller::error_policy(app.clone(), &error, ctx.clone());
    let second = controller::error_policy(app, &error, ctx);
    // Jittered: between half and all of 1 s, then of 2 s.
    let within = |action: &Action, ceiling: Duration| {
        (ceiling / 2..=ceiling).contains(&requeue_after(action))
    };
    assert!(within(&first, Duration::from_secs(1)), "{first:?}");
    assert!(within(&second, Duration::from_secs(2)), "{second:?}");
}

/// What a page at `origin` gets when it reads the application: the status, and the
/// `Access-Control-Allow-Origin` that lets the browser show it the answer.
async fn from_page(base: &str, token: &str, origin: &str) -> (StatusCode, Option<String>) {
    let response = reqwest::Client::new()
        .get(format!("{base}/api/v1/applications/{token}"))
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    let allowed = response
        .headers()
        .get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (response.status(), allowed)
}

/// The delay of a requeue `Action` (kube keeps the field private; its `Debug` shows it as
/// `Action { requeue_after: Some(1.5s) }`).
fn requeue_after(action: &Action) -> Duration {
    let text = format!("{action:?}");
    let value = text
        .split_once("Some(")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(value, _)| value)
        .unwrap_or_else(|| panic!("not a requeue: {text}"));
    let (number, unit) =
        value.split_at(value.find(|c: char| c.is_alphabetic() || c == 'µ').unwrap());
    let number: f64 = number.parse().unwrap();
    let seconds = match unit {
        "s" => number,
        "ms" => number / 1e3,
        "µs" => number / 1e6,
        "ns" => number / 1e9,
        other => panic!("unit {other} in {text}"),
    };
    Duration::from_secs_f64(seconds)
}

/// Needs a cluster with the CRD installed (`kubectl apply -f crds/`), the api reachable from this
/// machine at `CONFAB_TEST_API_URL` with `CONFAB_ADMIN_TOKEN` as its admin credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: CONFAB_TEST_KUBECONFIG=… CONFAB_TEST_API_URL=… CONFAB_ADMIN_TOKEN=… cargo nextest run -p confab-tests --run-ignored only -E 'test(real_cluster)'"]
async fn real_cluster_application_gets_a_usable_token() {
    let kubeconfig = std::env::var("CONFAB_TEST_KUBECONFIG")
        .expect("CONFAB_TEST_KUBECONFIG names the cluster to test against");
    let api_url = std::env::var("CONFAB_TEST_API_URL").expect("CONFAB_TEST_API_URL");
    let admin_token = std::env::var("CONFAB_ADMIN_TOKEN").expect("CONFAB_ADMIN_TOKEN");
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let options = kube::config::KubeConfigOptions::default();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let env = [
        ("CONFAB_OPERATOR_API_URL", api_url.as_str()),
        ("CONFAB_ADMIN_TOKEN", admin_token.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let operator_config = OperatorConfig::from_env(&env).unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let operator = tokio::spawn(confab_operator::run_with_client(
        client.clone(),
        operator_config,
        admin,
        async move {
            let _ = stopped.await;
        },
    ));
    let ns = client.default_namespace().to_owned();
    let apps: kube::Api<Application> = kube::Api::namespaced(client.clone(), &ns);
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client.clone(), &ns);
    let name = format!("e2e-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut resource = Application::new(&name, spec(QuotaSpec::default()));
    resource.spec.deletion_policy = DeletionPolicy::Delete;
    apps.create(&Default::default(), &resource).await.unwrap();
    let secret_name = format!("{name}-confab-token");
    let mut token = String::new();
    for _ in 0..120 {
        if let Ok(secret) = secrets.get(&secret_name).await {
            let data = secret.data.unwrap_or_default();
            token = String::from_utf8(data["token"].0.clone()).unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(!token.is_empty(), "the Secret appeared");
    let (code, _) = Client::new(&api_url)
        .get(&format!("/api/v1/applications/{token}"))
        .await;
    assert_eq!(code, StatusCode::OK);
    apps.delete(&name, &Default::default()).await.unwrap();
    let _ = stop.send(());
    operator.await.unwrap().unwrap();
}
