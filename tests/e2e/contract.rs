//! The HTTP contract, end to end: create, read, update, list and paginate every resource, under
//! `/api/v1` and without the prefix, in the plain and the Rails-wrapped body forms.

use std::time::Duration;

use confab_tests::{eventually, Client, TestEnv};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applications_are_created_read_renamed_and_listed() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let c = Client::new(&api.base);

    let (status, app) = c
        .send(
            Method::POST,
            "/api/v1/applications",
            Some(json!({"name": "first"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(app["name"], "first");
    assert_eq!(app["chats_count"], 0);
    let token = app["token"].as_str().unwrap().to_owned();

    // Rails-wrapped form, and the unprefixed route.
    let (status, second) = c
        .send(
            Method::POST,
            "/applications",
            Some(json!({"application": {"name": "second"}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(second["name"], "second");

    let (status, got) = c.get(&format!("/api/v1/applications/{token}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["name"], "first");

    let (status, renamed) = c
        .send(
            Method::PATCH,
            &format!("/api/v1/applications/{token}"),
            Some(json!({"name": "renamed"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(renamed["name"], "renamed");
    let (status, put) = c
        .send(
            Method::PUT,
            &format!("/applications/{token}"),
            Some(json!({"application": {"name": "put"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(put["name"], "put");
    assert_eq!(
        c.get(&format!("/applications/{token}")).await.1["name"],
        "put"
    );

    for i in 0..3 {
        c.create_app(&format!("more {i}")).await;
    }
    let (status, page1) = c.get("/api/v1/applications?per_page=2").await;
    assert_eq!(status, StatusCode::OK);
    let (_, page3) = c.get("/api/v1/applications?per_page=2&page=3").await;
    let (_, all) = c.get("/api/v1/applications").await;
    assert_eq!(page1.as_array().unwrap().len(), 2);
    assert_eq!(page3.as_array().unwrap().len(), 1);
    assert_eq!(all.as_array().unwrap().len(), 5);
    // The list does not hand out tokens unless configured to.
    assert_eq!(page1[0]["name"], "put");
    assert!(page1[0].get("token").is_none(), "{page1}");
    let listing = env.spawn_api_with(&[("CONFAB_LIST_TOKENS", "true")]).await;
    let (_, with_tokens) = Client::new(&listing.base)
        .get("/api/v1/applications?per_page=1")
        .await;
    assert_eq!(with_tokens[0]["token"], token.as_str());
    listing.stop().await.unwrap();

    api.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chats_and_messages_round_trip_through_the_persister() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let persister = env.spawn_persister().await;
    let c = Client::new(&api.base);
    let token = c.create_app("chatty").await;

    let (status, chat) = c
        .send(
            Method::POST,
            &format!("/api/v1/applications/{token}/chats"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(chat["number"], 1);
    assert_eq!(chat["messages_count"], 0);
    assert_eq!(c.create_chat(&token).await, 2);
    // Unprefixed route, no body.
    let (status, third) = c
        .send(Method::POST, &format!("/applications/{token}/chats"), None)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(third["number"], 3);

    // Messages can be posted right away, before the chat is persisted.
    let (status, m1) = c
        .send(
            Method::POST,
            &format!("/api/v1/applications/{token}/chats/1/messages"),
            Some(json!({"message": {"body": "hello world"}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        m1,
        json!({"number": 1, "body": "hello world", "created_at": m1["created_at"], "updated_at": m1["updated_at"]})
    );
    for i in 2..=5 {
        assert_eq!(
            c.create_message(&token, 1, &format!("message {i}")).await,
            i
        );
    }
    assert_eq!(c.create_message(&token, 2, "other chat").await, 1);

    let messages_path = format!("/api/v1/applications/{token}/chats/1/messages");
    eventually(
        Duration::from_secs(10),
        "five messages persisted",
        || async { c.get(&messages_path).await.1.as_array().map(Vec::len) == Some(5) },
    )
    .await;
    let (_, list) = c.get(&messages_path).await;
    let numbers: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, vec![1, 2, 3, 4, 5]);
    assert_eq!(list[0]["body"], "hello world");

    let (_, page) = c.get(&format!("{messages_path}?page=2&per_page=2")).await;
    let numbers: Vec<_> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, vec![3, 4]);

    let (status, one) = c
        .get(&format!("/applications/{token}/chats/1/messages/2"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["body"], "message 2");

    let (status, updated) = c
        .send(
            Method::PATCH,
            &format!("{messages_path}/2"),
            Some(json!({"body": "edited"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(updated["body"], "edited");
    let (status, _) = c
        .send(
            Method::PUT,
            &format!("{messages_path}/3"),
            Some(json!({"message": {"body": "put"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    eventually(Duration::from_secs(10), "updates persisted", || async {
        c.get(&format!("{messages_path}/2")).await.1["body"] == "edited"
            && c.get(&format!("{messages_path}/3")).await.1["body"] == "put"
    })
    .await;

    let chats_path = format!("/api/v1/applications/{token}/chats");
    eventually(Duration::from_secs(10), "three chats persisted", || async {
        c.get(&chats_path).await.1.as_array().map(Vec::len) == Some(3)
    })
    .await;
    let (status, chat2) = c.get(&format!("{chats_path}/2")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(chat2["number"], 2);
    let (_, page) = c.get(&format!("{chats_path}?per_page=1&page=3")).await;
    assert_eq!(page[0]["number"], 3);

    // Paging tells the client where to go: RFC 8288 links, followed to the end, visit every
    // message once, and the prefix-less route links to itself.
    let mut next = Some(format!("{messages_path}?per_page=2"));
    let mut visited = Vec::new();
    let mut pages = 0;
    while let Some(path) = next.take() {
        let (status, headers, page) = c.full(Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK);
        let links = link_map(&headers);
        assert_eq!(
            links["first"],
            format!("{messages_path}?page=1&per_page=2"),
            "{links:?}"
        );
        assert_eq!(links.contains_key("prev"), pages > 0, "{links:?}");
        visited.extend(
            page.as_array()
                .unwrap()
                .iter()
                .map(|m| m["number"].as_u64().unwrap()),
        );
        next = links.get("next").cloned();
        pages += 1;
    }
    assert_eq!((visited, pages), (vec![1, 2, 3, 4, 5], 3));
    let (_, headers, _) = c
        .full(
            Method::GET,
            &format!("/applications/{token}/chats?page=2&per_page=2"),
            None,
        )
        .await;
    let links = link_map(&headers);
    assert_eq!(
        links["prev"],
        format!("/applications/{token}/chats?page=1&per_page=2")
    );
    assert!(
        !links.contains_key("next"),
        "three chats fit two pages: {links:?}"
    );
    // Other query parameters (a search's `query`) are kept in the links.
    let (_, headers, _) = c
        .full(
            Method::GET,
            &format!("{messages_path}?query=kept&per_page=4"),
            None,
        )
        .await;
    assert_eq!(
        link_map(&headers).get("next").map(String::as_str),
        Some(format!("{messages_path}?query=kept&page=2&per_page=4").as_str()),
    );

    // A message for a chat number that was never handed out is rejected, not queued.
    let (status, err) = c.try_create_message(&token, 99, "nowhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(err["error"]["code"], "not_found");

    persister.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_describes_every_route() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let c = Client::new(&api.base);
    let (status, doc) = c.get("/api/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/api/v1/applications",
        "/api/v1/applications/{token}",
        "/api/v1/applications/{token}/chats",
        "/api/v1/applications/{token}/chats/{number}",
        "/api/v1/applications/{token}/chats/{number}/messages",
        "/api/v1/applications/{token}/chats/{number}/messages/{message_number}",
    ] {
        assert!(paths.contains_key(path), "missing {path}");
    }
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    // Every method served is documented, with the parameters' real types and bounds.
    for (path, methods) in [
        ("/api/v1/applications", &["get", "post"][..]),
        ("/api/v1/applications/{token}", &["get", "patch", "put"][..]),
        (
            "/api/v1/applications/{token}/chats/{number}/messages/{message_number}",
            &["get", "patch", "put"][..],
        ),
    ] {
        for method in methods {
            assert!(paths[path][method].is_object(), "{method} {path}");
        }
    }
    let list = &paths["/api/v1/applications/{token}/chats"]["get"];
    let param = |name: &str| {
        list["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} documented"))
            .clone()
    };
    assert_eq!(param("page")["schema"]["minimum"], 1, "{}", param("page"));
    assert!(param("per_page")["schema"]["type"]
        .to_string()
        .contains("integer"));
    assert!(list["responses"]["200"]["headers"]["Link"].is_object());
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["ApplicationInput"]["properties"]["name"]["minLength"],
        1
    );
    assert_eq!(
        schemas["ApplicationInput"]["properties"]["name"]["maxLength"],
        255
    );
    assert_eq!(
        schemas["MessageInput"]["properties"]["body"]["minLength"],
        1
    );
    let create = &paths["/api/v1/applications"]["post"];
    assert!(create["requestBody"]["content"]["application/x-www-form-urlencoded"].is_object());
    api.stop().await.unwrap();
    env.cleanup().await;
}

/// The `Link` header as rel → target.
fn link_map(headers: &reqwest::header::HeaderMap) -> std::collections::BTreeMap<String, String> {
    let value = headers
        .get("link")
        .expect("a list answers with a Link header")
        .to_str()
        .unwrap();
    value
        .split(", ")
        .map(|link| {
            let (target, rel) = link.split_once("; rel=").unwrap();
            (
                rel.trim_matches('"').to_owned(),
                target.trim_matches(['<', '>']).to_owned(),
            )
        })
        .collect()
}

/// Form-encoded bodies, as Rails accepts them and many clients of the original challenge send
/// them: flat and Rails-nested, wherever JSON is accepted; a body that is neither still gets a
/// clear 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn form_bodies_are_accepted_wherever_json_is() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let persister = env.spawn_persister().await;
    let http = reqwest::Client::new();
    let form = |method: Method, path: String, body: &'static str| {
        let request = http
            .request(method, format!("{}{path}", api.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (status, flat) = form(Method::POST, "/api/v1/applications".into(), "name=flat+app").await;
    assert_eq!(status, StatusCode::CREATED, "{flat}");
    assert_eq!(flat["name"], "flat app");
    let (status, nested) = form(
        Method::POST,
        "/applications".into(),
        "application%5Bname%5D=nested%20app",
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{nested}");
    assert_eq!(nested["name"], "nested app");
    let token = nested["token"].as_str().unwrap().to_owned();
    let (status, chat) = form(
        Method::POST,
        format!("/api/v1/applications/{token}/chats"),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{chat}");
    let messages = format!("/api/v1/applications/{token}/chats/1/messages");
    let (status, message) = form(
        Method::POST,
        messages.clone(),
        "message[body]=hello+%26+welcome",
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{message}");
    assert_eq!(message["body"], "hello & welcome");
    let (status, blank) = form(Method::POST, messages.clone(), "body=").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{blank}");
    eventually(Duration::from_secs(10), "message persisted", || async {
        env.count("SELECT COUNT(*) FROM messages").await == 1
    })
    .await;
    let (status, updated) = form(Method::PATCH, format!("{messages}/1"), "body=edited").await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["body"], "edited");

    // JSON labelled as a form, as `curl -d '{…}'` sends it (the README's quick start): JSON.
    let (status, curl) = form(
        Method::POST,
        "/api/v1/applications".into(),
        r#" {"name":"curl app"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{curl}");
    assert_eq!(curl["name"], "curl app");
    let (status, broken) = form(Method::POST, messages.clone(), "{\"body\":").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{broken}");
    assert_eq!(broken["error"]["code"], "malformed_json");

    // Neither JSON nor a form: the Content-Type says text, the body is broken JSON.
    let (status, error) = {
        let response = http
            .post(format!("{}/api/v1/applications", api.base))
            .header("content-type", "text/plain")
            .body("{bad")
            .send()
            .await
            .unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    };
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["error"]["code"], "malformed_json");
    persister.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}
