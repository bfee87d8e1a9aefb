//! What wakes the controller, and proof that the watch still works.
//!
//! - [`reconcile_trigger`]: only changes to what the operator acts on — the spec (seen as
//!   `metadata.generation`), finalizers, deletion and the pause annotation — start a reconcile.
//!   The operator's own status writes change none of them, so they do not re-trigger it.
//! - [`relisting`]: the `Application` watch, restarted with a fresh LIST every period. A quiet
//!   watch yields nothing, so without this a healthy idle operator and one whose watch silently
//!   died would look the same; with it, every period ends in a list that either arrives (the
//!   heartbeat moves) or fails (the watcher reports errors and backs off).
//! - [`Heartbeat`]: when the watch or a reconcile last made progress; `/livez` fails when that
//!   is too long ago, so Kubernetes restarts a stuck operator.

use std::collections::hash_map::DefaultHasher;
use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use kube::runtime::watcher;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

use crate::crd::Application;

/// The hash the controller's predicate filter compares: a reconcile starts only when it changes.
pub fn reconcile_trigger(app: &Application) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    app.metadata.generation.hash(&mut hasher);
    app.metadata.finalizers.hash(&mut hasher);
    app.metadata.deletion_timestamp.is_some().hash(&mut hasher);
    app.paused().hash(&mut hasher);
    Some(hasher.finish())
}

/// A watcher of `api` that starts over, with a LIST, every `period`.
pub fn relisting<K>(
    api: Api<K>,
    config: watcher::Config,
    period: Duration,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    futures::stream::repeat(()).flat_map(move |()| {
        watcher(api.clone(), config.clone()).take_until(tokio::time::sleep(period))
    })
}

/// The last time the watch delivered something or a reconcile ended.
#[derive(Debug)]
pub struct Heartbeat(Mutex<Instant>);

impl Default for Heartbeat {
    fn default() -> Self {
        Self(Mutex::new(Instant::now()))
    }
}

impl Heartbeat {
    /// A heartbeat whose last progress was at `instant` (tests of a stalled operator).
    pub fn since(instant: Instant) -> Self {
        Self(Mutex::new(instant))
    }

    pub fn beat(&self) {
        *self.0.lock().expect("heartbeat lock is never poisoned") = Instant::now();
    }

    /// How long ago the last progress was.
    pub fn silence(&self) -> Duration {
        self.0
            .lock()
            .expect("heartbeat lock is never poisoned")
            .elapsed()
    }

    /// Alive while the last progress is at most `limit` ago.
    pub fn alive(&self, limit: Duration) -> bool {
        self.silence() <= limit
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use super::*;
    use crate::crd::{ApplicationStatus, PAUSE_ANNOTATION};

    fn app() -> Application {
        let mut app = crate::crd::sample();
        app.metadata.resource_version = Some("10".into());
        app
    }

    #[test]
    fn status_writes_and_other_metadata_do_not_trigger_a_reconcile() {
        let before = reconcile_trigger(&app());
        let mut after = app();
        after.status = Some(ApplicationStatus {
            chats_count: Some(3),
            ..ApplicationStatus::default()
        });
        after.metadata.resource_version = Some("11".into());
        after.metadata.labels = Some(BTreeMap::from([("team".into(), "a".into())]));
        assert_eq!(reconcile_trigger(&after), before);
    }

    #[test]
    fn spec_finalizer_deletion_and_pause_changes_trigger_a_reconcile() {
        let before = reconcile_trigger(&app());
        let mut spec = app();
        spec.metadata.generation = Some(2);
        let mut finalized = app();
        finalized.metadata.finalizers = Some(vec!["confab.dev/application".into()]);
        let mut deleted = app();
        deleted.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        let mut paused = app();
        paused.metadata.annotations =
            Some(BTreeMap::from([(PAUSE_ANNOTATION.into(), "true".into())]));
        for changed in [spec, finalized, deleted, paused] {
            assert_ne!(
                reconcile_trigger(&changed),
                before,
                "{:?}",
                changed.metadata
            );
        }
        // Any value but "true" is not a pause.
        let mut not_paused = app();
        not_paused.metadata.annotations =
            Some(BTreeMap::from([(PAUSE_ANNOTATION.into(), "false".into())]));
        assert_eq!(reconcile_trigger(&not_paused), before);
    }

    #[test]
    fn the_heartbeat_is_alive_only_within_its_limit() {
        let heartbeat = Heartbeat::default();
        assert!(heartbeat.alive(Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!heartbeat.alive(Duration::from_millis(10)));
        heartbeat.beat();
        assert!(heartbeat.alive(Duration::from_millis(25)));
    }
}
