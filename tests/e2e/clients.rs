//! Browser and mobile clients against the real services: client tokens (scope, rights, expiry,
//! rotation), CORS (preflights, allowed and refused origins, a simple cross-origin POST, a
//! WebSocket upgrade), request ids, `Location`, `ETag`/`304`, gzip, `Idempotent-Replayed`,
//! concurrent requests with one `Idempotency-Key`, and reading one's own deletion.

use std::time::Duration;

use confab_tests::{Client, Service, TestEnv};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const ADMIN: &str = "admin-secret-for-clients";
const PAGE: &str = "http://127.0.0.1:5173";
const OTHER: &str = "http://evil.example";

/// An api (admin API on) and a persister, and an application allowing [`PAGE`] with chats 1
/// and 2; returns its token.
async fn setup(env: &TestEnv, extra: &[(&str, &str)]) -> (Service, Service, String) {
    let mut overrides = vec![("CONFAB_ADMIN_TOKEN", ADMIN)];
    overrides.extend_from_slice(extra);
    let api = env.spawn_api_with(&overrides).await;
    let persister = env.spawn_persister().await;
    let admin = Client::with_bearer(&api.base, ADMIN);
    let (status, app) = admin
        .raw(
            Method::PUT,
            "/admin/v1/applications/web-1",
            Some(&json!({"name": "web", "allowed_origins": [PAGE]}).to_string()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{app}");
    assert_eq!(app["allowed_origins"], json!([PAGE]));
    let token = app["token"].as_str().unwrap().to_owned();
    let client = Client::new(&api.base);
    client.create_chat(&token).await;
    client.create_chat(&token).await;
    (api, persister, token)
}

async fn mint(api: &Service, token: &str, body: Value) -> (StatusCode, Value) {
    Client::new(&api.base)
        .raw(
            Method::POST,
            &format!("/api/v1/applications/{token}/client_tokens"),
            Some(&body.to_string()),
        )
        .await
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// A client that never decompresses (another dependency may turn reqwest's gzip on, and then
/// it would decode the answer and drop its `Content-Encoding`).
fn raw_http() -> reqwest::Client {
    reqwest::Client::builder().no_gzip().build().unwrap()
}

#[tokio::test]
async fn client_tokens_are_scoped_expire_and_die_with_a_rotation() {
    let env = TestEnv::new().await;
    let (api, persister, token) = setup(&env, &[]).await;
    let c = Client::new(&api.base);
    let (status, minted) = mint(
        &api,
        &token,
        json!({"chats": [1], "rights": ["read", "post", "subscribe"], "ttl_seconds": 600}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{minted}");
    let client_token = minted["token"].as_str().unwrap().to_owned();
    assert!(client_token.starts_with("ct1."));
    assert!(minted["expires_at"].is_string());
    let at = |path: &str| format!("/api/v1/applications/{client_token}{path}");

    // Within its chat and rights: post, read, search, follow.
    let (status, message) = c
        .raw(
            Method::POST,
            &at("/chats/1/messages"),
            Some(r#"{"body":"from a browser"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{message}");
    let number = message["number"].as_u64().unwrap();
    confab_tests::eventually(Duration::from_secs(10), "the chat persisted", || async {
        c.get(&at("/chats/1")).await.0 == StatusCode::OK
    })
    .await;
    confab_tests::eventually(Duration::from_secs(10), "the message persisted", || async {
        c.get(&at(&format!("/chats/1/messages/{number}"))).await.0 == StatusCode::OK
    })
    .await;
    let events = http()
        .get(format!("{}{}", api.base, at("/chats/1/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    drop(events);

    // Another chat, a right it lacks, what only the application may do: 403 forbidden.
    for (method, path, body) in [
        (Method::GET, at("/chats/2"), None),
        (
            Method::POST,
            at("/chats/2/messages"),
            Some(r#"{"body":"x"}"#),
        ),
        (
            Method::DELETE,
            at(&format!("/chats/1/messages/{number}")),
            None,
        ),
        (
            Method::PATCH,
            at(&format!("/chats/1/messages/{number}")),
            Some(r#"{"body":"y"}"#),
        ),
        (Method::GET, at("/chats"), None),
        (Method::POST, at("/chats"), Some("{}")),
        (
            Method::POST,
            at("/client_tokens"),
            Some(r#"{"rights":["read"]}"#),
        ),
        (Method::GET, at(""), None),
    ] {
        let (status, error) = c.raw(method.clone(), &path, body).await;
        assert_eq!(
            (status, error["error"]["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("forbidden")),
            "{method} {path}: {error}"
        );
    }
    // The admin API does not take it either.
    let admin = Client::with_bearer(&api.base, &client_token);
    assert_eq!(
        admin.get("/admin/v1/applications/web-1").await.0,
        StatusCode::UNAUTHORIZED
    );

    // Altered: 401 invalid_token. Expired: 401 token_expired.
    let forged = client_token.replacen(".1.", ".2.", 1);
    let (status, error) = c
        .get(&format!("/api/v1/applications/{forged}/chats/2"))
        .await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_token"))
    );
    let (_, short) = mint(&api, &token, json!({"rights": ["read"], "ttl_seconds": 1})).await;
    let short = short["token"].as_str().unwrap().to_owned();
    assert_eq!(
        c.get(&format!("/api/v1/applications/{short}/chats/1"))
            .await
            .0,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let (status, error) = c
        .get(&format!("/api/v1/applications/{short}/chats/1"))
        .await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("token_expired"))
    );

    // Bad requests to mint: 422.
    for body in [
        json!({"rights": []}),
        json!({"rights": ["admin"]}),
        json!({"rights": ["read"], "ttl_seconds": 86_401}),
        json!({"rights": ["read"], "chats": []}),
    ] {
        assert_eq!(
            mint(&api, &token, body.clone()).await.0,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}"
        );
    }

    // A rotation of the application token (even with a grace period for the old one) retires
    // every client token minted before it.
    let (status, _) = Client::with_bearer(&api.base, ADMIN)
        .raw(
            Method::POST,
            "/admin/v1/applications/web-1/rotate",
            Some(r#"{"grace_seconds": 600}"#),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, error) = c.get(&at("/chats/1")).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_token"))
    );

    api.stop().await.unwrap();
    persister.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn cors_answers_allowed_origins_and_refuses_the_rest_before_anything_is_written() {
    let env = TestEnv::new().await;
    let (api, persister, token) = setup(
        &env,
        &[("CONFAB_CORS_ALLOWED_ORIGINS", "http://localhost:3000")],
    )
    .await;
    let url = |path: &str| format!("{}/api/v1/applications/{token}{path}", api.base);

    // A preflight from the application's origin.
    let preflight = http()
        .request(Method::OPTIONS, url("/chats/1/messages"))
        .header("origin", PAGE)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type, idempotency-key",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), StatusCode::NO_CONTENT);
    let h = preflight.headers();
    assert_eq!(h["access-control-allow-origin"], PAGE);
    let allowed_headers = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for needed in ["content-type", "idempotency-key", "last-event-id"] {
        assert!(allowed_headers.contains(needed), "{allowed_headers}");
    }
    assert!(h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    assert!(h.contains_key("access-control-max-age"));

    // A real request from it: answered, with the headers a page may read.
    let posted = http()
        .post(url("/chats/1/messages"))
        .header("origin", PAGE)
        .json(&json!({"body": "from the page"}))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), StatusCode::CREATED);
    assert_eq!(posted.headers()["access-control-allow-origin"], PAGE);
    let exposed = posted.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    for needed in [
        "Link",
        "Location",
        "RateLimit",
        "RateLimit-Policy",
        "Retry-After",
        "X-Request-Id",
        "Idempotent-Replayed",
    ] {
        assert!(
            exposed.split(", ").any(|h| h == needed),
            "{needed} in {exposed}"
        );
    }
    // The global development origin works for every application.
    let global = http()
        .get(url("/chats"))
        .header("origin", "http://localhost:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(global.status(), StatusCode::OK);

    // Another origin: refused, without Access-Control-Allow-Origin, preflight or not.
    let refused = http()
        .request(Method::OPTIONS, url("/chats/1/messages"))
        .header("origin", OTHER)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(!refused
        .headers()
        .contains_key("access-control-allow-origin"));
    // A simple cross-origin POST (no preflight: text/plain, or a form) creates nothing.
    let before = env.stream_last_sequence().await;
    for (content_type, body) in [
        ("text/plain", r#"{"body":"csrf"}"#),
        ("application/x-www-form-urlencoded", "body=csrf"),
    ] {
        let sneaky = http()
            .post(url("/chats/1/messages"))
            .header("origin", OTHER)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(sneaky.status(), StatusCode::FORBIDDEN);
        assert!(!sneaky.headers().contains_key("access-control-allow-origin"));
        let error: Value = sneaky.json().await.unwrap();
        assert_eq!(error["error"]["code"], "origin_not_allowed");
    }
    assert_eq!(
        env.stream_last_sequence().await,
        before,
        "a refused origin wrote an event"
    );
    // A WebSocket upgrade from another origin is refused before the upgrade.
    let ws_url = url("/chats/1/events").replacen("http://", "ws://", 1);
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            ws_url.as_str(),
        )
        .unwrap();
    request
        .headers_mut()
        .insert("origin", OTHER.parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::FORBIDDEN);
        }
        other => panic!(
            "a WebSocket from another origin must get 403, got {:?}",
            other.map(|_| ())
        ),
    }
    // A client without Origin (a server, an app) is not affected.
    assert_eq!(
        http().get(url("/chats")).send().await.unwrap().status(),
        StatusCode::OK
    );

    api.stop().await.unwrap();
    persister.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn answers_carry_request_ids_locations_etags_gzip_and_say_when_they_replay() {
    let env = TestEnv::new().await;
    let (api, persister, token) = setup(&env, &[]).await;
    let url = |path: &str| format!("{}/api/v1/applications/{token}{path}", api.base);

    // X-Request-Id: echoed when sent, made up when not.
    let echoed = http()
        .get(url("/chats/1"))
        .header("x-request-id", "req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "req-42");
    let made = http().get(url("/chats/1")).send().await.unwrap();
    assert!(made.headers()["x-request-id"].len() >= 16);

    // Location on 201, and Idempotent-Replayed on a replay only.
    let post = |key: &'static str| {
        http()
            .post(url("/chats/1/messages"))
            .header("idempotency-key", key)
            .json(&json!({"body": "located"}))
            .send()
    };
    let first = post("loc-1").await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(!first.headers().contains_key("idempotent-replayed"));
    let location = first.headers()["location"].to_str().unwrap().to_owned();
    let number = first.json::<Value>().await.unwrap()["number"]
        .as_u64()
        .unwrap();
    assert_eq!(
        location,
        format!("/api/v1/applications/{token}/chats/1/messages/{number}")
    );
    let again = post("loc-1").await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.headers()["location"].to_str().unwrap(), location);
    let chat = http()
        .post(url("/chats"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        chat.headers()["location"].to_str().unwrap(),
        format!("/api/v1/applications/{token}/chats/3")
    );

    // ETag and 304, on one item and on a list; a change changes the tag.
    confab_tests::eventually(Duration::from_secs(10), "persisted", || async {
        http()
            .get(format!("{}{location}", api.base))
            .send()
            .await
            .unwrap()
            .status()
            == StatusCode::OK
    })
    .await;
    for path in [
        location.clone(),
        format!("/api/v1/applications/{token}/chats/1/messages"),
    ] {
        let full = http()
            .get(format!("{}{path}", api.base))
            .send()
            .await
            .unwrap();
        let tag = full.headers()["etag"].clone();
        let not_modified = http()
            .get(format!("{}{path}", api.base))
            .header("if-none-match", tag.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(not_modified.headers()["etag"], tag);
        assert!(not_modified.bytes().await.unwrap().is_empty());
        let other = http()
            .get(format!("{}{path}", api.base))
            .header("if-none-match", "W/\"something-else\"")
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), StatusCode::OK);
    }

    // gzip for a large answer when asked for, not for a small one.
    let client = Client::new(&api.base);
    for i in 0..40 {
        client
            .create_message(
                &token,
                2,
                &format!("a fairly long message body number {i} to make the list big"),
            )
            .await;
    }
    confab_tests::eventually(Duration::from_secs(10), "40 persisted", || async {
        client
            .get(&format!(
                "/api/v1/applications/{token}/chats/2/messages?per_page=50"
            ))
            .await
            .1
            .as_array()
            .is_some_and(|l| l.len() == 40)
    })
    .await;
    let big = raw_http()
        .get(url("/chats/2/messages?per_page=50"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(
        big.headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap().to_owned()),
        Some("gzip".to_owned()),
        "{:?}",
        big.headers()
    );
    let small = raw_http()
        .get(url("/chats/1"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert!(!small.headers().contains_key("content-encoding"));
    let plain = raw_http()
        .get(url("/chats/2/messages?per_page=50"))
        .send()
        .await
        .unwrap();
    assert!(!plain.headers().contains_key("content-encoding"));

    api.stop().await.unwrap();
    persister.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn concurrent_requests_with_one_key_take_one_number_and_deletions_read_at_once() {
    let env = TestEnv::new().await;
    let (api, persister, token) = setup(&env, &[]).await;
    let other = env.spawn_api().await;
    let (a, b) = (Client::new(&api.base), Client::new(&other.base));
    let messages = format!("/api/v1/applications/{token}/chats/1/messages");

    // Five at once with one key, over two replicas, then one without a key: consecutive.
    let answers: Vec<(StatusCode, Value)> = futures::stream::iter(0..5)
        .map(|i| {
            let c = if i % 2 == 0 { a.clone() } else { b.clone() };
            let messages = messages.clone();
            async move {
                c.post_idempotent(&messages, &json!({"body": "once"}), "five")
                    .await
            }
        })
        .buffer_unordered(5)
        .collect()
        .await;
    let first = answers[0].1["number"].as_u64().unwrap();
    for (status, answer) in &answers {
        assert_eq!(*status, StatusCode::CREATED, "{answer}");
        assert_eq!(answer["number"].as_u64(), Some(first));
    }
    let next = a.create_message(&token, 1, "no key").await;
    assert_eq!(
        next,
        first + 1,
        "a request with the key took a number it did not use"
    );

    // Read your delete, in every replica, at once; a second DELETE is 404.
    let message = format!("{messages}/{first}");
    confab_tests::eventually(Duration::from_secs(10), "persisted", || async {
        b.get(&message).await.0 == StatusCode::OK
    })
    .await;
    assert_eq!(
        a.raw(Method::DELETE, &message, None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(b.get(&message).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        b.raw(Method::DELETE, &message, None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        b.raw(Method::PATCH, &message, Some(r#"{"body":"back?"}"#))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let chat = format!("/api/v1/applications/{token}/chats/2");
    assert_eq!(b.get(&chat).await.0, StatusCode::OK);
    assert_eq!(
        a.raw(Method::DELETE, &chat, None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(b.get(&chat).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        b.raw(Method::DELETE, &chat, None).await.0,
        StatusCode::NOT_FOUND
    );
    // Once persisted, still 404 (the mark's work is done by MySQL then).
    confab_tests::eventually(
        Duration::from_secs(10),
        "the deletion persisted",
        || async {
            env.count(&format!(
                "SELECT COUNT(*) FROM messages WHERE number = {first} AND deleted_at IS NOT NULL"
            ))
            .await
                == 1
        },
    )
    .await;
    assert_eq!(a.get(&message).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        b.raw(Method::DELETE, &message, None).await.0,
        StatusCode::NOT_FOUND
    );

    other.stop().await.unwrap();
    api.stop().await.unwrap();
    persister.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn a_request_refused_before_taking_a_number_frees_its_idempotency_key_at_once() {
    let env = TestEnv::new().await;
    let api = env.spawn_api_with(&[("CONFAB_ADMIN_TOKEN", ADMIN)]).await;
    let admin = Client::with_bearer(&api.base, ADMIN);
    let register = |max_chats: u64| {
        let admin = admin.clone();
        async move {
            admin
                .raw(
                    Method::PUT,
                    "/admin/v1/applications/limited",
                    Some(
                        &json!({"name": "limited", "quotas": {"max_chats": max_chats}}).to_string(),
                    ),
                )
                .await
        }
    };
    let (_, app) = register(1).await;
    let token = app["token"].as_str().unwrap().to_owned();
    let c = Client::new(&api.base);
    let chats = format!("/api/v1/applications/{token}/chats");
    assert_eq!(c.create_chat(&token).await, 1);
    // Refused by the chat limit: no number taken, and the key is given back.
    let (status, error) = c.post_idempotent(&chats, &json!({}), "retry-me").await;
    assert_eq!(status, StatusCode::CONFLICT, "{error}");
    assert_eq!(error["error"]["code"], "chat_limit_reached");
    register(2).await;
    // The retry goes ahead at once (a claim left behind would hold it for the publish
    // deadline, 8 s, then answer 409 idempotency_key_in_use).
    let started = std::time::Instant::now();
    let (status, chat) = c.post_idempotent(&chats, &json!({}), "retry-me").await;
    assert_eq!(status, StatusCode::CREATED, "{chat}");
    assert_eq!(chat["number"], 2);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the retry waited {:?}",
        started.elapsed()
    );
    api.stop().await.unwrap();
    env.cleanup().await;
}
