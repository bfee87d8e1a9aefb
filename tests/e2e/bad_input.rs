//! Every kind of bad input gets its documented status and JSON error, and writes nothing: no row,
//! no event.

use std::time::Duration;

use confab_tests::{eventually, Client, TestEnv};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_documented_error_and_writes_nothing() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let persister = env.spawn_persister().await;
    let c = Client::new(&api.base);
    let token = c.create_app("target").await;
    assert_eq!(c.create_chat(&token).await, 1);
    eventually(Duration::from_secs(10), "chat persisted", || async {
        env.count("SELECT COUNT(*) FROM chats").await == 1
    })
    .await;
    let events_before = env.stream_last_sequence().await;

    let unknown = "0".repeat(48);
    let too_long_name = format!(r#"{{"name":"{}"}}"#, "a".repeat(256));
    let too_big_body = format!(r#"{{"body":"{}"}}"#, "a".repeat(64 * 1024 + 1));
    let huge_request = format!(r#"{{"body":"{}"}}"#, "a".repeat(2 * 1024 * 1024));
    let app = format!("/api/v1/applications/{token}");
    let msgs = format!("{app}/chats/1/messages");
    let cases: Vec<(Method, String, Option<&str>, u16, &str)> = vec![
        (
            Method::POST,
            "/api/v1/applications".into(),
            Some("{bad"),
            400,
            "malformed_json",
        ),
        (
            Method::POST,
            "/api/v1/applications".into(),
            Some("name=x"),
            400,
            "malformed_json",
        ),
        (
            Method::POST,
            "/api/v1/applications".into(),
            Some(""),
            422,
            "validation_failed",
        ),
        (
            Method::POST,
            "/api/v1/applications".into(),
            Some(r#"{"name":""}"#),
            422,
            "validation_failed",
        ),
        (
            Method::POST,
            "/api/v1/applications".into(),
            Some(r#"{"name":"   "}"#),
            422,
            "validation_failed",
        ),
        (
            Method::POST,
            "/api/v1/applications".into(),
            Some(r#"{"name":5}"#),
            422,
            "validation_failed",
        ),
        (
            Method::POST,
            "/api/v1/applications".into(),
            Some(&too_long_name),
            422,
            "validation_failed",
        ),
        (
            Method::POST,
            "/api/v1/applications".into(),
            Some("[1,2]"),
            422,
            "validation_failed",
        ),
        (
            Method::POST,
            "/api/v1/applications".into(),
            Some(r#"{"application":"x"}"#),
            422,
            "validation_failed",
        ),
        (
            Method::POST,
            "/applications".into(),
            Some(r#"{"application":{"name":""}}"#),
            422,
            "validation_failed",
        ),
        (
            Method::PATCH,
            app.clone(),
            Some(r#"{"name":""}"#),
            422,
            "validation_failed",
        ),
        (Method::PUT, app.clone(), Some("{"), 400, "malformed_json"),
        (
            Method::GET,
            format!("/api/v1/applications/{unknown}"),
            None,
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/api/v1/applications/short".into(),
            None,
            404,
            "not_found",
        ),
        (
            Method::PATCH,
            format!("/api/v1/applications/{unknown}"),
            Some(r#"{"name":"x"}"#),
            404,
            "not_found",
        ),
        (
            Method::POST,
            format!("/api/v1/applications/{unknown}/chats"),
            None,
            404,
            "not_found",
        ),
        (
            Method::POST,
            format!("{app}/chats"),
            Some("{bad"),
            400,
            "malformed_json",
        ),
        (
            Method::POST,
            msgs.clone(),
            Some("{}"),
            422,
            "validation_failed",
        ),
        (
            Method::POST,
            msgs.clone(),
            Some(r#"{"body":""}"#),
            422,
            "validation_failed",
        ),
        (
            Method::POST,
            msgs.clone(),
            Some(r#"{"body":" \n "}"#),
            422,
            "validation_failed",
        ),
        (
            Method::POST,
            msgs.clone(),
            Some(r#"{"body":12}"#),
            422,
            "validation_failed",
        ),
        (
            Method::POST,
            msgs.clone(),
            Some(r#"{"body":null}"#),
            422,
            "validation_failed",
        ),
        (
            Method::POST,
            msgs.clone(),
            Some(r#"{"message":{"body":["x"]}}"#),
            422,
            "validation_failed",
        ),
        (Method::POST, msgs.clone(), Some("{"), 400, "malformed_json"),
        (
            Method::POST,
            msgs.clone(),
            Some(&too_big_body),
            413,
            "payload_too_large",
        ),
        (
            Method::POST,
            msgs.clone(),
            Some(&huge_request),
            413,
            "payload_too_large",
        ),
        (
            Method::POST,
            format!("{app}/chats/2/messages"),
            Some(r#"{"body":"x"}"#),
            404,
            "not_found",
        ),
        (
            Method::POST,
            format!("{app}/chats/abc/messages"),
            Some(r#"{"body":"x"}"#),
            404,
            "not_found",
        ),
        (
            Method::POST,
            format!("{app}/chats/0/messages"),
            Some(r#"{"body":"x"}"#),
            404,
            "not_found",
        ),
        (
            Method::POST,
            format!("{app}/chats/-1/messages"),
            Some(r#"{"body":"x"}"#),
            404,
            "not_found",
        ),
        (
            Method::POST,
            format!("/api/v1/applications/{unknown}/chats/1/messages"),
            Some(r#"{"body":"x"}"#),
            404,
            "not_found",
        ),
        (
            Method::GET,
            format!("{app}/chats/abc"),
            None,
            404,
            "not_found",
        ),
        (
            Method::GET,
            format!("{app}/chats/5"),
            None,
            404,
            "not_found",
        ),
        (Method::GET, format!("{msgs}/9"), None, 404, "not_found"),
        (
            Method::GET,
            format!("{msgs}/99999999999999999999999"),
            None,
            404,
            "not_found",
        ),
        (
            Method::GET,
            format!("{app}/chats/9223372036854775808"),
            None,
            404,
            "not_found",
        ),
        (Method::GET, format!("{msgs}/0"), None, 404, "not_found"),
        (Method::GET, format!("{msgs}/1.5"), None, 404, "not_found"),
        (
            Method::PATCH,
            format!("{msgs}/9"),
            Some(r#"{"body":"x"}"#),
            404,
            "not_found",
        ),
        (
            Method::PATCH,
            format!("{msgs}/abc"),
            Some(r#"{"body":"x"}"#),
            404,
            "not_found",
        ),
        (Method::GET, "/api/v1/nope".into(), None, 404, "not_found"),
        (Method::GET, "/nope/deeper".into(), None, 404, "not_found"),
        (
            Method::DELETE,
            "/api/v1/applications".into(),
            None,
            405,
            "method_not_allowed",
        ),
        (
            Method::DELETE,
            format!("{app}/chats"),
            None,
            405,
            "method_not_allowed",
        ),
        (
            Method::POST,
            format!("{msgs}/1"),
            Some(r#"{"body":"x"}"#),
            405,
            "method_not_allowed",
        ),
        (
            Method::GET,
            "/api/v1/applications?per_page=0".into(),
            None,
            400,
            "invalid_parameter",
        ),
        (
            Method::GET,
            "/api/v1/applications?per_page=501".into(),
            None,
            400,
            "invalid_parameter",
        ),
        (
            Method::GET,
            "/api/v1/applications?page=abc".into(),
            None,
            400,
            "invalid_parameter",
        ),
        (
            Method::GET,
            format!("{msgs}?page=0"),
            None,
            400,
            "invalid_parameter",
        ),
    ];
    for (method, path, body, status, code) in &cases {
        let (got, json) = match body {
            Some(body) if body.len() > 1024 * 1024 => c.oversized(method, path, body).await,
            _ => c.raw(method.clone(), path, *body).await,
        };
        let shown = path.replace(&token, "{token}");
        assert_eq!(
            got,
            StatusCode::from_u16(*status).unwrap(),
            "{method} {shown}: {json}"
        );
        assert_eq!(json["error"]["code"], *code, "{method} {shown}: {json}");
        assert!(
            json["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{method} {shown}: {json}"
        );
    }

    // Nothing was written anywhere: no application, chat or message row, and no event. A
    // sentinel message, written after every bad request was answered, proves the pipeline moved:
    // once it is persisted, any event a bad request had published before it would be too.
    c.create_message(&token, 1, "sentinel").await;
    eventually(Duration::from_secs(10), "sentinel persisted", || async {
        env.count("SELECT COUNT(*) FROM messages").await == 1
    })
    .await;
    assert_eq!(env.count("SELECT COUNT(*) FROM applications").await, 1);
    assert_eq!(env.count("SELECT COUNT(*) FROM chats").await, 1);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM messages WHERE body = 'sentinel'")
            .await,
        1
    );
    assert_eq!(env.stream_last_sequence().await, events_before + 1);
    let (_, app_now) = c.get(&app).await;
    assert_eq!(app_now["name"], "target");

    persister.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

/// A number the sequence handed out whose event was never stored (its publish failed and the
/// client got a 503) is no message: updating it is a 404 and creates nothing. A message whose
/// creation is stored but not yet persisted can be updated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updating_a_number_that_was_taken_but_never_stored_is_not_found() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let c = Client::new(&api.base);
    let token = c.create_app("burned").await;
    let chat = c.create_chat(&token).await;
    let stored = c.create_message(&token, chat, "real").await;
    // Take the next number the way a request whose publish then failed would have.
    let redis = redis::Client::open(confab_tests::redis_url()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let key = format!("t:{}:seq:messages:{{1}}:{chat}", env.id);
    let burned: u64 = redis::cmd("INCR")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(burned, stored + 1);

    let path = |n: u64| format!("/api/v1/applications/{token}/chats/{chat}/messages/{n}");
    let (status, body) = c
        .send(Method::PATCH, &path(burned), Some(json!({"body": "ghost"})))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = c
        .send(
            Method::PATCH,
            &path(stored),
            Some(json!({"body": "edited"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let persister = env.spawn_persister().await;
    eventually(Duration::from_secs(20), "edit persisted", || async {
        env.count("SELECT COUNT(*) FROM messages WHERE body = 'edited'")
            .await
            == 1
    })
    .await;
    assert_eq!(env.count("SELECT COUNT(*) FROM messages").await, 1);
    persister.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}
