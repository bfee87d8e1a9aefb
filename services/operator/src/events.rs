//! Kubernetes Events about each `Application`, so `kubectl describe capp` tells its story:
//! `Registered`, `QuotasChanged`, `AllowedOriginsChanged`, `TokenRotated`, `Deleted`/`Retained`,
//! `ApiUnavailable`, `Rejected`, `ReconciliationPaused`.
//!
//! Which events a reconcile produces is a pure function of the status before and after it
//! ([`after_reconcile`]); the controller publishes them through one [`Recorder`] kept in its
//! context (the recorder folds repeats of an event into one series). Publishing is best effort:
//! an event that cannot be written is logged, never a reason to fail the reconcile.

use confab_core::admin::RotateRequest;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::Resource;

use crate::crd::{Application, ApplicationStatus};
use crate::desired::{self, reason};

/// `events.k8s.io` reasons beside the condition reasons.
pub const QUOTAS_CHANGED: &str = "QuotasChanged";
pub const ALLOWED_ORIGINS_CHANGED: &str = "AllowedOriginsChanged";
pub const TOKEN_ROTATED: &str = "TokenRotated";
pub const DELETED: &str = "Deleted";
pub const RETAINED: &str = "Retained";

/// An event to publish about the resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

impl Notice {
    pub fn normal(reason: &'static str, note: String) -> Self {
        Self {
            warning: false,
            reason,
            note,
        }
    }
}

/// The events a reconcile that turned `app`'s status into `next` produces; `rotated` is the
/// rotation it performed, if any.
pub fn after_reconcile(
    app: &Application,
    next: &ApplicationStatus,
    rotated: Option<&RotateRequest>,
) -> Vec<Notice> {
    let previous = app.status.as_ref();
    let was = |type_, status| desired::find(previous, type_).is_some_and(|c| c.status == status);
    let mut out = Vec::new();
    let synced = desired::find(Some(next), reason::SYNCED);
    match synced.map(|c| (c.status.as_str(), c.reason.as_str())) {
        Some(("True", _)) if !was(reason::READY, "True") => out.push(Notice::normal(
            reason::REGISTERED,
            format!(
                "registered with the api; token in Secret {}",
                desired::secret_name(app)
            ),
        )),
        Some(("False", why @ (reason::API_UNAVAILABLE | reason::REJECTED))) => out.push(Notice {
            warning: true,
            reason: if why == reason::REJECTED {
                reason::REJECTED
            } else {
                reason::API_UNAVAILABLE
            },
            note: synced.map(|c| c.message.clone()).unwrap_or_default(),
        }),
        Some(("False", reason::PAUSED))
            if desired::find(previous, reason::SYNCED)
                .is_none_or(|c| c.reason != reason::PAUSED) =>
        {
            out.push(Notice::normal(
                reason::PAUSED,
                synced.map(|c| c.message.clone()).unwrap_or_default(),
            ));
        }
        _ => {}
    }
    if let (Some(before), Some(after)) = (previous.and_then(|s| s.quotas.as_ref()), &next.quotas) {
        let changes: Vec<String> = after
            .iter()
            .filter_map(|(name, value)| {
                let old = before.get(name)?;
                (old != value).then(|| format!("{name} {old} -> {value}"))
            })
            .collect();
        if !changes.is_empty() {
            out.push(Notice::normal(QUOTAS_CHANGED, changes.join(", ")));
        }
    }
    if let (Some(before), Some(after)) = (
        previous.and_then(|s| s.allowed_origins.as_ref()),
        &next.allowed_origins,
    ) {
        let listed = |what: &str, origins: Vec<&String>| {
            (!origins.is_empty()).then(|| {
                let origins: Vec<&str> = origins.iter().map(|o| o.as_str()).collect();
                format!("{what} {}", origins.join(", "))
            })
        };
        let changes: Vec<String> = [
            listed(
                "allowed",
                after.iter().filter(|o| !before.contains(o)).collect(),
            ),
            listed(
                "no longer allowed",
                before.iter().filter(|o| !after.contains(o)).collect(),
            ),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !changes.is_empty() {
            out.push(Notice::normal(ALLOWED_ORIGINS_CHANGED, changes.join("; ")));
        }
    }
    if let Some(rotation) = rotated {
        out.push(Notice::normal(
            TOKEN_ROTATED,
            format!(
                "rotation {}: new token in Secret {}; the replaced token works for {} more seconds",
                rotation.request_id.as_deref().unwrap_or_default(),
                desired::secret_name(app),
                rotation.grace_seconds.unwrap_or_default()
            ),
        ));
    }
    out
}

/// Publishes `notices` about `app`; failures are logged and otherwise ignored.
pub async fn publish(recorder: &Recorder, app: &Application, notices: Vec<Notice>) {
    let reference = app.object_ref(&());
    for notice in notices {
        let event = Event {
            type_: if notice.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: notice.reason.to_owned(),
            // Notes are at most 1 kB.
            note: Some(truncate(notice.note, 1024)),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(error) = recorder.publish(&event, &reference).await {
            tracing::warn!(%error, reason = notice.reason, "could not publish an event");
        }
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chrono::Utc;
    use confab_core::admin::AdminApplication;
    use confab_core::quota::{QuotaRequest, Quotas};

    use super::*;
    use crate::desired::Outcome;

    fn app() -> Application {
        crate::crd::sample()
    }

    fn registered(max_chats: u64) -> AdminApplication {
        AdminApplication {
            key: "uid-1".into(),
            name: "Shop".into(),
            token: "t".into(),
            requested_quotas: QuotaRequest::default(),
            quotas: Quotas {
                max_chats,
                ..Quotas::default()
            },
            allowed_origins: Vec::new(),
            chats_count: 0,
            rotation_id: None,
            previous_token_expires_at: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn reasons(notices: &[Notice]) -> Vec<&str> {
        notices.iter().map(|n| n.reason).collect()
    }

    #[test]
    fn the_story_of_a_resource() {
        let mut a = app();
        let ok = status(&a, &Outcome::Synced(&registered(10)));
        assert_eq!(reasons(&after_reconcile(&a, &ok, None)), ["Registered"]);
        a.status = Some(ok.clone());
        // Nothing changed: nothing to tell.
        assert!(after_reconcile(&a, &ok, None).is_empty());

        let raised = status(&a, &Outcome::Synced(&registered(20)));
        let notices = after_reconcile(&a, &raised, None);
        assert_eq!(reasons(&notices), ["QuotasChanged"]);
        assert_eq!(notices[0].note, "maxChats 10 -> 20");

        let origins = |list: &[&str]| AdminApplication {
            allowed_origins: list.iter().map(|o| (*o).to_owned()).collect(),
            ..registered(10)
        };
        let opened = status(&a, &Outcome::Synced(&origins(&["https://a.example"])));
        let notices = after_reconcile(&a, &opened, None);
        assert_eq!(reasons(&notices), ["AllowedOriginsChanged"]);
        assert_eq!(notices[0].note, "allowed https://a.example");
        let mut b = a.clone();
        b.status = Some(opened);
        let moved = status(
            &b,
            &Outcome::Synced(&origins(&["https://b.example", "https://c.example"])),
        );
        assert_eq!(
            after_reconcile(&b, &moved, None)[0].note,
            "allowed https://b.example, https://c.example; no longer allowed https://a.example"
        );

        let rotation = RotateRequest {
            request_id: Some("r1".into()),
            grace_seconds: Some(60),
        };
        let notices = after_reconcile(&a, &ok, Some(&rotation));
        assert_eq!(reasons(&notices), ["TokenRotated"]);
        assert!(notices[0].note.contains("r1") && notices[0].note.contains("60"));

        for (why, expected) in [
            (reason::API_UNAVAILABLE, "ApiUnavailable"),
            (reason::REJECTED, "Rejected"),
        ] {
            let failed = status(
                &a,
                &Outcome::Failed {
                    reason: why,
                    message: "boom".into(),
                },
            );
            let notices = after_reconcile(&a, &failed, None);
            assert_eq!(reasons(&notices), [expected]);
            assert!(notices[0].warning);
            assert_eq!(notices[0].note, "boom");
        }

        let paused = status(&a, &Outcome::Paused);
        assert_eq!(
            reasons(&after_reconcile(&a, &paused, None)),
            ["ReconciliationPaused"]
        );
        a.status = Some(paused.clone());
        assert!(after_reconcile(&a, &paused, None).is_empty(), "told once");
    }

    fn status(a: &Application, outcome: &Outcome<'_>) -> ApplicationStatus {
        desired::status(a, outcome, Utc::now())
    }

    #[test]
    fn notes_are_cut_to_one_kilobyte_on_a_character_boundary() {
        assert_eq!(truncate("é".repeat(600), 1024).len(), 1024);
        assert_eq!(truncate("é".repeat(600), 1023).len(), 1022);
        assert_eq!(truncate("short".into(), 1024), "short");
    }
}
