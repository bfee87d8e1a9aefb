//! The dead-letter path: events that can never be applied are copied to the dead-letter stream
//! with the reason, then terminated on the events stream.

use crate::jetstream::JetStream;
use crate::metrics;
use async_nats::jetstream::{self, AckKind};
use confab_core::event::headers;

/// Copies `message` to the dead-letter subject with `reason`, then terminates it. When the copy
/// cannot be stored the message is left to redelivery instead, so nothing is dropped.
pub async fn send(
    js: &JetStream,
    metrics: &metrics::Consumer,
    message: &jetstream::Message,
    reason_class: &'static str,
    reason: &str,
) {
    let service = metrics.service;
    // The original headers travel along, except the publish conditions: a creation's "no message
    // on this subject yet" would refuse the copy of a second service dead-lettering the same event.
    let mut map = async_nats::HeaderMap::new();
    for (name, values) in message.headers.iter().flat_map(|h| h.iter()) {
        if AsRef::<str>::as_ref(name).eq_ignore_ascii_case(headers::EXPECTED_LAST_SUBJECT_SEQUENCE)
        {
            continue;
        }
        for value in values {
            map.append(name.clone(), value.clone());
        }
    }
    map.insert(headers::DLQ_REASON, reason);
    map.insert(headers::DLQ_CLASS, reason_class);
    map.insert(headers::DLQ_SERVICE, service);
    if let Ok(info) = message.info() {
        map.insert(
            headers::DLQ_STREAM_SEQUENCE,
            info.stream_sequence.to_string().as_str(),
        );
    }
    // The original dedup id must not dedup the dead letter against other services' copies.
    map.insert(
        headers::MSG_ID,
        format!(
            "dlq:{service}:{}",
            message
                .info()
                .map(|i| i.stream_sequence)
                .unwrap_or_default()
        )
        .as_str(),
    );
    let subject = js.subjects.dead_letter(&message.subject);
    let stored = crate::jetstream::publish_acked(js, subject, map, message.payload.clone())
        .await
        .map(|_| ());
    match stored {
        Ok(()) => {
            metrics
                .dead_lettered
                .with_label_values(&[service, reason_class])
                .inc();
            tracing::warn!(service, reason_class, reason, "event dead-lettered");
            if let Err(error) = message.ack_with(AckKind::Term).await {
                tracing::warn!(%error, "cannot terminate dead-lettered event");
            }
        }
        Err(error) => {
            tracing::error!(%error, "cannot store dead letter; leaving event for redelivery");
            let _ = message
                .ack_with(AckKind::Nak(Some(std::time::Duration::from_secs(5))))
                .await;
        }
    }
}
