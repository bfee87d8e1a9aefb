//! How a live WebSocket closes: a client's close frame is answered with its own code, and every
//! end the server decides is the `end` event, then a close frame whose code and reason say why
//! (docs/api.md, "Live delivery"), then a completed closing handshake — never a bare TCP close
//! (what a browser reports as 1006). A subscriber cut off as too slow gets them too once it reads
//! again, and resumes from the end's id with nothing lost.

use std::time::Duration;

use confab_tests::live::{Closing, LiveClient, LiveEvent};
use confab_tests::{eventually, Client, TestEnv};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::live::{created, next, open, take, WAIT};
use crate::quotas::{admin_env, register, ADMIN_TOKEN};

/// A close frame with `code` and `reason`, and the closing handshake completed after it.
fn closed_with(code: u16, reason: &str) -> Closing {
    Closing {
        frame: Some((code, reason.to_owned())),
        then: Ok(()),
    }
}

/// The `end` event (with its reason and whether to reconnect), then the close frame `code`
/// carrying the same reason, and a clean close; returns the `end` event.
async fn ends_with(client: &mut LiveClient, reason: &str, resumable: bool, code: u16) -> LiveEvent {
    let end = next(client, &format!("the end ({reason})")).await;
    assert_eq!(
        (
            end.kind.as_str(),
            end.data["reason"].as_str(),
            end.data["resumable"].as_bool()
        ),
        ("end", Some(reason), Some(resumable)),
        "{:?}",
        end.data
    );
    assert_eq!(client.closing(WAIT).await, closed_with(code, reason));
    end
}

/// Reads what a stalled subscriber's connection still had for it, up to its `end`: message
/// creations, then `too_slow` naming the last one (what to resume from), then close frame 4001.
/// Returns the numbers it got and the end's id.
async fn buffered_then_too_slow(client: &mut LiveClient, written: usize) -> (Vec<u64>, String) {
    let mut numbers = Vec::new();
    let mut last_id = String::new();
    let end = loop {
        let event = next(client, "buffered events, then the end").await;
        if event.kind == "end" {
            break event;
        }
        assert_eq!(event.kind, "message.created", "{:?}", event.data);
        numbers.push(event.number());
        last_id = event.id;
    };
    assert_eq!(
        (end.data["reason"].as_str(), end.data["resumable"].as_bool()),
        (Some("too_slow"), Some(true)),
        "{:?}",
        end.data
    );
    assert!(
        !numbers.is_empty() && numbers.len() < written,
        "it got some events, then was cut off: {} of {written}",
        numbers.len()
    );
    assert_eq!(
        end.id, last_id,
        "the end names the last event the client got"
    );
    assert_eq!(client.closing(WAIT).await, closed_with(4001, "too_slow"));
    (numbers, end.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_that_closes_gets_its_close_frame_answered_and_a_clean_end() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let c = Client::new(&api.base);
    let token = c.create_app("live").await;
    let chat = c.create_chat(&token).await;
    // 1000 as an application closes, 1001 as a browser leaving the page does.
    for (code, reason) in [(1000, "bye"), (1001, "")] {
        let mut ws = open("ws", &api.base, &token, chat, None).await;
        assert_eq!(
            ws.close_with(code, reason, WAIT).await,
            closed_with(code, reason),
            "the server answers close {code} with the same code, then the connection ends"
        );
        // The subscription went with it.
        eventually(WAIT, "the closed subscription to go", || async {
            api.metric("confab_live_subscriptions{transport=\"websocket\"}")
                .await
                == 0.0
        })
        .await;
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_on_a_chat_that_is_deleted_gets_end_then_close_4004() {
    let env = TestEnv::new().await;
    let api = env
        .spawn_api_with(&[("CONFAB_LIVE_HEARTBEAT_SECS", "1")])
        .await;
    let c = Client::new(&api.base);
    let token = c.create_app("live").await;
    let chat = c.create_chat(&token).await;
    let mut ws = open("ws", &api.base, &token, chat, None).await;
    let path = format!("/api/v1/applications/{token}/chats/{chat}");
    let (status, _) = c.raw(Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    ends_with(&mut ws, "chat_deleted", false, 4004).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_open_at_shutdown_gets_end_then_close_1001_and_the_api_stops() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let c = Client::new(&api.base);
    let token = c.create_app("live").await;
    let chat = c.create_chat(&token).await;
    let mut ws = open("ws", &api.base, &token, chat, None).await;
    c.create_message(&token, chat, "before").await;
    let seen = take(&mut ws, 1).await.remove(0);

    let stopping = tokio::spawn(api.stop());
    let end = ends_with(&mut ws, "shutting_down", true, 1001).await;
    assert_eq!(end.id, seen.id, "the end names the last event delivered");
    stopping
        .await
        .unwrap()
        .expect("the api stops once its stream closed");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_whose_token_is_revoked_gets_end_then_close_1008() {
    let env = admin_env().await;
    let api = env.spawn_api().await;
    let admin = Client::with_bearer(&api.base, ADMIN_TOKEN);
    let token = register(&admin, "team.ws", json!({})).await;
    let c = Client::new(&api.base);
    let chat = c.create_chat(&token).await;
    let mut ws = open("ws", &api.base, &token, chat, None).await;
    let (status, _) = admin
        .send(
            Method::POST,
            "/admin/v1/applications/team.ws/rotate",
            Some(json!({"grace_seconds": 0})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    ends_with(&mut ws, "revoked", false, 1008).await;
    env.cleanup().await;
}

/// Falls a whole ring behind while it does not read (its sockets full, the server waiting on
/// it), then reads again within a heartbeat interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_subscriber_that_stops_reading_finds_end_then_close_4001_and_resumes() {
    let env = TestEnv::new().await;
    let api = env.spawn_api_with(&[("CONFAB_LIVE_BUFFER", "16")]).await;
    let c = Client::new(&api.base);
    let token = c.create_app("live").await;
    let chat = c.create_chat(&token).await;
    let mut stalled = open("ws", &api.base, &token, chat, None).await;
    let mut reader = open("sse", &api.base, &token, chat, None).await;
    // Big events, so the stalled client's socket buffers fill and the server stops writing.
    let body = "x".repeat(60_000);
    // More than loopback's socket buffers take (several MB each way).
    let count = 400;
    for _ in 0..count {
        c.create_message(&token, chat, &body).await;
        // The reader keeps up with the writer, whatever the stalled one does.
        assert_eq!(take(&mut reader, 1).await[0].kind, "message.created");
    }
    let (mut numbers, end_id) = buffered_then_too_slow(&mut stalled, count).await;
    // Resuming from the end's id loses nothing and repeats nothing.
    let mut resumed = open("ws", &api.base, &token, chat, Some(&end_id)).await;
    numbers.extend(created(&take(&mut resumed, count - numbers.len()).await));
    assert_eq!(numbers, (1..=count as u64).collect::<Vec<_>>());
    assert!(
        api.metric("confab_live_subscriptions_ended_total{reason=\"too_slow\"}")
            .await
            >= 1.0
    );
    env.cleanup().await;
}

/// Takes nothing for a whole heartbeat interval (a frame waits on it that long), so it is cut off
/// at once, its subscription gone while its connection is still open; it reads again within the
/// interval the connection is given after that, and still finds the end and the close frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_subscriber_cut_off_for_not_reading_still_finds_end_then_close_4001() {
    let env = TestEnv::new().await;
    // The default ring (512): what ends this subscriber is its stalled socket. With a small
    // one, a burst of the feed could end it first by falling behind, before any event was
    // sent (the test above covers that end).
    let api = env
        .spawn_api_with(&[("CONFAB_LIVE_HEARTBEAT_SECS", "3")])
        .await;
    let c = Client::new(&api.base);
    let token = c.create_app("live").await;
    let chat = c.create_chat(&token).await;
    let mut stalled = open("ws", &api.base, &token, chat, None).await;
    let body = "x".repeat(60_000);
    let cut_off = || async {
        api.metric("confab_live_subscriptions_ended_total{reason=\"too_slow\"}")
            .await
            >= 1.0
    };
    // Until the server, unable to write to it for a heartbeat interval, cuts it off: written
    // one at a time and looked at after each, so the client reads again at once.
    let mut written = 0;
    while written < 400 && !cut_off().await {
        c.create_message(&token, chat, &body).await;
        written += 1;
    }
    eventually(WAIT, "the stalled subscriber to be cut off", cut_off).await;
    eventually(
        Duration::from_secs(1),
        "its subscription to go while its connection is open",
        || async {
            api.metric("confab_live_subscriptions{transport=\"websocket\"}")
                .await
                == 0.0
        },
    )
    .await;

    let (mut numbers, end_id) = buffered_then_too_slow(&mut stalled, written).await;
    let mut resumed = open("ws", &api.base, &token, chat, Some(&end_id)).await;
    numbers.extend(created(&take(&mut resumed, written - numbers.len()).await));
    assert_eq!(numbers, (1..=written as u64).collect::<Vec<_>>());
    env.cleanup().await;
}
