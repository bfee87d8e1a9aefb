//! The OpenAPI document against the server: schemathesis (PyPI; `scripts/dev test` installs it
//! into `.dev/venv`) runs every default check over every operation, tenant and admin API, on a
//! running api with its persister and indexer, and must find nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::Duration;

use confab_tests::{eventually, Client, TestEnv};
use serde_json::json;

use crate::quotas::{register, ADMIN_TOKEN};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_the_document_does_not_say() {
    let schemathesis = std::env::var_os("CONFAB_SCHEMATHESIS")
        .map_or_else(|| repo().join(".dev/venv/bin/schemathesis"), PathBuf::from);
    assert!(
        schemathesis.exists(),
        "{} is missing: `scripts/dev test` installs schemathesis (or set CONFAB_SCHEMATHESIS)",
        schemathesis.display()
    );
    let env = TestEnv::with(|e| {
        e.insert("CONFAB_ADMIN_TOKEN".into(), ADMIN_TOKEN.into());
    })
    .await;
    let persister = env.spawn_persister().await;
    let indexer = env.spawn_indexer_with(&[]).await;
    let api = env
        .spawn_api_with(&[("CONFAB_SEARCH_URL", &indexer.base)])
        .await;
    // Real data for the tenant path parameters, so those operations reach their logic instead
    // of 404: an application, a chat and a message in it. (Not its admin key: the run deletes
    // and rotates whatever key it is given.)
    let admin = Client::with_bearer(&api.base, ADMIN_TOKEN);
    let token = register(&admin, "conformance", json!({})).await;
    let c = Client::new(&api.base);
    assert_eq!(c.create_chat(&token).await, 1);
    assert_eq!(c.create_message(&token, 1, "conformance message").await, 1);
    eventually(Duration::from_secs(10), "message persisted", || async {
        env.count("SELECT COUNT(*) FROM messages").await == 1
    })
    .await;
    // The stateful phase does not infer links from `Location` headers: it takes the
    // `Location` of a new application (`/api/v1/applications/{token}`) as what every operation
    // with a `{token}` can reach, with the fixed chat and message numbers above, and calls the
    // 404 of a chat that the new application does not have (or that an earlier step deleted) a
    // created resource not found.
    let config = std::env::temp_dir().join(format!("confab-schemathesis-{}.toml", env.id));
    std::fs::write(
        &config,
        format!(
            "[parameters]\n\"path.token\" = \"{token}\"\n\"path.number\" = 1\n\
             \"path.message_number\" = 1\n\
             [phases.stateful.inference]\nalgorithms = [\"dependency-analysis\"]\n"
        ),
    )
    .unwrap();
    let base = api.base.clone();
    let hooks = repo().join("tests/schemathesis/hooks.py");
    // Bounded (examples per operation, a fixed seed) so it stays a few seconds; blocking, so off
    // the runtime's workers that serve the api.
    let output = tokio::task::spawn_blocking(move || {
        Command::new(schemathesis)
            // Its cache of found failures goes to the working directory: not into the checkout.
            .current_dir(std::env::temp_dir())
            .arg("--config-file")
            .arg(&config)
            .args(["run", &format!("{base}/api/v1/openapi.json")])
            .args(["--url", &base])
            .args(["--max-examples", "30", "--seed", "1"])
            // A live stream never ends, and schemathesis reads a response to its end; the
            // events operation's refusals (400, 404, 410, 429) are tested in `live`.
            .args(["--exclude-path-regex", "/events$"])
            .args(["--header", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
            .env("SCHEMATHESIS_HOOKS", hooks)
            .env("NO_COLOR", "1")
            .output()
            .expect("schemathesis runs")
    })
    .await
    .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "schemathesis found problems ({}):\n{report}",
        output.status
    );
    // "N generated, N passed, M skipped": every generated case ran and passed.
    let cases = report
        .lines()
        .find_map(|line| {
            let (generated, rest) = line.trim().split_once(" generated, ")?;
            let (passed, _) = rest.split_once(" passed")?;
            Some((generated.parse::<u64>().ok()?, passed.parse::<u64>().ok()?))
        })
        .unwrap_or_else(|| panic!("no test-case summary in:\n{report}"));
    assert!(cases.0 > 500 && cases.0 == cases.1, "{cases:?}:\n{report}");
    api.stop().await.unwrap();
    indexer.stop().await.unwrap();
    persister.stop().await.unwrap();
    env.cleanup().await;
}
