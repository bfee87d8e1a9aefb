//! Search end to end: the api, the indexer (embedded backend) and the persister against the real
//! MariaDB, Redis and NATS.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use confab_core::event::MessageWritten;
use confab_core::{Envelope, Event};
use confab_search::embedded::{Embedded, Shared};
use confab_search::remote::Remote;
use confab_search::{SearchBackend, SearchDoc, SearchRequest, Terms};
use confab_tests::{eventually, Client, TestEnv};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::quotas::{admin_env, register, ADMIN_TOKEN};

async fn numbers(c: &Client, path: &str) -> (StatusCode, BTreeSet<u64>) {
    let (status, body) = c.get(path).await;
    let set = body
        .as_array()
        .map(|hits| hits.iter().filter_map(|h| h["number"].as_u64()).collect())
        .unwrap_or_default();
    (status, set)
}

fn set(items: &[u64]) -> BTreeSet<u64> {
    items.iter().copied().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_partial_matches_within_one_chat_through_the_api() {
    let env = TestEnv::new().await;
    let indexer = env.spawn_indexer_with(&[]).await;
    let api = env
        .spawn_api_with(&[("CONFAB_SEARCH_URL", &indexer.base)])
        .await;
    let c = Client::new(&api.base);
    let token = c.create_app("searchable").await;
    let other = c.create_app("other").await;
    for _ in 0..2 {
        c.create_chat(&token).await;
    }
    c.create_chat(&other).await;
    for body in ["Hello world", "The quick brown fox", "hello again"] {
        c.create_message(&token, 1, body).await;
    }
    c.create_message(&token, 2, "hello from chat two").await;
    c.create_message(&other, 1, "hello other app").await;

    let s = |q: &str| format!("/api/v1/applications/{token}/chats/1/messages/search?query={q}");
    let in_chat_two = format!("/api/v1/applications/{token}/chats/2/messages/search?query=hello");
    let in_other_app = format!("/api/v1/applications/{other}/chats/1/messages/search?query=hello");
    // Every message indexed (the indexer may take them in more than one batch), then the checks.
    eventually(Duration::from_secs(10), "messages searchable", || async {
        numbers(&c, &s("ell")).await.1 == set(&[1, 3])
            && numbers(&c, &in_chat_two).await.1 == set(&[1])
            && numbers(&c, &in_other_app).await.1 == set(&[1])
    })
    .await;
    assert_eq!(numbers(&c, &s("wor%20hel")).await.1, set(&[1]));
    assert_eq!(numbers(&c, &s("HELLO")).await.1, set(&[1, 3]));
    let (_, hits) = c.get(&s("hello%20world")).await;
    assert_eq!(hits[0]["number"], 1, "the best match first: {hits}");
    assert_eq!(hits[0]["body"], "Hello world");
    // `q`, the unprefixed route and pagination.
    let (status, quick) = numbers(
        &c,
        &format!("/applications/{token}/chats/1/messages/search?q=QUICK"),
    )
    .await;
    assert_eq!((status, quick), (StatusCode::OK, set(&[2])));
    // A page past the result window (10,000 hits) is empty, without a next link.
    let (status, headers, past) = c
        .full(
            reqwest::Method::GET,
            &format!("{}&per_page=500&page=21", s("hello")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(past, serde_json::json!([]));
    assert!(!headers["link"].to_str().unwrap().contains("rel=\"next\""));
    // Two hits, one per page: the first page links on, the second back, not on.
    let (_, first, page1) = c
        .full(
            reqwest::Method::GET,
            &format!("{}&per_page=1", s("hello")),
            None,
        )
        .await;
    assert_eq!(page1.as_array().unwrap().len(), 1);
    let link = first["link"].to_str().unwrap();
    assert!(link.contains("page=2&per_page=1>; rel=\"next\""), "{link}");
    let (_, second, page2) = c
        .full(
            reqwest::Method::GET,
            &format!("{}&per_page=1&page=2", s("hello")),
            None,
        )
        .await;
    assert_eq!(page2.as_array().unwrap().len(), 1);
    let link = second["link"].to_str().unwrap();
    assert!(
        link.contains("rel=\"prev\"") && !link.contains("rel=\"next\""),
        "{link}"
    );

    // No query at all is a 400, as a one-letter query is.
    let (status, error) = c
        .get(&format!(
            "/api/v1/applications/{token}/chats/1/messages/search"
        ))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert_eq!(error["error"]["code"], "invalid_query");
    // A query without a word of two letters finds nothing.
    for path in [s("%21%20%3F")] {
        let (status, hits) = c.get(&path).await;
        assert_eq!(
            (status, hits),
            (StatusCode::OK, serde_json::json!([])),
            "{path}"
        );
    }

    // Bad requests.
    for (path, status, code) in [
        (s(""), 400, "invalid_query"),
        (s("%21"), 400, "invalid_query"),
        (s(&"a".repeat(201)), 400, "invalid_query"),
        (
            format!("/api/v1/applications/{token}/chats/1/messages/search?query=hello&q=x"),
            400,
            "invalid_query",
        ),
        (
            format!("/api/v1/applications/{token}/chats/9/messages/search?query=hello"),
            404,
            "not_found",
        ),
        (
            format!(
                "/api/v1/applications/{}/chats/1/messages/search?query=hello",
                "0".repeat(48)
            ),
            404,
            "not_found",
        ),
        (
            format!("{}&per_page=0", s("hello")),
            400,
            "invalid_parameter",
        ),
    ] {
        let (got, body) = c.get(&path).await;
        assert_eq!(got.as_u16(), status, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
    }

    // An update replaces the old text.
    let (status, _) = c
        .send(
            Method::PATCH,
            &format!("/api/v1/applications/{token}/chats/1/messages/2"),
            Some(json!({"body": "a lazy dog"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    eventually(Duration::from_secs(10), "update searchable", || async {
        numbers(&c, &s("lazy")).await.1 == set(&[2]) && numbers(&c, &s("quick")).await.1.is_empty()
    })
    .await;

    let metrics = reqwest::get(format!("{}/metrics", indexer.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        r#"confab_search_documents_indexed_total{backend="embedded"}"#,
        r#"confab_index_lag_seconds_bucket{type="message.created""#,
        r#"confab_search_bulk_duration_seconds_bucket{backend="embedded",outcome="ok""#,
        r#"confab_events_consumed_total{service="indexer",type="message.updated"}"#,
    ] {
        assert!(metrics.contains(series), "indexer metrics lack {series}");
    }

    api.stop().await.unwrap();
    indexer.stop().await.unwrap();
    env.cleanup().await;
}

/// Asks the running indexer to rebuild its index from MySQL; returns the finished run's status.
async fn rebuild(indexer: &str) -> serde_json::Value {
    let http = reqwest::Client::new();
    let url = format!("{indexer}/internal/reindex");
    assert_eq!(
        http.post(&url).send().await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    let status = || async {
        let status: serde_json::Value = http.get(&url).send().await.unwrap().json().await.unwrap();
        status
    };
    eventually(Duration::from_secs(30), "rebuilt", || async {
        let s = status().await;
        s["completed_runs"] == 1 && s["running"] == false
    })
    .await;
    status().await
}

/// Every hit for `query` in a chat, paging through 500 at a time.
/// Every hit of `query`, over all pages; a failing search fails the test (an indexer answering
/// 503 must not read as "nothing found").
async fn all_hits(search: &Remote, app: u64, chat: u64, query: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for page in 0.. {
        let request = SearchRequest {
            application_id: app,
            chat_number: chat,
            terms: Terms::parse(query).unwrap(),
            limit: 500,
            offset: page * 500,
        };
        let hits = search
            .search(&request)
            .await
            .unwrap_or_else(|error| panic!("search for {query:?} failed: {error}"));
        if hits.is_empty() {
            break;
        }
        out.extend(hits.iter().map(|h| h.number));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_indexer_mid_batch_leaves_every_message_searchable_exactly_once() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let c = Client::new(&api.base);
    let token = c.create_app("crashy search").await;
    c.create_chat(&token).await;
    let app = env.application_id(&token).await;
    futures::stream::iter(0..1500u64)
        .map(|i| {
            let (c, token) = (c.clone(), token.clone());
            async move {
                c.create_message(&token, 1, &format!("common uniq{i}x"))
                    .await
            }
        })
        .buffer_unordered(100)
        .collect::<Vec<_>>()
        .await;

    let indexer = env
        .spawn_indexer_with(&[
            ("CONFAB_INDEX_BATCH_SIZE", "50"),
            ("CONFAB_ACK_WAIT_SECS", "3"),
        ])
        .await;
    let search = Remote::new(&indexer.base, Duration::from_secs(5)).unwrap();
    eventually(
        Duration::from_secs(30),
        "first documents searchable",
        || async { !all_hits(&search, app, 1, "common").await.is_empty() },
    )
    .await;
    indexer.kill().await;
    // The kill came mid-work: events were still to be indexed or acknowledged.
    let backlog = env.consumer_backlog("confab-indexer").await;
    assert!(
        backlog > 0,
        "the kill came after everything was indexed and acknowledged"
    );

    let indexer = env.spawn_indexer_with(&[]).await;
    let search = Remote::new(&indexer.base, Duration::from_secs(5)).unwrap();
    eventually(Duration::from_secs(60), "all 1500 searchable", || async {
        all_hits(&search, app, 1, "common").await.len() >= 1500
    })
    .await;
    let hits = all_hits(&search, app, 1, "common").await;
    assert_eq!(hits.len(), 1500, "no duplicate documents");
    assert_eq!(hits.iter().copied().collect::<BTreeSet<_>>().len(), 1500);
    for i in (0..1500).step_by(97) {
        let found = all_hits(&search, app, 1, &format!("uniq{i}x")).await;
        assert_eq!(found.len(), 1, "uniq{i}x found once");
    }

    indexer.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_rebuilds_the_index_from_mysql() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let persister = env.spawn_persister().await;
    let c = Client::new(&api.base);
    let token = c.create_app("rebuild").await;
    c.create_chat(&token).await;
    let app = env.application_id(&token).await;
    for i in 0..300 {
        c.create_message(&token, 1, &format!("common number {i}"))
            .await;
    }
    eventually(Duration::from_secs(20), "persisted", || async {
        env.count("SELECT COUNT(*) FROM messages").await == 300
    })
    .await;
    persister.stop().await.unwrap();
    // The events are gone (expired, say): only MySQL has the messages.
    let js =
        async_nats::jetstream::new(async_nats::connect(confab_tests::nats_url()).await.unwrap());
    js.get_stream(format!("T_{}", env.id))
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();

    let indexer = env.spawn_indexer_with(&[]).await;
    let search = Remote::new(&indexer.base, Duration::from_secs(5)).unwrap();
    assert!(all_hits(&search, app, 1, "common").await.is_empty());
    let status = rebuild(&indexer.base).await;
    assert_eq!(status["indexed"], 300);
    assert_eq!(all_hits(&search, app, 1, "common").await.len(), 300);
    // "42" is also inside 142 and 242; the whole-word match ("common number 42", message 43)
    // ranks first.
    let hits = all_hits(&search, app, 1, "number 42").await;
    assert_eq!(hits.len(), 3);
    assert_eq!(hits[0], 43);

    indexer.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_application_removes_its_documents_and_drops_its_late_events() {
    let env = admin_env().await;
    let api = env.spawn_api().await;
    let persister = env.spawn_persister().await;
    let admin = Client::with_bearer(&api.base, ADMIN_TOKEN);
    let c = Client::new(&api.base);
    let doomed = register(&admin, "doomed", json!({})).await;
    let kept = register(&admin, "kept", json!({})).await;
    for token in [&doomed, &kept] {
        for chat in 1..=2 {
            assert_eq!(c.create_chat(token).await, chat);
            c.create_message(token, chat, "findable words").await;
        }
    }
    let (doomed_id, kept_id) = (
        env.application_id(&doomed).await,
        env.application_id(&kept).await,
    );
    let indexer = env
        .spawn_indexer_with(&[
            ("CONFAB_SEARCH_PURGE_INTERVAL_MS", "100"),
            ("CONFAB_SEARCH_PURGE_GRACE_MS", "500"),
        ])
        .await;
    let search = Remote::new(&indexer.base, Duration::from_secs(5)).unwrap();
    let hits = |app: u64, chat: u64| {
        let search = &search;
        async move { all_hits(search, app, chat, "findable").await.len() }
    };
    eventually(Duration::from_secs(20), "all four searchable", || async {
        hits(doomed_id, 1).await
            + hits(doomed_id, 2).await
            + hits(kept_id, 1).await
            + hits(kept_id, 2).await
            == 4
    })
    .await;

    eventually(Duration::from_secs(20), "all four persisted", || async {
        env.count("SELECT COUNT(*) FROM messages").await == 4
    })
    .await;

    let (status, _) = admin
        .raw(Method::DELETE, "/admin/v1/applications/doomed", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    eventually(Duration::from_secs(10), "purged from the index", || async {
        hits(doomed_id, 1).await + hits(doomed_id, 2).await == 0
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "a purge began after the grace period: the purge is final",
        || async {
            env.count(&format!(
                "SELECT COUNT(*) FROM applications WHERE id = {doomed_id} \
                 AND search_purged_at >= deleted_at + INTERVAL 500000 MICROSECOND"
            ))
            .await
                == 1
        },
    )
    .await;

    // An event of the deleted application still in the stream (published straight onto it, as
    // one in flight would be) is dropped, not indexed; a later event of another one is indexed.
    let js =
        async_nats::jetstream::new(async_nats::connect(confab_tests::nats_url()).await.unwrap());
    let late = Envelope::new(Event::MessageCreated(MessageWritten {
        application_id: doomed_id,
        chat_number: 1,
        number: 2,
        body: "findable late".into(),
    }));
    js.publish(
        format!("t_{}.v1.message.created.{doomed_id}.1", env.id),
        late.encode().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    c.create_message(&kept, 1, "findable after").await;
    eventually(
        Duration::from_secs(10),
        "the later event indexed",
        || async { hits(kept_id, 1).await == 2 },
    )
    .await;
    assert_eq!(hits(doomed_id, 1).await, 0, "the late event was dropped");
    assert_eq!(hits(kept_id, 2).await, 1, "other applications keep theirs");

    // A rebuild from MySQL, where the deleted application's rows still are (no counter
    // reconciler runs here to purge them), skips them.
    eventually(
        Duration::from_secs(20),
        "the later message persisted",
        || async { env.count("SELECT COUNT(*) FROM messages").await == 5 },
    )
    .await;
    let status = rebuild(&indexer.base).await;
    assert_eq!(status["indexed"], 3, "only the live application's messages");
    assert_eq!(hits(doomed_id, 1).await + hits(doomed_id, 2).await, 0);
    assert_eq!(hits(kept_id, 1).await + hits(kept_id, 2).await, 3);

    persister.stop().await.unwrap();
    indexer.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_written_while_its_application_was_deleted_is_removed_again() {
    let env = admin_env().await;
    let api = env.spawn_api().await;
    let admin = Client::with_bearer(&api.base, ADMIN_TOKEN);
    let doomed = register(&admin, "doomed", json!({})).await;
    let kept = register(&admin, "kept", json!({})).await;
    let (doomed_id, kept_id) = (
        env.application_id(&doomed).await,
        env.application_id(&kept).await,
    );
    let backend = Shared(Arc::new(Embedded::in_memory().unwrap()));
    let doc = |application_id| SearchDoc {
        application_id,
        chat_number: 1,
        number: 1,
        body: "findable".into(),
        version: 1,
    };
    // The worker found neither deleted, then the deletion landed while it wrote the batch.
    backend
        .index(&[doc(doomed_id), doc(kept_id)])
        .await
        .unwrap();
    let (status, _) = admin
        .raw(Method::DELETE, "/admin/v1/applications/doomed", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    confab_indexer::purge::delete_if_deleted(&env.db, &backend, &[doc(doomed_id), doc(kept_id)])
        .await
        .unwrap();
    let found = |application_id| {
        let backend = &backend;
        async move {
            let request = SearchRequest {
                application_id,
                chat_number: 1,
                terms: Terms::parse("findable").unwrap(),
                limit: 10,
                offset: 0,
            };
            backend.search(&request).await.unwrap().len()
        }
    };
    assert_eq!(
        found(doomed_id).await,
        0,
        "the deleted application's document is gone"
    );
    assert_eq!(
        found(kept_id).await,
        1,
        "the live application's document stays"
    );

    api.stop().await.unwrap();
    env.cleanup().await;
}
