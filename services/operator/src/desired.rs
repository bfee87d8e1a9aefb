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

/// The Secret that holds an application's token: `<resource name>-confab-token`.
pub fn secret_name(app: &Application) -> String {
    format!("{}-confab-token", app.name_any())
}

/// The token Secret, owned by the resource (so it is deleted with it and its changes wake the
/// controller).
pub fn secret(app: &Application, registered: &AdminApplication, api_url: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(app)),
            namespace: app.namespace(),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
                ("confab.dev/application".to_owned(), app.name_any()),
            ])),
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

/// Why a resource is or is not Ready.
#[derive(Debug, Clone, PartialEq)]
pub struct Readiness {
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
}

/// The status after a reconcile. `registered` is `None` when the api could not be asked; what
/// the previous status said about the application is then kept.
pub fn status(
    app: &Application,
    registered: Option<&AdminApplication>,
    readiness: &Readiness,
    now: DateTime<Utc>,
) -> ApplicationStatus {
    let previous = app.status.clone().unwrap_or_default();
    let generation = app.metadata.generation;
    let status = if readiness.ready { "True" } else { "False" };
    let last_transition_time = previous
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let ready = Condition {
        type_: "Ready".to_owned(),
        status: status.to_owned(),
        reason: readiness.reason.to_owned(),
        message: readiness.message.clone(),
        last_transition_time,
        observed_generation: generation,
    };
    ApplicationStatus {
        conditions: vec![ready],
        observed_generation: generation,
        secret_name: registered
            .map(|_| secret_name(app))
            .or(previous.secret_name),
        chats_count: registered.map(|r| r.chats_count).or(previous.chats_count),
        last_rotation: registered
            .and_then(|r| r.rotation_id.clone())
            .or(previous.last_rotation),
        quotas: registered
            .map(|r| {
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
                ])
            })
            .or(previous.quotas),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ApplicationSpec, TokenRotation};
    use confab_core::quota::{QuotaRequest, Quotas};

    fn app() -> Application {
        let mut app = Application::new(
            "shop",
            ApplicationSpec {
                display_name: "Shop".into(),
                quotas: Default::default(),
                token_rotation: None,
                deletion_policy: Default::default(),
            },
        );
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

    #[test]
    fn status_keeps_transition_time_while_readiness_holds() {
        let t0 = Utc::now() - chrono::Duration::hours(1);
        let ok = Readiness {
            ready: true,
            reason: "Registered",
            message: "ok".into(),
        };
        let mut a = app();
        let first = status(&a, Some(&registered()), &ok, t0);
        assert_eq!(first.chats_count, Some(7));
        assert_eq!(first.observed_generation, Some(3));
        a.status = Some(first.clone());
        let again = status(&a, Some(&registered()), &ok, Utc::now());
        assert_eq!(
            again.conditions[0].last_transition_time,
            first.conditions[0].last_transition_time
        );
        let down = Readiness {
            ready: false,
            reason: "ApiUnavailable",
            message: "x".into(),
        };
        let failed = status(&a, None, &down, Utc::now());
        assert_eq!(failed.conditions[0].status, "False");
        assert_ne!(
            failed.conditions[0].last_transition_time,
            first.conditions[0].last_transition_time
        );
        assert_eq!(failed.chats_count, Some(7), "what was known is kept");
        assert_eq!(failed.secret_name.as_deref(), Some("shop-confab-token"));
    }
}
