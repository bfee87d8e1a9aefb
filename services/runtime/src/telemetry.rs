//! Structured logging. `RUST_LOG` filters (default `info`); `CONFAB_LOG_FORMAT` picks `json`
//! (default) or `pretty`.

use tracing_subscriber::{fmt, prelude::*, EnvFilter};

use crate::Env;

/// Installs the global subscriber. Call once, from `main`.
pub fn init(env: &Env) {
    let filter = EnvFilter::try_new(env.get("RUST_LOG").map_or("info", String::as_str))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = env.get("CONFAB_LOG_FORMAT").map(String::as_str) != Some("pretty");
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            )
            .try_init()
    } else {
        registry.with(fmt::layer()).try_init()
    };
    if let Err(error) = result {
        eprintln!("telemetry already initialised: {error}");
    }
}
