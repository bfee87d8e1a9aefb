//! NATS JetStream: the connection and the topology.
//!
//! Three streams, all file-backed and created or updated idempotently at start-up by every
//! service (nats-server 2.10 or later: the live stream's source transforms subjects):
//!
//! - the events stream (`CONFAB_STREAM`) over `p.v1.>`: **interest retention**, so an event
//!   leaves once every durable consumer has acked it and the server holds per-subject state only
//!   for the work in flight, not for the history written ([`confab_core::sequence`] argues why
//!   numbering stays unique). `CONFAB_STREAM_MAX_AGE_SECS` bounds how long an event waits for a
//!   consumer. The duplicate window (`CONFAB_DUPLICATE_WINDOW_SECS`) makes the publishes of
//!   updates and deletions idempotent; direct gets serve the api's lookups;
//! - the live stream (`CONFAB_LIVE_STREAM`), sourced from the events stream: every message event
//!   under `p.live.{app}.{chat}`, one subject per chat, kept `CONFAB_LIVE_WINDOW_SECS` for live
//!   delivery and resuming subscribers;
//! - the dead-letter stream (`CONFAB_DLQ_STREAM`) over `p.dlq.>`: events a consumer can never
//!   apply, with the reason in a header.
//!
//! Each consuming service has a durable pull consumer with explicit acks, a bounded number of
//! deliveries and an ack wait. Every service makes sure the persister's and the indexer's
//! consumers exist before it can publish: an interest stream drops at once an event that no
//! consumer is there to take.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use confab_core::Subjects;

use crate::backoff::Backoff;
use crate::config::StreamConfig;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to nats: {0}")]
    Connect(#[from] async_nats::ConnectError),
    #[error("cannot create or update stream {name}: {source}")]
    Stream {
        name: String,
        source: jetstream::context::CreateStreamError,
    },
    #[error("cannot get stream {name}: {source}")]
    GetStream {
        name: String,
        source: jetstream::context::GetStreamError,
    },
    #[error("cannot create consumer {name}: {source}")]
    Consumer {
        name: String,
        source: jetstream::stream::ConsumerError,
    },
    #[error(
        "stream {name} exists with settings this version cannot change in place ({source}); \
         docs/streams.md, \"Moving a running installation to this layout\", says how to move"
    )]
    Incompatible {
        name: String,
        source: jetstream::context::CreateStreamError,
    },
    #[error(
        "nats-server {0} is too old: Confab needs 2.10 or later (sources with subject transforms)"
    )]
    ServerTooOld(String),
}

/// `max_ack_pending` of a consumer created for a service that has not started yet (the
/// persister's and indexer's own default, `CONFAB_MAX_ACK_PENDING`).
pub const DEFAULT_MAX_ACK_PENDING: i64 = 20_000;

/// `CONFAB_MAX_ACK_PENDING`, default 20000 (1 to 1000000): events in flight per consumer, read
/// by each consuming service (0 or less would mean no limit to JetStream).
pub fn max_ack_pending(env: &crate::Env) -> Result<i64, crate::ConfigError> {
    crate::config::parse_within(
        env,
        "CONFAB_MAX_ACK_PENDING",
        DEFAULT_MAX_ACK_PENDING,
        1..=1_000_000,
    )
}

/// A connected JetStream context and the events stream handle.
#[derive(Clone)]
pub struct JetStream {
    pub client: async_nats::Client,
    pub context: jetstream::Context,
    pub events: stream::Stream,
    /// The live stream: the chats' message events for live delivery.
    pub live: stream::Stream,
    pub subjects: Subjects,
    pub config: StreamConfig,
}

impl JetStream {
    /// Runs one JetStream request of an api request (a lookup, an idempotency record) bounded
    /// like one publish attempt, `CONFAB_PUBLISH_TIMEOUT_MS`: the context's own timeout is the
    /// longer one stream and consumer management need, and a request must fail fast during a
    /// leader election instead of waiting that out. `None` when the time ran out.
    pub async fn within<T>(&self, request: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::time::timeout(self.config.publish_timeout, request)
            .await
            .ok()
    }
}

/// The servers of a `NATS_URL`: one URL or a comma-separated list, as every NATS client takes
/// it (`nats://a:4222,nats://b:4222`); the client connects to any and fails over to the others.
pub fn server_list(url: &str) -> Vec<String> {
    url.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Connects and makes sure both streams exist with the configured settings.
pub async fn connect(url: &str, service: &str, config: &StreamConfig) -> Result<JetStream, Error> {
    let client = async_nats::ConnectOptions::new()
        .name(service)
        .connection_timeout(Duration::from_secs(5))
        .retry_on_initial_connect()
        .connect(server_list(url).as_slice())
        .await?;
    let mut context = jetstream::new(client.clone());
    // The JetStream API's own timeout (stream and consumer management, direct gets). Publishes
    // are bounded more tightly by the api (`CONFAB_PUBLISH_TIMEOUT_MS` per attempt).
    context.set_timeout(api_timeout(config));
    let subjects = Subjects::new(config.subject_prefix.clone());
    ensure_stream(&context, events_stream_config(config, &subjects)).await?;
    check_server_version(&client.server_info().version)?;
    ensure_stream(&context, dead_letter_stream_config(config, &subjects)).await?;
    let events = get_stream(&context, &config.name).await?;
    ensure_required_consumers(&events, config, &subjects).await?;
    ensure_stream(&context, live_stream_config(config, &subjects)).await?;
    let live = get_stream(&context, &config.live_name).await?;
    Ok(JetStream {
        client,
        context,
        events,
        live,
        subjects,
        config: config.clone(),
    })
}

async fn get_stream(context: &jetstream::Context, name: &str) -> Result<stream::Stream, Error> {
    context
        .get_stream(name)
        .await
        .map_err(|source| Error::GetStream {
            name: name.to_owned(),
            source,
        })
}

/// Refuses a server older than 2.10 (an empty version, from a client that has not seen the
/// server's INFO yet, passes: the streams' set-up then fails on an old server anyway).
pub fn check_server_version(version: &str) -> Result<(), Error> {
    let mut parts = version.split('.').map(|part| part.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) if (major, minor) < (2, 10) => {
            Err(Error::ServerTooOld(version.to_owned()))
        }
        _ => Ok(()),
    }
}

/// The durable consumers the events stream keeps events for, with their filters: the
/// persister's (every event) and the indexer's (message events), when there is one.
pub fn required_consumers(config: &StreamConfig, subjects: &Subjects) -> Vec<(String, String)> {
    let mut consumers = vec![(config.persister_consumer.clone(), subjects.all_events())];
    if let Some(indexer) = &config.indexer_consumer {
        consumers.push((indexer.clone(), subjects.all_message_events()));
    }
    consumers
}

/// Creates the required consumers that do not exist yet (an existing one is left as its
/// service configured it). Without them an interest stream would drop what is published before
/// the persister or the indexer first starts.
async fn ensure_required_consumers(
    events: &stream::Stream,
    config: &StreamConfig,
    subjects: &Subjects,
) -> Result<(), Error> {
    for (name, filter) in required_consumers(config, subjects) {
        let consumer = durable_consumer_config(&name, filter, config, DEFAULT_MAX_ACK_PENDING);
        events
            .get_or_create_consumer(&name, consumer)
            .await
            .map_err(|source| Error::Consumer { name, source })?;
    }
    Ok(())
}

/// Timeout of JetStream API requests.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a JetStream request may wait for its answer: the context's requests and a publish's
/// acknowledgement ([`publish_acked`]).
fn api_timeout(config: &StreamConfig) -> Duration {
    API_TIMEOUT.max(config.publish_timeout)
}

/// How long start-up keeps trying to create or update a stream.
const ENSURE_DEADLINE: Duration = Duration::from_secs(90);
/// Pauses between those attempts: from 250 ms, doubling, at most 5 s, jittered (replicas
/// starting together do not retry together).
const ENSURE_RETRY: Backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));

/// Creates or updates a stream, retrying for a while: a cluster that is electing a leader, or
/// nats-server 2.9 meeting several services creating the same replicated stream at once
/// (nats-io/nats-server#3677), answers with timeouts that a later attempt does not meet.
async fn ensure_stream(context: &jetstream::Context, config: stream::Config) -> Result<(), Error> {
    let started = std::time::Instant::now();
    let mut attempt = 1;
    loop {
        let pause = ENSURE_RETRY.delay(attempt);
        match context.create_or_update_stream(config.clone()).await {
            Ok(_) => return Ok(()),
            // A stream whose settings JetStream will not change in place (a work-queue retention,
            // another storage type; limits to interest it does change): waiting cannot help.
            Err(source) if source.to_string().contains("can not change") => {
                return Err(Error::Incompatible {
                    name: config.name.clone(),
                    source,
                })
            }
            Err(source) if started.elapsed() + pause < ENSURE_DEADLINE => {
                tracing::warn!(stream = %config.name, error = %source, "cannot set up stream yet, retrying");
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
            Err(source) => {
                return Err(Error::Stream {
                    name: config.name.clone(),
                    source,
                })
            }
        }
    }
}

/// The events stream's configuration (pure, so it can be checked in a unit test).
pub fn events_stream_config(config: &StreamConfig, subjects: &Subjects) -> stream::Config {
    stream::Config {
        name: config.name.clone(),
        subjects: vec![subjects.all_events()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Interest,
        discard: stream::DiscardPolicy::Old,
        max_age: config.max_age,
        duplicate_window: config.duplicate_window,
        num_replicas: config.replicas,
        allow_direct: true,
        ..Default::default()
    }
}

/// The live stream's configuration: sourced from the events stream, every message event under
/// its chat's subject, for the live window. Its source is one more consumer of the events
/// stream, so an event waits in the events stream until the live stream has it.
pub fn live_stream_config(config: &StreamConfig, subjects: &Subjects) -> stream::Config {
    let (source, destination) = subjects.live_transform();
    stream::Config {
        name: config.live_name.clone(),
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_age: config.live_window,
        num_replicas: config.replicas,
        allow_direct: true,
        sources: Some(vec![stream::Source {
            name: config.name.clone(),
            subject_transforms: vec![stream::SubjectTransform {
                source,
                destination,
            }],
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// The dead-letter stream's configuration.
pub fn dead_letter_stream_config(config: &StreamConfig, subjects: &Subjects) -> stream::Config {
    stream::Config {
        name: config.dlq_name.clone(),
        subjects: vec![subjects.all_dead_letters()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age: Duration::from_secs(30 * 24 * 3600),
        duplicate_window: config.duplicate_window,
        num_replicas: config.replicas,
        ..Default::default()
    }
}

/// The stream of the api's idempotency records (`CONFAB_IDEMPOTENCY_STREAM`) over
/// `p.idem.>`: one record per subject (`max_msgs_per_subject` 1, so a replaced record replaces
/// its predecessor), kept `ttl`, with this deployment's storage and replicas. Records are written
/// with `Nats-Expected-Last-Subject-Sequence`, which makes "create if absent" and "replace if
/// unchanged" atomic.
pub async fn records_stream(
    js: &JetStream,
    name: &str,
    ttl: Duration,
) -> Result<stream::Stream, Error> {
    ensure_stream(
        &js.context,
        stream::Config {
            name: name.to_owned(),
            subjects: vec![js.subjects.all_idempotency_records()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_age: ttl,
            max_messages_per_subject: 1,
            num_replicas: js.config.replicas,
            allow_direct: true,
            ..Default::default()
        },
    )
    .await?;
    js.context
        .get_stream(name)
        .await
        .map_err(|source| Error::GetStream {
            name: name.to_owned(),
            source,
        })
}

/// A durable pull consumer's configuration.
pub fn durable_consumer_config(
    name: &str,
    filter_subject: String,
    config: &StreamConfig,
    max_ack_pending: i64,
) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(name.to_owned()),
        filter_subject,
        ack_policy: consumer::AckPolicy::Explicit,
        deliver_policy: consumer::DeliverPolicy::All,
        ack_wait: config.ack_wait,
        max_deliver: config.max_deliver,
        max_ack_pending,
        ..Default::default()
    }
}

/// Creates the durable consumer, or updates an existing one to `config` (so a changed
/// `CONFAB_MAX_DELIVER` or ack wait takes effect), and returns it.
pub async fn durable_consumer(
    js: &JetStream,
    config: consumer::pull::Config,
) -> Result<consumer::PullConsumer, Error> {
    let name = config.durable_name.clone().unwrap_or_default();
    js.events
        .create_consumer(config)
        .await
        .map_err(|source| Error::Consumer { name, source })
}

/// Connects as `service` and creates (if needed) its durable consumer `name` over `filter`.
pub async fn connect_consumer(
    url: &str,
    service: &str,
    config: &StreamConfig,
    name: &str,
    filter: impl FnOnce(&Subjects) -> String,
    max_ack_pending: i64,
) -> Result<(JetStream, consumer::PullConsumer), Error> {
    // Boxed: connecting and setting up streams and consumers are large futures, awaited once.
    let js = Box::pin(connect(url, service, config)).await?;
    let consumer_config =
        durable_consumer_config(name, filter(&js.subjects), config, max_ack_pending);
    let consumer = Box::pin(durable_consumer(&js, consumer_config)).await?;
    Ok((js, consumer))
}

/// A stream's acknowledgement of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The event's sequence in the stream (the earlier one's, for a duplicate).
    pub sequence: u64,
    /// The stream already held an event with this `Nats-Msg-Id` (within its duplicate window).
    pub duplicate: bool,
}

/// Why a publish was not stored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PublishFailure {
    /// `Nats-Expected-Last-Subject-Sequence` did not hold: the subject has another event.
    #[error("{0}")]
    WrongLastSequence(jetstream::Error),
    /// Anything else: no stream, a stream error, no answer, a broken connection.
    #[error("{0}")]
    Other(String),
}

/// Publishes and waits for the stream's acknowledgement: the one way every service publishes.
///
/// A plain request whose answer is read here, rather than the client's JetStream publish: that
/// one reads the answer through an untagged enum (serde buffers it and tries each shape in
/// turn); reading it here took a message post from 101,040 to 98,341 instructions
/// (`scripts/dev callgrind`). It waits as long as the context's requests do.
pub async fn publish_acked(
    js: &JetStream,
    subject: String,
    headers: async_nats::HeaderMap,
    payload: bytes::Bytes,
) -> Result<Ack, PublishFailure> {
    use async_nats::RequestErrorKind;
    let request = async_nats::client::Request::new()
        .headers(headers)
        .payload(payload)
        .timeout(Some(api_timeout(&js.config)));
    match js.client.send_request(subject, request).await {
        Ok(answer) => read_ack(&answer.payload),
        Err(error) if error.kind() == RequestErrorKind::NoResponders => Err(PublishFailure::Other(
            "no stream stores this subject (no responders)".to_owned(),
        )),
        Err(error) => Err(PublishFailure::Other(error.to_string())),
    }
}

/// A stream's answer to a publish: `{"stream":…,"seq":…[,"duplicate":true]}`, or
/// `{"error":{"code":…,"err_code":…,"description":…}}` (the client's own [`jetstream::Error`]).
fn read_ack(payload: &[u8]) -> Result<Ack, PublishFailure> {
    #[derive(serde::Deserialize)]
    struct Answer {
        stream: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        seq: u64,
        #[serde(default)]
        duplicate: bool,
        error: Option<jetstream::Error>,
    }
    let answer: Answer = serde_json::from_slice(payload)
        .map_err(|e| PublishFailure::Other(format!("unreadable publish acknowledgement: {e}")))?;
    match (answer.error, answer.stream) {
        (Some(error), _)
            if error.error_code() == jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE =>
        {
            Err(PublishFailure::WrongLastSequence(error))
        }
        (Some(error), _) => Err(PublishFailure::Other(format!(
            "stream refused the publish: {error}"
        ))),
        (None, Some(_)) => Ok(Ack {
            sequence: answer.seq,
            duplicate: answer.duplicate,
        }),
        (None, None) => Err(PublishFailure::Other(
            "a publish acknowledgement without a stream".to_owned(),
        )),
    }
}

/// Whether the NATS connection is up, for `/readyz`.
pub fn connected(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CommonConfig, Env};

    #[test]
    fn events_stream_is_file_backed_with_a_duplicate_window() {
        let c = CommonConfig::from_env(&Env::new(), 1).unwrap().stream;
        let s = events_stream_config(&c, &Subjects::new("confab"));
        assert_eq!(s.storage, stream::StorageType::File);
        assert_eq!(s.duplicate_window, Duration::from_secs(120));
        assert_eq!(s.subjects, vec!["confab.v1.>".to_string()]);
        assert_eq!(s.retention, stream::RetentionPolicy::Interest);
        assert!(s.allow_direct);
        let live = live_stream_config(&c, &Subjects::new("confab"));
        assert_eq!(live.max_age, Duration::from_secs(3600));
        let sources = live.sources.unwrap();
        assert_eq!(sources[0].name, "CONFAB_EVENTS");
        assert_eq!(
            sources[0].subject_transforms[0].source,
            "confab.v1.message.*.*.*.*"
        );
        let d = dead_letter_stream_config(&c, &Subjects::new("confab"));
        assert_eq!(d.subjects, vec!["confab.dlq.>".to_string()]);
    }

    #[test]
    fn acknowledgements_are_read_as_the_server_writes_them() {
        assert_eq!(
            read_ack(br#"{"stream":"CONFAB_EVENTS","seq":41}"#),
            Ok(Ack {
                sequence: 41,
                duplicate: false
            })
        );
        assert_eq!(
            read_ack(br#"{"stream":"CONFAB_EVENTS","domain":"hub","seq":7,"duplicate":true}"#),
            Ok(Ack {
                sequence: 7,
                duplicate: true
            })
        );
        let refused = read_ack(
            br#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 12"},"stream":"CONFAB_EVENTS","seq":0}"#,
        );
        assert!(
            matches!(refused, Err(PublishFailure::WrongLastSequence(ref e)) if e.to_string().starts_with("wrong last sequence: 12")),
            "{refused:?}"
        );
        let other = read_ack(
            br#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#,
        );
        assert!(matches!(other, Err(PublishFailure::Other(ref m)) if m.contains("10077")));
        assert!(matches!(read_ack(b"{}"), Err(PublishFailure::Other(_))));
        assert!(matches!(
            read_ack(b"not json"),
            Err(PublishFailure::Other(_))
        ));
    }

    #[test]
    fn servers_before_2_10_are_refused() {
        assert!(check_server_version("2.9.10").is_err());
        assert!(check_server_version("1.4.1").is_err());
        for fine in ["2.10.0", "2.12.8", "3.0.0", ""] {
            assert!(check_server_version(fine).is_ok(), "{fine}");
        }
    }

    #[test]
    fn the_persister_and_the_indexer_are_required_unless_there_is_no_indexer() {
        let mut c = CommonConfig::from_env(&Env::new(), 1).unwrap().stream;
        let names = |c: &StreamConfig| -> Vec<String> {
            required_consumers(c, &Subjects::new("p"))
                .into_iter()
                .map(|(name, _)| name)
                .collect()
        };
        assert_eq!(names(&c), ["confab-persister", "confab-indexer"]);
        c.indexer_consumer = None;
        assert_eq!(names(&c), ["confab-persister"]);
    }

    #[test]
    fn nats_url_takes_a_list_of_servers() {
        assert_eq!(server_list("nats://a:1"), vec!["nats://a:1"]);
        assert_eq!(
            server_list("nats://a:1, nats://b:2,,nats://c:3"),
            vec!["nats://a:1", "nats://b:2", "nats://c:3"]
        );
    }

    #[test]
    fn consumers_ack_explicitly_and_bound_deliveries() {
        let c = CommonConfig::from_env(&Env::new(), 1).unwrap().stream;
        let p = durable_consumer_config("p", "confab.v1.>".into(), &c, 1000);
        assert_eq!(p.ack_policy, consumer::AckPolicy::Explicit);
        assert_eq!(p.max_deliver, 1000);
    }
}
