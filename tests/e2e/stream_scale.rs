//! Invariant 8 for the event streams: what NATS holds per subject is bounded by the work in
//! flight (and one subject per chat for the live window), never by the messages written.

use std::collections::BTreeMap;
use std::time::Duration;

use confab_tests::client::Client;
use confab_tests::{eventually, TestEnv};
use futures::StreamExt;

const CHATS: u64 = 10;
const ROUND: usize = 20_000;
/// The bound for all streams after 20,000 processed messages (it was 20,010).
const MAX_SUBJECTS: u64 = 2_000;

/// Writes `ROUND` messages over the chats, 64 at a time.
async fn write_round(c: &Client, token: &str, round: usize) {
    futures::stream::iter(0..ROUND)
        .map(|i| {
            let (c, token) = (c.clone(), token.to_owned());
            async move {
                let chat = (i as u64 % CHATS) + 1;
                c.create_message(&token, chat, &format!("round {round} message {i}"))
                    .await
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
}

/// Waits until MySQL holds `total` messages, the persister and the indexer have acked every
/// event (each acks only after its commit), and the round's last message is found by search.
async fn wait_processed(env: &TestEnv, c: &Client, token: &str, round: usize) {
    let total = (ROUND * round) as i64;
    eventually(
        Duration::from_secs(180),
        "every message persisted",
        || async { env.count("SELECT COUNT(*) FROM messages").await == total },
    )
    .await;
    eventually(Duration::from_secs(180), "every event acked", || async {
        env.consumer_drained("confab-persister").await
            && env.consumer_drained("confab-indexer").await
    })
    .await;
    let last = ROUND - 1;
    let chat = (last as u64 % CHATS) + 1;
    let path = format!(
        "/api/v1/applications/{token}/chats/{chat}/messages/search?query=round%20{round}%20message%20{last}"
    );
    let (_, hits) = c.get(&path).await;
    let wanted = format!("round {round} message {last}");
    assert!(
        hits.as_array()
            .is_some_and(|hits| hits.iter().any(|hit| hit["body"] == wanted.as_str())),
        "{hits}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_subjects_stay_bounded_however_many_messages_are_processed() {
    let env = TestEnv::new().await;
    let indexer = env.spawn_indexer_with(&[]).await;
    let api = env
        .spawn_api_with(&[("CONFAB_SEARCH_URL", &indexer.base)])
        .await;
    let persister = env.spawn_persister().await;
    let c = Client::new(&api.base);
    let token = c.create_app("scale").await;
    for _ in 0..CHATS {
        c.create_chat(&token).await;
    }

    let mut after: Vec<BTreeMap<String, u64>> = Vec::new();
    for round in 1..=2 {
        write_round(&c, &token, round).await;
        wait_processed(&env, &c, &token, round).await;
        let subjects = env.retained_subjects().await;
        let total: u64 = subjects.values().sum();
        assert!(
            total <= MAX_SUBJECTS,
            "after {} messages the streams retain {total} subjects: {subjects:?}",
            ROUND * round
        );
        after.push(subjects);
    }
    let events = format!("T_{}", env.id);
    let live = format!("T_{}_LIVE", env.id);
    for subjects in &after {
        assert_eq!(
            subjects[&events], 0,
            "the events stream keeps nothing acked"
        );
        assert_eq!(
            subjects[&live], CHATS,
            "the live stream keeps one subject per chat"
        );
    }
    assert_eq!(
        after[0], after[1],
        "the retained subjects do not grow with the messages"
    );
    assert_eq!(env.stream_messages().await, 0);

    persister.stop().await.unwrap();
    api.stop().await.unwrap();
    indexer.stop().await.unwrap();
    env.cleanup().await;
}
