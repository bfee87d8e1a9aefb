//! Confab's domain, with no I/O.
//!
//! Every service imports its contracts from here, so there is exactly one place for each:
//!
//! - [`token`]: application tokens (secrets; redacted `Debug`, 192 bits of randomness).
//! - [`validation`]: what a valid name, body and page request are, and the limits.
//! - [`event`]: the versioned event contract on JetStream: types, subjects, headers, dedup ids.
//! - [`keys`]: the Redis key layout.
//! - [`sequence`]: how a lost Redis sequence is re-seeded.
//! - [`quota`]: per-application quotas and their defaults.
//! - [`admin`]: the admin API's wire format (api and operator).
//! - [`live`]: live delivery's cursor and creation order.
//!
//! ```text
//!  client ──HTTP──▶ api ──INCR──▶ Redis            (numbers)
//!                    │ └─publish─▶ JetStream ──▶ persister ──▶ MySQL
//!                    └──reads──────────────────────────────────▲
//! ```

pub mod admin;
pub mod client_token;
pub mod event;
pub mod keys;
pub mod live;
mod name;
pub mod quota;
pub mod sequence;
pub mod time;
pub mod token;
pub mod validation;

pub use event::{Envelope, Event, EventKind, Subjects};
pub use token::Token;
