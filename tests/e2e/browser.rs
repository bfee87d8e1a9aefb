//! The web example (`examples/web`) in a real browser: headless Chromium, driven over the
//! DevTools protocol, loads the page from the example's server, which mints it a client token;
//! the page follows the chat with `EventSource`, shows messages the application's server posts
//! as they arrive, and posts its own with `fetch`. The same page served from an origin the
//! application does not allow shows an error, no message, and writes nothing.
//!
//! Needs Debian's `chromium` (`/usr/bin/chromium`) and `python3`, and fails without them rather
//! than skipping: `scripts/dev test` installs chromium. With `CONFAB_UPDATE_SCREENSHOT=1` it
//! also saves the page to `docs/images/web-example.png` (the screenshot in docs/clients.md).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use confab_tests::{eventually, Client};
use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::quotas::{admin_env, ADMIN_TOKEN};

const CHROMIUM: &str = "/usr/bin/chromium";

/// The page's state: `connecting`, `live` or `error` (`#status[data-state]`).
const STATE: &str =
    "document.getElementById('status') && document.getElementById('status').dataset.state";
/// Whether the messages written before the page opened are loaded.
const HISTORY: &str = "document.getElementById('messages').dataset.history || ''";
/// Opens a WebSocket on the page's chat with a fresh client token from the page's own server,
/// closes it with 1000 once `ready` arrives, and answers what the browser's close event said.
const WEBSOCKET_CLOSE: &str = r#"(async () => {
    const t = await (await fetch('/token')).json();
    const url = t.api.replace(/^http/, 'ws') + '/api/v1/applications/' + t.token + '/chats/' + t.chat + '/events';
    return await new Promise(resolve => {
        const ws = new WebSocket(url);
        let ready = false;
        ws.onmessage = e => {
            if (!ready) { ready = JSON.parse(e.data).type; ws.close(1000, 'bye'); }
        };
        ws.onclose = e => resolve({ready, code: e.code, clean: e.wasClean});
        setTimeout(() => resolve({ready, timeout: true}), 10000);
    });
})()"#;

const COUNT: &str = "document.querySelectorAll('.message').length";
const BODIES: &str = "Array.from(document.querySelectorAll('.message .body'), e => e.textContent)";
const NUMBERS: &str =
    "Array.from(document.querySelectorAll('.message'), e => Number(e.dataset.number))";
/// The form's outcomes: `<sent>/<failed>`.
const OUTCOMES: &str =
    "(f => f.dataset.sent + '/' + f.dataset.failed)(document.getElementById('composer'))";

/// What the page is asked to post.
fn post_from_page(body: &str) -> String {
    format!(
        "document.getElementById('body').value = {}; document.getElementById('send').click(); true",
        Value::from(body)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_example_follows_and_posts_from_an_allowed_origin_and_nothing_from_another() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: this test drives headless Chromium (Debian's `chromium` \
         package), and `scripts/dev test` installs it (or: apt-get install chromium)"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf();
    let server_py = root.join("examples/web/server.py");

    let env = admin_env().await;
    let api = env.spawn_api().await;
    let _persister = env.spawn_persister().await;
    let admin = Client::with_bearer(&api.base, ADMIN_TOKEN);
    let c = Client::new(&api.base);
    let http = reqwest::Client::new();

    // Two example servers, two origins: the application allows the first only.
    let allowed_port = confab_tests::free_port();
    let other_port = loop {
        let port = confab_tests::free_port();
        if port != allowed_port {
            break port;
        }
    };
    let allowed = format!("http://127.0.0.1:{allowed_port}");
    let other = format!("http://127.0.0.1:{other_port}");
    let (status, app) = admin
        .send(
            Method::PUT,
            "/admin/v1/applications/web-demo",
            Some(json!({"name": "web demo", "allowed_origins": [&allowed]})),
        )
        .await;
    assert!(status.is_success(), "{status} {app}");
    assert_eq!(app["allowed_origins"], json!([&allowed]), "{app}");
    let token = app["token"].as_str().expect("token").to_owned();
    assert_eq!(c.create_chat(&token).await, 1);
    let messages_path = format!("/api/v1/applications/{token}/chats/1/messages");

    // The api's side of CORS, seen without a browser first: a clearer failure if it is wrong.
    let answer = http
        .get(format!("{}{messages_path}", api.base))
        .header("origin", &allowed)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(
        answer.headers()["access-control-allow-origin"],
        allowed.as_str()
    );
    let answer = http
        .get(format!("{}{messages_path}", api.base))
        .header("origin", &other)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    assert!(!answer.headers().contains_key("access-control-allow-origin"));
    let refusal: Value = answer.json().await.unwrap();
    assert_eq!(refusal["error"]["code"], "origin_not_allowed", "{refusal}");

    let dir = std::env::temp_dir().join(format!("confab-browser-{}", env.id));
    std::fs::create_dir_all(&dir).unwrap();
    // From here on, whatever happens, the browser and the servers go when this does.
    let mut processes = Processes {
        children: Vec::new(),
        dir: dir.clone(),
    };
    for (name, port) in [("allowed", allowed_port), ("other", other_port)] {
        processes.spawn(
            name,
            Command::new("python3")
                .arg(&server_py)
                .env("CONFAB_API_URL", &api.base)
                .env("CONFAB_APP_TOKEN", &token)
                .env("CONFAB_CHAT", "1")
                .env("PORT", port.to_string()),
        );
    }
    for (name, origin) in [("allowed", &allowed), ("other", &other)] {
        let url = format!("{origin}/");
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            assert!(
                Instant::now() < until,
                "the example server {name} did not answer at {url}: {}",
                processes.log(name)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // The example server hands out client tokens; the application token never leaves it.
    let minted: Value = http
        .get(format!("{allowed}/token"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        minted["token"]
            .as_str()
            .is_some_and(|t| t.starts_with("ct1.")),
        "{minted}"
    );
    assert_eq!(minted["api"], api.base.as_str(), "{minted}");
    assert_eq!(minted["chat"], 1, "{minted}");
    assert!(minted["expires_at"].is_string(), "{minted}");
    for path in ["/token", "/", "/app.js", "/style.css"] {
        let text = http
            .get(format!("{allowed}{path}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!text.contains(&token), "{path} shows the application token");
    }
    let script = http
        .get(format!("{allowed}/server.py"))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), StatusCode::NOT_FOUND);

    let profile = dir.join("chromium-profile");
    processes.spawn(
        "chromium",
        Command::new(CHROMIUM)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank"),
    );
    let devtools = devtools_url(&profile, &processes).await;

    // The allowed page: it follows the chat, then shows what the application's server posts.
    let mut page = Page::open(&devtools).await;
    page.navigate(&format!("{allowed}/")).await;
    page.wait_for(STATE, json!("live"), "the allowed page to follow the chat")
        .await;
    page.wait_for(
        HISTORY,
        json!("loaded"),
        "the allowed page to load the chat",
    )
    .await;
    assert_eq!(page.evaluate(COUNT).await.unwrap(), json!(0));
    let from_server = [
        "Hello from the application's server",
        "This page follows the chat with EventSource",
        "Its client token covers chat 1 only",
    ];
    for body in from_server {
        c.create_message(&token, 1, body).await;
    }
    page.wait_for(COUNT, json!(3), "three messages shown as they arrive")
        .await;
    assert_eq!(page.evaluate(BODIES).await.unwrap(), json!(from_server));

    // The page posts (fetch, JSON): the api stores it, and the page shows it.
    let from_page = "And this one was posted from the page";
    page.evaluate(&post_from_page(from_page)).await.unwrap();
    page.wait_for(OUTCOMES, json!("1/0"), "the page's post to succeed")
        .await;
    eventually(
        Duration::from_secs(15),
        "the page's message stored",
        || async {
            let (status, list) = c.get(&messages_path).await;
            status == StatusCode::OK
                && list
                    .as_array()
                    .is_some_and(|list| list.iter().any(|m| m["body"] == from_page))
        },
    )
    .await;
    page.wait_for(COUNT, json!(4), "four messages on the page")
        .await;
    assert_eq!(page.evaluate(NUMBERS).await.unwrap(), json!([1, 2, 3, 4]));
    assert_eq!(page.evaluate(STATE).await.unwrap(), json!("live"));
    // Nothing the page requested named the application token.
    let requested = page
        .evaluate("performance.getEntries().map(e => e.name).join(' ')")
        .await
        .unwrap();
    let requested = requested.as_str().unwrap_or_default();
    // (An EventSource stream, never complete, is not among the entries; the fetches are.)
    assert!(requested.contains("/chats/1/messages"), "{requested}");
    assert!(
        !requested.contains(&token),
        "the page used the application token"
    );

    // The browser's own WebSocket, with a fresh client token: `ready`, then a close the server
    // answers, which the browser reports as clean with the client's code.
    assert_eq!(
        page.evaluate(WEBSOCKET_CLOSE).await.unwrap(),
        json!({"ready": "ready", "code": 1000, "clean": true})
    );

    if std::env::var("CONFAB_UPDATE_SCREENSHOT").as_deref() == Ok("1") {
        let png = page.screenshot().await;
        let path = root.join("docs/images/web-example.png");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, png).unwrap();
        eprintln!("saved {}", path.display());
    }

    // The same page from an origin the application does not allow: an error, no message, and
    // its post creates nothing.
    let mut stranger = Page::open(&devtools).await;
    stranger.navigate(&format!("{other}/")).await;
    stranger
        .wait_for(
            STATE,
            json!("error"),
            "the page of an origin not allowed to show an error",
        )
        .await;
    let refused = "Posted from an origin the application does not allow";
    stranger.evaluate(&post_from_page(refused)).await.unwrap();
    stranger
        .wait_for(OUTCOMES, json!("0/1"), "the refused page's post to fail")
        .await;
    assert_eq!(stranger.evaluate(STATE).await.unwrap(), json!("error"));
    assert_eq!(stranger.evaluate(COUNT).await.unwrap(), json!(0));
    // Its WebSocket is refused at the upgrade (403): never ready, never a clean close.
    assert_eq!(
        stranger.evaluate(WEBSOCKET_CLOSE).await.unwrap(),
        json!({"ready": false, "code": 1006, "clean": false})
    );

    // A sentinel proves it: had the refused post been created, it would hold number 5.
    assert_eq!(c.create_message(&token, 1, "sentinel").await, 5);
    eventually(Duration::from_secs(15), "the sentinel stored", || async {
        let (_, list) = c.get(&messages_path).await;
        list.as_array().is_some_and(|list| list.len() == 5)
    })
    .await;
    let (_, list) = c.get(&messages_path).await;
    assert!(
        !list.to_string().contains(refused),
        "the refused page's post was stored: {list}"
    );
    page.wait_for(COUNT, json!(5), "the allowed page to show the sentinel")
        .await;
    assert_eq!(stranger.evaluate(COUNT).await.unwrap(), json!(0));

    page.close().await;
    stranger.close().await;
    drop(processes);
    env.cleanup().await;
}

/// The processes this test started, each in a process group of its own (Chromium's helpers
/// join its group); dropping this kills them all, also when the test panics.
struct Processes {
    children: Vec<(&'static str, Child)>,
    /// Their logs, Chromium's profile; removed on drop.
    dir: PathBuf,
}

impl Processes {
    fn spawn(&mut self, name: &'static str, command: &mut Command) {
        let program = command.get_program().to_string_lossy().into_owned();
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({program}): {e}"));
        self.children.push((name, child));
    }

    /// The end of `name`'s output.
    fn log(&self, name: &str) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let start = text.char_indices().rev().nth(3000).map_or(0, |(at, _)| at);
        format!("--- {name}'s output ---\n{}", &text[start..])
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The DevTools HTTP endpoint of the Chromium using `profile`: Chromium writes the port it
/// chose (`--remote-debugging-port=0`) to the first line of `<profile>/DevToolsActivePort`,
/// the browser's WebSocket path to the second.
async fn devtools_url(profile: &Path, processes: &Processes) -> String {
    let file = profile.join("DevToolsActivePort");
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let port = std::fs::read_to_string(&file)
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse::<u16>().ok());
        if let Some(port) = port {
            let url = format!("http://127.0.0.1:{port}");
            let version = reqwest::get(format!("{url}/json/version")).await;
            if version.is_ok_and(|r| r.status().is_success()) {
                return url;
            }
        }
        assert!(
            Instant::now() < until,
            "Chromium did not open its DevTools port ({} holds no port): {}",
            file.display(),
            processes.log("chromium")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One browser tab, driven over its DevTools WebSocket.
struct Page {
    socket: Socket,
    next_id: u64,
}

impl Page {
    /// A new tab (`PUT /json/new`: Chromium refuses a GET there), 800 × 600.
    async fn open(devtools: &str) -> Self {
        let target: Value = reqwest::Client::new()
            .put(format!("{devtools}/json/new?about:blank"))
            .send()
            .await
            .expect("DevTools answers /json/new")
            .json()
            .await
            .expect("the new target as JSON");
        let url = target["webSocketDebuggerUrl"]
            .as_str()
            .unwrap_or_else(|| panic!("no webSocketDebuggerUrl in {target}"));
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connected to the tab's DevTools socket");
        let mut page = Self { socket, next_id: 0 };
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 800, "height": 600, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await
        .unwrap();
        page
    }

    /// Sends a DevTools command and waits for its answer (events, which this test does not
    /// enable, and answers to other commands are skipped).
    async fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({"id": id, "method": method, "params": params}).to_string();
        self.socket
            .send(Message::Text(command.into()))
            .await
            .map_err(|e| format!("{method}: {e}"))?;
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let frame = tokio::time::timeout_at(until, self.socket.next())
                .await
                .map_err(|_| format!("{method}: no answer within 30 s"))?
                .ok_or_else(|| format!("{method}: the DevTools socket closed"))?
                .map_err(|e| format!("{method}: {e}"))?;
            let Message::Text(text) = frame else {
                continue;
            };
            let answer: Value =
                serde_json::from_str(&text).map_err(|e| format!("{method}: {e}"))?;
            if answer["id"].as_u64() != Some(id) {
                continue;
            }
            if let Some(error) = answer.get("error") {
                return Err(format!("{method}: {error}"));
            }
            return Ok(answer["result"].clone());
        }
    }

    async fn navigate(&mut self, url: &str) {
        let result = self
            .call("Page.navigate", json!({"url": url}))
            .await
            .unwrap();
        assert!(
            result.get("errorText").is_none(),
            "navigating to {url}: {result}"
        );
    }

    /// The value of a JavaScript expression (awaited when it is a promise).
    async fn evaluate(&mut self, expression: &str) -> Result<Value, String> {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(exception) = result.get("exceptionDetails") {
            return Err(format!("{expression}: {exception}"));
        }
        Ok(result["result"]["value"].clone())
    }

    /// Polls `expression` until it is `expected`; at the deadline, fails with what it was and
    /// what the page's status says. (While a page loads, evaluation can fail: not yet.)
    async fn wait_for(&mut self, expression: &str, expected: Value, what: &str) {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.evaluate(expression).await;
            if matches!(&got, Ok(value) if *value == expected) {
                return;
            }
            if Instant::now() > until {
                let status = self
                    .evaluate("(s => s ? s.dataset.state + ': ' + s.textContent : 'no #status')(document.getElementById('status'))")
                    .await;
                panic!(
                    "timed out waiting for {what}: `{expression}` is {got:?}, not {expected}; \
                     the page says {status:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The tab as a PNG.
    async fn screenshot(&mut self) -> Vec<u8> {
        let result = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await
            .unwrap();
        let png = confab_tests::base64_decode(result["data"].as_str().expect("screenshot data"));
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        png
    }

    async fn close(mut self) {
        let _ = self.socket.send(Message::Close(None)).await;
    }
}
