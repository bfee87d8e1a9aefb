//! What every Confab service shares at run time.
//!
//! - [`config`]: typed configuration read once from an environment map, with documented defaults.
//! - [`telemetry`]: structured logs (JSON or pretty) filtered by `RUST_LOG`.
//! - [`db`], [`cache`], [`jetstream`]: connections to MySQL, Redis and NATS JetStream, and the
//!   JetStream topology (streams, consumers) created idempotently at start-up.
//! - [`admin`]: the admin server every service runs (`/healthz`, `/readyz`, `/metrics`).
//! - [`metrics`]: a metric registry per service and the metric families several services share.
//! - [`backoff`]: the one retry policy (exponential, capped, jittered).
//! - [`consume`], [`dead_letter`]: the consumer worker every JetStream consumer service runs
//!   (decode, apply, split a rejected batch, ack, hand back, dead-letter).
//! - [`shutdown`]: SIGTERM / ctrl-c as a future, so `run` functions take shutdown as an argument.

/// Every Confab binary (and test binary) allocates through mimalloc, not glibc's malloc: the
/// request and consume paths allocate small short-lived buffers from every tokio worker, and
/// under the side-by-side load glibc's arenas took about a quarter of the api's CPU samples
/// (docs/benchmarks.md). The images set `MIMALLOC_ARENA_EAGER_COMMIT=0` (memory is committed as it
/// is used): an idle connection costs ~16 KB of resident memory instead of ~28 KB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod admin;
pub mod backoff;
pub mod cache;
pub mod config;
pub mod consume;
pub mod db;
pub mod dead_letter;
pub mod deletion;
pub mod jetstream;
pub mod metrics;
pub mod secret;
pub mod sequence;
pub mod shutdown;
pub mod telemetry;
pub mod trace;

pub use config::{CommonConfig, ConfigError, Env};
pub use secret::Secret;
