//! Rule 4 of `confab_core::sequence`: once processed events leave the stream, a creation is only
//! ever applied when it could have been acknowledged. A creation stored past its horizon is
//! dead-lettered `late`, and an `Idempotency-Key` retried after its event left the stream reads
//! the event's fate instead of storing it a second time.

use std::time::Duration;

use async_nats::HeaderMap;
use chrono::Utc;
use confab_core::event::{headers, MessageWritten};
use confab_core::{Envelope, Event};
use confab_tests::{eventually, Client, TestEnv};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creation_stored_past_its_horizon_is_dead_lettered_late_never_persisted() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let c = Client::new(&api.base);
    let token = c.create_app("horizon").await;
    let chat = c.create_chat(&token).await;
    let app = env.application_id(&token).await;

    // A creation made a minute ago (its request long answered 503) and stored only now, under a
    // number nobody else took: exactly what a publish buffered across a reconnect would be.
    let mut late = Envelope::new(Event::MessageCreated(MessageWritten {
        application_id: app,
        chat_number: chat,
        number: 7,
        body: "too late".into(),
    }));
    late.occurred_at = Utc::now() - chrono::Duration::seconds(60);
    let js =
        async_nats::jetstream::new(async_nats::connect(confab_tests::nats_url()).await.unwrap());
    let mut expect_new = HeaderMap::new();
    expect_new.insert(headers::EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
    js.publish_with_headers(
        format!("t_{}.v1.message.created.{app}.{chat}.7", env.id),
        expect_new,
        late.encode().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    // And one made now, through the api: its sequence is seeded past every number the stream
    // still holds, the late one's included.
    assert_eq!(c.create_message(&token, chat, "in time").await, 8);

    let persister = env.spawn_persister().await;
    eventually(
        Duration::from_secs(20),
        "the late one dead-lettered",
        || async { env.dead_letters().await.len() == 1 },
    )
    .await;
    let letter = &env.dead_letters().await[0];
    assert_eq!(
        letter.headers.get(headers::DLQ_CLASS).unwrap().as_str(),
        "late"
    );
    eventually(Duration::from_secs(20), "consumer drained", || async {
        env.consumer_drained("confab-persister").await
    })
    .await;
    let bodies: Vec<(u64, String)> =
        sqlx::query_as("SELECT number, body FROM messages ORDER BY number")
            .fetch_all(&env.db)
            .await
            .unwrap();
    assert_eq!(bodies, vec![(8, "in time".to_owned())]);

    persister.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_retried_after_its_event_left_the_stream_answers_the_same_without_storing_it_again() {
    let env = TestEnv::new().await;
    // A short deadline: a record older than it belongs to a request that is over.
    let api = env
        .spawn_api_with(&[
            ("CONFAB_PUBLISH_DEADLINE_MS", "500"),
            ("CONFAB_INDEXER_CONSUMER", ""),
        ])
        .await;
    let persister = env
        .spawn_persister_with(&[("CONFAB_INDEXER_CONSUMER", "")])
        .await;
    let c = Client::new(&api.base);
    let token = c.create_app("retry-later").await;
    let chat = c.create_chat(&token).await;
    let path = format!("/api/v1/applications/{token}/chats/{chat}/messages");
    let body = json!({"body": "once"});
    let (status, first) = c.post_idempotent(&path, &body, "k-1").await;
    assert_eq!(status, 201, "{first}");

    // Persisted and acked by every consumer: the events stream no longer holds it.
    eventually(Duration::from_secs(20), "persisted and gone", || async {
        env.count("SELECT COUNT(*) FROM messages").await == 1
            && env.consumer_drained("confab-persister").await
            && env.stream_messages().await == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;

    let (status, again) = c.post_idempotent(&path, &body, "k-1").await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(again["number"], first["number"]);
    // Its fate was read, not its event stored again: nothing new in the stream, nothing late.
    assert_eq!(env.stream_messages().await, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(env.dead_letters().await.is_empty());
    assert_eq!(env.count("SELECT COUNT(*) FROM messages").await, 1);
    // A new message still takes the next number.
    assert_eq!(c.create_message(&token, chat, "next").await, 2);

    persister.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_copy_of_a_keyed_creation_does_not_answer_for_it_its_persisted_row_does() {
    let env = TestEnv::new().await;
    let Keyed {
        api,
        c,
        app,
        chat,
        path,
        body,
        first,
    } = keyed_message_persisted(&env, "k-late").await;

    // The recorded creation stored again, late (as a publish buffered across a reconnect would
    // be): the stream now holds this request's own event, past its horizon.
    store_recorded_creation_late(&env, app, chat, 1).await;

    // The retry answers from the row the first copy made, not from the late copy.
    let (status, again) = c.post_idempotent(&path, &body, "k-late").await;
    assert_eq!((status.as_u16(), &again["number"]), (201, &first["number"]));
    let persister = env.spawn_persister_with(&QUICK).await;
    eventually(
        Duration::from_secs(20),
        "the late copy dead-lettered",
        || async { env.dead_letters().await.len() == 1 },
    )
    .await;
    assert_eq!(env.count("SELECT COUNT(*) FROM messages").await, 1);
    persister.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_copy_of_a_keyed_creation_never_answers_when_nothing_else_stored_it() {
    let env = TestEnv::new().await;
    let Keyed {
        api,
        c,
        app,
        chat,
        path,
        body,
        first,
    } = keyed_message_persisted(&env, "k-lost").await;
    assert_eq!(first["number"], 1);
    // As if the first request's event had never been stored (it answered 503): no row, and its
    // only copy arrives past its horizon.
    sqlx::query("DELETE FROM messages")
        .execute(&env.db)
        .await
        .unwrap();
    store_recorded_creation_late(&env, app, chat, 1).await;

    // The late copy will be dead-lettered, so it must not answer: the retry takes a new number.
    let (status, again) = c.post_idempotent(&path, &body, "k-lost").await;
    assert_eq!((status.as_u16(), &again["number"]), (201, &json!(2)));
    let persister = env.spawn_persister_with(&QUICK).await;
    eventually(Duration::from_secs(20), "the retry persisted", || async {
        env.count("SELECT COUNT(*) FROM messages WHERE number = 2 AND body = 'once'")
            .await
            == 1
    })
    .await;
    eventually(
        Duration::from_secs(20),
        "the late copy dead-lettered",
        || async { env.dead_letters().await.len() == 1 },
    )
    .await;
    assert_eq!(env.count("SELECT COUNT(*) FROM messages").await, 1);
    persister.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

/// A 500 ms horizon (a copy stored a second after its creation was made is late), and no
/// indexer.
const QUICK: [(&str, &str); 3] = [
    ("CONFAB_PUBLISH_DEADLINE_MS", "500"),
    ("CONFAB_CLOCK_SKEW_MS", "0"),
    ("CONFAB_INDEXER_CONSUMER", ""),
];

/// What [`keyed_message_persisted`] leaves: an api, a chat, and the first answer to a keyed
/// message creation (the persister is stopped).
struct Keyed {
    api: confab_tests::Service,
    c: Client,
    app: u64,
    chat: u64,
    path: String,
    body: serde_json::Value,
    first: serde_json::Value,
}

/// An api with [`QUICK`] settings and a message posted with `Idempotency-Key: key`, persisted and
/// gone from the events stream; the persister stopped again.
async fn keyed_message_persisted(env: &TestEnv, key: &str) -> Keyed {
    let api = env.spawn_api_with(&QUICK).await;
    let persister = env.spawn_persister_with(&QUICK).await;
    let c = Client::new(&api.base);
    let token = c.create_app("late-copy").await;
    let chat = c.create_chat(&token).await;
    let app = env.application_id(&token).await;
    let path = format!("/api/v1/applications/{token}/chats/{chat}/messages");
    let body = json!({"body": "once"});
    let (status, first) = c.post_idempotent(&path, &body, key).await;
    assert_eq!(status, 201, "{first}");
    eventually(Duration::from_secs(20), "persisted and gone", || async {
        env.count("SELECT COUNT(*) FROM messages").await == 1 && env.stream_messages().await == 0
    })
    .await;
    persister.stop().await.unwrap();
    Keyed {
        api,
        c,
        app,
        chat,
        path,
        body,
        first,
    }
}

/// Publishes the creation recorded under this test's (only) idempotency key once more, as
/// message `number` of `chat`, a second after the record was made: past a 500 ms horizon.
async fn store_recorded_creation_late(env: &TestEnv, app: u64, chat: u64, number: u64) {
    let js =
        async_nats::jetstream::new(async_nats::connect(confab_tests::nats_url()).await.unwrap());
    let records = js
        .get_stream(format!("T_{}_IDEMPOTENCY", env.id))
        .await
        .unwrap();
    let record = records
        .get_last_raw_message_by_subject(&format!("t_{}.idem.>", env.id))
        .await
        .unwrap();
    let record: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
    let envelope = serde_json::to_vec(&record["envelope"]).unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut expect_new = HeaderMap::new();
    expect_new.insert(headers::EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
    js.publish_with_headers(
        format!("t_{}.v1.message.created.{app}.{chat}.{number}", env.id),
        expect_new,
        envelope.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// A private `redis-server` on a free port, stopped when dropped.
struct PrivateRedis(std::process::Child, u16);

impl PrivateRedis {
    fn start() -> Self {
        let port = confab_tests::free_port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/dev installs it)");
        Self(child, port)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.1)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A creation whose number comes later than the publish deadline after it was made (Redis
/// stalled, as while it comes back from a loss) is answered 503 and never sent: sent, it would
/// be stored past its horizon and refused by the consumers, and a timer's slack could still
/// have answered it 201.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creation_numbered_after_its_deadline_is_503_and_never_stored() {
    let redis = PrivateRedis::start();
    let env = TestEnv::new().await;
    let url = redis.url();
    eventually(Duration::from_secs(10), "the private Redis up", || async {
        redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .is_ok()
    })
    .await;
    let api = env
        .spawn_api_with(&[("REDIS_URL", &url), ("CONFAB_PUBLISH_DEADLINE_MS", "1000")])
        .await;
    let c = Client::new(&api.base);
    let token = c.create_app("stalled").await;
    let chat = c.create_chat(&token).await;
    assert_eq!(c.create_message(&token, chat, "before").await, 1);
    let stored = env.stream_last_sequence().await;

    // Redis holds every write (the numbering script included) for 1.5 s.
    let mut admin = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1_500)
        .arg("WRITE")
        .query_async(&mut admin)
        .await
        .unwrap();
    let (status, body) = c
        .send(
            reqwest::Method::POST,
            &format!("/api/v1/applications/{token}/chats/{chat}/messages"),
            Some(json!({"body": "numbered too late"})),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE, "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        env.stream_last_sequence().await,
        stored,
        "a creation past its deadline was sent to the stream"
    );
    // Numbering goes on (its number is a gap).
    assert_eq!(c.create_message(&token, chat, "after").await, 3);
    api.stop().await.unwrap();
    env.cleanup().await;
}
