//! The `Application` custom resource (`applications.confab.dev`, `v1alpha1`), defined once here;
//! the YAML in `crds/` is generated from it (`confab-operator crdgen`) and a test fails when the
//! two drift apart.
//!
//! Every field's doc comment is its description in the CRD (what `kubectl explain` prints).
//! Validation lives in the schema too, so the API server refuses a bad object at `kubectl apply`
//! instead of the operator failing on it later: bounds, patterns and enums as OpenAPI keywords,
//! and what those cannot say (immutability, reserved keys, cross-field rules) as CEL rules
//! (`x-kubernetes-validations`). The unit tests in `crd_tests.rs` evaluate both against good and
//! bad objects.
//!
//! The short names are `capp` and `confabapp`: Argo CD's `Application` owns `app` and `apps`.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Setting this annotation to `"true"` stops the operator from reconciling the resource (no
/// admin API call, no Secret write, no deletion handling) until it is removed or set otherwise.
pub const PAUSE_ANNOTATION: &str = "confab.dev/pause-reconciliation";

/// Bounds shared with the api (its `CONFAB_DEFAULT_*` and admin API limits).
pub const MAX_CHATS_LIMIT: u64 = (1 << 53) - 1;
pub const RATE_LIMIT: u32 = 10_000_000;
pub const BODY_BYTES_LIMIT: u32 = 8 * 1024 * 1024;
pub const SUBSCRIPTIONS_LIMIT: u32 = confab_core::quota::MAX_SUBSCRIPTIONS_LIMIT;
pub const GRACE_SECONDS_LIMIT: u64 = 2_592_000;
pub const ALLOWED_ORIGINS_LIMIT: usize = confab_core::admin::MAX_ALLOWED_ORIGINS;
/// The longest origin: `http://` and a host of the api's longest, 253 characters (so no origin
/// the API server accepts has a longer host; a longer origin is hardly a real one).
pub const ORIGIN_LENGTH_LIMIT: usize = 260;
/// A browser origin as the api's `confab_core::admin::valid_origin` accepts it: `http` or
/// `https`, then a lowercase DNS name (labels of at most 63 characters, no hyphen at either end)
/// or an IPv6 address in brackets, then an optional port 1 to 65535. Written for both Go's RE2
/// (the API server) and ECMA-262 (JSON Schema validators). Stricter than the api only where an
/// `Origin` header never goes: no leading zeros in the port, no uppercase hex in an IPv6 address.
pub const ORIGIN_PATTERN: &str = r"^https?://([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*|\[[0-9a-f:]+\])(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?$";

/// The spec of an Application: a tenant application of Confab with its quotas. The operator
/// registers it with the api's admin API and keeps its token in a Secret.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "confab.dev",
    version = "v1alpha1",
    kind = "Application",
    plural = "applications",
    singular = "application",
    shortname = "capp",
    shortname = "confabapp",
    category = "confab",
    namespaced,
    status = "ApplicationStatus",
    doc = "A tenant application of Confab. The confab-operator registers it with the api, keeps \
           its token in a Secret in the same namespace and reports its state in `status` and as \
           Events. The annotation `confab.dev/pause-reconciliation: \"true\"` pauses it.",
    // The name is the value of the token Secret's `confab.dev/application` label, and label
    // values are at most 63 characters: a longer name would make every Secret write fail.
    validation = Rule::new("self.metadata.name.size() <= 63")
        .message("metadata.name must be at most 63 characters (it labels the token Secret)"),
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Synced","type":"string","jsonPath":".status.conditions[?(@.type==\"Synced\")].status"}"#,
    printcolumn = r#"{"name":"Chats","type":"integer","jsonPath":".status.chatsCount"}"#,
    printcolumn = r#"{"name":"Secret","type":"string","jsonPath":".status.secretName","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
// A Secret cannot be renamed in place: tenants' pods mount it by name, and the old one would be
// left behind. So the name is fixed once the resource exists (set or unset alike).
#[x_kube(validation = Rule::new(
    "(has(self.secretTemplate) && has(self.secretTemplate.name) ? self.secretTemplate.name : '') == \
     (has(oldSelf.secretTemplate) && has(oldSelf.secretTemplate.name) ? oldSelf.secretTemplate.name : '')"
).message("spec.secretTemplate.name cannot be changed: delete and recreate the Application to move its token Secret"))]
pub struct ApplicationSpec {
    /// The application's display name, as the api shows it (1 to 255 characters).
    #[schemars(length(min = 1, max = 255))]
    pub display_name: String,
    /// Limits the api enforces for this application. A missing field takes the api's default
    /// (its `CONFAB_DEFAULT_*` settings), and follows that default when it changes.
    #[serde(default)]
    pub quotas: QuotaSpec,
    /// Browser origins allowed to call the application's routes (CORS), for example
    /// `https://chat.example.com`: `http` or `https`, a lowercase host (or an IPv6 address in
    /// brackets) and an optional port, nothing after (no path, no trailing slash). At most 32,
    /// each listed once. Pages from other origins are refused, unless the api's
    /// `CONFAB_CORS_ALLOWED_ORIGINS` allows them for every application.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = ALLOWED_ORIGINS_LIMIT),
        inner(length(max = ORIGIN_LENGTH_LIMIT), regex(pattern = ORIGIN_PATTERN))
    )]
    #[x_kube(validation = Rule::new("self.all(o, self.exists_one(p, p == o))")
        .message("each origin may be listed only once"))]
    pub allowed_origins: Vec<String>,
    /// Token rotation: set `requestId`, or change it, to replace the token once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_rotation: Option<TokenRotation>,
    /// What deleting this resource does to the application: `Retain` (default) keeps the
    /// application, its data and its token Secret; `Delete` deletes the application with its
    /// chats and messages, and the Secret with the resource.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Name, labels and annotations of the token Secret the operator writes (for example the
    /// labels a secret-replication or backup tool selects on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_template: Option<SecretTemplate>,
}

/// The application's quotas. Bounds are the api's own, so any value the API server accepts is
/// one the api accepts.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaSpec {
    /// Most chats the application may create; 0 means no limit. At most 2^53 - 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_CHATS_LIMIT))]
    pub max_chats: Option<u64>,
    /// Sustained message creations per second, across every api replica; 0 means no limit. At
    /// most 10,000,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = RATE_LIMIT))]
    pub messages_per_second: Option<u32>,
    /// Message creations an idle application may make at once (the rate limiter's bucket);
    /// 1 to 10,000,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = RATE_LIMIT))]
    pub message_burst: Option<u32>,
    /// Largest message body in bytes of UTF-8, 1 to 8,388,608; the api also caps it at its
    /// `CONFAB_MAX_BODY_BYTES` and reports the cap in `status.quotas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = BODY_BYTES_LIMIT))]
    pub max_body_bytes: Option<u32>,
    /// Concurrent live subscriptions (SSE/WebSocket) across every api replica; 0 means no limit.
    /// At most 1,000,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = SUBSCRIPTIONS_LIMIT))]
    pub max_subscriptions: Option<u32>,
}

/// A request to replace the application's token.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
// The grace period belongs to the rotation its requestId names, which has happened by the time
// anyone edits it: a new grace alone would change nothing.
#[x_kube(validation = Rule::new(
    "self.requestId != oldSelf.requestId || \
     (has(self.graceSeconds) ? self.graceSeconds : -1) == (has(oldSelf.graceSeconds) ? oldSelf.graceSeconds : -1)"
).message("graceSeconds applies to the rotation requestId names: change requestId to rotate again with another grace period"))]
pub struct TokenRotation {
    /// Any new value rotates the token once (for example a date); the same value never rotates
    /// twice. 1 to 63 of `A-Z a-z 0-9 . _ : -`.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[A-Za-z0-9._:-]+$"))]
    pub request_id: String,
    /// Seconds the replaced token keeps working (0 revokes it at once; at most 30 days).
    /// Default: the operator's `CONFAB_TOKEN_GRACE_SECS` (3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = GRACE_SECONDS_LIMIT))]
    pub grace_seconds: Option<u64>,
}

/// What deleting the resource does to the application.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the application, its data and the token Secret (no longer owned by anything).
    #[default]
    Retain,
    /// Delete the application with its chats and messages; the Secret goes with the resource.
    Delete,
}

/// The token Secret's name and metadata, after Strimzi's `template.secret` and cert-manager's
/// `secretTemplate`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretTemplate {
    /// Name of the Secret; default `<resource name>-confab-token`. Fixed once the resource
    /// exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: Option<String>,
    /// Labels added to the Secret. `app.kubernetes.io/managed-by` and `confab.dev/application`
    /// are the operator's (it finds its Secrets by them) and cannot be set here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = Rule::new(
        "!('app.kubernetes.io/managed-by' in self) && !('confab.dev/application' in self)"
    ).message("the labels app.kubernetes.io/managed-by and confab.dev/application are set by the operator"))]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What the operator last observed and did.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationStatus {
    /// `Ready` (the application is registered and its token is in the Secret) and `Synced` (the
    /// last reconcile succeeded; `False` with reason `ReconciliationPaused` while paused), as
    /// Kubernetes defines conditions.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` the operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The Secret holding the keys `token` and `apiUrl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Persisted chats of the application, as last read from the api (refreshed every resync).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chats_count: Option<u64>,
    /// The last token rotation applied (`spec.tokenRotation.requestId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation: Option<String>,
    /// The quotas in force, the api's defaults filled in (`maxChats`, `messagesPerSecond`,
    /// `messageBurst`, `maxBodyBytes`, `maxSubscriptions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quotas: Option<BTreeMap<String, u64>>,
    /// The browser origins in force, as the api stores them (sorted, each once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_origins: Option<Vec<String>>,
}

/// A status condition, the shape of `metav1.Condition`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The condition's type: `Ready` or `Synced`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Why the condition is in this status, in CamelCase: `Registered`, `ReconcileSuccess`,
    /// `ApiUnavailable`, `Rejected`, `ReconciliationPaused`.
    pub reason: String,
    /// What happened, for people.
    pub message: String,
    /// When `status` last changed (RFC 3339); a reconcile that leaves the status as it was
    /// leaves this too.
    pub last_transition_time: String,
    /// The `metadata.generation` this condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Application {
    /// Whether the pause annotation is set to `"true"`.
    pub fn paused(&self) -> bool {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(PAUSE_ANNOTATION))
            .is_some_and(|v| v == "true")
    }
}

impl ApplicationSpec {
    /// What the admin API is asked to register.
    pub fn admin_spec(&self) -> confab_core::admin::ApplicationSpec {
        confab_core::admin::ApplicationSpec {
            name: self.display_name.clone(),
            quotas: confab_core::quota::QuotaRequest {
                max_chats: self.quotas.max_chats,
                messages_per_second: self.quotas.messages_per_second,
                message_burst: self.quotas.message_burst,
                max_body_bytes: self.quotas.max_body_bytes,
                max_subscriptions: self.quotas.max_subscriptions,
            },
            allowed_origins: self.allowed_origins.clone(),
        }
    }
}

/// The CRD as YAML, exactly as checked in under `crds/`.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let yaml = serde_yaml::to_string(&Application::crd()).expect("a CRD serializes to YAML");
    format!("# Generated by `confab-operator crdgen` from services/operator/src/crd.rs; do not edit.\n{yaml}")
}

#[cfg(test)]
#[path = "crd_tests.rs"]
mod tests;

/// A plain resource (`shop`, display name `Shop`, no quotas, no rotation, generation 1) for the
/// unit tests to adjust.
#[cfg(test)]
pub(crate) fn sample() -> Application {
    let mut app = Application::new(
        "shop",
        ApplicationSpec {
            display_name: "Shop".into(),
            quotas: Default::default(),
            allowed_origins: Vec::new(),
            token_rotation: None,
            deletion_policy: Default::default(),
            secret_template: None,
        },
    );
    app.metadata.generation = Some(1);
    app
}
