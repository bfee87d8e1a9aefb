//! Invariant 2: an acknowledged event is never lost, and crashes, redelivery and replays produce
//! exactly one row per message with its latest body. Events that can never be applied are
//! dead-lettered with their reason while the rest land.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::HeaderMap;
use confab_core::event::{headers, MessageWritten};
use confab_core::{Envelope, Event};
use confab_tests::{eventually, Client, TestEnv};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_persister_mid_batch_loses_and_duplicates_nothing() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let c = Client::new(&api.base);
    let token = c.create_app("crashy").await;
    for _ in 0..5 {
        c.create_chat(&token).await;
    }

    // A backlog of 3,000 messages over 5 chats, 300 of them updated afterwards.
    let created: Vec<((u64, u64), String)> = futures::stream::iter(0..3000u64)
        .map(|i| {
            let (c, token) = (c.clone(), token.clone());
            async move {
                let chat = i % 5 + 1;
                let body = format!("original {i}");
                let n = c.create_message(&token, chat, &body).await;
                ((chat, n), body)
            }
        })
        .buffer_unordered(200)
        .collect()
        .await;
    let mut expected: BTreeMap<(u64, u64), String> = created.into_iter().collect();
    let updates: Vec<(u64, u64)> = expected.keys().copied().step_by(10).collect();
    for (chat, n) in &updates {
        let body = format!("updated {chat}/{n}");
        let (status, _) = c
            .send(
                Method::PATCH,
                &format!("/api/v1/applications/{token}/chats/{chat}/messages/{n}"),
                Some(json!({ "body": body })),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        expected.insert((*chat, *n), body);
    }

    // Start a persister with small batches, and kill it as soon as it has written something.
    // A short ack wait so the killed consumer's unacked events come back quickly.
    let persister = env
        .spawn_persister_with(&[("CONFAB_BATCH_SIZE", "20"), ("CONFAB_ACK_WAIT_SECS", "3")])
        .await;
    eventually(Duration::from_secs(30), "first rows written", || async {
        env.count("SELECT COUNT(*) FROM messages").await > 0
    })
    .await;
    persister.kill().await;
    let at_kill = env.count("SELECT COUNT(*) FROM messages").await;
    assert!(
        at_kill < 3000,
        "the kill came after everything was written ({at_kill})"
    );

    // Restart: everything lands exactly once, with its latest body.
    let persister = env.spawn_persister().await;
    eventually(
        Duration::from_secs(60),
        "every message persisted with its latest body",
        || async { stored(&env).await == expected },
    )
    .await;
    assert_eq!(env.count("SELECT COUNT(*) FROM messages").await, 3000);
    assert_eq!(env.count("SELECT COUNT(*) FROM chats").await, 5);
    persister.stop().await.unwrap();

    // A full replay of the stream by a new consumer changes nothing.
    let replayer = env
        .spawn_persister_with(&[("CONFAB_PERSISTER_CONSUMER", "replayer")])
        .await;
    eventually(Duration::from_secs(60), "replay drained", || async {
        env.consumer_drained("replayer").await
    })
    .await;
    assert_eq!(stored(&env).await, expected);
    assert_eq!(env.count("SELECT COUNT(*) FROM messages").await, 3000);
    replayer.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

async fn stored(env: &TestEnv) -> BTreeMap<(u64, u64), String> {
    let rows: Vec<(u64, u64, String)> = sqlx::query_as(
        "SELECT c.number, m.number, m.body FROM messages m JOIN chats c ON c.id = m.chat_id",
    )
    .fetch_all(&env.db)
    .await
    .unwrap();
    rows.into_iter().map(|(c, m, b)| ((c, m), b)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_that_can_never_apply_are_dead_lettered_and_the_rest_land() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let c = Client::new(&api.base);
    let token = c.create_app("poison").await;
    let chat = c.create_chat(&token).await;
    c.create_message(&token, chat, "before").await;

    // Three poison events straight onto the stream: not JSON, an unknown version, and a message
    // for an application that does not exist.
    let client = async_nats::connect(confab_tests::nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let subject = format!("t_{}.v1.message.created.999999.1", env.id);
    let mut future_version =
        serde_json::to_value(Envelope::new(Event::MessageCreated(MessageWritten {
            application_id: 1,
            chat_number: 1,
            number: 99,
            body: "x".into(),
        })))
        .unwrap();
    future_version["version"] = 2.into();
    let orphan = Envelope::new(Event::MessageCreated(MessageWritten {
        application_id: 999_999,
        chat_number: 1,
        number: 1,
        body: "orphan".into(),
    }));
    for payload in [
        b"not json".to_vec(),
        serde_json::to_vec(&future_version).unwrap(),
        orphan.encode(),
    ] {
        js.publish_with_headers(subject.clone(), HeaderMap::new(), payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    c.create_message(&token, chat, "after").await;

    let persister = env.spawn_persister().await;
    eventually(
        Duration::from_secs(20),
        "valid messages persisted",
        || async { env.count("SELECT COUNT(*) FROM messages").await == 2 },
    )
    .await;
    eventually(Duration::from_secs(20), "three dead letters", || async {
        env.dead_letters().await.len() == 3
    })
    .await;
    let reasons: Vec<String> = env
        .dead_letters()
        .await
        .iter()
        .map(|m| {
            m.headers
                .get(headers::DLQ_REASON)
                .unwrap()
                .as_str()
                .to_owned()
        })
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("not valid json")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("unsupported event version 2")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("foreign key")),
        "{reasons:?}"
    );
    for m in env.dead_letters().await {
        assert!(m
            .subject
            .starts_with(&format!("t_{}.dlq.v1.message.created", env.id)));
        assert_eq!(
            m.headers.get(headers::DLQ_SERVICE).unwrap().as_str(),
            "persister"
        );
    }
    eventually(Duration::from_secs(20), "consumer drained", || async {
        env.consumer_drained("confab-persister").await
    })
    .await;

    persister.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}
