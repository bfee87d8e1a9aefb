//! The Redis key layout. Redis holds sequences and caches only; losing it loses no data.
//!
//! Keys carry internal ids (never tokens) and start with a configurable prefix so that several
//! installations (or parallel tests) can share one Redis.
//!
//! Every key of an application carries its id as a Redis Cluster hash tag
//! (`confab:seq:messages:{42}:7`): a cluster puts all of them on one slot, so the numbering
//! scripts, which touch a sequence, the rate state, the epoch and a deletion mark together, run
//! there, and the load spreads across applications. One Redis ignores the braces.

/// Builds every Redis key a service uses.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// `{prefix}{kind}:{{application}}:{number}…`, built without `format!` (keys are built on
    /// every request).
    fn key(&self, kind: &str, application_id: u64, numbers: &[u64]) -> String {
        let mut key =
            String::with_capacity(self.prefix.len() + kind.len() + 24 + 21 * numbers.len());
        key.push_str(&self.prefix);
        key.push_str(kind);
        let mut digits = itoa::Buffer::new();
        key.push_str(":{");
        key.push_str(digits.format(application_id));
        key.push('}');
        for number in numbers {
            key.push(':');
            key.push_str(digits.format(*number));
        }
        key
    }

    /// The sequence that numbers an application's chats.
    pub fn chat_sequence(&self, application_id: u64) -> String {
        self.key("seq:chats", application_id, &[])
    }

    /// The sequence that numbers one chat's messages.
    pub fn message_sequence(&self, application_id: u64, chat_number: u64) -> String {
        self.key("seq:messages", application_id, &[chat_number])
    }

    /// When this Redis's sequences of an application began (µs of Redis's clock): re-seeding's
    /// fence and the start of its quiescence ([`crate::sequence`]).
    pub fn sequence_epoch(&self, application_id: u64) -> String {
        self.key("epoch", application_id, &[])
    }

    /// The message-rate limiter's state of an application (a GCRA "theoretical arrival time").
    pub fn message_rate(&self, application_id: u64) -> String {
        self.key("rate:messages", application_id, &[])
    }

    /// The application-creation limiter's state of one client (its address).
    pub fn creation_rate(&self, client: &str) -> String {
        format!("{}rate:applications:{client}", self.prefix)
    }

    /// Marks a deleted chat, without expiry: the message numbering script refuses a number in a
    /// chat with this mark, atomically with taking it. (After Redis lost its data, the first
    /// message of the chat re-seeds its sequence, and re-seeding finds the deletion in MySQL or
    /// the stream and sets the mark again.)
    pub fn chat_deleted(&self, application_id: u64, chat_number: u64) -> String {
        self.key("deleted:chat", application_id, &[chat_number])
    }

    /// Marks a deleted message from its `DELETE` until the persister has committed the deletion
    /// (it removes the mark then; the mark also expires after the stream's maximum age): reads
    /// and a second `DELETE` answer 404 at once in every api replica. `1` while the deletion may
    /// not be published yet (a retried `DELETE` publishes it again), `2` once it is.
    pub fn message_deleted(&self, application_id: u64, chat_number: u64, number: u64) -> String {
        self.key("deleted:message", application_id, &[chat_number, number])
    }

    /// Set by the persister around a commit that changed or deleted an application's items,
    /// expiring after the read replica's allowed lag and a margin: while it exists, the api
    /// reads the application from the primary, so no reader sees a deleted item come back or an
    /// edit undone by a lagging replica.
    pub fn recent_change(&self, application_id: u64) -> String {
        self.key("changed", application_id, &[])
    }

    /// The live subscriptions open on an application, across replicas: a sorted set of
    /// subscription ids scored by when their lease ends (a replica that died leaves entries that
    /// simply expire).
    pub fn subscriptions(&self, application_id: u64) -> String {
        self.key("live", application_id, &[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_and_distinct() {
        let k = Keys::new("t1:");
        let all = [
            k.chat_sequence(1),
            k.message_sequence(1, 2),
            k.chat_deleted(1, 2),
            k.subscriptions(1),
            k.sequence_epoch(1),
            k.message_rate(1),
            k.recent_change(1),
            k.message_deleted(1, 2, 3),
        ];
        assert!(all.iter().all(|x| x.starts_with("t1:")));
        assert!(
            all.iter().all(|x| x.contains(":{1}")),
            "every key of application 1 carries its hash tag: {all:?}"
        );
        assert_eq!(k.message_sequence(12, 3), "t1:seq:messages:{12}:3");
        let set: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(set.len(), all.len());
    }
}
