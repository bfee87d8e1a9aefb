//! Every service: `/healthz`, `/readyz` (ready only when its dependencies answer), `/metrics`
//! with the documented series after real traffic, and graceful shutdown.

use std::time::Duration;

use confab_tests::{eventually, Client, TestEnv};

async fn text(url: String) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_serve_health_readiness_and_metrics_and_stop_gracefully() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let persister = env.spawn_persister().await;
    let c = Client::new(&api.base);
    let token = c.create_app("observed").await;
    c.create_chat(&token).await;
    c.create_message(&token, 1, "hello").await;
    c.get(&format!("/api/v1/applications/{token}/chats/404"))
        .await;
    eventually(Duration::from_secs(10), "persisted", || async {
        env.count("SELECT COUNT(*) FROM messages").await == 1
    })
    .await;

    for service in [&api, &persister] {
        assert_eq!(text(format!("{}/healthz", service.admin)).await.0, 200);
        assert_eq!(text(format!("{}/readyz", service.admin)).await.0, 200);
    }
    let (status, metrics) = text(format!("{}/metrics", api.admin)).await;
    assert_eq!(status, 200);
    for series in [
        r#"confab_http_requests_total{method="POST",route="/api/v1/applications/{token}/chats",status_class="2xx"}"#,
        r#"confab_http_requests_total{method="GET",route="/api/v1/applications/{token}/chats/{number}",status_class="4xx"}"#,
        "confab_http_request_duration_seconds_bucket",
        r#"confab_events_published_total{outcome="stored",type="message.created"}"#,
        "confab_publish_duration_seconds_bucket",
        "confab_sequence_reseeds_total",
        // At 0 from the start, so the first panic shows in `increase()`.
        "confab_http_panics_total 0",
        "process_resident_memory_bytes",
    ] {
        assert!(metrics.contains(series), "api metrics lack {series}");
    }
    let (_, metrics) = text(format!("{}/metrics", persister.admin)).await;
    for series in [
        r#"confab_events_consumed_total{service="persister",type="message.created"}"#,
        r#"confab_events_acked_total{service="persister"}"#,
        "confab_batch_size_bucket",
        "confab_batch_duration_seconds_bucket",
        r#"confab_persistence_lag_seconds_bucket{type="message.created""#,
    ] {
        assert!(metrics.contains(series), "persister metrics lack {series}");
    }
    assert!(!metrics.contains(&token), "a token reached the metrics");

    // Graceful shutdown: both stop cleanly and promptly.
    persister.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

/// Waits until `admin`'s `/readyz` answers 503 naming mysql.
async fn not_ready_naming_mysql(admin: &str) {
    let url = format!("{admin}/readyz");
    eventually(
        Duration::from_secs(20),
        "readyz answers 503 naming mysql",
        || async {
            match reqwest::get(&url).await {
                Ok(r) if r.status().as_u16() == 503 => {
                    r.text().await.is_ok_and(|body| body.contains("mysql"))
                }
                _ => false,
            }
        },
    )
    .await;
    assert_eq!(text(format!("{admin}/healthz")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_names_the_dependency_that_is_down() {
    let env = TestEnv::new().await;
    // Nothing listens on port 1: MySQL is "down" for this persister.
    let persister = env.start_persister(&[("DATABASE_URL", "mysql://root@127.0.0.1:1/confab")]);
    not_ready_naming_mysql(&persister.admin).await;
    persister.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_indexer_is_not_ready_while_mysql_is_down() {
    let env = TestEnv::new().await;
    // Every indexer batch checks MySQL for deleted applications: without it nothing is indexed.
    let indexer = env.start_indexer(&[("DATABASE_URL", "mysql://root@127.0.0.1:1/confab")]);
    not_ready_naming_mysql(&indexer.admin).await;
    indexer.stop().await.unwrap();
    env.cleanup().await;
}
