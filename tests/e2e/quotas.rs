//! Quotas against the real Redis with two api replicas: the message rate holds across both and
//! allows bursts, 429s carry `Retry-After`, the chat limit is exact under concurrency, bodies over
//! the application's limit are 413, and changes apply within the cache TTL, without restarts.

use std::time::Duration;

use confab_tests::{eventually, Client, TestEnv};
use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::json;

pub const ADMIN_TOKEN: &str = "test-admin-credential";

/// An environment whose api instances accept [`ADMIN_TOKEN`] and re-read quotas every 200 ms.
pub async fn admin_env() -> TestEnv {
    TestEnv::with(|env| {
        env.insert("CONFAB_ADMIN_TOKEN".into(), ADMIN_TOKEN.into());
        env.insert("CONFAB_TOKEN_CACHE_TTL_MS".into(), "200".into());
    })
    .await
}

/// Registers application `key` with `quotas` through the admin API; returns its token.
pub async fn register(admin: &Client, key: &str, quotas: serde_json::Value) -> String {
    let (status, body) = admin
        .send(
            Method::PUT,
            &format!("/admin/v1/applications/{key}"),
            Some(json!({"name": key, "quotas": quotas})),
        )
        .await;
    assert!(status.is_success(), "{status} {body}");
    body["token"].as_str().expect("token").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_rate_holds_across_two_replicas_allows_bursts_and_says_when_to_retry() {
    let env = admin_env().await;
    let (a, b) = (env.spawn_api().await, env.spawn_api().await);
    let admin = Client::with_bearer(&a.base, ADMIN_TOKEN);
    let token = register(
        &admin,
        "rate",
        json!({"messages_per_second": 1, "message_burst": 10}),
    )
    .await;
    let (ca, cb) = (Client::new(&a.base), Client::new(&b.base));
    let chat = ca.create_chat(&token).await;

    // 30 at once, split over both replicas: the burst (10) passes, plus at most what one second
    // of the sustained rate adds while the requests are in flight.
    let path = format!("/api/v1/applications/{token}/chats/{chat}/messages");
    let started = std::time::Instant::now();
    let answers = join_all((0..30).map(|i| {
        let client = if i % 2 == 0 { ca.clone() } else { cb.clone() };
        let path = path.clone();
        async move {
            client
                .full(Method::POST, &path, Some(r#"{"body":"hi"}"#))
                .await
        }
    }))
    .await;
    // What one second per second adds while the burst is in flight (a loaded machine is slow).
    let refill = started.elapsed().as_secs() as usize + 1;
    let created = answers
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::CREATED)
        .count();
    assert!(
        (10..=10 + refill).contains(&created),
        "burst of 10 at 1/s across two replicas, got {created} created"
    );
    for (status, headers, body) in answers.iter().filter(|(s, _, _)| *s != StatusCode::CREATED) {
        assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(body["error"]["code"], "rate_limited");
        let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=2).contains(&retry), "Retry-After {retry}");
    }
    // The IETF RateLimit headers, from the same limiter state: every answer states the policy
    // (burst 10, refilled in 10 s); each admission leaves a different number of requests (they
    // count down the burst), a refusal leaves none and says when to come back.
    let header = |headers: &reqwest::header::HeaderMap, name: &str| {
        headers[name].to_str().unwrap().to_owned()
    };
    let mut remaining = Vec::new();
    for (status, headers, _) in &answers {
        assert_eq!(
            header(headers, "ratelimit-policy"),
            r#""messages";q=10;w=10"#
        );
        let state = header(headers, "ratelimit");
        let r: u64 = state
            .split(";r=")
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .unwrap()
            .parse()
            .unwrap();
        if *status == StatusCode::CREATED {
            remaining.push(r);
        } else {
            assert!(state.starts_with(r#""messages";r=0;t="#), "{state}");
        }
    }
    // The burst counts down from 9 (the first admission, once: a whole burst comes back only
    // after 10 idle seconds) to 0 (it was used up); a refill while the requests were in flight
    // may give a count twice, never more than the burst.
    remaining.sort_unstable();
    assert_eq!(
        remaining.iter().filter(|r| **r == 9).count(),
        1,
        "{remaining:?}"
    );
    assert_eq!(remaining.first(), Some(&0), "{remaining:?}");
    assert!(remaining.iter().all(|r| *r <= 9), "{remaining:?}");
    // Numbers stay dense: the rejected requests took none.
    let mut numbers: Vec<u64> = answers
        .iter()
        .filter_map(|(_, _, body)| body["number"].as_u64())
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=created as u64).collect::<Vec<_>>());

    // After waiting as told, the next one passes.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = cb.try_create_message(&token, chat, "later").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let series = r#"confab_quota_rejections_total{quota="message_rate"}"#;
    let rejected = a.metric(series).await + b.metric(series).await;
    assert_eq!(
        rejected as usize,
        30 - created,
        "every rejection is counted"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_limit_is_exact_under_concurrency_and_changes_without_restart() {
    let env = admin_env().await;
    let (a, b) = (env.spawn_api().await, env.spawn_api().await);
    let admin = Client::with_bearer(&a.base, ADMIN_TOKEN);
    let token = register(&admin, "chats", json!({"max_chats": 5})).await;
    let (ca, cb) = (Client::new(&a.base), Client::new(&b.base));
    let path = format!("/api/v1/applications/{token}/chats");
    let answers = join_all((0..20).map(|i| {
        let client = if i % 2 == 0 { ca.clone() } else { cb.clone() };
        let path = path.clone();
        async move { client.send(Method::POST, &path, None).await }
    }))
    .await;
    let mut numbers: Vec<u64> = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .map(|(_, body)| body["number"].as_u64().unwrap())
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, vec![1, 2, 3, 4, 5], "exactly the limit, no gaps");
    for (status, body) in answers.iter().filter(|(s, _)| *s != StatusCode::CREATED) {
        assert_eq!(*status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["error"]["code"], "chat_limit_reached");
    }

    // Raising the limit takes effect on both replicas within the cache TTL.
    register(&admin, "chats", json!({"max_chats": 6})).await;
    eventually(Duration::from_secs(5), "new limit applies", || async {
        cb.send(Method::POST, &path, None).await.0 == StatusCode::CREATED
    })
    .await;
    let (status, _) = ca.send(Method::POST, &path, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "6 is the new limit");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_application_limit_are_413_and_rest_apps_get_the_defaults() {
    let env = admin_env().await;
    let api = env
        .spawn_api_with(&[
            ("CONFAB_DEFAULT_MAX_CHATS", "2"),
            ("CONFAB_DEFAULT_MAX_SUBSCRIPTIONS", "3"),
        ])
        .await;
    let admin = Client::with_bearer(&api.base, ADMIN_TOKEN);
    let c = Client::new(&api.base);
    let token = register(&admin, "small", json!({"max_body_bytes": 10})).await;
    // The quotas in force: what was asked for, the configured defaults elsewhere, read back from
    // MySQL (the subscription limit is enforced by the live endpoints).
    let (_, shown) = admin.get("/admin/v1/applications/small").await;
    assert_eq!(shown["quotas"]["max_body_bytes"], 10);
    assert_eq!(shown["quotas"]["max_chats"], 2);
    assert_eq!(shown["quotas"]["max_subscriptions"], 3);
    register(
        &admin,
        "small",
        json!({"max_body_bytes": 10, "max_subscriptions": 7}),
    )
    .await;
    let (_, shown) = admin.get("/admin/v1/applications/small").await;
    assert_eq!(shown["quotas"]["max_subscriptions"], 7);
    assert_eq!(shown["requested_quotas"]["max_subscriptions"], 7);
    let chat = c.create_chat(&token).await;
    let (status, body) = c.try_create_message(&token, chat, "0123456789").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = c.try_create_message(&token, chat, "0123456789a").await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");

    // An application made through the tenant API has the configured defaults.
    let rest = c.create_app("rest").await;
    c.create_chat(&rest).await;
    c.create_chat(&rest).await;
    let (status, body) = c
        .send(
            Method::POST,
            &format!("/api/v1/applications/{rest}/chats"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    env.cleanup().await;
}
