//! Structured logs and OpenTelemetry traces.
//!
//! `RUST_LOG` filters (default `info`); `CONFAB_LOG_FORMAT` picks `json` (default) or `pretty`.
//! When `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are also exported over OTLP (HTTP/protobuf)
//! with the service name (`OTEL_SERVICE_NAME`, default the binary's name) and version as
//! resource attributes; the SDK honours the other standard variables it reads
//! ([`HONOURED_OTEL_VARIABLES`]). Logs always carry the trace id of their span.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter};
use opentelemetry_sdk::Resource;
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

use crate::Env;

/// The standard `OTEL_*` variables the exporter and SDK read from the process environment.
pub const HONOURED_OTEL_VARIABLES: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_SCHEDULE_DELAY",
];

/// Holds the trace exporter, if any; [`Telemetry::shutdown`] flushes it.
#[must_use = "call shutdown() at exit so buffered spans are exported"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(error) = provider.shutdown() {
                eprintln!("trace exporter shutdown failed: {error}");
            }
        }
    }
}

/// Installs the global subscriber, exporting traces over OTLP when configured. Call once, from
/// `main`; `service` is the binary's name.
pub fn init(env: &Env, service: &'static str) -> Telemetry {
    let endpoint = env
        .get("OTEL_EXPORTER_OTLP_ENDPOINT")
        .or_else(|| env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        .filter(|v| !v.is_empty());
    let provider = endpoint.and_then(|_| {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => Some(provider(exporter, env, service)),
            Err(error) => {
                eprintln!("OTLP exporter not started: {error}");
                None
            }
        }
    });
    install(env, provider.clone());
    if provider.is_some() {
        let set: Vec<&str> = HONOURED_OTEL_VARIABLES
            .iter()
            .copied()
            .filter(|name| env.contains_key(*name))
            .collect();
        tracing::info!(?set, "exporting traces over OTLP");
    }
    Telemetry { provider }
}

/// A tracer provider batching spans to `exporter`, with the service's resource attributes.
pub fn provider<E: SpanExporter + 'static>(
    exporter: E,
    env: &Env,
    service: &'static str,
) -> SdkTracerProvider {
    let name = env
        .get("OTEL_SERVICE_NAME")
        .filter(|v| !v.is_empty())
        .cloned()
        .unwrap_or_else(|| service.to_owned());
    let resource = Resource::builder()
        .with_service_name(name)
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build()
}

/// Installs the global subscriber: the filter, the OpenTelemetry layer (when `provider` is
/// given), and the log formatter.
pub fn install(env: &Env, provider: Option<SdkTracerProvider>) {
    let filter = EnvFilter::try_new(env.get("RUST_LOG").map_or("info", String::as_str))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = env.get("CONFAB_LOG_FORMAT").map(String::as_str) != Some("pretty");
    if provider.is_some() {
        crate::trace::set_exporting();
    }
    let otel = provider.map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("confab")));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
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
