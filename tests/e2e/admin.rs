//! The admin API for real: credentials, idempotent registration, rotation with a grace period,
//! deletion, and its place in the OpenAPI document.

use std::time::Duration;

use confab_tests::{eventually, Client, TestEnv};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::quotas::{admin_env, register, ADMIN_TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_rejects_missing_or_wrong_credentials() {
    let env = admin_env().await;
    let api = env.spawn_api().await;
    let path = "/admin/v1/applications/x";
    let body = Some(r#"{"name":"x"}"#);
    for client in [
        Client::new(&api.base),
        Client::with_bearer(&api.base, "wrong"),
        Client::with_bearer(&api.base, &format!("{ADMIN_TOKEN}x")),
    ] {
        let (status, headers, json) = client.full(Method::PUT, path, body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{json}");
        assert_eq!(json["error"]["code"], "unauthorized");
        assert_eq!(headers["www-authenticate"], "Bearer");
    }
    assert_eq!(env.count("SELECT COUNT(*) FROM applications").await, 0);

    // Without a configured credential the admin API is locked, whatever is presented.
    let locked = env.spawn_api_with(&[("CONFAB_ADMIN_TOKEN", "")]).await;
    let (status, _) = Client::with_bearer(&locked.base, "")
        .raw(Method::PUT, path, body)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let admin = Client::with_bearer(&api.base, ADMIN_TOKEN);
    let (status, json) = admin
        .raw(Method::PUT, "/admin/v1/applications/bad%2Fkey", body)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
    let (status, json) = admin
        .send(
            Method::PUT,
            path,
            Some(json!({"name": "x", "quotas": {"message_burst": 0}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{json}");
    let (status, json) = admin
        .send(
            Method::PUT,
            path,
            Some(json!({"name": "x", "quotas": {"max_subscriptions": 1_000_001}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{json}");
    assert!(
        json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("max_subscriptions")),
        "{json}"
    );
    let (status, json) = admin
        .send(Method::PUT, path, Some(json!({"name": "x", "typo": 1})))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{json}");

    let (_, doc) = Client::new(&api.base).get("/api/v1/openapi.json").await;
    assert!(
        doc["paths"]["/admin/v1/applications/{key}/rotate"]["post"]["tags"]
            .to_string()
            .contains("admin")
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_is_idempotent_rotation_keeps_the_old_token_for_its_grace_and_delete_revokes()
{
    let env = admin_env().await;
    let api = env.spawn_api().await;
    let admin = Client::with_bearer(&api.base, ADMIN_TOKEN);
    let c = Client::new(&api.base);
    let first = register(&admin, "team.shop", json!({})).await;
    let (_, shown) = admin.get("/admin/v1/applications/team.shop").await;
    assert_eq!(shown["quotas"]["max_subscriptions"], 1_000, "the default");
    assert_eq!(shown["requested_quotas"], json!({}));
    assert_eq!(
        register(
            &admin,
            "team.shop",
            json!({"max_chats": 9, "max_subscriptions": 0})
        )
        .await,
        first
    );
    let (_, shown) = admin.get("/admin/v1/applications/team.shop").await;
    assert_eq!(shown["quotas"]["max_chats"], 9);
    assert_eq!(shown["quotas"]["max_subscriptions"], 0, "0: no limit");
    assert_eq!(
        shown["requested_quotas"],
        json!({"max_chats": 9, "max_subscriptions": 0})
    );

    // Rotation with a grace period: both tokens work; the same request id again changes nothing.
    let rotate = |id: &'static str, grace: u64| {
        let admin = admin.clone();
        async move {
            let (status, body) = admin
                .send(
                    Method::POST,
                    "/admin/v1/applications/team.shop/rotate",
                    Some(json!({"request_id": id, "grace_seconds": grace})),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["token"].as_str().unwrap().to_owned()
        }
    };
    let second = rotate("r1", 60).await;
    assert_ne!(second, first);
    assert_eq!(
        rotate("r1", 60).await,
        second,
        "a repeated rotation is a no-op"
    );
    for token in [&first, &second] {
        let (status, _) = c.get(&format!("/api/v1/applications/{token}")).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "both tokens work during the grace period"
        );
    }
    // Without grace, the replaced token stops working (within the cache TTL).
    let third = rotate("r2", 0).await;
    eventually(Duration::from_secs(5), "old token revoked", || async {
        c.create_chat_status(&second).await == StatusCode::NOT_FOUND
    })
    .await;
    assert_eq!(c.create_chat_status(&third).await, StatusCode::CREATED);

    // Deletion revokes the token at once (on this replica; others within the cache TTL) and the
    // counter reconciler purges the data; the key can be registered afresh.
    let persister = env.spawn_persister().await;
    let chat = c.create_chat(&third).await;
    c.create_message(&third, chat, "to be purged").await;
    eventually(Duration::from_secs(10), "persisted", || async {
        env.count("SELECT COUNT(*) FROM messages").await == 1
    })
    .await;
    let (status, _) = admin
        .raw(Method::DELETE, "/admin/v1/applications/team.shop", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(c.create_chat_status(&third).await, StatusCode::NOT_FOUND);
    let reconciler = env
        .spawn_reconciler_with(&[("CONFAB_RECONCILE_INTERVAL_MS", "50")])
        .await;
    eventually(Duration::from_secs(10), "data purged", || async {
        env.count("SELECT COUNT(*) FROM messages").await == 0
            && env.count("SELECT COUNT(*) FROM chats").await == 0
    })
    .await;
    reconciler.stop().await.unwrap();
    persister.stop().await.unwrap();
    let (status, _) = admin.get("/admin/v1/applications/team.shop").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = admin
        .raw(Method::DELETE, "/admin/v1/applications/team.shop", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_ne!(register(&admin, "team.shop", json!({})).await, third);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_registrations_of_one_key_make_one_application() {
    let env = admin_env().await;
    let api = env.spawn_api().await;
    let admin = Client::with_bearer(&api.base, ADMIN_TOKEN);
    let tokens =
        futures::future::join_all((0..8).map(|_| register(&admin, "race", json!({})))).await;
    assert!(
        tokens.iter().all(|t| t == &tokens[0]),
        "one token for one key"
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM applications").await, 1);
    env.cleanup().await;
}

/// A rotation or deletion answered by one api replica reaches another, which had the token
/// cached, within `CONFAB_TOKEN_CACHE_TTL_MS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_another_replica_within_the_token_cache_ttl() {
    // The deadline: the TTL of 1 s, plus room for the requests themselves.
    const WITHIN_TTL: Duration = Duration::from_millis(1_750);
    let env = admin_env().await;
    let ttl = [("CONFAB_TOKEN_CACHE_TTL_MS", "1000")];
    let a = env.spawn_api_with(&ttl).await;
    let b = env.spawn_api_with(&ttl).await;
    let admin = Client::with_bearer(&a.base, ADMIN_TOKEN);
    let on_b = Client::new(&b.base);
    let old = register(&admin, "team.replicas", json!({})).await;
    assert_eq!(on_b.create_chat_status(&old).await, StatusCode::CREATED);

    let (status, body) = admin
        .send(
            Method::POST,
            "/admin/v1/applications/team.replicas/rotate",
            Some(json!({"request_id": "r1", "grace_seconds": 0})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["token"].as_str().unwrap().to_owned();
    eventually(WITHIN_TTL, "the rotated-out token refused by b", || async {
        on_b.create_chat_status(&old).await == StatusCode::NOT_FOUND
    })
    .await;
    assert_eq!(on_b.create_chat_status(&new).await, StatusCode::CREATED);

    let (status, _) = admin
        .raw(Method::DELETE, "/admin/v1/applications/team.replicas", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    eventually(
        WITHIN_TTL,
        "the deleted application's token refused by b",
        || async { on_b.create_chat_status(&new).await == StatusCode::NOT_FOUND },
    )
    .await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    env.cleanup().await;
}

/// The multi-tenant switches: with open creation and the global listing turned off, anyone who
/// reaches the api gets 403 for both, and applications come only through the admin API (whose
/// tokens work as ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_creation_and_listing_are_403_and_the_admin_api_still_provisions() {
    let env = admin_env().await;
    let api = env
        .spawn_api_with(&[
            ("CONFAB_OPEN_APPLICATION_CREATION", "false"),
            ("CONFAB_LIST_APPLICATIONS", "false"),
        ])
        .await;
    let c = Client::new(&api.base);
    for (method, path, body) in [
        (
            Method::POST,
            "/api/v1/applications",
            Some(json!({"name": "x"})),
        ),
        (
            Method::POST,
            "/applications",
            Some(json!({"application": {"name": "x"}})),
        ),
        (Method::GET, "/api/v1/applications", None),
    ] {
        let (status, error) = c.send(method.clone(), path, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {error}");
        assert_eq!(error["error"]["code"], "forbidden");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("turned off")),
            "{error}"
        );
    }
    assert_eq!(env.count("SELECT COUNT(*) FROM applications").await, 0);
    let admin = Client::with_bearer(&api.base, ADMIN_TOKEN);
    let token = register(&admin, "provisioned", json!({})).await;
    assert_eq!(c.create_chat(&token).await, 1);
    api.stop().await.unwrap();
    env.cleanup().await;
}

/// While creation is open, each client (its address, or behind a proxy the address the proxy
/// appended last to the configured header) has a burst of creations, then waits; other clients
/// are not held up, and what a client writes in front of the proxy's entry changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_creation_is_limited_per_client() {
    let env = TestEnv::new().await;
    let api = env
        .spawn_api_with(&[
            ("CONFAB_APPLICATION_CREATION_PER_MINUTE", "1"),
            ("CONFAB_APPLICATION_CREATION_BURST", "3"),
            ("CONFAB_CLIENT_IP_HEADER", "X-Forwarded-For"),
        ])
        .await;
    let http = reqwest::Client::new();
    let create = |forwarded: String| {
        let http = http.clone();
        let url = format!("{}/api/v1/applications", api.base);
        async move {
            let response = http
                .post(url)
                .header("x-forwarded-for", forwarded)
                .json(&json!({"name": "limited"}))
                .send()
                .await
                .unwrap();
            (response.status(), response.headers().clone())
        }
    };
    // Each request claims another origin in front; the proxy's entry (last) is the same.
    for (i, left) in [2u64, 1, 0].into_iter().enumerate() {
        let (status, headers) = create(format!("198.51.100.{i}, 192.0.2.1")).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(
            headers["ratelimit-policy"].to_str().unwrap(),
            r#""applications";q=3;w=180"#
        );
        let state = headers["ratelimit"].to_str().unwrap().to_owned();
        assert!(
            state.starts_with(&format!(r#""applications";r={left};t="#)),
            "{state}"
        );
    }
    let (status, headers) = create("198.51.100.9, 192.0.2.1".into()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert!(headers["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with(r#""applications";r=0;"#));
    assert_eq!(
        create("198.51.100.9, 192.0.2.2".into()).await.0,
        StatusCode::CREATED,
        "another client"
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM applications").await, 4);
    let rejected = api
        .metric(r#"confab_quota_rejections_total{quota="application_creation"}"#)
        .await;
    assert_eq!(rejected, 1.0);
    api.stop().await.unwrap();
    env.cleanup().await;
}
