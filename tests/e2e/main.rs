//! End-to-end tests: the api and the persister together against the real MariaDB, Redis and NATS.

#![allow(clippy::unwrap_used)]

mod admin;
mod bad_input;
mod browser;
mod clients;
mod conformance;
mod consumers;
mod contract;
mod counters;
mod deletion;
mod durability;
mod health;
mod horizon;
mod idempotency;
mod invariants;
mod live;
mod numbering;
mod observability;
mod operator;
mod publishing;
mod quotas;
mod read_replica;
mod search;
mod stream_scale;
mod websocket;
