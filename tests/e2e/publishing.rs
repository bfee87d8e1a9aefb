//! The api's publish path against the real JetStream: a creation event published again (its
//! acknowledgement was lost, or a client retried with its `Idempotency-Key`) finds its own event
//! and counts as `retried`; a number whose creation subject another event already holds is a
//! `collision`, and the api takes another number.

use confab_api::publish::Publisher;
use confab_core::event::MessageWritten;
use confab_core::sequence::PublishOutcome;
use confab_core::{Envelope, Event};
use confab_tests::{Client, TestEnv};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_publish_is_retried_and_a_taken_number_is_a_collision() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let c = Client::new(&api.base);
    let token = c.create_app("publishing").await;
    let chat = c.create_chat(&token).await;

    // Through HTTP: a retried request publishes its recorded event again and finds it stored.
    let path = format!("/api/v1/applications/{token}/chats/{chat}/messages");
    let body = json!({"body": "sent twice"});
    let (status, first) = c.post_idempotent(&path, &body, "retry-1").await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, again) = c.post_idempotent(&path, &body, "retry-1").await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(again["number"], first["number"]);

    // A sequence set back: the next number's subject already holds another event.
    let redis = redis::Client::open(confab_tests::redis_url()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("SET")
        .arg(format!("t:{}:seq:messages:{{1}}:{chat}", env.id))
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        c.create_message(&token, chat, "after the set-back").await,
        2
    );

    let metrics = reqwest::get(format!("{}/metrics", api.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (outcome, count) in [("stored", 2), ("retried", 1), ("collision", 1)] {
        let line = format!(
            r#"confab_events_published_total{{outcome="{outcome}",type="message.created"}} {count}"#
        );
        assert!(metrics.contains(&line), "missing `{line}`");
    }

    // The publisher itself: the same creation event twice (as when the first acknowledgement
    // was lost and the attempt repeated), then another event for the same number.
    let config = confab_api::ApiConfig::from_env(&env.env()).unwrap();
    let js = confab_runtime::jetstream::connect(
        &config.common.nats_url,
        "confab-tests",
        &config.common.stream,
    )
    .await
    .unwrap();
    let metrics = confab_api::metrics::Metrics::register(&confab_runtime::metrics::registry());
    let publisher = Publisher::new(js, metrics.clone());
    let trace = confab_runtime::trace::continue_trace(&tracing::Span::none(), None);
    let creation = |body: &str| {
        Envelope::new(Event::MessageCreated(MessageWritten {
            application_id: 1,
            chat_number: chat,
            number: 50,
            body: body.into(),
        }))
    };
    let own = creation("mine");
    let outcome = |envelope: Envelope| {
        let (publisher, trace) = (&publisher, &trace);
        async move { publisher.publish(&envelope, trace).await.unwrap() }
    };
    assert_eq!(outcome(own.clone()).await, PublishOutcome::Stored);
    assert_eq!(outcome(own).await, PublishOutcome::RetriedOwn);
    assert_eq!(outcome(creation("theirs")).await, PublishOutcome::Collision);
    // Counted in this publisher's own registry, one of each.
    for label in ["stored", "retried", "collision"] {
        let counted = metrics
            .events_published
            .with_label_values(&["message.created", label])
            .get();
        assert_eq!(counted, 1, "{label}");
    }

    api.stop().await.unwrap();
    env.cleanup().await;
}
