//! The mocked Kubernetes API server of the operator tests (tower-test, in the style of kube-rs's
//! controller example): each test plays the calls the controller must make, in order, checking
//! method, path and body, and answers them.

use std::sync::Arc;
use std::time::Duration;

use confab_operator::controller::{self, Context};
use confab_operator::crd::{
    Application, ApplicationSpec, ApplicationStatus, DeletionPolicy, QuotaSpec,
};
use confab_operator::OperatorConfig;
use http::{Request, Response};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::ResourceExt;
use serde_json::{json, Value};

use crate::quotas::ADMIN_TOKEN;

pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

pub const APPS: &str = "/apis/confab.dev/v1alpha1/namespaces/team-a/applications";
pub const SECRETS: &str = "/api/v1/namespaces/team-a/secrets";
pub const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/team-a/events";

/// A resource as the API server would hand it to the controller.
pub fn application(name: &str, spec: ApplicationSpec) -> Application {
    let mut app = Application::new(name, spec);
    app.metadata.namespace = Some("team-a".into());
    app.metadata.uid = Some(uuid::Uuid::new_v4().to_string());
    app.metadata.generation = Some(1);
    app.metadata.resource_version = Some("1".into());
    app
}

pub fn spec(quotas: QuotaSpec) -> ApplicationSpec {
    ApplicationSpec {
        display_name: "Shop".into(),
        quotas,
        allowed_origins: Vec::new(),
        token_rotation: None,
        deletion_policy: DeletionPolicy::Retain,
        secret_template: None,
    }
}

pub fn with_finalizer(mut app: Application) -> Application {
    app.metadata.finalizers = Some(vec![controller::FINALIZER.into()]);
    app
}

/// The status the controller applied, as the next reconcile sees it.
pub fn with_status(mut app: Application, status: &Value) -> Application {
    app.status = Some(serde_json::from_value::<ApplicationStatus>(status.clone()).unwrap());
    app
}

pub fn context(api_url: &str) -> (Arc<Context>, Handle) {
    let (ctx, handle) = context_with(api_url, |_| {});
    (Arc::new(ctx), handle)
}

/// A context whose Kubernetes client is the mock; `customize` may change it before use.
pub fn context_with(api_url: &str, customize: impl FnOnce(&mut Context)) -> (Context, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let env = confab_runtime::config::env(&[
        ("CONFAB_OPERATOR_API_URL", api_url),
        ("CONFAB_ADMIN_TOKEN", ADMIN_TOKEN),
        ("CONFAB_PUBLIC_API_URL", "https://chat.example.com"),
        ("CONFAB_OPERATOR_HTTP_TIMEOUT_MS", "2000"),
    ]);
    let config = OperatorConfig::from_env(&env).unwrap();
    let mut ctx = Context::new(client, config).unwrap();
    customize(&mut ctx);
    (ctx, handle)
}

/// Answers the next Kubernetes API call, after checking its method and path, with `answer`;
/// returns the request's JSON body.
pub async fn expect_call(handle: &mut Handle, method: &str, path: &str, answer: &Value) -> Value {
    next_call(handle, method, path, 200, answer).await.1
}

/// Like `expect_call` for a server-side apply: the patch is an apply patch, made by the
/// operator's field manager with `force` (it owns these fields and takes them back from anyone).
pub async fn expect_apply(handle: &mut Handle, path: &str, answer: &Value) -> Value {
    let (request, body) = next_call(handle, "PATCH", path, 200, answer).await;
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

/// The events the controller publishes next, in order: each a POST of an `events.k8s.io/v1`
/// Event about `app` by the operator, with the given reasons. Returns the bodies.
pub async fn expect_events(handle: &mut Handle, app: &Application, reasons: &[&str]) -> Vec<Value> {
    let mut bodies = Vec::new();
    for reason in reasons {
        let (_, body) = next_call(handle, "POST", EVENTS, 201, &Value::Null).await;
        assert_eq!(body["reason"], *reason, "{body}");
        assert_eq!(body["regarding"]["kind"], "Application", "{body}");
        assert_eq!(body["regarding"]["name"], app.name_any(), "{body}");
        assert_eq!(body["regarding"]["uid"], app.uid().unwrap(), "{body}");
        assert_eq!(
            body["reportingController"],
            controller::FIELD_MANAGER,
            "{body}"
        );
        assert!(
            body["note"].as_str().is_some_and(|n| !n.is_empty()),
            "{body}"
        );
        bodies.push(body);
    }
    bodies
}

/// Answers the next call with `status` and `answer` (an echo of the request body when `answer`
/// is null); returns the request and its JSON body.
pub async fn next_call(
    handle: &mut Handle,
    method: &str,
    path: &str,
    status: u16,
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
    let answer = if answer.is_null() { &body } else { answer };
    respond.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(answer).unwrap()))
            .unwrap(),
    );
    (parts, body)
}

/// A Kubernetes error answer (`metav1.Status`).
pub fn failure(code: u16, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code})
}

/// Runs one reconcile of `app` while `scenario` plays the API server.
pub async fn reconcile_with<F, Fut>(
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
        .expect("reconcile finishes (a call the scenario did not expect blocks it)")
        .unwrap();
    (result, handle)
}

/// The Secret apply and the status apply of a successful reconcile; returns (Secret, status).
pub async fn expect_secret_and_status(
    handle: &mut Handle,
    app: &Application,
    secret: &str,
) -> (Value, Value) {
    let secret = expect_apply(handle, &format!("{SECRETS}/{secret}"), &json!({})).await;
    assert_eq!(
        decode(&secret["data"]["apiUrl"]),
        "https://chat.example.com"
    );
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["kind"],
        "Application"
    );
    assert_eq!(secret["metadata"]["ownerReferences"][0]["controller"], true);
    let status_path = format!("{APPS}/{}/status", app.name_any());
    let answer = serde_json::to_value(app).unwrap();
    let status = expect_apply(handle, &status_path, &answer).await;
    (secret, status["status"].clone())
}

pub fn decode(value: &Value) -> String {
    let b64 = value.as_str().expect("base64 string");
    String::from_utf8(confab_tests::base64_decode(b64)).unwrap()
}

/// The condition of `type_`: (status, reason).
pub fn condition<'a>(status: &'a Value, type_: &str) -> (&'a str, &'a str) {
    let c = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"));
    (c["status"].as_str().unwrap(), c["reason"].as_str().unwrap())
}
