//! Invariant 4: `chats_count` and `messages_count` converge to the true counts within seconds,
//! with work proportional to what changed, under crashes and concurrent reconcilers.

use std::time::Duration;

use confab_counter_reconciler::reconcile::{self, CHATS};
use confab_counter_reconciler::repair;
use confab_tests::{eventually, Client, TestEnv};
use futures::StreamExt;

const FAST: &[(&str, &str)] = &[("CONFAB_RECONCILE_INTERVAL_MS", "100")];

/// Creates `apps` applications with `chats` chats each and `messages` messages spread over them;
/// returns the tokens.
async fn burst(c: &Client, apps: usize, chats: u64, messages: u64) -> Vec<String> {
    let mut tokens = Vec::new();
    for a in 0..apps {
        let token = c.create_app(&format!("app {a}")).await;
        for _ in 0..chats {
            c.create_chat(&token).await;
        }
        tokens.push(token);
    }
    futures::stream::iter(0..messages)
        .map(|i| {
            let (c, token) = (c.clone(), tokens[i as usize % apps].clone());
            // Every chat of every application gets messages.
            let chat = (i / apps as u64) % chats + 1;
            async move { c.create_message(&token, chat, &format!("m{i}")).await }
        })
        .buffer_unordered(100)
        .collect::<Vec<_>>()
        .await;
    tokens
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_converge_within_seconds_after_a_burst_across_applications() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let persister = env.spawn_persister().await;
    let reconciler = env.spawn_reconciler_with(FAST).await;
    let c = Client::new(&api.base);
    let tokens = burst(&c, 5, 8, 1000).await;

    eventually(Duration::from_secs(20), "all persisted", || async {
        env.count("SELECT COUNT(*) FROM messages").await == 1000
    })
    .await;
    eventually(Duration::from_secs(10), "counts exact", || async {
        env.counts_are_exact().await
    })
    .await;
    // Clients see them through the API.
    let (_, app) = c.get(&format!("/api/v1/applications/{}", tokens[0])).await;
    assert_eq!(app["chats_count"], 8);
    let (_, chats) = c
        .get(&format!("/api/v1/applications/{}/chats", tokens[0]))
        .await;
    let total: u64 = chats
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["messages_count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 200);

    reconciler.stop().await.unwrap();
    persister.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_reading_and_writing_loses_nothing() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let persister = env.spawn_persister().await;
    let c = Client::new(&api.base);
    burst(&c, 2, 5, 300).await;
    eventually(Duration::from_secs(20), "all persisted", || async {
        env.count("SELECT COUNT(*) FROM messages").await == 300
    })
    .await;
    let pool = env.reconciler_pool();

    // A crash ends the transaction without a commit; the server rolls it back. The rollback is
    // awaited here: a dropped sqlx transaction only queues it, and the next claim would skip the
    // marks the unfinished one still holds.
    // Crash after the read (claim), before any write.
    let mut tx = pool.begin().await.unwrap();
    let claimed = reconcile::claim(&mut tx, CHATS, 1000).await.unwrap();
    assert_eq!(claimed.len(), 10);
    tx.rollback().await.unwrap();
    // Crash after the recount, before the commit.
    let mut tx = pool.begin().await.unwrap();
    let claimed = reconcile::claim(&mut tx, CHATS, 1000).await.unwrap();
    assert_eq!(claimed.len(), 10, "the first claim released its marks");
    let ids: Vec<u64> = claimed.iter().map(|(id, _)| *id).collect();
    reconcile::recount(&mut tx, CHATS, &ids).await.unwrap();
    // Meanwhile another replica finds every mark held: it claims none, and recounting and
    // clearing nothing is no statement rather than `IN ()`.
    let mut other = pool.begin().await.unwrap();
    let none = reconcile::claim(&mut other, CHATS, 1000).await.unwrap();
    assert!(none.is_empty(), "marks held by a live claim are skipped");
    reconcile::recount(&mut other, CHATS, &[]).await.unwrap();
    reconcile::clear(&mut other, CHATS, &[]).await.unwrap();
    other.commit().await.unwrap();
    tx.rollback().await.unwrap();
    assert!(!env.counts_are_exact().await, "nothing was committed");

    let reconciler = env.spawn_reconciler_with(FAST).await;
    eventually(
        Duration::from_secs(10),
        "counts exact after restart",
        || async { env.counts_are_exact().await },
    )
    .await;
    assert_eq!(
        env.count("SELECT COUNT(*) FROM counter_dirty_chats").await,
        0
    );

    reconciler.stop().await.unwrap();
    persister.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_reconcilers_at_once_split_the_work() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let persister = env.spawn_persister().await;
    let c = Client::new(&api.base);
    burst(&c, 10, 30, 3000).await;
    eventually(Duration::from_secs(30), "all persisted", || async {
        env.count("SELECT COUNT(*) FROM messages").await == 3000
    })
    .await;
    persister.stop().await.unwrap();
    let dirty = env.count("SELECT COUNT(*) FROM counter_dirty_chats").await as u64;
    assert_eq!(dirty, 300);

    // Small batches so both replicas get a share.
    let opts = &[
        ("CONFAB_RECONCILE_INTERVAL_MS", "50"),
        ("CONFAB_RECONCILE_BATCH", "10"),
    ];
    let (a, b) = tokio::join!(
        env.spawn_reconciler_with(opts),
        env.spawn_reconciler_with(opts)
    );
    eventually(Duration::from_secs(20), "counts exact", || async {
        env.counts_are_exact().await
    })
    .await;
    // Every dirty chat was recounted exactly once between the two of them.
    let series = r#"confab_counter_rows_recounted_total{kind="chat"}"#;
    let recounted = (a.metric(series).await + b.metric(series).await) as u64;
    assert_eq!(recounted, dirty);

    a.stop().await.unwrap();
    b.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

/// Work proportional to the change: with 1,000,000 messages over 10,000 chats in place, a
/// reconcile after 100 new messages recounts only the chats that got them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_after_100_messages_touches_only_the_changed_chats() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let c = Client::new(&api.base);
    let token = c.create_app("big").await;
    seed(&env, &token, 10_000, 100).await;
    assert_eq!(env.count("SELECT COUNT(*) FROM messages").await, 1_000_000);

    let persister = env.spawn_persister().await;
    let chats_hit: std::collections::BTreeSet<u64> =
        (0..100u64).map(|i| i * 37 % 10_000 + 1).collect();
    futures::stream::iter(0..100u64)
        .map(|i| {
            let (c, token) = (c.clone(), token.clone());
            async move { c.create_message(&token, i * 37 % 10_000 + 1, "new").await }
        })
        .buffer_unordered(20)
        .collect::<Vec<_>>()
        .await;
    eventually(
        Duration::from_secs(20),
        "new messages persisted",
        || async { env.count("SELECT COUNT(*) FROM messages").await == 1_000_100 },
    )
    .await;

    let metrics =
        confab_counter_reconciler::metrics::Metrics::register(&confab_runtime::metrics::registry());
    let stats = reconcile::run_once(&env.reconciler_pool(), &metrics, 500)
        .await
        .unwrap();
    assert_eq!(stats.chats_recounted, chats_hit.len() as u64);
    assert_eq!(stats.applications_recounted, 0);
    assert!(env.counts_are_exact().await);

    persister.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

/// Seeds `chats` chats with `per_chat` messages each directly in MySQL, with exact counts and no
/// dirty marks (the state after a long quiet period).
async fn seed(env: &TestEnv, token: &str, chats: u64, per_chat: u64) {
    let app: u64 = sqlx::query_scalar("SELECT id FROM applications WHERE token = ?")
        .bind(token)
        .fetch_one(&env.db)
        .await
        .unwrap();
    let statements = [
        "CREATE TABLE digits (d INT NOT NULL PRIMARY KEY)".to_owned(),
        "INSERT INTO digits VALUES (0),(1),(2),(3),(4),(5),(6),(7),(8),(9)".to_owned(),
        format!(
            "INSERT INTO chats (application_id, number, messages_count) \
             SELECT {app}, a.d + 10 * b.d + 100 * c.d + 1000 * e.d + 1, {per_chat} \
             FROM digits a, digits b, digits c, digits e \
             WHERE a.d + 10 * b.d + 100 * c.d + 1000 * e.d < {chats}"
        ),
        format!(
            "INSERT INTO messages (chat_id, number, body, version) \
             SELECT ch.id, a.d + 10 * b.d + 1, 'seeded', 0 \
             FROM chats ch, digits a, digits b WHERE a.d + 10 * b.d < {per_chat}"
        ),
        format!("UPDATE applications SET chats_count = {chats} WHERE id = {app}"),
        "DELETE FROM counter_dirty_chats".to_owned(),
        "DELETE FROM counter_dirty_applications".to_owned(),
        "DROP TABLE digits".to_owned(),
    ];
    for sql in statements {
        sqlx::query(&sql).execute(&env.db).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_recomputes_every_count_from_any_state() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let persister = env.spawn_persister().await;
    let c = Client::new(&api.base);
    burst(&c, 3, 7, 200).await;
    eventually(Duration::from_secs(20), "all persisted", || async {
        env.count("SELECT COUNT(*) FROM messages").await == 200
    })
    .await;
    // Manual edits, and no marks left to find them.
    for sql in [
        "UPDATE chats SET messages_count = 999",
        "UPDATE applications SET chats_count = 0",
        "DELETE FROM counter_dirty_chats",
        "DELETE FROM counter_dirty_applications",
    ] {
        sqlx::query(sql).execute(&env.db).await.unwrap();
    }
    assert!(!env.counts_are_exact().await);
    repair::repair(&env.reconciler_pool(), 4).await.unwrap();
    assert!(env.counts_are_exact().await);

    persister.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}
