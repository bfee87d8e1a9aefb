//! Invariant 2: an acknowledged event is never lost, and crashes, redelivery and replays produce
//! exactly one row per message with its latest body. Events that can never be applied are
//! dead-lettered with their reason while the rest land.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::HeaderMap;
use confab_core::event::{headers, ChatCreated, MessageWritten};
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

pub async fn stored(env: &TestEnv) -> BTreeMap<(u64, u64), String> {
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

/// Defence in depth: should two creation events for one number ever reach the persister (the
/// stream refuses the second, so here they are published around the api), the row stays its
/// first creator's — in separate batches and within one, for messages and chats — and the other
/// is dead-lettered with reason `number_conflict` and counted, while everything else lands. A
/// chat first written by a message write is claimed by its creation event when that comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_creation_of_a_number_is_dead_lettered_never_an_overwrite() {
    // A delivery left unacked by the stopped persister comes back after the ack wait: keep it short.
    let env = TestEnv::with(|e| {
        e.insert("CONFAB_ACK_WAIT_SECS".into(), "2".into());
    })
    .await;
    let api = env.spawn_api().await;
    let c = Client::new(&api.base);
    let token = c.create_app("conflicts").await;
    let chat = c.create_chat(&token).await;
    let number = c.create_message(&token, chat, "first").await;
    let client = async_nats::connect(confab_tests::nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let subjects = confab_core::Subjects::new(format!("t_{}", env.id));
    // Stores an event on its subject, around the api; answers its id as MySQL's UNHEX reads it.
    let store = |event: Event| {
        let envelope = Envelope::new(event);
        let subject = subjects.for_event(&envelope.event);
        let js = js.clone();
        async move {
            js.publish(subject, envelope.encode().into())
                .await
                .unwrap()
                .await
                .unwrap();
            envelope.id.simple().to_string()
        }
    };
    let message = |chat_number: u64, number: u64, body: &str| {
        Event::MessageCreated(MessageWritten {
            application_id: 1,
            chat_number,
            number,
            body: body.into(),
        })
    };
    let publish = |body: &str, number: u64| store(message(chat, number, body));
    let publish_chat = |number: u64| {
        store(Event::ChatCreated(ChatCreated {
            application_id: 1,
            number,
        }))
    };
    let claimed_by = |number: u64, id: String| {
        let env = &env;
        async move {
            env.count(&format!(
                "SELECT COUNT(*) FROM chats WHERE number = {number} AND creation_event_id = UNHEX('{id}')"
            ))
            .await
                == 1
        }
    };
    // The first persister run sees "first" alone, and a message that makes chat 20 before its
    // creation; later the impostors, then (one batch) a pair.
    let persister = env.spawn_persister().await;
    store(message(20, 1, "before its chat")).await;
    eventually(Duration::from_secs(20), "first persisted", || async {
        env.count("SELECT COUNT(*) FROM messages").await == 2
    })
    .await;
    persister.stop().await.unwrap();
    let chat_before = env
        .count(&format!(
            "SELECT COUNT(*) FROM chats WHERE number = {chat} AND creation_event_id IS NOT NULL"
        ))
        .await;
    assert_eq!(chat_before, 1, "the api's chat is claimed by its creation");
    assert_eq!(
        env.count("SELECT COUNT(*) FROM chats WHERE number = 20 AND creation_event_id IS NULL")
            .await,
        1,
        "chat 20 exists, unclaimed"
    );
    publish("impostor", number).await;
    publish("pair-1", 7).await;
    publish("pair-2", 7).await;
    let chat_impostor = publish_chat(chat).await;
    let creation_20 = publish_chat(20).await;
    let creation_30 = publish_chat(30).await;
    c.create_message(&token, chat, "innocent").await;

    let persister = env.spawn_persister().await;
    eventually(
        Duration::from_secs(20),
        "three conflicts dead-lettered",
        || async { env.dead_letters().await.len() == 3 },
    )
    .await;
    eventually(Duration::from_secs(20), "consumer drained", || async {
        env.consumer_drained("confab-persister").await
    })
    .await;
    let stored = stored(&env).await;
    assert_eq!(
        stored.get(&(chat, number)).map(String::as_str),
        Some("first")
    );
    assert_eq!(stored.get(&(chat, 7)).map(String::as_str), Some("pair-1"));
    assert_eq!(stored.values().filter(|b| *b == "innocent").count(), 1);
    assert!(
        claimed_by(20, creation_20).await,
        "chat 20 claimed by its creation"
    );
    assert!(
        claimed_by(30, creation_30).await,
        "chat 30 claimed by its creation"
    );
    assert!(!claimed_by(chat, chat_impostor.clone()).await);
    let mut dead = Vec::new();
    for m in env.dead_letters().await {
        let reason = m.headers.get(headers::DLQ_REASON).unwrap().as_str();
        assert!(reason.starts_with("number_conflict"), "{reason}");
        let envelope = Envelope::decode(&m.payload).unwrap();
        dead.push(match envelope.event {
            Event::MessageCreated(body) => body.body,
            Event::ChatCreated(_) => envelope.id.simple().to_string(),
            other => panic!("a creation, not {other:?}"),
        });
    }
    dead.sort();
    let mut expected = vec!["impostor".to_owned(), "pair-2".to_owned(), chat_impostor];
    expected.sort();
    assert_eq!(dead, expected);
    let metrics = reqwest::get(format!("{}/metrics", persister.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"confab_number_conflicts_total{kind="message"} 2"#)
            && metrics.contains(r#"confab_number_conflicts_total{kind="chat"} 1"#),
        "conflicts counted"
    );

    persister.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

/// The one MySQL error classifier, against a real MariaDB: bad data is rejected (dead-lettered,
/// never retried), a lock wait timeout is a lock conflict (retried at once), an unreachable
/// server is unavailable (retried later, 503 in the api).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_errors_are_classified_by_what_a_retry_can_do() {
    use confab_runtime::db::{classify, Failure};
    let env = TestEnv::new().await;
    sqlx::query("CREATE TABLE classify_probe (id INT PRIMARY KEY, s VARCHAR(2) NOT NULL)")
        .execute(&env.db)
        .await
        .unwrap();
    let mut conn = env.db.acquire().await.unwrap();
    sqlx::query("SET SESSION sql_mode = 'STRICT_ALL_TABLES'")
        .execute(&mut *conn)
        .await
        .unwrap();
    let too_long = sqlx::query("INSERT INTO classify_probe VALUES (1, 'abc')")
        .execute(&mut *conn)
        .await
        .unwrap_err();
    assert_eq!(classify(&too_long), Failure::Rejected, "{too_long}");
    let null = sqlx::query("INSERT INTO classify_probe VALUES (1, NULL)")
        .execute(&mut *conn)
        .await
        .unwrap_err();
    assert_eq!(classify(&null), Failure::Rejected, "{null}");
    let unknown = sqlx::query("SELECT * FROM no_such_table")
        .execute(&mut *conn)
        .await
        .unwrap_err();
    assert_eq!(classify(&unknown), Failure::Other, "{unknown}");
    assert!(!Failure::Other.is_transient() && !Failure::Rejected.is_transient());

    // One transaction holds the row; another waits one second for it and gives up.
    sqlx::query("INSERT INTO classify_probe VALUES (1, 'a')")
        .execute(&env.db)
        .await
        .unwrap();
    let mut holder = env.db.begin().await.unwrap();
    sqlx::query("UPDATE classify_probe SET s = 'b' WHERE id = 1")
        .execute(&mut *holder)
        .await
        .unwrap();
    let mut waiter = env.db.acquire().await.unwrap();
    sqlx::query("SET SESSION innodb_lock_wait_timeout = 1")
        .execute(&mut *waiter)
        .await
        .unwrap();
    let timed_out = sqlx::query("UPDATE classify_probe SET s = 'c' WHERE id = 1")
        .execute(&mut *waiter)
        .await
        .unwrap_err();
    assert_eq!(classify(&timed_out), Failure::LockConflict, "{timed_out}");
    assert!(Failure::LockConflict.is_transient());
    holder.rollback().await.unwrap();
    drop((conn, waiter));

    // Nothing listens on port 1.
    let unreachable = sqlx::mysql::MySqlPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_secs(2))
        .connect_lazy("mysql://root@127.0.0.1:1/confab")
        .unwrap();
    let down = sqlx::query("SELECT 1")
        .execute(&unreachable)
        .await
        .unwrap_err();
    assert_eq!(classify(&down), Failure::Unavailable, "{down}");
    assert!(Failure::Unavailable.is_transient());
    env.cleanup().await;
}
