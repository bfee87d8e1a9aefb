//! One service per process, for the dashboards test: in one process every service would share
//! the global metrics registry, so each `/metrics` would export every service's series and a
//! panel asking a job for a metric that job never exports would still find data. The test binary
//! re-runs itself with the ignored [`service_host`] test selected and `CONFAB_HOST_SERVICE`
//! naming the service; the child starts it on loopback port 0, prints its addresses and stops
//! when its stdin closes (so it never outlives the test). A line `go` on stdin makes the
//! operator host play its reconcile scenario.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use confab_runtime::Env;
use tokio::net::TcpListener;

const READY: &str = "CONFAB_HOST_READY";

/// A service running in a child process.
pub struct Host {
    process: Child,
    stdin: Option<ChildStdin>,
    /// Admin server (metrics) base URL.
    pub admin: String,
    /// The tenant API's (api) or the search endpoint's (indexer) base URL; empty otherwise.
    pub base: String,
}

impl Host {
    /// Starts `service` (`api`, `persister`, `indexer`, `counter-reconciler`, `operator`) with
    /// `env` in a child process and waits for its addresses.
    pub fn start(service: &str, env: &Env) -> Self {
        let mut process = Command::new(std::env::current_exe().unwrap())
            .args([
                "observability::hosts::service_host",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .envs(env)
            .env("CONFAB_HOST_SERVICE", service)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = process.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Reads the ready line, then drains the rest so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest prints the test's name first, on the same line.
                if let Some(at) = line.find(READY) {
                    let _ = tx.send(line[at + READY.len()..].to_owned());
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("{service} host did not start"));
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .unwrap_or_default()
                .to_owned()
        };
        Self {
            stdin: process.stdin.take(),
            process,
            admin: field("admin="),
            base: field("base="),
        }
    }

    /// Tells the host to play its scenario (the operator's reconciles).
    pub fn go(&mut self) {
        let stdin = self.stdin.as_mut().expect("the host is running");
        writeln!(stdin, "go").unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Closing stdin stops the service gracefully; kill whatever is left.
        drop(self.stdin.take());
        for _ in 0..100 {
            if matches!(self.process.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

#[test]
#[ignore = "a child process of the dashboards test, hosting one service"]
fn service_host() {
    let Ok(service) = std::env::var("CONFAB_HOST_SERVICE") else {
        return;
    };
    let env: Env = std::env::vars().collect();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(host(&service, env));
}

async fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    (l, url)
}

async fn host(service: &str, env: Env) {
    // stdin: `go` lines start the scenario; end of input stops the service.
    let (go_tx, go_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if line.trim() == "go" {
                let _ = go_tx.send(());
            }
        }
        let _ = stop_tx.send(());
    });
    let stop = async move {
        let _ = stop_rx.await;
    };
    let (admin, admin_url) = listener().await;
    let (other, base) = listener().await;
    let ready = || println!("{READY} admin={admin_url} base={base}");
    let outcome = match service {
        "api" => {
            let config = confab_api::ApiConfig::from_env(&env).unwrap();
            ready();
            let listeners = confab_api::Listeners { http: other, admin };
            confab_api::run(config, listeners, stop)
                .await
                .map_err(|e| e.to_string())
        }
        "persister" => {
            let config = confab_persister::PersisterConfig::from_env(&env).unwrap();
            ready();
            confab_persister::run(config, admin, stop)
                .await
                .map_err(|e| e.to_string())
        }
        "indexer" => {
            let config = confab_indexer::IndexerConfig::from_env(&env).unwrap();
            ready();
            let listeners = confab_indexer::Listeners {
                admin,
                search: other,
            };
            confab_indexer::run(config, listeners, stop)
                .await
                .map_err(|e| e.to_string())
        }
        "counter-reconciler" => {
            let config = confab_counter_reconciler::ReconcilerConfig::from_env(&env).unwrap();
            ready();
            confab_counter_reconciler::run(config, admin, stop)
                .await
                .map_err(|e| e.to_string())
        }
        "operator" => {
            ready();
            super::operator_host::run(&env, admin, go_rx, stop).await;
            Ok(())
        }
        other => panic!("no such service: {other}"),
    };
    outcome.unwrap();
}
