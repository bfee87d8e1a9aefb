//! Live delivery: a chat's events over SSE and WebSocket, resumed exactly after a disconnect or an
//! api restart, in number order under concurrent writers, ended by revocation, slowness and
//! shutdown, and limited per application. How a WebSocket closes (close frames, codes):
//! `websocket.rs`.

use std::time::Duration;

use confab_tests::live::{LiveClient, LiveEvent};
use confab_tests::{eventually, Client, TestEnv};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::quotas::{admin_env, register, ADMIN_TOKEN};

pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// The next event that is not `ready`; fails the test when none comes.
pub(crate) async fn next(client: &mut LiveClient, what: &str) -> LiveEvent {
    loop {
        let event = client
            .next(WAIT)
            .await
            .unwrap_or_else(|| panic!("no event: {what}"));
        if event.kind != "ready" {
            return event;
        }
    }
}

/// Reads `n` message events; fails on an `end` or when they stop coming.
pub(crate) async fn take(client: &mut LiveClient, n: usize) -> Vec<LiveEvent> {
    let mut events = Vec::new();
    while events.len() < n {
        let event = next(client, &format!("event {} of {n}", events.len() + 1)).await;
        assert_ne!(
            event.kind, "end",
            "the stream ended early: {:?}",
            event.data
        );
        events.push(event);
    }
    events
}

pub(crate) fn created(events: &[LiveEvent]) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e.kind == "message.created")
        .map(LiveEvent::number)
        .collect()
}

pub(crate) async fn open(
    transport: &str,
    base: &str,
    token: &str,
    chat: u64,
    since: Option<&str>,
) -> LiveClient {
    let opened = match transport {
        "sse" => LiveClient::sse(base, token, chat, since).await,
        _ => LiveClient::websocket(base, token, chat, since).await,
    };
    let mut client = opened.unwrap_or_else(|e| panic!("{transport} refused: {e:?}"));
    let ready = client.next(WAIT).await.expect("ready");
    assert_eq!(ready.kind, "ready", "{ready:?}");
    client
}

/// Opening an SSE stream from `since` is refused with this status and error code.
async fn refused_with(
    base: &str,
    token: &str,
    chat: u64,
    since: &str,
    (status, code): (u16, &str),
) {
    let (got, body) = LiveClient::sse(base, token, chat, Some(since))
        .await
        .err()
        .unwrap_or_else(|| panic!("{since} is refused"));
    assert_eq!(
        (got, body["error"]["code"].as_str()),
        (status, Some(code)),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_transports_deliver_creations_updates_and_deletions_as_they_happen() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let _persister = env.spawn_persister().await;
    let c = Client::new(&api.base);
    let token = c.create_app("live").await;
    let chat = c.create_chat(&token).await;
    let mut sse = open("sse", &api.base, &token, chat, None).await;
    let mut ws = open("ws", &api.base, &token, chat, None).await;

    for text in ["one", "two", "three"] {
        c.create_message(&token, chat, text).await;
    }
    let path = format!("/api/v1/applications/{token}/chats/{chat}/messages");
    let (status, _) = c
        .send(
            Method::PATCH,
            &format!("{path}/2"),
            Some(json!({"body": "TWO"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = c.raw(Method::DELETE, &format!("{path}/1"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    for client in [&mut sse, &mut ws] {
        let events = take(client, 5).await;
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "message.created",
                "message.created",
                "message.created",
                "message.updated",
                "message.deleted"
            ]
        );
        assert_eq!(created(&events), [1, 2, 3]);
        assert_eq!(events[0].data["body"], "one");
        assert!(events[0].data["created_at"].is_string());
        assert_eq!(
            events[3].data,
            json!({"number": 2, "body": "TWO", "updated_at": events[3].data["updated_at"]})
        );
        assert_eq!(events[4].number(), 1);
        let ids: Vec<u64> = events.iter().map(|e| e.id.parse().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow: {ids:?}");
    }
    ws.close().await;

    // A metric per delivered event, and the latency histogram saw them.
    assert!(
        api.metric("confab_live_events_delivered_total{transport=\"sse\"}")
            .await
            >= 5.0
    );
    assert!(api.metric("confab_live_delivery_seconds_count").await >= 10.0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tokens_chats_and_cursors_are_refused_before_the_stream_opens() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let c = Client::new(&api.base);
    let token = c.create_app("live").await;
    let chat = c.create_chat(&token).await;
    for sse in [true, false] {
        let refused = |r: Result<LiveClient, (u16, serde_json::Value)>| r.err().expect("refused");
        let open = |token: String, chat: u64, since: Option<&'static str>| {
            let base = api.base.clone();
            async move {
                if sse {
                    LiveClient::sse(&base, &token, chat, since).await
                } else {
                    LiveClient::websocket(&base, &token, chat, since).await
                }
            }
        };
        let (status, body) = refused(open("nope".repeat(8), chat, None).await);
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("not_found"))
        );
        let (status, _) = refused(open(token.clone(), chat + 1, None).await);
        assert_eq!(status, 404);
        let (status, body) = refused(open(token.clone(), chat, Some("12.x")).await);
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid_parameter"))
        );
    }

    // A cursor older than what the live stream holds (past its window): 410, re-read the list.
    c.create_message(&token, chat, "kept").await;
    let js =
        async_nats::jetstream::new(async_nats::connect(confab_tests::nats_url()).await.unwrap());
    let mut stream = js.get_stream(format!("T_{}_LIVE", env.id)).await.unwrap();
    confab_tests::eventually(std::time::Duration::from_secs(10), "sourced", || {
        let mut stream = stream.clone();
        async move { stream.info().await.unwrap().state.messages > 0 }
    })
    .await;
    let last = stream.info().await.unwrap().state.last_sequence;
    stream.purge().sequence(last).await.unwrap();
    refused_with(&api.base, &token, chat, "0", (410, "gone")).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_resumes_gets_every_missed_event_once_then_live_ones() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let c = Client::new(&api.base);
    let token = c.create_app("live").await;
    let chat = c.create_chat(&token).await;
    for transport in ["sse", "ws"] {
        let mut client = open(transport, &api.base, &token, chat, None).await;
        c.create_message(&token, chat, "a").await;
        c.create_message(&token, chat, "b").await;
        let seen = take(&mut client, 2).await;
        let last_id = seen[1].id.clone();
        drop(client);
        // Written while the client is away.
        let missed: Vec<u64> = futures::future::join_all((0..5).map(|i| {
            let (c, token) = (c.clone(), token.clone());
            async move { c.create_message(&token, chat, &format!("missed {i}")).await }
        }))
        .await;
        let mut client = open(transport, &api.base, &token, chat, Some(&last_id)).await;
        // Away again in the middle of the replay, and back from the last event it got.
        let mut replayed = take(&mut client, 2).await;
        drop(client);
        let mut client = open(transport, &api.base, &token, chat, Some(&replayed[1].id)).await;
        replayed.extend(take(&mut client, 3).await);
        let mut expected = missed.clone();
        expected.sort_unstable();
        assert_eq!(
            created(&replayed),
            expected,
            "{transport}: in order, no gap, no repeat"
        );
        let live = c.create_message(&token, chat, "live").await;
        assert_eq!(created(&take(&mut client, 1).await), [live]);
        assert!(
            client.next(Duration::from_millis(300)).await.is_none(),
            "nothing more"
        );
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_chat_was_quiet_while_others_were_written_resumes_and_stays_resumable() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let c = Client::new(&api.base);
    let token = c.create_app("live").await;
    let (quiet, busy) = (c.create_chat(&token).await, c.create_chat(&token).await);
    // Keeps the replica's dispatcher running and shows when it has read the busy chat's events.
    let mut watcher = open("sse", &api.base, &token, busy, None).await;
    for transport in ["sse", "ws"] {
        let mut client = open(transport, &api.base, &token, quiet, None).await;
        c.create_message(&token, quiet, "before").await;
        let last_id = take(&mut client, 1).await[0].id.clone();
        drop(client);
        // The quiet chat's feed goes with its last subscriber, while the stream moves on.
        eventually(WAIT, "the quiet chat's feed to go", || async {
            api.metric("confab_live_feeds").await == 1.0
        })
        .await;
        for i in 0..3 {
            c.create_message(&token, busy, &format!("elsewhere {i}"))
                .await;
        }
        take(&mut watcher, 3).await;
        let mut client = open(transport, &api.base, &token, quiet, Some(&last_id)).await;
        let mut ids = Vec::new();
        for text in ["after 1", "after 2"] {
            let number = c.create_message(&token, quiet, text).await;
            let event = take(&mut client, 1).await.remove(0);
            assert_eq!(event.number(), number);
            ids.push(event.id);
        }
        for id in &ids {
            assert!(
                !id.contains('.'),
                "{transport}: nothing of the chat is missing below {id}"
            );
        }
        drop(client);
        // The id is good to resume from: nothing is replayed again, the next event comes.
        let mut client = open(transport, &api.base, &token, quiet, Some(&ids[1])).await;
        let number = c.create_message(&token, quiet, "after 3").await;
        assert_eq!(created(&take(&mut client, 1).await), [number]);
        drop(client);

        // A cursor naming another chat's event above its prefix (sequences are global to the
        // stream) does not hold the prefix back.
        c.create_message(&token, busy, "elsewhere again").await;
        let other = take(&mut watcher, 1).await.remove(0).id;
        let crafted = format!("{}.{other}", ids[0]);
        let mut client = open(transport, &api.base, &token, quiet, Some(&crafted)).await;
        let replayed = take(&mut client, 2).await;
        assert_eq!(
            [&replayed[0].data["body"], &replayed[1].data["body"]],
            ["after 2", "after 3"]
        );
        let number = c.create_message(&token, quiet, "after 4").await;
        let event = take(&mut client, 1).await.remove(0);
        assert_eq!(event.number(), number);
        assert!(!event.id.contains('.'), "{transport}: {}", event.id);
        drop(client);
        eventually(WAIT, "the quiet chat's feed to go", || async {
            api.metric("confab_live_feeds").await == 1.0
        })
        .await;
    }
    // A cursor beyond what the stream holds would swallow every live event: refused.
    refused_with(
        &api.base,
        &token,
        quiet,
        "999999999",
        (400, "invalid_parameter"),
    )
    .await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_survives_an_api_restart_by_resuming_on_another_replica() {
    let env = TestEnv::new().await;
    let first = env.spawn_api().await;
    let c = Client::new(&first.base);
    let token = c.create_app("live").await;
    let chat = c.create_chat(&token).await;
    let mut client = open("sse", &first.base, &token, chat, None).await;
    let mut ws = open("ws", &first.base, &token, chat, None).await;
    c.create_message(&token, chat, "before").await;
    let before = take(&mut client, 1).await;
    take(&mut ws, 1).await;

    // Graceful shutdown ends the streams with a reconnect hint instead of hanging the drain,
    // WebSocket ones too (whose connections the server no longer tracks once upgraded).
    let stopping = tokio::spawn(first.stop());
    for client in [&mut client, &mut ws] {
        let end = next(client, "the end of the stream").await;
        assert_eq!(end.kind, "end");
        assert_eq!(
            (end.data["reason"].as_str(), end.data["resumable"].as_bool()),
            (Some("shutting_down"), Some(true))
        );
    }
    stopping
        .await
        .unwrap()
        .expect("the api stops with its streams open");

    let second = env.spawn_api().await;
    let c = Client::new(&second.base);
    let during: Vec<u64> = [
        c.create_message(&token, chat, "x").await,
        c.create_message(&token, chat, "y").await,
    ]
    .to_vec();
    let mut client = open("sse", &second.base, &token, chat, Some(&before[0].id)).await;
    assert_eq!(created(&take(&mut client, 2).await), during);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_are_delivered_in_number_order() {
    let env = TestEnv::new().await;
    let api = env
        .spawn_api_with(&[("CONFAB_LIVE_REORDER_MS", "2000")])
        .await;
    let c = Client::new(&api.base);
    let token = c.create_app("live").await;
    let chat = c.create_chat(&token).await;
    let mut sse = open("sse", &api.base, &token, chat, None).await;
    let mut ws = open("ws", &api.base, &token, chat, None).await;
    let writers = (0..8).map(|w| {
        let (c, token) = (c.clone(), token.clone());
        tokio::spawn(async move {
            for i in 0..25 {
                c.create_message(&token, chat, &format!("w{w} m{i}")).await;
            }
        })
    });
    for writer in futures::future::join_all(writers).await {
        writer.unwrap();
    }
    let expected: Vec<u64> = (1..=200).collect();
    assert_eq!(created(&take(&mut sse, 200).await), expected);
    assert_eq!(created(&take(&mut ws, 200).await), expected);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_the_token_ends_its_streams_and_the_quota_counts_across_replicas() {
    let env = admin_env().await;
    let one = env.spawn_api().await;
    let two = env.spawn_api().await;
    let admin = Client::with_bearer(&one.base, ADMIN_TOKEN);
    let token = register(&admin, "team.live", json!({"max_subscriptions": 2})).await;
    let c = Client::new(&one.base);
    let chat = c.create_chat(&token).await;

    let mut a = open("sse", &one.base, &token, chat, None).await;
    let b = open("ws", &two.base, &token, chat, None).await;
    let (status, body) = LiveClient::sse(&two.base, &token, chat, None)
        .await
        .err()
        .expect("429");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("subscription_limit_reached")),
        "{body}"
    );
    assert_eq!(
        one.metric("confab_quota_rejections_total{quota=\"subscriptions\"}")
            .await
            + two
                .metric("confab_quota_rejections_total{quota=\"subscriptions\"}")
                .await,
        1.0
    );
    // A closed subscription gives its place back.
    b.close().await;
    eventually(WAIT, "a place is free again", || async {
        LiveClient::sse(&one.base, &token, chat, None).await.is_ok()
    })
    .await;

    let (status, _) = admin
        .send(
            Method::POST,
            "/admin/v1/applications/team.live/rotate",
            Some(json!({"grace_seconds": 0})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let end = next(&mut a, "the revocation").await;
    assert_eq!(end.kind, "end");
    assert_eq!(
        (end.data["reason"].as_str(), end.data["resumable"].as_bool()),
        (Some("revoked"), Some(false))
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_chat_ends_its_streams() {
    let env = TestEnv::new().await;
    let api = env
        .spawn_api_with(&[("CONFAB_LIVE_HEARTBEAT_SECS", "1")])
        .await;
    let c = Client::new(&api.base);
    let token = c.create_app("live").await;
    let chat = c.create_chat(&token).await;
    let mut sse = open("sse", &api.base, &token, chat, None).await;
    let mut ws = open("ws", &api.base, &token, chat, None).await;
    let path = format!("/api/v1/applications/{token}/chats/{chat}");
    let (status, _) = c.raw(Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for client in [&mut sse, &mut ws] {
        let end = next(client, "the end").await;
        assert_eq!(
            (
                end.kind.as_str(),
                end.data["reason"].as_str(),
                end.data["resumable"].as_bool()
            ),
            ("end", Some("chat_deleted"), Some(false))
        );
    }
    let (status, _) = LiveClient::sse(&api.base, &token, chat, None)
        .await
        .err()
        .expect("404");
    assert_eq!(status, 404);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_cut_off_without_holding_others_back_and_resumes() {
    let env = TestEnv::new().await;
    let api = env.spawn_api_with(&[("CONFAB_LIVE_BUFFER", "16")]).await;
    let c = Client::new(&api.base);
    let token = c.create_app("live").await;
    let chat = c.create_chat(&token).await;
    let mut stalled = open("sse", &api.base, &token, chat, None).await;
    let mut reader = open("ws", &api.base, &token, chat, None).await;
    // Big events, so the stalled client's socket buffers fill and the server stops writing.
    let body = "x".repeat(60_000);
    // More than loopback's socket buffers take (several MB each way).
    let count = 400;
    for _ in 0..count {
        c.create_message(&token, chat, &body).await;
        // The reader keeps up with the writer, whatever the stalled one does.
        assert_eq!(take(&mut reader, 1).await[0].kind, "message.created");
    }
    // It reads what the sockets buffered, then the end (it fell more than the ring behind), then
    // resumes from its last id with no gap.
    let mut numbers = Vec::new();
    let mut last_id = String::new();
    loop {
        let event = next(&mut stalled, "buffered events, then the end").await;
        if event.kind == "end" {
            assert_eq!(event.data["reason"], "too_slow");
            break;
        }
        numbers.push(event.number());
        last_id = event.id;
    }
    assert!(numbers.len() < count, "it was cut off: {}", numbers.len());
    let mut resumed = open("sse", &api.base, &token, chat, Some(&last_id)).await;
    numbers.extend(created(&take(&mut resumed, count - numbers.len()).await));
    assert_eq!(numbers, (1..=count as u64).collect::<Vec<_>>());
    assert!(
        api.metric("confab_live_subscriptions_ended_total{reason=\"too_slow\"}")
            .await
            >= 1.0
    );
    assert!(api.metric("confab_live_events_dropped_total").await > 0.0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_that_never_reads_again_is_cut_off_while_its_connection_is_still_open() {
    let env = TestEnv::new().await;
    let api = env
        .spawn_api_with(&[
            ("CONFAB_LIVE_BUFFER", "16"),
            ("CONFAB_LIVE_HEARTBEAT_SECS", "1"),
        ])
        .await;
    let c = Client::new(&api.base);
    let token = c.create_app("live").await;
    let chat = c.create_chat(&token).await;
    let stalled = open("sse", &api.base, &token, chat, None).await;
    let body = "x".repeat(60_000);
    // Until the server can no longer write to it: its socket buffers are full.
    for _ in 0..400 {
        c.create_message(&token, chat, &body).await;
    }
    // Its subscription (and lease, and place in the feed) goes although it never reads again.
    eventually(WAIT, "the stalled subscription to end", || async {
        api.metric("confab_live_subscriptions{transport=\"sse\"}")
            .await
            == 0.0
    })
    .await;
    assert!(
        api.metric("confab_live_subscriptions_ended_total{reason=\"too_slow\"}")
            .await
            >= 1.0
    );
    drop(stalled);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_keeps_its_ids_contiguous_and_ready_names_the_point_resumed_from() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let c = Client::new(&api.base);
    let token = c.create_app("live").await;
    let chat = c.create_chat(&token).await;
    let path = format!("/api/v1/applications/{token}/chats/{chat}/messages");
    for transport in ["sse", "ws"] {
        let mut client = open(transport, &api.base, &token, chat, None).await;
        c.create_message(&token, chat, "seen").await;
        let since = take(&mut client, 1).await.remove(0).id;
        drop(client);
        // Creations and updates interleaved in the stream, more than a cursor may name above
        // its prefix if the replay put all creations first.
        let mut numbers = Vec::new();
        for i in 0..(confab_core::live::MAX_CURSOR_GAPS as u64 + 10) {
            let number = c.create_message(&token, chat, &format!("m{i}")).await;
            let (status, _) = c
                .send(
                    Method::PATCH,
                    &format!("{path}/{number}"),
                    Some(json!({"body": format!("m{i}!")})),
                )
                .await;
            assert_eq!(status, StatusCode::OK);
            numbers.push(number);
        }
        let mut client = match transport {
            "sse" => LiveClient::sse(&api.base, &token, chat, Some(&since)).await,
            _ => LiveClient::websocket(&api.base, &token, chat, Some(&since)).await,
        }
        .unwrap_or_else(|e| panic!("{transport} refused: {e:?}"));
        let ready = client.next(WAIT).await.expect("ready");
        assert_eq!(ready.kind, "ready");
        assert_eq!(
            ready.data["id"], since,
            "{transport}: before its replay the client stands where it resumed from"
        );
        let replayed = take(&mut client, numbers.len() * 2).await;
        for (pair, number) in replayed.chunks(2).zip(&numbers) {
            assert_eq!(
                (pair[0].kind.as_str(), pair[1].kind.as_str()),
                ("message.created", "message.updated")
            );
            assert_eq!((pair[0].number(), pair[1].number()), (*number, *number));
            for event in pair {
                assert!(!event.id.contains('.'), "{transport}: {}", event.id);
            }
        }
    }
    env.cleanup().await;
}
