//! Invariant 1: no two chats of an application, and no two messages of a chat, ever get the same
//! number — across api replicas, and across Redis losing its data.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use confab_tests::{eventually, Client, TestEnv};
use futures::StreamExt;

const CONCURRENCY: usize = 200;

async fn create_chats(clients: &[Client], token: &str, n: usize) -> Vec<u64> {
    futures::stream::iter(0..n)
        .map(|i| {
            let c = clients[i % clients.len()].clone();
            let token = token.to_owned();
            async move { c.create_chat(&token).await }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

async fn create_messages(
    clients: &[Client],
    token: &str,
    chat: u64,
    tag: &str,
    n: usize,
    done: &AtomicUsize,
) -> Vec<(u64, String)> {
    futures::stream::iter(0..n)
        .map(|i| {
            let c = clients[i % clients.len()].clone();
            let token = token.to_owned();
            let body = format!("{tag}-{i}");
            async move {
                let number = c.create_message(&token, chat, &body).await;
                done.fetch_add(1, Ordering::SeqCst);
                (number, body)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_chat_creation_across_two_apis_never_repeats_a_number() {
    let env = TestEnv::new().await;
    let (a, b) = (env.spawn_api().await, env.spawn_api().await);
    let persister = env.spawn_persister().await;
    let clients = [Client::new(&a.base), Client::new(&b.base)];
    let token = clients[0].create_app("busy").await;

    let mut numbers = create_chats(&clients, &token, 2000).await;
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=2000).collect::<Vec<u64>>());

    eventually(Duration::from_secs(30), "2000 chats persisted", || async {
        env.count("SELECT COUNT(*) FROM chats").await == 2000
    })
    .await;
    assert_eq!(
        env.count("SELECT COUNT(DISTINCT number) FROM chats").await,
        2000
    );
    assert_eq!(
        env.count("SELECT CAST(MAX(number) AS SIGNED) FROM chats")
            .await,
        2000
    );

    persister.stop().await.unwrap();
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_message_creation_across_two_apis_never_repeats_a_number() {
    let env = TestEnv::new().await;
    let (a, b) = (env.spawn_api().await, env.spawn_api().await);
    let persister = env.spawn_persister().await;
    let clients = [Client::new(&a.base), Client::new(&b.base)];
    let token = clients[0].create_app("busy").await;
    let chat = clients[1].create_chat(&token).await;

    let done = AtomicUsize::new(0);
    let created = create_messages(&clients, &token, chat, "m", 2000, &done).await;
    let mut numbers: Vec<u64> = created.iter().map(|(n, _)| *n).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=2000).collect::<Vec<u64>>());

    eventually(
        Duration::from_secs(30),
        "2000 messages persisted",
        || async { env.count("SELECT COUNT(*) FROM messages").await == 2000 },
    )
    .await;
    assert_persisted_exactly(&env, &created).await;

    persister.stop().await.unwrap();
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    env.cleanup().await;
}

/// Redis keeps nothing but sequences and caches: flushing it mid-run (with events persisted,
/// events only in JetStream, and requests in flight) must not repeat any number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbering_survives_redis_losing_its_data() {
    // Database 15 of the shared Redis is this test's alone, so FLUSHDB is a real data loss that
    // touches no other test.
    let redis_url = format!("{}/15", confab_tests::redis_url());
    let env = TestEnv::with(|e| {
        e.insert("REDIS_URL".into(), redis_url.clone());
    })
    .await;
    let (a, b) = (env.spawn_api().await, env.spawn_api().await);
    let clients = [Client::new(&a.base), Client::new(&b.base)];
    let token = clients[0].create_app("amnesia").await;
    let chat = clients[0].create_chat(&token).await;
    let done = AtomicUsize::new(0);

    // Phase 1: persisted in MySQL.
    let persister = env.spawn_persister().await;
    let mut created = create_messages(&clients, &token, chat, "persisted", 200, &done).await;
    let mut chats = create_chats(&clients, &token, 100).await;
    eventually(Duration::from_secs(30), "phase 1 persisted", || async {
        env.count("SELECT COUNT(*) FROM messages").await == 200
    })
    .await;
    persister.stop().await.unwrap();

    // Phase 2: only in JetStream.
    created.extend(create_messages(&clients, &token, chat, "in-flight", 200, &done).await);
    chats.extend(create_chats(&clients, &token, 100).await);

    // Phase 3: Redis loses everything while 600 creations are in progress.
    let start = done.load(Ordering::SeqCst);
    let flushed = Arc::new(AtomicUsize::new(0));
    let flusher = {
        let (done, flushed) = (&done, flushed.clone());
        let redis_url = redis_url.clone();
        async move {
            while done.load(Ordering::SeqCst) < start + 100 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let client = redis::Client::open(redis_url).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let () = redis::cmd("FLUSHDB").query_async(&mut conn).await.unwrap();
            flushed.store(done.load(Ordering::SeqCst), Ordering::SeqCst);
        }
    };
    let (phase3, more_chats, ()) = tokio::join!(
        create_messages(&clients, &token, chat, "racing", 400, &done),
        create_chats(&clients, &token, 200),
        flusher
    );
    let flushed_at = flushed.load(Ordering::SeqCst);
    assert!(
        flushed_at > start && flushed_at < start + 400,
        "the flush happened mid-run ({flushed_at})"
    );
    created.extend(phase3);
    chats.extend(more_chats);

    let distinct: HashSet<u64> = created.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        distinct.len(),
        created.len(),
        "a message number was handed out twice"
    );
    let distinct_chats: HashSet<u64> = chats.iter().copied().collect();
    assert_eq!(
        distinct_chats.len(),
        chats.len(),
        "a chat number was handed out twice"
    );

    // Everything lands, each number with the body its 201 promised.
    let persister = env.spawn_persister().await;
    eventually(
        Duration::from_secs(60),
        "all 800 messages persisted",
        || async { env.count("SELECT COUNT(*) FROM messages").await == 800 },
    )
    .await;
    assert_persisted_exactly(&env, &created).await;
    eventually(Duration::from_secs(30), "all chats persisted", || async {
        env.count("SELECT COUNT(*) FROM chats").await == 401
    })
    .await;

    persister.stop().await.unwrap();
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    env.cleanup().await;
}

/// MySQL holds exactly the acknowledged messages, each with its body.
pub async fn assert_persisted_exactly(env: &TestEnv, created: &[(u64, String)]) {
    let rows: Vec<(u64, String)> = sqlx::query_as("SELECT number, body FROM messages")
        .fetch_all(&env.db)
        .await
        .unwrap();
    let stored: BTreeMap<u64, String> = rows.iter().cloned().collect();
    assert_eq!(stored.len(), rows.len(), "duplicate message rows");
    let expected: BTreeMap<u64, String> = created.iter().cloned().collect();
    assert_eq!(stored, expected);
}
