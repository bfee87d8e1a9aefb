//! Invariant 7: a POST retried with the same `Idempotency-Key` and body answers what the first
//! answered, from any replica, and writes once.

use std::time::Duration;

use confab_tests::{eventually, Client, TestEnv};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_post_with_the_same_key_writes_once_from_any_replica() {
    let env = TestEnv::new().await;
    let (a, b) = (env.spawn_api().await, env.spawn_api().await);
    let persister = env.spawn_persister().await;
    let (ca, cb) = (Client::new(&a.base), Client::new(&b.base));

    // Applications.
    let body = json!({"name": "retried"});
    let (s1, first) = ca
        .post_idempotent("/api/v1/applications", &body, "app-1")
        .await;
    let (s2, again) = cb
        .post_idempotent("/api/v1/applications", &body, "app-1")
        .await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED));
    assert_eq!(first["token"], again["token"], "the same application");
    assert_eq!(env.count("SELECT COUNT(*) FROM applications").await, 1);
    let token = first["token"].as_str().unwrap().to_owned();

    // Chats.
    let chats = format!("/api/v1/applications/{token}/chats");
    let (_, chat) = ca.post_idempotent(&chats, &json!({}), "chat-1").await;
    let (s, chat_again) = cb.post_idempotent(&chats, &json!({}), "chat-1").await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(chat["number"], chat_again["number"]);
    assert_eq!(chat["number"], 1);

    // Messages: 20 concurrent sends of one key over both replicas, plus other keys.
    let messages = format!("/api/v1/applications/{token}/chats/1/messages");
    let body = json!({"body": "only once"});
    let answers: Vec<(StatusCode, serde_json::Value)> = futures::stream::iter(0..20)
        .map(|i| {
            let c = if i % 2 == 0 { ca.clone() } else { cb.clone() };
            let (messages, body) = (messages.clone(), body.clone());
            async move { c.post_idempotent(&messages, &body, "msg-1").await }
        })
        .buffer_unordered(20)
        .collect()
        .await;
    for (status, answer) in &answers {
        assert_eq!(*status, StatusCode::CREATED, "{answer}");
        assert_eq!(answer["number"], answers[0].1["number"]);
        assert_eq!(answer["body"], "only once");
    }
    let (_, other) = ca
        .post_idempotent(&messages, &json!({"body": "two"}), "msg-2")
        .await;
    assert_ne!(other["number"], answers[0].1["number"]);

    // The same key with another body is refused, and writes nothing.
    let (status, error) = cb
        .post_idempotent(&messages, &json!({"body": "changed"}), "msg-1")
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    assert_eq!(error["error"]["code"], "idempotency_key_reused");
    // The same key on another chat is another request.
    ca.create_chat(&token).await;
    let (status, _) = ca
        .post_idempotent(
            &format!("/api/v1/applications/{token}/chats/2/messages"),
            &body,
            "msg-1",
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    eventually(Duration::from_secs(20), "messages persisted", || async {
        env.count("SELECT COUNT(*) FROM messages").await == 3
    })
    .await;
    assert_eq!(env.count("SELECT COUNT(*) FROM chats").await, 2);
    // Header hygiene: an unusable key is a 400, not a silent non-idempotent write.
    let (status, _) = ca.post_idempotent(&messages, &body, &"k".repeat(300)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    persister.stop().await.unwrap();
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    env.cleanup().await;
}

/// A request whose event was stored but whose answer never reached the client (here: the record
/// and the event exist, as after a 503 `timeout`) is answered on retry with the stored number,
/// even after Redis lost its data and handed that number to nobody else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_redis_lost_its_data_answers_the_original_number() {
    let redis_url = format!("{}/13", confab_tests::redis_url());
    let env = TestEnv::with(|e| {
        e.insert("REDIS_URL".into(), redis_url.clone());
    })
    .await;
    let api = env.spawn_api().await;
    let c = Client::new(&api.base);
    let token = c.create_app("forgetful").await;
    let chat = c.create_chat(&token).await;
    let path = format!("/api/v1/applications/{token}/chats/{chat}/messages");
    let (_, first) = c.post_idempotent(&path, &json!({"body": "a"}), "k-a").await;
    c.create_message(&token, chat, "b").await;

    let client = redis::Client::open(redis_url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("FLUSHDB").query_async(&mut conn).await.unwrap();

    let (status, again) = c.post_idempotent(&path, &json!({"body": "a"}), "k-a").await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(again["number"], first["number"]);
    assert_eq!(c.create_message(&token, chat, "c").await, 3);

    api.stop().await.unwrap();
    env.cleanup().await;
}
