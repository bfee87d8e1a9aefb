//! The durable consumers' operational claims: several persister replicas share one consumer and
//! persist every event exactly once; a stopped one leaves nothing for the ack wait; an event that
//! keeps failing is dead-lettered as `exhausted` after `CONFAB_MAX_DELIVER` deliveries; consumer
//! settings change with a restart.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, Info};
use confab_core::event::headers;
use confab_core::{Envelope, Event};
use confab_tests::{eventually, Client, TestEnv};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::durability::stored;

/// The persister's durable consumer as the server sees it.
async fn persister_consumer(env: &TestEnv) -> Info {
    let js =
        async_nats::jetstream::new(async_nats::connect(confab_tests::nats_url()).await.unwrap());
    let stream = js.get_stream(format!("T_{}", env.id)).await.unwrap();
    let mut consumer = stream
        .get_consumer::<pull::Config>("confab-persister")
        .await
        .unwrap();
    consumer.info().await.unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_persisters_on_one_consumer_persist_every_message_exactly_once() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let c = Client::new(&api.base);
    let token = c.create_app("replicas").await;
    // Both replicas are running (ready: their consumer is set up) before the writes, with small
    // batches, so both get work.
    let small_batches = [("CONFAB_BATCH_SIZE", "10")];
    let a = env.spawn_persister_with(&small_batches).await;
    let b = env.spawn_persister_with(&small_batches).await;
    for _ in 0..4 {
        c.create_chat(&token).await;
    }
    let created: Vec<((u64, u64), String)> = futures::stream::iter(0..800u64)
        .map(|i| {
            let (c, token) = (c.clone(), token.clone());
            async move {
                let chat = i % 4 + 1;
                let body = format!("message {i}");
                ((chat, c.create_message(&token, chat, &body).await), body)
            }
        })
        .buffer_unordered(50)
        .collect()
        .await;
    let mut expected: BTreeMap<(u64, u64), String> = created.into_iter().collect();
    // Updates too, so rows converge to the latest body whichever replica applies which event.
    let updates: Vec<(u64, u64)> = expected.keys().copied().step_by(8).collect();
    let events = 4 + 800 + updates.len() as u64;
    for (chat, n) in updates {
        let body = format!("updated {chat}/{n}");
        let (status, _) = c
            .send(
                Method::PATCH,
                &format!("/api/v1/applications/{token}/chats/{chat}/messages/{n}"),
                Some(json!({ "body": body })),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        expected.insert((chat, n), body);
    }

    eventually(
        Duration::from_secs(60),
        "every message persisted with its latest body",
        || async { stored(&env).await == expected },
    )
    .await;
    eventually(Duration::from_secs(20), "consumer drained", || async {
        env.consumer_drained("confab-persister").await
    })
    .await;
    assert_eq!(env.count("SELECT COUNT(*) FROM messages").await, 800);
    assert_eq!(env.count("SELECT COUNT(*) FROM chats").await, 4);
    assert!(env.dead_letters().await.is_empty());
    // Both replicas did part of the work, and between them every event was applied and acked
    // once: none was handed to both.
    let acked = r#"confab_events_acked_total{service="persister"}"#;
    let (by_a, by_b) = (a.metric(acked).await as u64, b.metric(acked).await as u64);
    assert!(by_a > 0 && by_b > 0, "a {by_a}, b {by_b}");
    assert_eq!(by_a + by_b, events, "a {by_a}, b {by_b}");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

/// A persister stopped in the middle of a backlog (a rolling restart) leaves no event it was
/// sent unacknowledged: it pulls one batch at a time and finishes it, so the next replica gets
/// the rest at once, not after the ack wait (30 s). A prefetching subscription held up to a
/// batch of events the stopped process never processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_persister_leaves_no_event_waiting_for_the_ack_wait() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let c = Client::new(&api.base);
    let token = c.create_app("restart").await;
    let chat = c.create_chat(&token).await;
    let total = 2000u64;
    futures::stream::iter(0..total)
        .map(|i| {
            let (c, token) = (c.clone(), token.clone());
            async move { c.create_message(&token, chat, &format!("m{i}")).await }
        })
        .buffer_unordered(50)
        .collect::<Vec<_>>()
        .await;
    let small_batches = [("CONFAB_BATCH_SIZE", "20")];
    let first = env.spawn_persister_with(&small_batches).await;
    eventually(
        Duration::from_secs(30),
        "the backlog being persisted",
        || async { env.count("SELECT COUNT(*) FROM messages").await > 0 },
    )
    .await;
    first.stop().await.unwrap();
    let info = persister_consumer(&env).await;
    assert!(info.num_pending > 0, "stopped with work left: {info:?}");
    assert_eq!(
        info.num_ack_pending, 0,
        "events sent to the stopped persister wait for the ack wait"
    );

    let second = env.spawn_persister_with(&small_batches).await;
    eventually(
        Duration::from_secs(15),
        "the rest persisted well within the ack wait",
        || async { env.count("SELECT COUNT(*) FROM messages").await == total as i64 },
    )
    .await;
    second.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_keeps_failing_is_dead_lettered_as_exhausted_after_max_deliver() {
    let env = TestEnv::with(|e| {
        e.insert("CONFAB_MAX_DELIVER".into(), "3".into());
    })
    .await;
    let api = env.spawn_api().await;
    let c = Client::new(&api.base);
    let token = c.create_app("exhausting").await;
    let chat = c.create_chat(&token).await;
    // The chat lands first, so the failing batch holds the message alone.
    let persister = env.spawn_persister().await;
    eventually(Duration::from_secs(20), "chat persisted", || async {
        env.count("SELECT COUNT(*) FROM chats").await == 1
    })
    .await;
    persister.stop().await.unwrap();
    c.create_message(&token, chat, "never lands").await;

    // A failure that never clears and that no rule calls permanent: the table is gone (MySQL
    // error 1146), as good as a database that stays down.
    sqlx::query("RENAME TABLE messages TO messages_away")
        .execute(&env.db)
        .await
        .unwrap();
    let persister = env.spawn_persister().await;
    eventually(Duration::from_secs(30), "dead-lettered", || async {
        !env.dead_letters().await.is_empty()
    })
    .await;
    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    let header = |name: &str| letter.headers.get(name).unwrap().as_str().to_owned();
    assert_eq!(header(headers::DLQ_CLASS), "exhausted");
    assert_eq!(header(headers::DLQ_SERVICE), "persister");
    assert!(
        header(headers::DLQ_REASON).contains("messages"),
        "{}",
        header(headers::DLQ_REASON)
    );
    let Event::MessageCreated(message) = Envelope::decode(&letter.payload).unwrap().event else {
        panic!("the message's creation event")
    };
    assert_eq!(message.body, "never lands");
    eventually(Duration::from_secs(20), "consumer drained", || async {
        env.consumer_drained("confab-persister").await
    })
    .await;
    let metrics = reqwest::get(format!("{}/metrics", persister.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"confab_events_dead_lettered_total{reason="exhausted",service="persister"} 1"#
        ),
        "counted as exhausted"
    );
    // Three deliveries: the first and two redeliveries.
    assert!(
        metrics.contains(r#"confab_events_redelivered_total{service="persister"} 2"#),
        "redelivered twice"
    );
    persister.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_settings_change_with_a_restart() {
    let env = TestEnv::new().await;
    let settings = |pending: &'static str, deliver: &'static str, wait: &'static str| {
        [
            ("CONFAB_MAX_ACK_PENDING", pending),
            ("CONFAB_MAX_DELIVER", deliver),
            ("CONFAB_ACK_WAIT_SECS", wait),
        ]
    };
    let persister = env.spawn_persister_with(&settings("100", "5", "7")).await;
    let info = persister_consumer(&env).await;
    assert_eq!(
        (info.config.max_ack_pending, info.config.max_deliver),
        (100, 5)
    );
    assert_eq!(info.config.ack_wait, Duration::from_secs(7));
    persister.stop().await.unwrap();

    let persister = env.spawn_persister_with(&settings("200", "9", "11")).await;
    let info = persister_consumer(&env).await;
    assert_eq!(
        (info.config.max_ack_pending, info.config.max_deliver),
        (200, 9)
    );
    assert_eq!(info.config.ack_wait, Duration::from_secs(11));
    persister.stop().await.unwrap();
    env.cleanup().await;
}
