//! What a reconcile should produce, as pure functions of the resource and the api's answer: the
//! token Secret, the status, whether a rotation is due. The controller only carries these out.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use confab_core::admin::{AdminApplication, RotateRequest};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::{Resource, ResourceExt};

use crate::crd::{Application, ApplicationStatus, Condition};

/// Labels on every Secret the operator owns (the controller watches Secrets by this selector).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "confab-operator");
/// Secret keys tenants read.
pub const TOKEN_KEY: &str = "token";
pub const API_URL_KEY: &str = "apiUrl";

/// The Secret that holds an application's token: `spec.secretTemplate.name`, else
/// `<resource name>-confab-token`.
pub fn secret_name(app: &Application) -> String {
    app.spec
        .secret_template
        .as_ref()
        .and_then(|t| t.name.clone())
        .unwrap_or_else(|| format!("{}-confab-token", app.name_any()))
}

/// The token Secret, owned by the resource (so it is deleted with it and its changes wake the
/// controller), with the template's labels and annotations. The operator's own labels win over
/// the template's (the CRD refuses them there anyway): the controller finds its Secrets by them.
pub fn secret(app: &Application, registered: &AdminApplication, api_url: &str) -> Secret {
    let template = app.spec.secret_template.clone().unwrap_or_default();
    let mut labels = template.labels;
    labels.insert(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned());
    labels.insert("confab.dev/application".to_owned(), app.name_any());
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(app)),
            namespace: app.namespace(),
            labels: Some(labels),
            annotations: Some(template.annotations).filter(|a| !a.is_empty()),
            owner_references: app.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([
            (
                TOKEN_KEY.to_owned(),
                ByteString(registered.token.as_bytes().to_vec()),
            ),
            (
                API_URL_KEY.to_owned(),
                ByteString(api_url.as_bytes().to_vec()),
            ),
        ])),
        ..Secret::default()
    }
}

/// The rotation to ask for, if the resource requests one the api has not applied yet.
pub fn rotation(
    app: &Application,
    registered: &AdminApplication,
    default_grace_secs: u64,
) -> Option<RotateRequest> {
    let wanted = app.spec.token_rotation.as_ref()?;
    (registered.rotation_id.as_deref() != Some(wanted.request_id.as_str())).then(|| RotateRequest {
        request_id: Some(wanted.request_id.clone()),
        grace_seconds: Some(wanted.grace_seconds.unwrap_or(default_grace_secs)),
    })
}

/// Condition types and reasons (CamelCase, as Kubernetes defines them).
pub mod reason {
    pub const READY: &str = "Ready";
    pub const SYNCED: &str = "Synced";
    pub const REGISTERED: &str = "Registered";
    pub const RECONCILE_SUCCESS: &str = "ReconcileSuccess";
    pub const API_UNAVAILABLE: &str = "ApiUnavailable";
    pub const REJECTED: &str = "Rejected";
    pub const PAUSED: &str = "ReconciliationPaused";
}

/// How a reconcile ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome<'a> {
    /// The api registered the application (and rotated its token if due); the Secret holds it.
    Synced(&'a AdminApplication),
    /// The api could not be asked (`ApiUnavailable`) or refused (`Rejected`).
    Failed {
        reason: &'static str,
        message: String,
    },
    /// The pause annotation is set: nothing was done.
    Paused,
}

/// The status after a reconcile, as Crossplane reports managed resources: `Synced` says whether
/// this reconcile succeeded, `Ready` whether the token works. A failed or paused reconcile does
/// not know better than before, so it keeps `Ready` (and what was known about the application)
/// as it was; only a resource that was never registered is `Ready=False` (or `Unknown` while
/// paused).
pub fn status(app: &Application, outcome: &Outcome<'_>, now: DateTime<Utc>) -> ApplicationStatus {
    let previous = app.status.clone().unwrap_or_default();
    let generation = app.metadata.generation;
    let at = |type_: &str, status: &str, reason: &str, message: String| {
        condition(&previous, type_, status, reason, message, generation, now)
    };
    let previous_ready = previous
        .conditions
        .iter()
        .find(|c| c.type_ == reason::READY && c.status == "True")
        .cloned();
    let (ready, synced) = match outcome {
        Outcome::Synced(_) => (
            at(
                reason::READY,
                "True",
                reason::REGISTERED,
                format!(
                    "registered with the api; token in Secret {}",
                    secret_name(app)
                ),
            ),
            at(
                reason::SYNCED,
                "True",
                reason::RECONCILE_SUCCESS,
                "the application, its Secret, its quotas and its allowed origins match the spec"
                    .to_owned(),
            ),
        ),
        Outcome::Failed { reason, message } => (
            previous_ready.unwrap_or_else(|| at(reason::READY, "False", reason, message.clone())),
            at(reason::SYNCED, "False", reason, message.clone()),
        ),
        Outcome::Paused => {
            let message = format!(
                "reconciliation is paused by the annotation {}=true",
                crate::crd::PAUSE_ANNOTATION
            );
            (
                previous_ready.unwrap_or_else(|| {
                    at(reason::READY, "Unknown", reason::PAUSED, message.clone())
                }),
                at(reason::SYNCED, "False", reason::PAUSED, message),
            )
        }
    };
    let registered = match outcome {
        Outcome::Synced(registered) => Some(*registered),
        _ => None,
    };
    ApplicationStatus {
        conditions: vec![ready, synced],
        observed_generation: match outcome {
            Outcome::Paused => previous.observed_generation,
            _ => generation,
        },
        secret_name: registered
            .map(|_| secret_name(app))
            .or(previous.secret_name),
        chats_count: registered.map(|r| r.chats_count).or(previous.chats_count),
        last_rotation: registered
            .and_then(|r| r.rotation_id.clone())
            .or(previous.last_rotation),
        quotas: registered.map(quotas_in_force).or(previous.quotas),
        allowed_origins: registered
            .map(|r| r.allowed_origins.clone())
            .or(previous.allowed_origins),
    }
}

/// A condition of `type_`; its `lastTransitionTime` moves only when its status changes.
fn condition(
    previous: &ApplicationStatus,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Condition {
    let last_transition_time = previous
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time,
        observed_generation: generation,
    }
}

fn quotas_in_force(r: &AdminApplication) -> BTreeMap<String, u64> {
    BTreeMap::from([
        ("maxChats".to_owned(), r.quotas.max_chats),
        (
            "messagesPerSecond".to_owned(),
            u64::from(r.quotas.messages_per_second),
        ),
        ("messageBurst".to_owned(), u64::from(r.quotas.message_burst)),
        (
            "maxBodyBytes".to_owned(),
            u64::from(r.quotas.max_body_bytes),
        ),
        (
            "maxSubscriptions".to_owned(),
            u64::from(r.quotas.max_subscriptions),
        ),
    ])
}

/// The condition of `type_` in `status`, if any.
pub fn find<'a>(status: Option<&'a ApplicationStatus>, type_: &str) -> Option<&'a Condition> {
    status?.conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{SecretTemplate, TokenRotation, PAUSE_ANNOTATION};
    use confab_core::quota::{QuotaRequest, Quotas};

    fn app() -> Application {
        let mut app = crate::crd::sample();
        app.metadata.namespace = Some("team-a".into());
        app.metadata.uid = Some("uid-1".into());
        app.metadata.generation = Some(3);
        app
    }

    fn registered() -> AdminApplication {
        AdminApplication {
            key: "uid-1".into(),
            name: "Shop".into(),
            token: "t0k3n".into(),
            requested_quotas: QuotaRequest::default(),
            quotas: Quotas::default(),
            allowed_origins: vec!["https://chat.example.com".into()],
            chats_count: 7,
            rotation_id: None,
            previous_token_expires_at: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn the_secret_is_owned_labelled_and_holds_token_and_url() {
        let s = secret(&app(), &registered(), "http://api");
        assert_eq!(s.metadata.name.as_deref(), Some("shop-confab-token"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("team-a"));
        let owner = &s.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Application", "uid-1")
        );
        assert_eq!(owner.controller, Some(true));
        let data = s.data.unwrap();
        assert_eq!(data[TOKEN_KEY].0, b"t0k3n");
        assert_eq!(data[API_URL_KEY].0, b"http://api");
    }

    #[test]
    fn a_rotation_is_due_only_until_the_api_applied_it() {
        let mut a = app();
        assert_eq!(rotation(&a, &registered(), 60), None);
        a.spec.token_rotation = Some(TokenRotation {
            request_id: "r1".into(),
            grace_seconds: None,
        });
        let due = rotation(&a, &registered(), 60).unwrap();
        assert_eq!(due.request_id.as_deref(), Some("r1"));
        assert_eq!(due.grace_seconds, Some(60));
        let applied = AdminApplication {
            rotation_id: Some("r1".into()),
            ..registered()
        };
        assert_eq!(rotation(&a, &applied, 60), None);
    }

    fn conditions(status: &ApplicationStatus) -> Vec<(&str, &str, &str)> {
        status
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect()
    }

    #[test]
    fn the_secret_template_names_and_labels_the_secret_but_not_over_the_operators_labels() {
        let mut a = app();
        a.spec.secret_template = Some(SecretTemplate {
            name: Some("shop-credentials".into()),
            labels: BTreeMap::from([
                ("backup".into(), "daily".into()),
                (MANAGED_BY.0.into(), "someone-else".into()),
            ]),
            annotations: BTreeMap::from([("team".into(), "payments".into())]),
        });
        let s = secret(&a, &registered(), "http://api");
        assert_eq!(s.metadata.name.as_deref(), Some("shop-credentials"));
        assert_eq!(secret_name(&a), "shop-credentials");
        let labels = s.metadata.labels.unwrap();
        assert_eq!(labels["backup"], "daily");
        assert_eq!(labels[MANAGED_BY.0], MANAGED_BY.1);
        assert_eq!(labels["confab.dev/application"], "shop");
        assert_eq!(s.metadata.annotations.unwrap()["team"], "payments");
        // Without a template: the default name, no annotations at all.
        let plain = secret(&app(), &registered(), "http://api");
        assert_eq!(plain.metadata.annotations, None);
    }

    #[test]
    fn conditions_change_their_transition_time_only_when_their_status_flips() {
        let t0 = Utc::now() - chrono::Duration::hours(1);
        let mut a = app();
        let first = status(&a, &Outcome::Synced(&registered()), t0);
        assert_eq!(
            conditions(&first),
            [
                ("Ready", "True", "Registered"),
                ("Synced", "True", "ReconcileSuccess")
            ]
        );
        assert_eq!(first.chats_count, Some(7));
        assert_eq!(first.observed_generation, Some(3));
        assert_eq!(
            first.quotas,
            Some(BTreeMap::from([
                ("maxChats".to_owned(), 100_000),
                ("messagesPerSecond".to_owned(), 1_000),
                ("messageBurst".to_owned(), 2_000),
                ("maxBodyBytes".to_owned(), 65_536),
                ("maxSubscriptions".to_owned(), 1_000),
            ])),
            "every quota in force, the defaults filled in"
        );
        assert_eq!(
            first.allowed_origins,
            Some(vec!["https://chat.example.com".to_owned()]),
            "the origins the api stored"
        );
        assert!(first
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(3)));
        a.status = Some(first.clone());
        a.metadata.generation = Some(4);
        let again = status(&a, &Outcome::Synced(&registered()), Utc::now());
        assert_eq!(
            again.conditions[0].last_transition_time,
            first.conditions[0].last_transition_time
        );
        assert_eq!(again.conditions[1].observed_generation, Some(4));

        // The api goes away: not Synced (a new transition), still Ready (the token still
        // works as far as anyone knows), and what was known is kept.
        let down = Outcome::Failed {
            reason: reason::API_UNAVAILABLE,
            message: "x".into(),
        };
        let failed = status(&a, &down, Utc::now());
        assert_eq!(
            conditions(&failed),
            [
                ("Ready", "True", "Registered"),
                ("Synced", "False", "ApiUnavailable")
            ]
        );
        assert_eq!(failed.conditions[0], first.conditions[0]);
        assert_ne!(
            failed.conditions[1].last_transition_time,
            first.conditions[1].last_transition_time
        );
        assert_eq!(failed.chats_count, Some(7), "what was known is kept");
        assert_eq!(failed.secret_name.as_deref(), Some("shop-confab-token"));
        assert_eq!(failed.allowed_origins, first.allowed_origins);

        // A resource that was never registered is not Ready.
        let never = status(&app(), &down, Utc::now());
        assert_eq!(
            conditions(&never),
            [
                ("Ready", "False", "ApiUnavailable"),
                ("Synced", "False", "ApiUnavailable")
            ]
        );
    }

    #[test]
    fn a_paused_resource_reports_it_and_keeps_what_it_knew() {
        let mut a = app();
        let paused = status(&a, &Outcome::Paused, Utc::now());
        assert_eq!(
            conditions(&paused),
            [
                ("Ready", "Unknown", "ReconciliationPaused"),
                ("Synced", "False", "ReconciliationPaused")
            ]
        );
        assert!(paused.conditions[1].message.contains(PAUSE_ANNOTATION));
        assert_eq!(
            paused.observed_generation, None,
            "the spec was not acted on"
        );
        a.status = Some(status(&a, &Outcome::Synced(&registered()), Utc::now()));
        let paused = status(&a, &Outcome::Paused, Utc::now());
        assert_eq!(paused.conditions[0].status, "True");
        assert_eq!(paused.observed_generation, Some(3));
        let before = a.status.unwrap();
        assert_eq!(paused.quotas, before.quotas);
        assert_eq!(paused.allowed_origins, before.allowed_origins);
    }
}
