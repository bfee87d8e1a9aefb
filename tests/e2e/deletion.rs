//! Deleting messages and chats through the stream: 204 at once, 404 everywhere afterwards, out of
//! MySQL's reads, the counts and search, numbers never reused, and no late or redelivered event
//! bringing anything back.

use std::time::Duration;

use confab_core::event::{MessageWritten, DELETION_VERSION};
use confab_core::{Envelope, Event};
use confab_search::remote::Remote;
use confab_search::{SearchBackend, SearchRequest, Terms};
use confab_tests::{eventually, Client, TestEnv};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Publishes `event` straight to the test's stream, around the api: an event still in flight
/// when the deletion was applied, or a redelivery.
async fn publish_around_the_api(env: &TestEnv, event: Event) {
    let js =
        async_nats::jetstream::new(async_nats::connect(confab_tests::nats_url()).await.unwrap());
    let envelope = Envelope::new(event);
    let subject = confab_core::Subjects::new(format!("t_{}", env.id)).for_event(&envelope.event);
    js.publish(subject, envelope.encode().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Waits until the persister and the indexer consumed everything in the stream.
async fn consumed(env: &TestEnv, what: &str) {
    for consumer in ["confab-persister", "confab-indexer"] {
        eventually(Duration::from_secs(20), what, || async {
            env.consumer_drained(consumer).await
        })
        .await;
    }
}

/// The numbers the indexer finds for `query` in a chat; a failing search fails the test.
async fn found(search: &Remote, app: u64, chat: u64, query: &str) -> Vec<u64> {
    let request = SearchRequest {
        application_id: app,
        chat_number: chat,
        terms: Terms::parse(query).unwrap(),
        limit: 100,
        offset: 0,
    };
    let mut numbers: Vec<u64> = search
        .search(&request)
        .await
        .unwrap_or_else(|error| panic!("search for {query:?} failed: {error}"))
        .into_iter()
        .map(|hit| hit.number)
        .collect();
    numbers.sort_unstable();
    numbers
}

fn numbers(list: &Value) -> Vec<u64> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|m| m["number"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_message_is_gone_everywhere_and_nothing_brings_it_back() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let persister = env.spawn_persister().await;
    let indexer = env.spawn_indexer_with(&[]).await;
    let reconciler = env
        .spawn_reconciler_with(&[("CONFAB_RECONCILE_INTERVAL_MS", "100")])
        .await;
    let search = Remote::new(&indexer.base, Duration::from_secs(5)).unwrap();
    let c = Client::new(&api.base);
    let token = c.create_app("forgetting").await;
    let app = env.application_id(&token).await;
    let chat = c.create_chat(&token).await;
    for body in ["alpha one", "beta two", "gamma three"] {
        c.create_message(&token, chat, body).await;
    }
    let messages = format!("/api/v1/applications/{token}/chats/{chat}/messages");
    let (status, _) = c
        .send(
            Method::PATCH,
            &format!("{messages}/2"),
            Some(json!({"body": "beta edited"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    eventually(Duration::from_secs(20), "edit searchable", || async {
        found(&search, app, chat, "edited").await == vec![2]
    })
    .await;

    let (status, body) = c.raw(Method::DELETE, &format!("{messages}/2"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    // 404 at once (the deletion mark), and out of the list once MySQL has it.
    assert_eq!(
        c.get(&format!("{messages}/2")).await.0,
        StatusCode::NOT_FOUND
    );
    eventually(Duration::from_secs(20), "deletion applied", || async {
        numbers(&c.get(&messages).await.1) == vec![1, 3]
    })
    .await;
    eventually(
        Duration::from_secs(20),
        "deletion out of search",
        || async { found(&search, app, chat, "beta").await.is_empty() },
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "messages_count excludes it",
        || async {
            c.get(&format!("/api/v1/applications/{token}/chats/{chat}"))
                .await
                .1["messages_count"]
                == 2
        },
    )
    .await;
    // The row is a tombstone: number kept, body erased.
    let (body, deleted): (String, i64) =
        sqlx::query_as("SELECT body, deleted_at IS NOT NULL FROM messages WHERE number = 2")
            .fetch_one(&env.db)
            .await
            .unwrap();
    assert_eq!((body.as_str(), deleted), ("", 1));
    // A deleted message can be neither updated nor deleted again; nor can one never created.
    for (method, path, body) in [
        (
            Method::PATCH,
            format!("{messages}/2"),
            Some(r#"{"body":"back"}"#),
        ),
        (Method::DELETE, format!("{messages}/2"), None),
        (Method::DELETE, format!("{messages}/99"), None),
    ] {
        let (status, json) = c.raw(method.clone(), &path, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {json}");
        assert_eq!(json["error"]["code"], "not_found");
    }
    // No message can have an impossible number either.
    let (status, json) = c
        .raw(Method::DELETE, &format!("{messages}/two"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{json}");

    // An update in flight when the deletion was applied, and a redelivered creation, arrive late.
    let late = |body: &str| MessageWritten {
        application_id: app,
        chat_number: chat,
        number: 2,
        body: body.into(),
    };
    publish_around_the_api(&env, Event::MessageUpdated(late("resurrected beta"))).await;
    publish_around_the_api(&env, Event::MessageCreated(late("recreated beta"))).await;
    consumed(&env, "late events consumed").await;
    assert_eq!(
        c.get(&format!("{messages}/2")).await.0,
        StatusCode::NOT_FOUND
    );
    assert!(found(&search, app, chat, "beta").await.is_empty());
    let version: u64 = sqlx::query_scalar("SELECT version FROM messages WHERE number = 2")
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert!(version > DELETION_VERSION, "still the deletion's version");
    // Out of order: a deletion applied before the creation it deletes (another persister, a
    // redelivery) still wins.
    use confab_core::event::MessageDeleted;
    publish_around_the_api(
        &env,
        Event::MessageDeleted(MessageDeleted {
            application_id: app,
            chat_number: chat,
            number: 4,
        }),
    )
    .await;
    consumed(&env, "deletion consumed").await;
    publish_around_the_api(
        &env,
        Event::MessageCreated(MessageWritten {
            number: 4,
            ..late("out of order")
        }),
    )
    .await;
    consumed(&env, "creation consumed").await;
    assert_eq!(
        c.get(&format!("{messages}/4")).await.0,
        StatusCode::NOT_FOUND
    );
    assert!(found(&search, app, chat, "order").await.is_empty());
    assert_eq!(numbers(&c.get(&messages).await.1), vec![1, 3]);
    // Deleted numbers are never handed out again.
    assert_eq!(c.create_message(&token, chat, "delta five").await, 5);
    eventually(Duration::from_secs(20), "counts exact", || {
        env.counts_are_exact()
    })
    .await;

    reconciler.stop().await.unwrap();
    indexer.stop().await.unwrap();
    persister.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_chat_takes_no_message_in_any_replica_and_is_purged() {
    let env = TestEnv::new().await;
    let (a, b) = (env.spawn_api().await, env.spawn_api().await);
    let persister = env.spawn_persister().await;
    let indexer = env
        .spawn_indexer_with(&[
            ("CONFAB_SEARCH_PURGE_INTERVAL_MS", "100"),
            ("CONFAB_SEARCH_PURGE_GRACE_MS", "500"),
        ])
        .await;
    let reconciler = env
        .spawn_reconciler_with(&[
            ("CONFAB_RECONCILE_INTERVAL_MS", "100"),
            ("CONFAB_MYSQL_PURGE_INTERVAL_MS", "100"),
        ])
        .await;
    let search = Remote::new(&indexer.base, Duration::from_secs(5)).unwrap();
    let (ca, cb) = (Client::new(&a.base), Client::new(&b.base));
    let token = ca.create_app("tidy").await;
    let app = env.application_id(&token).await;
    assert_eq!(ca.create_chat(&token).await, 1);
    assert_eq!(ca.create_chat(&token).await, 2);
    for _ in 0..3 {
        ca.create_message(&token, 1, "hello doomed").await;
    }
    // Replica b posts to chat 1 too, so it knows (and caches) the chat.
    cb.create_message(&token, 1, "hello doomed").await;
    cb.create_message(&token, 2, "hello kept").await;
    eventually(Duration::from_secs(20), "all searchable", || async {
        found(&search, app, 1, "hello").await.len() == 4
            && found(&search, app, 2, "hello").await.len() == 1
    })
    .await;

    let chat1 = format!("/api/v1/applications/{token}/chats/1");
    let (status, body) = ca.raw(Method::DELETE, &chat1, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    // At once, in both replicas: no message, no read, no search, no update.
    for c in [&ca, &cb] {
        let (status, json) = c
            .send(
                Method::POST,
                &format!("{chat1}/messages"),
                Some(json!({"body": "too late"})),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{json}");
        assert_eq!(json["error"]["code"], "not_found");
        for path in [
            format!("{chat1}/messages"),
            format!("{chat1}/messages/1"),
            format!("{chat1}/messages/search?query=hello"),
        ] {
            assert_eq!(c.get(&path).await.0, StatusCode::NOT_FOUND, "{path}");
        }
        let (status, _) = c
            .send(
                Method::PATCH,
                &format!("{chat1}/messages/1"),
                Some(json!({"body": "x"})),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    eventually(Duration::from_secs(20), "deletion persisted", || async {
        ca.get(&chat1).await.0 == StatusCode::NOT_FOUND
            && numbers(
                &ca.get(&format!("/api/v1/applications/{token}/chats"))
                    .await
                    .1,
            ) == vec![2]
    })
    .await;
    assert_eq!(
        ca.raw(Method::DELETE, &chat1, None).await.0,
        StatusCode::NOT_FOUND
    );
    eventually(
        Duration::from_secs(20),
        "chats_count excludes it",
        || async { ca.get(&format!("/api/v1/applications/{token}")).await.1["chats_count"] == 1 },
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "its messages purged from MySQL",
        || async {
            env.count(
            "SELECT COUNT(*) FROM messages m JOIN chats c ON c.id = m.chat_id WHERE c.number = 1",
        )
        .await
            == 0
        },
    )
    .await;
    eventually(Duration::from_secs(20), "its documents purged", || async {
        found(&search, app, 1, "hello").await.is_empty()
    })
    .await;
    assert_eq!(
        found(&search, app, 2, "hello").await.len(),
        1,
        "chat 2 stays"
    );

    // A message event still in flight for the deleted chat lands nowhere.
    publish_around_the_api(
        &env,
        Event::MessageCreated(MessageWritten {
            application_id: app,
            chat_number: 1,
            number: 99,
            body: "hello from the past".into(),
        }),
    )
    .await;
    consumed(&env, "late event consumed").await;
    let in_chat1 =
        "SELECT COUNT(*) FROM messages m JOIN chats c ON c.id = m.chat_id WHERE c.number = 1";
    assert_eq!(env.count(in_chat1).await, 0);
    assert!(found(&search, app, 1, "past").await.is_empty());

    // Redis loses every key of this test (the deletion mark with them): the chat stays deleted,
    // its number stays taken, and the other chat goes on.
    let mut redis = redis::Client::open(confab_tests::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("t:{}:*", env.id))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    let () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut redis)
        .await
        .unwrap();
    let (status, _) = cb
        .send(
            Method::POST,
            &format!("{chat1}/messages"),
            Some(json!({"body": "after the loss"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        cb.get(&format!("{chat1}/messages")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(cb.create_message(&token, 2, "hello again").await, 2);
    assert_eq!(
        cb.create_chat(&token).await,
        3,
        "chat numbers are never reused"
    );
    eventually(Duration::from_secs(20), "counts exact", || {
        env.counts_are_exact()
    })
    .await;

    reconciler.stop().await.unwrap();
    indexer.stop().await.unwrap();
    persister.stop().await.unwrap();
    b.stop().await.unwrap();
    a.stop().await.unwrap();
    env.cleanup().await;
}
