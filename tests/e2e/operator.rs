//! The operator's reconcile against a mocked Kubernetes API server (tower-test, in the style of
//! kube-rs's controller example) and the real api's admin API: a new resource gets its
//! application, Secret and Ready status; quota updates reach the api; rotation; deletion with
//! each policy; an api outage is a not-Ready condition and a retry, not a crash.
//!
//! The real-cluster test at the bottom runs only with `CONFAB_TEST_KUBECONFIG`.

use std::sync::Arc;
use std::time::Duration;

use confab_operator::controller::{self, Context};
use confab_operator::crd::{
    Application, ApplicationSpec, DeletionPolicy, QuotaSpec, TokenRotation,
};
use confab_operator::OperatorConfig;
use confab_tests::{eventually, Client};
use http::{Request, Response};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::ResourceExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::quotas::{admin_env, ADMIN_TOKEN};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A resource as the API server would hand it to the controller.
fn application(name: &str, spec: ApplicationSpec) -> Application {
    let mut app = Application::new(name, spec);
    app.metadata.namespace = Some("team-a".into());
    app.metadata.uid = Some(uuid::Uuid::new_v4().to_string());
    app.metadata.generation = Some(1);
    app.metadata.resource_version = Some("1".into());
    app
}

fn spec(quotas: QuotaSpec) -> ApplicationSpec {
    ApplicationSpec {
        display_name: "Shop".into(),
        quotas,
        token_rotation: None,
        deletion_policy: DeletionPolicy::Retain,
    }
}

fn with_finalizer(mut app: Application) -> Application {
    app.metadata.finalizers = Some(vec![controller::FINALIZER.into()]);
    app
}

fn context(api_url: &str) -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let env = [
        ("CONFAB_OPERATOR_API_URL", api_url),
        ("CONFAB_ADMIN_TOKEN", ADMIN_TOKEN),
        ("CONFAB_PUBLIC_API_URL", "https://chat.example.com"),
        ("CONFAB_OPERATOR_HTTP_TIMEOUT_MS", "2000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let config = OperatorConfig::from_env(&env).unwrap();
    (Arc::new(Context::new(client, config).unwrap()), handle)
}

/// Answers the next Kubernetes API call, after checking its method and path, with `answer`;
/// returns the request's JSON body.
async fn expect_call(handle: &mut Handle, method: &str, path: &str, answer: &Value) -> Value {
    next_call(handle, method, path, answer).await.1
}

/// Like `expect_call` for a server-side apply: the patch is an apply patch, made by the
/// operator's field manager with `force` (it owns these fields and takes them back from anyone).
async fn expect_apply(handle: &mut Handle, path: &str, answer: &Value) -> Value {
    let (request, body) = next_call(handle, "PATCH", path, answer).await;
    assert_eq!(
        request.headers[http::header::CONTENT_TYPE],
        "application/apply-patch+yaml",
        "{path}"
    );
    let query = request.uri.query().unwrap_or_default();
    let fields: Vec<&str> = query.split('&').collect();
    for expected in [
        format!("fieldManager={}", controller::FIELD_MANAGER),
        "force=true".to_owned(),
    ] {
        assert!(
            fields.contains(&expected.as_str()),
            "{path}: {expected} not in {query}"
        );
    }
    body
}

async fn next_call(
    handle: &mut Handle,
    method: &str,
    path: &str,
    answer: &Value,
) -> (http::request::Parts, Value) {
    let (request, respond) = tokio::time::timeout(Duration::from_secs(10), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("expected {method} {path}, no call came"))
        .expect("the client is alive");
    assert_eq!(request.method().as_str(), method, "{}", request.uri());
    assert_eq!(request.uri().path(), path);
    let (parts, body) = request.into_parts();
    let bytes = body.collect_bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    respond.send_response(
        Response::builder()
            .body(Body::from(serde_json::to_vec(answer).unwrap()))
            .unwrap(),
    );
    (parts, body)
}

const APPS: &str = "/apis/confab.dev/v1alpha1/namespaces/team-a/applications";
const SECRETS: &str = "/api/v1/namespaces/team-a/secrets";

/// Runs one reconcile of `app` while `scenario` plays the API server.
async fn reconcile_with<F, Fut>(
    ctx: &Arc<Context>,
    handle: Handle,
    app: &Application,
    scenario: F,
) -> (Result<Action, controller::Error>, Handle)
where
    F: FnOnce(Handle) -> Fut,
    Fut: std::future::Future<Output = Handle>,
{
    let task = tokio::spawn(controller::reconcile(Arc::new(app.clone()), ctx.clone()));
    let handle = scenario(handle).await;
    let result = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("reconcile finishes")
        .unwrap();
    (result, handle)
}

/// The Secret apply and the status apply of a successful reconcile; returns (token, status).
async fn expect_secret_and_status(handle: &mut Handle, app: &Application) -> (String, Value) {
    let name = app.name_any();
    let secret_path = format!("{SECRETS}/{name}-confab-token");
    let secret = expect_apply(handle, &secret_path, &json!({})).await;
    let token = decode(&secret["data"]["token"]);
    assert_eq!(
        decode(&secret["data"]["apiUrl"]),
        "https://chat.example.com"
    );
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["kind"],
        "Application"
    );
    assert_eq!(secret["metadata"]["ownerReferences"][0]["controller"], true);
    let status_path = format!("{APPS}/{name}/status");
    let answer = serde_json::to_value(app).unwrap();
    let status = expect_apply(handle, &status_path, &answer).await;
    (token, status["status"].clone())
}

fn decode(value: &Value) -> String {
    let b64 = value.as_str().expect("base64 string");
    String::from_utf8(base64_decode(b64)).unwrap()
}

/// Standard base64 (what `ByteString` serializes to), decoded without another dependency.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let mut out = Vec::new();
    for chunk in text.trim_end_matches('=').as_bytes().chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= value(*c) << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

fn ready(status: &Value) -> (&str, &str) {
    let c = &status["conditions"][0];
    assert_eq!(c["type"], "Ready");
    (c["status"].as_str().unwrap(), c["reason"].as_str().unwrap())
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

    // Second pass: registered, Secret applied, Ready.
    let app = with_finalizer(app);
    let mut token = String::new();
    let mut status = Value::Null;
    let (result, _handle) = reconcile_with(&ctx, handle, &app, |mut h| async {
        (token, status) = expect_secret_and_status(&mut h, &app).await;
        h
    })
    .await;
    assert!(result.is_ok());
    assert_eq!(ready(&status), ("True", "Registered"));
    assert_eq!(status["secretName"], "shop-confab-token");
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(
        status["quotas"]["maxChats"], 100_000,
        "defaults are reported"
    );

    // The token in the Secret is a working tenant token.
    let c = Client::new(&api.base);
    let (code, body) = c.get(&format!("/api/v1/applications/{token}")).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["name"], "Shop");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_updates_and_token_rotation_reach_the_api() {
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
    (_, handle) = reconcile_with(&ctx, handle, &app, |mut h| async {
        (token, _) = expect_secret_and_status(&mut h, &app).await;
        h
    })
    .await;
    assert_eq!(c.create_chat_status(&token).await, StatusCode::CREATED);
    assert_eq!(c.create_chat_status(&token).await, StatusCode::CONFLICT);

    // The platform team raises the quota.
    app.spec.quotas.max_chats = Some(2);
    app.metadata.generation = Some(2);
    let mut status = Value::Null;
    (_, handle) = reconcile_with(&ctx, handle, &app, |mut h| async {
        (_, status) = expect_secret_and_status(&mut h, &app).await;
        h
    })
    .await;
    assert_eq!(status["quotas"]["maxChats"], 2);
    assert_eq!(status["observedGeneration"], 2);
    eventually(Duration::from_secs(5), "new quota applies", || async {
        c.create_chat_status(&token).await == StatusCode::CREATED
    })
    .await;

    // A rotation request: a new token in the Secret, the old one still valid for its grace.
    app.spec.token_rotation = Some(TokenRotation {
        request_id: "2026-11-26".into(),
        grace_seconds: Some(600),
    });
    let mut rotated = String::new();
    (_, handle) = reconcile_with(&ctx, handle, &app, |mut h| async {
        (rotated, status) = expect_secret_and_status(&mut h, &app).await;
        h
    })
    .await;
    assert_ne!(rotated, token);
    assert_eq!(status["lastRotation"], "2026-11-26");
    for t in [&token, &rotated] {
        let (code, _) = c.get(&format!("/api/v1/applications/{t}")).await;
        assert_eq!(code, StatusCode::OK);
    }
    // Reconciling again does not rotate again.
    let mut again = String::new();
    let (result, _) = reconcile_with(&ctx, handle, &app, |mut h| async {
        (again, _) = expect_secret_and_status(&mut h, &app).await;
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
            (token, _) = expect_secret_and_status(&mut h, &app).await;
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
async fn an_api_outage_is_a_not_ready_condition_and_a_retry_with_backoff() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (ctx, handle) = context(&url);
    let app = with_finalizer(application("down", spec(QuotaSpec::default())));
    let (result, _) = reconcile_with(&ctx, handle, &app, |mut h| async {
        let answer = serde_json::to_value(&app).unwrap();
        let status = expect_apply(&mut h, &format!("{APPS}/down/status"), &answer).await;
        assert_eq!(ready(&status["status"]), ("False", "ApiUnavailable"));
        h
    })
    .await;
    let error = result.expect_err("the reconcile fails");
    let app = Arc::new(app);
    let first = controller::error_policy(app.clone(), &error, ctx.clone());
    let second = controller::error_policy(app, &error, ctx);
    assert_eq!(first, Action::requeue(Duration::from_secs(1)));
    assert_eq!(second, Action::requeue(Duration::from_secs(2)));
}

/// Needs a cluster with the CRD installed (`kubectl apply -f crds/`), the api reachable from this
/// machine at `CONFAB_TEST_API_URL` with `CONFAB_ADMIN_TOKEN` as its admin credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_cluster_application_gets_a_usable_token() {
    let Ok(kubeconfig) = std::env::var("CONFAB_TEST_KUBECONFIG") else {
        eprintln!("skipped: set CONFAB_TEST_KUBECONFIG (and CONFAB_TEST_API_URL, CONFAB_ADMIN_TOKEN) to run against a real cluster");
        return;
    };
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
