//! The `Application` custom resource (`applications.confab.dev`, `v1alpha1`), defined once here;
//! the YAML in `crds/` is generated from it (`confab-operator crdgen`) and a test fails when the
//! two drift apart.
//!
//! The short names are `capp` and `confabapp`: Argo CD's `Application` owns `app` and `apps`.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A tenant application of Confab, with its quotas; the operator registers it with the api and
/// keeps its token in a Secret.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
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
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Chats","type":"integer","jsonPath":".status.chatsCount"}"#,
    printcolumn = r#"{"name":"Secret","type":"string","jsonPath":".status.secretName","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationSpec {
    /// The application's display name (1 to 255 characters).
    #[schemars(length(min = 1, max = 255))]
    pub display_name: String,
    /// Limits the api enforces; a missing field takes the api's default.
    #[serde(default)]
    pub quotas: QuotaSpec,
    /// Set, or change, `requestId` to rotate the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_rotation: Option<TokenRotation>,
    /// What deleting this resource does to the application: `Retain` (default) keeps the
    /// application, its data and its token Secret; `Delete` deletes the application with its
    /// chats and messages, and the Secret with the resource.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaSpec {
    /// Most chats the application may create; 0 means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_chats: Option<u64>,
    /// Sustained message creations per second; 0 means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub messages_per_second: Option<u32>,
    /// Message creations allowed at once on top of the sustained rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub message_burst: Option<u32>,
    /// Largest message body in bytes (at most the api's `CONFAB_MAX_BODY_BYTES`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_body_bytes: Option<u32>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenRotation {
    /// Any new value rotates the token once (for example a date).
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[A-Za-z0-9._:-]+$"))]
    pub request_id: String,
    /// How long the replaced token keeps working; default from the operator's
    /// `CONFAB_TOKEN_GRACE_SECS` (3600). 0 revokes it at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2_592_000))]
    pub grace_seconds: Option<u64>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    #[default]
    Retain,
    Delete,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationStatus {
    /// `Ready`, following Kubernetes conventions.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The Secret holding `token` and `apiUrl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Persisted chats, as last read from the api.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chats_count: Option<u64>,
    /// The last token rotation applied (`spec.tokenRotation.requestId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation: Option<String>,
    /// The quotas in force, defaults filled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quotas: Option<BTreeMap<String, u64>>,
}

/// A status condition (the shape of `metav1.Condition`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    /// RFC 3339; changes only when `status` changes.
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
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
            },
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
mod tests {
    use super::*;

    const CHECKED_IN: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../crds/applications.confab.dev.yaml"
    );

    /// `crds/` is what `kubectl apply` and the operator chart install: it must be exactly what
    /// the Rust types generate. Regenerate with
    /// `cargo run -p confab-operator -- crdgen > crds/applications.confab.dev.yaml`.
    #[test]
    fn checked_in_crd_matches_the_rust_types() {
        let on_disk = std::fs::read_to_string(CHECKED_IN).expect("crds/ holds the CRD");
        assert!(
            on_disk == crd_yaml(),
            "crds/applications.confab.dev.yaml drifted from services/operator/src/crd.rs; \
             regenerate it with `cargo run -p confab-operator -- crdgen`"
        );
    }

    #[test]
    fn the_schema_requires_a_name_and_enforces_minimums() {
        let crd = serde_json::to_value(<Application as kube::CustomResourceExt>::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["required"], serde_json::json!(["displayName"]));
        assert_eq!(spec["properties"]["displayName"]["minLength"], 1);
        let quotas = &spec["properties"]["quotas"]["properties"];
        assert_eq!(quotas["messageBurst"]["minimum"], 1.0);
        assert_eq!(
            spec["properties"]["deletionPolicy"]["enum"],
            serde_json::json!(["Retain", "Delete"])
        );
        let names = &crd["spec"]["names"];
        assert!(!names["shortNames"].to_string().contains("\"app\""));
    }
}
