//! Invariants 3, 5 and 6: creation never writes MySQL; responses never carry internal ids;
//! tokens are long random secrets that never reach the logs.

use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use confab_tests::{eventually, Client, TestEnv};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Invariant 3, shown with a MySQL user that can only read: an api using it still creates chats
/// and messages and updates bodies, while the same api cannot create an application. Another
/// replica posts to those chats before any is persisted (it finds them in the stream), and not
/// to a chat nobody created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creation_path_never_writes_mysql() {
    let env = TestEnv::new().await;
    let user = format!("ro_{}", env.id);
    for sql in [
        format!("CREATE USER '{user}'@'%' IDENTIFIED BY 'readonly'"),
        format!("GRANT SELECT ON `{}`.* TO '{user}'@'%'", env.database),
    ] {
        sqlx::query(&sql).execute(&env.db).await.unwrap();
    }
    let writer = env.spawn_api().await;
    let token = Client::new(&writer.base).create_app("watched").await;

    let read_only_url = confab_tests::mysql_server_url().replacen(
        "mysql://root@",
        &format!("mysql://{user}:readonly@"),
        1,
    ) + "/"
        + &env.database;
    let reader = env
        .spawn_api_with(&[("DATABASE_URL", &read_only_url)])
        .await;
    let c = Client::new(&reader.base);
    for _ in 0..10 {
        c.create_chat(&token).await;
    }
    for i in 0..50 {
        c.create_message(&token, i % 10 + 1, &format!("body {i}"))
            .await;
    }
    let (status, _) = c
        .send(
            Method::PATCH,
            &format!("/api/v1/applications/{token}/chats/1/messages/1"),
            Some(json!({"body": "edited"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let other = Client::new(&writer.base);
    assert_eq!(env.count("SELECT COUNT(*) FROM chats").await, 0);
    for chat in 1..=10 {
        other
            .create_message(&token, chat, "through another replica")
            .await;
    }
    let (status, _) = other
        .send(
            Method::POST,
            &format!("/api/v1/applications/{token}/chats/11/messages"),
            Some(json!({"body": "nowhere"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The control: this api's database user really cannot write.
    let (status, _) = c
        .send(
            Method::POST,
            "/api/v1/applications",
            Some(json!({"name": "nope"})),
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(env.count("SELECT COUNT(*) FROM applications").await, 1);

    let persister = env.spawn_persister().await;
    eventually(Duration::from_secs(20), "all events persisted", || async {
        env.count("SELECT COUNT(*) FROM messages").await == 60
            && env.count("SELECT COUNT(*) FROM chats").await == 10
    })
    .await;

    persister.stop().await.unwrap();
    reader.stop().await.unwrap();
    writer.stop().await.unwrap();
    sqlx::query(&format!("DROP USER '{user}'@'%'"))
        .execute(&env.db)
        .await
        .unwrap();
    env.cleanup().await;
}

fn internal_id_keys(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "id" || k.ends_with("_id") {
                    found.push(k.clone());
                }
                internal_id_keys(v, found);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| internal_id_keys(v, found)),
        _ => {}
    }
}

/// Invariant 5 over every kind of response, and the token shape of invariant 6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_never_contain_internal_ids_and_tokens_are_long_and_random() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let persister = env.spawn_persister().await;
    let c = Client::new(&api.base);
    let token = c.create_app("ids").await;
    c.create_chat(&token).await;
    c.create_message(&token, 1, "hello").await;
    let app = format!("/api/v1/applications/{token}");
    eventually(Duration::from_secs(10), "message persisted", || async {
        c.get(&format!("{app}/chats/1/messages/1")).await.0 == StatusCode::OK
    })
    .await;

    let mut responses = vec![
        c.send(
            Method::POST,
            "/api/v1/applications",
            Some(json!({"name": "x"})),
        )
        .await
        .1,
        c.get("/api/v1/applications").await.1,
        c.get(&app).await.1,
        c.send(Method::PATCH, &app, Some(json!({"name": "y"})))
            .await
            .1,
        c.send(Method::POST, &format!("{app}/chats"), None).await.1,
        c.get(&format!("{app}/chats")).await.1,
        c.get(&format!("{app}/chats/1")).await.1,
        c.send(
            Method::POST,
            &format!("{app}/chats/1/messages"),
            Some(json!({"body": "b"})),
        )
        .await
        .1,
        c.get(&format!("{app}/chats/1/messages")).await.1,
        c.get(&format!("{app}/chats/1/messages/1")).await.1,
        c.send(
            Method::PATCH,
            &format!("{app}/chats/1/messages/1"),
            Some(json!({"body": "c"})),
        )
        .await
        .1,
        c.get(&format!("{app}/chats/9")).await.1,
    ];
    responses.retain(|r| !r.is_null());
    assert_eq!(responses.len(), 12);
    let mut found = Vec::new();
    for r in &responses {
        internal_id_keys(r, &mut found);
    }
    assert!(found.is_empty(), "internal ids in responses: {found:?}");

    let mut tokens = HashSet::new();
    for i in 0..200 {
        let t = c.create_app(&format!("app {i}")).await;
        assert_eq!(t.len(), 48, "192 bits as hex");
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
        tokens.insert(t);
    }
    assert_eq!(tokens.len(), 200);

    persister.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Invariant 6: with every service logging at TRACE, no token appears in any log line — not on
/// success, not on 404s, not on bad input, not on errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_appear_in_logs_at_any_level() {
    use tracing_subscriber::prelude::*;
    let captured = Captured::default();
    let writer = captured.clone();
    // Only the test process's HTTP client is excluded: it is not Confab.
    let filter = tracing_subscriber::EnvFilter::new("trace,reqwest=off,hyper_util::client=off");
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .with_writer(move || writer.clone()),
        )
        .try_init()
        .is_ok();
    // nextest runs each test in a process of its own, so the subscriber is always this test's.
    assert!(
        installed,
        "another global subscriber is installed: run this test under cargo nextest"
    );

    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let persister = env.spawn_persister().await;
    let c = Client::new(&api.base);
    let token = c.create_app("secretive").await;
    let app = format!("/api/v1/applications/{token}");
    c.create_chat(&token).await;
    c.create_message(&token, 1, "hello").await;
    c.get(&app).await;
    c.send(Method::PATCH, &app, Some(json!({"name": "renamed"})))
        .await;
    c.raw(
        Method::POST,
        &format!("{app}/chats/1/messages"),
        Some("{bad"),
    )
    .await;
    c.raw(
        Method::POST,
        &format!("{app}/chats/1/messages"),
        Some(r#"{"body":""}"#),
    )
    .await;
    c.get(&format!("{app}/chats/77")).await;
    c.get(&format!("{app}/chats/x/messages")).await;
    c.raw(Method::DELETE, &app, None).await;
    c.get(&format!("{app}/nowhere")).await;
    eventually(Duration::from_secs(10), "message persisted", || async {
        c.get(&format!("{app}/chats/1/messages/1")).await.0 == StatusCode::OK
    })
    .await;
    persister.stop().await.unwrap();
    api.stop().await.unwrap();

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("api listening"), "logs were captured");
    assert!(logs.lines().count() > 100, "trace-level logs were captured");
    assert!(!logs.contains(&token), "a token reached the logs");
    env.cleanup().await;
}
