//! The operator's part of the dashboards test: there is no cluster here, so the operator host
//! serves the operator's admin routes and, on `go`, plays reconciles against the mocked
//! Kubernetes API of the operator tests and the api host's admin API — a registration, a
//! rotation and an api outage — so the operator dashboard's panels have real series to show.

use std::sync::Arc;
use std::time::Duration;

use confab_operator::crd::{QuotaSpec, TokenRotation};
use confab_runtime::admin::Readiness;
use confab_runtime::Env;
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::operator::mock::*;

pub async fn run(
    env: &Env,
    admin: TcpListener,
    mut go: UnboundedReceiver<()>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (ctx, mut handle) = context(&env["CONFAB_OPERATOR_API_URL"]);
    let router = confab_operator::admin_router(Readiness::default(), ctx.clone());
    let server = tokio::spawn(async move {
        axum::serve(admin, router)
            .with_graceful_shutdown(stop)
            .await
    });
    while go.recv().await.is_some() {
        handle = scenario(&ctx, handle).await;
    }
    // stdin closed: the server is shutting down too.
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
}

async fn scenario(ctx: &Arc<confab_operator::controller::Context>, handle: Handle) -> Handle {
    let app = with_finalizer(application("dash", spec(QuotaSpec::default())));
    let mut status = serde_json::Value::Null;
    let (result, handle) = reconcile_with(ctx, handle, &app, |mut h| async {
        (_, status) = expect_secret_and_status(&mut h, &app, "dash-confab-token").await;
        expect_events(&mut h, &app, &["Registered"]).await;
        h
    })
    .await;
    result.unwrap();
    let mut app = with_status(app, &status);
    app.spec.token_rotation = Some(TokenRotation {
        request_id: "dashboards".into(),
        grace_seconds: Some(0),
    });
    let (result, handle) = reconcile_with(ctx, handle, &app, |mut h| async {
        expect_secret_and_status(&mut h, &app, "dash-confab-token").await;
        expect_events(&mut h, &app, &["TokenRotated"]).await;
        h
    })
    .await;
    result.unwrap();

    // An api outage: a failed reconcile and a resource that is not ready.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (down_ctx, down_handle) = context(&nowhere);
    let down = with_finalizer(application("down", spec(QuotaSpec::default())));
    let (result, _) = reconcile_with(&down_ctx, down_handle, &down, |mut h| async {
        let answer = serde_json::to_value(&down).unwrap();
        expect_apply(&mut h, &format!("{APPS}/down/status"), &answer).await;
        expect_events(&mut h, &down, &["ApiUnavailable"]).await;
        h
    })
    .await;
    assert!(result.is_err());
    handle
}
