//! Observability checked against a real run: one trace across JetStream (spans collected
//! in-process), every PromQL expression in `dashboards/` and the alert rules refers only to
//! metrics the services really export, promtool accepts the rules and their unit tests, and
//! (`dashboards`) every panel query shows data on a real Prometheus scraping the services.

mod dashboards;
mod hosts;
mod operator_host;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use confab_core::event::headers;
use confab_tests::{eventually, Client, TestEnv};
use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use reqwest::StatusCode;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_the_request_the_persister_and_the_indexer() {
    let exporter = InMemorySpanExporter::default();
    let env = TestEnv::new().await;
    let provider =
        confab_runtime::telemetry::provider(exporter.clone(), &env.env(), "confab-tests");
    confab_runtime::telemetry::install(&env.env(), Some(provider.clone()));
    let api = env.spawn_api().await;
    let persister = env.spawn_persister().await;
    let indexer = env.spawn_indexer_with(&[]).await;
    let c = Client::new(&api.base);
    let token = c.create_app("traced").await;
    let chat = c.create_chat(&token).await;
    // Let the chat's own trace go by first, so the message is alone in its batches.
    eventually(Duration::from_secs(10), "chat persisted", || async {
        env.count("SELECT COUNT(*) FROM chats").await == 1
    })
    .await;

    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/applications/{token}/chats/{chat}/messages",
            api.base
        ))
        .header(
            "traceparent",
            format!("00-{caller_trace}-00f067aa0ba902b7-01"),
        )
        .header("tracestate", "caller=state")
        .json(&serde_json::json!({"body": "follow me"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let trace = TraceId::from_hex(caller_trace).unwrap();
    let spans_of = |service: &str| {
        exporter
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .filter(|s| s.span_context.trace_id() == trace)
            .filter(|s| service.is_empty() || attribute(s, "service").as_deref() == Some(service))
            .collect::<Vec<_>>()
    };
    eventually(Duration::from_secs(15), "both consumers traced", || async {
        let _ = provider.force_flush();
        ["persister", "indexer"]
            .iter()
            .all(|s| spans_of(s).iter().any(|span| span.name == "apply_batch"))
    })
    .await;

    let spans = spans_of("");
    let request = spans
        .iter()
        .find(|s| s.name == "http_request")
        .expect("the request span continues the caller's trace");
    assert_eq!(
        request.parent_span_id,
        SpanId::from_hex("00f067aa0ba902b7").unwrap()
    );
    // The OpenTelemetry messaging conventions: a PRODUCER span per publish, child of the
    // request; CONSUMER spans per event (children of the publish) and per batch.
    let publish = spans
        .iter()
        .find(|s| s.name == "publish message.created")
        .expect("a publish span in the request's trace");
    assert_eq!(publish.span_kind, SpanKind::Producer);
    assert_eq!(
        publish.span_context.trace_state().header(),
        "caller=state",
        "the caller's tracestate reaches the span whose context the event carries"
    );
    assert_eq!(publish.parent_span_id, request.span_context.span_id());
    assert_eq!(
        attribute(publish, "messaging.system").as_deref(),
        Some("nats")
    );
    assert_eq!(
        attribute(publish, "messaging.operation.type").as_deref(),
        Some("publish")
    );
    assert!(
        attribute(publish, "messaging.message.id").is_some_and(|id| id.parse::<u64>().is_ok()),
        "{:?}",
        attribute(publish, "messaging.message.id")
    );
    let subject = attribute(publish, "messaging.destination.name").unwrap();
    assert!(subject.contains(".v1.message.created."), "{subject}");
    for service in ["persister", "indexer"] {
        let spans = spans_of(service);
        let consumed = spans
            .iter()
            .find(|s| s.name == "consume_event")
            .unwrap_or_else(|| panic!("{service} consumed the event in the request's trace"));
        assert_eq!(
            consumed.parent_span_id,
            publish.span_context.span_id(),
            "{service}'s span is a child of the publish span, across JetStream"
        );
        assert_eq!(consumed.span_kind, SpanKind::Consumer);
        assert_eq!(
            attribute(consumed, "messaging.system").as_deref(),
            Some("nats")
        );
        assert_eq!(
            attribute(consumed, "messaging.operation.type").as_deref(),
            Some("process")
        );
        assert_eq!(
            attribute(consumed, "messaging.destination.name"),
            Some(subject.clone())
        );
        assert_eq!(
            attribute(consumed, "messaging.consumer.group.name").as_deref(),
            Some(format!("confab-{service}").as_str())
        );
        assert_eq!(
            attribute(consumed, "messaging.message.id"),
            attribute(publish, "messaging.message.id"),
            "both sides name the event by its stream sequence"
        );
        let batch = spans
            .iter()
            .find(|s| s.name == "apply_batch")
            .unwrap_or_else(|| panic!("{service}'s write is in the trace"));
        assert_eq!(batch.span_kind, SpanKind::Consumer);
        assert!(attribute(batch, "messaging.batch.message_count").is_some());
    }
    let _ = provider.shutdown();
    indexer.stop().await.unwrap();
    persister.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

/// Without an OpenTelemetry layer (no exporter configured, nothing installed here), the caller's
/// W3C context still travels: the event carries the caller's trace id under a new span id, with
/// the caller's `tracestate` unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracestate_travels_from_the_request_into_the_event_headers() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let c = Client::new(&api.base);
    let token = c.create_app("traced").await;
    let chat = c.create_chat(&token).await;
    let (caller_trace, caller_span) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let tracestate = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
    let response = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/applications/{token}/chats/{chat}/messages",
            api.base
        ))
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .header("tracestate", tracestate)
        .json(&serde_json::json!({"body": "carry my state"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);

    let js =
        async_nats::jetstream::new(async_nats::connect(confab_tests::nats_url()).await.unwrap());
    let stream = js.get_stream(format!("T_{}", env.id)).await.unwrap();
    let event = stream
        .get_last_raw_message_by_subject(&format!("t_{}.v1.message.created.>", env.id))
        .await
        .unwrap();
    let header = |name: &str| event.headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(header(headers::TRACESTATE).as_deref(), Some(tracestate));
    let traceparent = header(headers::TRACEPARENT).unwrap();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!((parts[0], parts[1], parts[3]), ("00", caller_trace, "01"));
    assert_ne!(
        parts[2], caller_span,
        "the api's own span id, not the caller's"
    );
    api.stop().await.unwrap();
    env.cleanup().await;
}

/// Every PromQL expression of the dashboards and the alert rules.
fn promql_expressions() -> Vec<(String, String)> {
    fn collect(value: &Value, file: &str, out: &mut Vec<(String, String)>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr" | "query", Value::String(expr)) => {
                            out.push((file.to_owned(), expr.clone()));
                        }
                        _ => collect(v, file, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| collect(v, file, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    let dir = repo().join("dashboards");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
            collect(&json, &path.display().to_string(), &mut out);
        }
    }
    let rules = dir.join("alerts/confab.rules.yml");
    let yaml: Value = serde_yaml::from_str(&std::fs::read_to_string(&rules).unwrap()).unwrap();
    collect(&yaml, &rules.display().to_string(), &mut out);
    out
}

/// The metric names an expression refers to (Confab's and the process collector's).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut token = String::new();
    let mut in_string = false;
    for ch in expr.chars().chain([' ']) {
        if ch == '"' {
            in_string = !in_string;
        }
        if !in_string && (ch.is_ascii_alphanumeric() || ch == '_' || ch == ':') {
            token.push(ch);
        } else {
            if token.starts_with("confab_") || token.starts_with("process_") {
                names.insert(std::mem::take(&mut token));
            }
            token.clear();
        }
    }
    names
}

/// Sample names in a Prometheus text exposition; panics on a line that does not parse.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let name_end = line.find(['{', ' ']).expect("a sample line has a name");
        let value = line.rsplit(' ').next().unwrap();
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "unparsable sample line: {line}"
        );
        names.insert(line[..name_end].to_owned());
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_query_only_metrics_the_services_export() {
    let env = TestEnv::new().await;
    let api = env.spawn_api().await;
    let persister = env.spawn_persister().await;
    let indexer = env.spawn_indexer_with(&[]).await;
    let reconciler = env
        .spawn_reconciler_with(&[("CONFAB_RECONCILE_INTERVAL_MS", "100")])
        .await;
    let c = Client::new(&api.base);
    let token = c.create_app("scraped").await;
    let chat = c.create_chat(&token).await;
    c.create_message(&token, chat, "hello").await;
    c.get(&format!(
        "/api/v1/applications/{token}/chats/{chat}/messages/search?query=hel"
    ))
    .await;
    // The indexer's lag series exist once it indexed the message.
    eventually(Duration::from_secs(15), "indexed", || async {
        indexer
            .metric(r#"confab_search_documents_indexed_total{backend="embedded"}"#)
            .await
            >= 1.0
    })
    .await;
    eventually(Duration::from_secs(15), "counted", || async {
        env.count("SELECT COUNT(*) FROM chats WHERE messages_count = 1")
            .await
            == 1
    })
    .await;

    let mut exported = BTreeSet::new();
    for service in [&api, &persister, &indexer, &reconciler] {
        let text = reqwest::get(format!("{}/metrics", service.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!text.contains(&token), "a token reached the metrics");
        exported.extend(exported_names(&text));
    }
    // The operator needs a cluster; its series are the ones its registry holds at start-up.
    let operator = confab_runtime::metrics::registry();
    confab_operator::metrics::Metrics::register(&operator);
    exported.extend(exported_names(&confab_runtime::metrics::render(&operator)));
    for series in [
        "confab_jetstream_consumer_pending_messages",
        "confab_redis_command_duration_seconds_bucket",
        "confab_mysql_query_duration_seconds_bucket",
        "confab_quota_rejections_total",
    ] {
        assert!(exported.contains(series), "{series} is exported");
    }
    let expressions = promql_expressions();
    assert!(
        expressions.len() > 50,
        "found {} expressions",
        expressions.len()
    );
    let mut unknown = Vec::new();
    for (file, expr) in &expressions {
        for name in metric_names(expr) {
            if !exported.contains(&name) {
                unknown.push(format!("{name} (in {file})"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "queried but never exported: {unknown:#?}"
    );
    reconciler.stop().await.unwrap();
    indexer.stop().await.unwrap();
    persister.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests() {
    let promtool = ["/usr/bin/promtool", "promtool"].into_iter().find(|p| {
        std::process::Command::new(p)
            .arg("--version")
            .output()
            .is_ok()
    });
    let promtool = promtool
        .expect("promtool is required (scripts/dev test installs Debian's prometheus package)");
    let alerts = repo().join("dashboards/alerts");
    for args in [
        ["check", "rules", "confab.rules.yml"],
        ["test", "rules", "confab.rules.test.yml"],
    ] {
        let out = std::process::Command::new(promtool)
            .args(args)
            .current_dir(&alerts)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
