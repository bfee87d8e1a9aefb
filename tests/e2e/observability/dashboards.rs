//! Every dashboard panel query evaluated on a real Prometheus, as an SRE opening the dashboards
//! meets them: Debian's `prometheus` server, on a free loopback port with a temporary config and
//! data directory, scrapes the api, the persister, the indexer, the counter reconciler and the
//! operator — each in a process of its own (`hosts`), so a job exports only its own series —
//! every second, after traffic that touches every route kind (creations, reads, an update, a
//! search, a 404). Every query of every panel (Grafana's `$__rate_interval` set to a window
//! covering the traffic) must return data: an empty result is a panel showing "No data", and so
//! is a result whose every value is NaN (Grafana draws nothing for it).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use confab_tests::{eventually, Client, TestEnv};
use serde_json::Value;

use super::hosts::Host;
use super::repo;

/// What `$__rate_interval` becomes: longer than the whole run, so every rate sees the traffic.
const RATE_INTERVAL: &str = "2m";

/// The Prometheus server, stopped (and its data removed) when dropped.
struct Prometheus {
    process: Child,
    dir: std::path::PathBuf,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn prometheus_binary() -> &'static str {
    let found = ["/usr/bin/prometheus", "prometheus"]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").output().is_ok());
    found.expect("prometheus is required (scripts/dev test installs Debian's prometheus package)")
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Starts Prometheus scraping each `(job, admin URL)` every second.
fn start_prometheus(binary: &str, id: &str, targets: &[(&str, &str)]) -> Prometheus {
    let dir = std::env::temp_dir().join(format!("confab-prometheus-{id}"));
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let mut config = String::from(
        "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\nscrape_configs:\n",
    );
    for (job, admin) in targets {
        let target = admin.trim_start_matches("http://");
        config.push_str(&format!(
            "  - job_name: {job}\n    static_configs: [{{targets: ['{target}']}}]\n"
        ));
    }
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = free_port();
    let process = Command::new(binary)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Prometheus {
        process,
        dir,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// The instant-query result of `expr`, or Prometheus's error.
async fn query(prometheus: &str, expr: &str) -> Result<Vec<Value>, String> {
    let answer: Value = reqwest::Client::new()
        .get(format!("{prometheus}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    if answer["status"] != "success" {
        return Err(answer["error"].to_string());
    }
    Ok(match &answer["data"]["result"] {
        Value::Array(samples) => samples.clone(),
        scalar => vec![serde_json::json!({ "value": scalar })],
    })
}

/// Whether a result has a value Grafana would draw.
fn has_data(samples: &[Value]) -> bool {
    samples
        .iter()
        .any(|s| s["value"][1].as_str().is_some_and(|v| v != "NaN"))
}

/// (dashboard, panel title, expression) of every panel target of every dashboard.
fn panel_queries() -> Vec<(String, String, String)> {
    fn walk(file: &str, panels: &[Value], out: &mut Vec<(String, String, String)>) {
        for panel in panels {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    let title = panel["title"].as_str().unwrap_or_default().to_owned();
                    out.push((file.to_owned(), title, expr.to_owned()));
                }
            }
            walk(
                file,
                panel["panels"].as_array().map_or(&[], Vec::as_slice),
                out,
            );
        }
    }
    let mut out = Vec::new();
    let dir = repo().join("dashboards");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    for path in files {
        let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        walk(name, json["panels"].as_array().unwrap(), &mut out);
    }
    out
}

async fn wait_ready(url: &str, what: &str) {
    eventually(Duration::from_secs(30), what, || async {
        reqwest::get(url)
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
}

/// One round of tenant traffic: a chat with three messages followed live, an update, reads, a
/// 404, a search.
async fn traffic(c: &Client, token: &str, round: i64) {
    let chat = c.create_chat(token).await;
    assert_eq!(i64::try_from(chat).unwrap(), round);
    let mut live = confab_tests::live::LiveClient::sse(&c.base, token, chat, None)
        .await
        .unwrap();
    for body in ["hello dashboards", "second message", "third one"] {
        c.create_message(token, chat, body).await;
    }
    let mut delivered = 0;
    while delivered < 3 {
        let event = live
            .next(Duration::from_secs(10))
            .await
            .expect("live events");
        delivered += usize::from(event.kind == "message.created");
    }
    let messages = format!("/api/v1/applications/{token}/chats/{chat}/messages");
    c.get(&messages).await;
    c.get(&format!("/api/v1/applications/{token}/chats")).await;
    let unknown = "0".repeat(48);
    let (code, _) = c.get(&format!("/api/v1/applications/{unknown}")).await;
    assert_eq!(code, reqwest::StatusCode::NOT_FOUND);
    // The update needs the message persisted (a number never stored is a 404).
    eventually(Duration::from_secs(15), "message persisted", || async {
        c.get(&format!("{messages}/1")).await.0 == reqwest::StatusCode::OK
    })
    .await;
    let update = reqwest::Client::new()
        .patch(format!("{}{messages}/1", c.base))
        .json(&serde_json::json!({"body": "hello again dashboards"}))
        .send()
        .await
        .unwrap();
    assert!(update.status().is_success());
}

/// The sum of `metric` in a Prometheus text exposition.
fn exported_sum(text: &str, metric: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) || l.starts_with(&format!("{metric} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until Prometheus has scraped `job` since its `metric` last moved.
async fn caught_up(prometheus: &str, job: &str, admin: &str, metric: &str) {
    let what = format!("prometheus caught up with {job}");
    eventually(Duration::from_secs(20), &what, || async {
        let Ok(text) = reqwest::get(format!("{admin}/metrics")).await else {
            return false;
        };
        let exported = exported_sum(&text.text().await.unwrap_or_default(), metric);
        let seen = query(prometheus, &format!("sum({metric}{{job=\"{job}\"}})"))
            .await
            .unwrap_or_default();
        let seen: f64 = seen
            .first()
            .and_then(|s| s["value"][1].as_str()?.parse().ok())
            .unwrap_or(-1.0);
        exported > 0.0 && (seen - exported).abs() < 0.5
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_panel_shows_data_on_a_real_prometheus() {
    let binary = prometheus_binary();
    let env = TestEnv::new().await;
    let mut base = env.env();
    base.insert(
        "CONFAB_ADMIN_TOKEN".into(),
        crate::quotas::ADMIN_TOKEN.into(),
    );
    base.insert("CONFAB_RECONCILE_INTERVAL_MS".into(), "100".into());
    base.insert(
        "CONFAB_INDEX_DIR".into(),
        env.index_dir().display().to_string(),
    );
    let indexer = Host::start("indexer", &base);
    let persister = Host::start("persister", &base);
    let reconciler = Host::start("counter-reconciler", &base);
    let mut with_search = base.clone();
    with_search.insert("CONFAB_SEARCH_URL".into(), indexer.base.clone());
    // Every request resolves its token in MySQL, so the api's MySQL panels have a second round.
    with_search.insert("CONFAB_TOKEN_CACHE_TTL_MS".into(), "0".into());
    let api = Host::start("api", &with_search);
    let mut with_api = base.clone();
    with_api.insert("CONFAB_OPERATOR_API_URL".into(), api.base.clone());
    let mut operator = Host::start("operator", &with_api);
    for host in [&api, &persister, &indexer, &reconciler] {
        wait_ready(&format!("{}/readyz", host.admin), "service ready").await;
    }
    let jobs = [
        ("confab-api", api.admin.as_str()),
        ("confab-persister", persister.admin.as_str()),
        ("confab-indexer", indexer.admin.as_str()),
        ("confab-counter-reconciler", reconciler.admin.as_str()),
        ("confab-operator", operator.admin.as_str()),
    ];
    let prometheus = start_prometheus(binary, &env.id, &jobs);
    wait_ready(&format!("{}/-/ready", prometheus.url), "prometheus ready").await;
    // Every target scraped a few times before the traffic, so rates see it as an increase.
    let all_up = async || {
        let samples = query(&prometheus.url, "count_over_time(up[1m]) >= 3 and up == 1")
            .await
            .unwrap_or_default();
        samples.len() == jobs.len()
    };
    eventually(Duration::from_secs(30), "every job scraped", all_up).await;

    // Two rounds of traffic with scrapes between: a series' first sample is never an increase
    // to `rate()`, so the second round is what rates and quantiles see (as with steady traffic).
    let started = Instant::now();
    let c = Client::new(&api.base);
    let token = c.create_app("dashboards").await;
    for round in 1..=2_i64 {
        operator.go();
        traffic(&c, &token, round).await;
        eventually(Duration::from_secs(20), "persisted, searchable, counted", || async {
            env.count("SELECT COUNT(*) FROM messages").await == 3 * round
                && env
                    .count("SELECT COUNT(*) FROM chats WHERE messages_count = 3")
                    .await
                    == round
                && c.get(&format!("/api/v1/applications/{token}/chats/{round}/messages/search?query=dashboards"))
                    .await
                    .1
                    .as_array()
                    .is_some_and(|hits| hits.len() == 1)
        })
        .await;
        for (job, admin, metric) in [
            (
                "confab-api",
                api.admin.as_str(),
                "confab_http_requests_total",
            ),
            (
                "confab-persister",
                persister.admin.as_str(),
                "confab_events_acked_total",
            ),
            (
                "confab-indexer",
                indexer.admin.as_str(),
                "confab_events_acked_total",
            ),
            (
                "confab-counter-reconciler",
                reconciler.admin.as_str(),
                "confab_counter_rows_recounted_total",
            ),
            (
                "confab-operator",
                operator.admin.as_str(),
                "confab_operator_reconciliations_total",
            ),
        ] {
            caught_up(&prometheus.url, job, admin, metric).await;
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(100),
        "inside the rate window"
    );

    let queries = panel_queries();
    assert!(queries.len() > 100, "found {} panel queries", queries.len());
    let mut empty = Vec::new();
    for (dashboard, title, expr) in &queries {
        let expr = expr.replace("$__rate_interval", RATE_INTERVAL);
        match query(&prometheus.url, &expr).await {
            Ok(samples) if has_data(&samples) => {}
            Ok(_) => empty.push(format!("{dashboard} / {title}: {expr}")),
            Err(error) => empty.push(format!("{dashboard} / {title}: {expr}: error {error}")),
        }
    }
    assert!(
        empty.is_empty(),
        "{} of {} panel queries show no data:\n{}",
        empty.len(),
        queries.len(),
        empty.join("\n")
    );
    drop(prometheus);
    drop((operator, api, reconciler, persister, indexer));
    env.cleanup().await;
}
