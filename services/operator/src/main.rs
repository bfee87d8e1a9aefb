//! `confab-operator`: the Kubernetes operator. `confab-operator crdgen` prints the CRD YAML.

use anyhow::Context;
use clap::{Parser, Subcommand};
use confab_operator::OperatorConfig;
use confab_runtime::{config, shutdown, telemetry};
use tokio::net::TcpListener;

/// The Confab Kubernetes operator. Without a command it reconciles Application resources;
/// configuration comes from the environment (see the README).
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the Application CRD as YAML and exit.
    Crdgen,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Before anything else: a mistyped argument exits 2 with a usage error, never starts a server.
    let cli = Cli::parse();
    if let Some(Command::Crdgen) = cli.command {
        print!("{}", confab_operator::crd::crd_yaml());
        return Ok(());
    }
    let env = config::process_env();
    let telemetry = telemetry::init(&env, "confab-operator");
    let config = OperatorConfig::from_env(&env)?;
    let admin = TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| format!("binding {}", config.admin_addr))?;
    let result = confab_operator::run(config, admin, shutdown::signal()).await;
    if let Err(error) = &result {
        tracing::error!(%error, "operator failed");
    }
    telemetry.shutdown();
    Ok(result?)
}
