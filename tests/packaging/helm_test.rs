//! The `helm test` Pod's script (`charts/confab/files/helm-test.sh`), run for real: against an
//! api, a persister and an indexer started in-process on the real MariaDB, Redis and NATS, it
//! must pass (and clean up the application it registered); against a platform whose indexer is
//! missing, it must fail. The template is checked to run exactly this file.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use confab_tests::TestEnv;

use crate::{read, repo};

const ADMIN_TOKEN: &str = "helm-test-admin-token";

fn script() -> std::path::PathBuf {
    repo().join("charts/confab/files/helm-test.sh")
}

/// `sh helm-test.sh` with `env`, off the runtime's threads.
async fn run(env: Vec<(&'static str, String)>) -> Output {
    assert!(
        Command::new("curl").arg("--version").output().is_ok(),
        "curl is required (the helm test script uses it; scripts/dev test installs it)"
    );
    let script = script();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("sh").arg(&script).envs(env).output().unwrap()
    });
    tokio::time::timeout(Duration::from_secs(120), output)
        .await
        .unwrap()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_helm_test_script_makes_a_round_trip_through_the_platform_and_cleans_up() {
    let env = TestEnv::with(|env| {
        env.insert("CONFAB_ADMIN_TOKEN".into(), ADMIN_TOKEN.into());
    })
    .await;
    let persister = env.spawn_persister().await;
    let indexer = env.spawn_indexer_with(&[]).await;
    let api = env
        .spawn_api_with(&[("CONFAB_SEARCH_URL", indexer.base.as_str())])
        .await;
    let output = run(vec![
        ("CONFAB_API_URL", api.base.clone()),
        ("CONFAB_ADMIN_TOKEN", ADMIN_TOKEN.into()),
        ("CONFAB_TEST_TIMEOUT_SECONDS", "60".into()),
    ])
    .await;
    let said = text(&output);
    assert!(output.status.success(), "{said}");
    for step in ["message read back", "message found by search", "PASS"] {
        assert!(said.contains(step), "{step} missing from: {said}");
    }
    // It registered its application under a key of its own and deleted it at the end.
    assert_eq!(
        env.count("SELECT COUNT(*) FROM applications WHERE deleted_at IS NULL")
            .await,
        0,
        "{said}"
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM applications").await, 1);
    indexer.stop().await.unwrap();
    persister.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

/// Without an indexer the message is never found: the test must say so and fail, in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_helm_test_script_fails_when_search_never_finds_the_message() {
    let env = TestEnv::new().await;
    // A search endpoint that never answers: bound (so no other test can take the port) but
    // never accepting; the api's queries time out.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = format!("http://{}", silent.local_addr().unwrap());
    let api = env
        .spawn_api_with(&[("CONFAB_SEARCH_URL", nowhere.as_str())])
        .await;
    let persister = env.spawn_persister().await;
    let output = run(vec![
        ("CONFAB_API_URL", api.base.clone()),
        ("CONFAB_TEST_TIMEOUT_SECONDS", "5".into()),
    ])
    .await;
    let said = text(&output);
    assert!(!output.status.success(), "{said}");
    assert!(said.contains("message read back"), "{said}");
    assert!(
        said.contains("FAIL: finding the message by search"),
        "{said}"
    );
    drop(silent);
    persister.stop().await.unwrap();
    api.stop().await.unwrap();
    env.cleanup().await;
}

/// The chart's test Pod runs this very file, is a `helm test` hook, and reaches the api through
/// its Service.
#[test]
fn the_chart_test_pod_runs_the_script() {
    let template = read(&repo().join("charts/confab/templates/tests/round-trip.yaml"));
    for expected in [
        ".Files.Get \"files/helm-test.sh\"",
        "helm.sh/hook: test",
        "command: [\"sh\", \"/scripts/helm-test.sh\"]",
        "name: CONFAB_API_URL",
        "(dict \"root\" . \"component\" \"api\")",
    ] {
        assert!(
            template.contains(expected),
            "round-trip.yaml lacks {expected}"
        );
    }
    assert!(Path::new(&script()).exists());
}
