//! Tests of the CRD: the checked-in YAML is what the types generate, every field is described,
//! and the schema's validation (OpenAPI keywords and CEL rules) accepts good objects and refuses
//! bad ones.
//!
//! CEL rules are evaluated by kube's client-side CEL support (`kube::core::cel`, the `kube-cel`
//! crate with the Kubernetes CEL library), the OpenAPI keywords (bounds, patterns, enums) by a
//! JSON Schema validator over the same schema: together, what the API server checks at admission
//! for these objects.

#![allow(clippy::unwrap_used)]

use kube::core::cel::{compile_schema, CompiledSchema, Validator};
use serde_json::{json, Value};

use super::*;

const CHECKED_IN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../crds/applications.confab.dev.yaml"
);

fn crd() -> Value {
    serde_json::to_value(<Application as kube::CustomResourceExt>::crd()).unwrap()
}

fn schema() -> Value {
    crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

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
fn the_schema_requires_a_name_and_keeps_its_names_and_columns() {
    let crd = crd();
    let spec = &schema()["properties"]["spec"];
    assert_eq!(spec["required"], json!(["displayName"]));
    assert_eq!(
        spec["properties"]["deletionPolicy"]["enum"],
        json!(["Retain", "Delete"])
    );
    let names = &crd["spec"]["names"];
    assert!(!names["shortNames"].to_string().contains("\"app\""));
    let columns: Vec<&str> = crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Ready", "Synced", "Chats", "Secret", "Age"]);
    let conditions = &schema()["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
}

/// `kubectl explain application.spec.quotas.maxChats` (and every other field) has something to
/// say.
#[test]
fn every_field_has_a_description() {
    fn walk(path: &str, node: &Value, missing: &mut Vec<String>) {
        let text = node["description"].as_str().unwrap_or_default();
        if text.trim().is_empty() || text.starts_with("Auto-generated") {
            missing.push(path.to_owned());
        }
        if let Some(properties) = node["properties"].as_object() {
            for (name, child) in properties {
                walk(&format!("{path}.{name}"), child, missing);
            }
        }
        for key in ["items", "additionalProperties"] {
            if node[key]["properties"].is_object() {
                for (name, child) in node[key]["properties"].as_object().unwrap() {
                    walk(&format!("{path}[].{name}"), child, missing);
                }
            }
        }
    }
    let mut missing = Vec::new();
    walk("application", &schema(), &mut missing);
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:#?}"
    );
}

/// Every CEL rule compiles (a typo would otherwise surface only when a cluster refuses the CRD).
#[test]
fn every_cel_rule_compiles() {
    fn count(node: &CompiledSchema, errors: &mut Vec<String>) -> usize {
        errors.extend(node.compilation_errors().iter().map(|e| e.to_string()));
        let children = node
            .properties
            .values()
            .chain(node.items.as_deref())
            .chain(node.additional_properties.as_deref());
        node.validations.len() + children.map(|c| count(c, errors)).sum::<usize>()
    }
    let mut errors = Vec::new();
    let rules = count(&compile_schema(&schema()), &mut errors);
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(rules, 5, "the five rules of crd.rs");
}

/// Everything the API server would say about `object` (given the `old` one on an update).
fn refusals(object: &Value, old: Option<&Value>) -> Vec<String> {
    let schema = schema();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let mut out: Vec<String> = validator
        .iter_errors(object)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    if let Err(errors) = Validator::new().validate(&schema, object, old) {
        out.extend(errors.iter().map(ToString::to_string));
    }
    out
}

fn object(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "confab.dev/v1alpha1",
        "kind": "Application",
        "metadata": {"name": name, "namespace": "team-a"},
        "spec": spec,
    })
}

fn full_spec() -> Value {
    json!({
        "displayName": "Shop",
        "quotas": {
            "maxChats": MAX_CHATS_LIMIT,
            "messagesPerSecond": RATE_LIMIT,
            "messageBurst": 1,
            "maxBodyBytes": BODY_BYTES_LIMIT,
            "maxSubscriptions": SUBSCRIPTIONS_LIMIT,
        },
        "allowedOrigins": ["https://chat.example.com", "http://localhost:5173", "http://[::1]:8080"],
        "tokenRotation": {"requestId": "2026-11-26", "graceSeconds": GRACE_SECONDS_LIMIT},
        "deletionPolicy": "Delete",
        "secretTemplate": {
            "name": "shop.token",
            "labels": {"backup": "daily"},
            "annotations": {"reflector.v1.k8s.emberstack.com/reflection-allowed": "true"},
        },
    })
}

/// `spec` with the JSON pointer `at` set to `value`.
fn with(mut spec: Value, at: &str, value: Value) -> Value {
    let (parent, key) = at.rsplit_once('/').unwrap();
    spec.pointer_mut(parent).unwrap()[key] = value;
    spec
}

#[test]
fn good_objects_are_accepted() {
    for spec in [
        json!({"displayName": "Shop"}),
        full_spec(),
        with(full_spec(), "/quotas/maxChats", json!(0)),
        with(full_spec(), "/quotas/messagesPerSecond", json!(0)),
        with(full_spec(), "/quotas/maxSubscriptions", json!(0)),
        with(full_spec(), "/tokenRotation/graceSeconds", json!(0)),
        with(full_spec(), "/allowedOrigins", json!([])),
        with(
            full_spec(),
            "/allowedOrigins",
            json!(many_origins(ALLOWED_ORIGINS_LIMIT)),
        ),
        with(
            full_spec(),
            "/allowedOrigins",
            json!([
                "https://a.b-c.example:65535",
                "http://127.0.0.1:1",
                "https://xn--bcher-kva.example",
                "http://[2001:db8::1]",
            ]),
        ),
    ] {
        let refused = refusals(&object("shop", spec.clone()), None);
        assert!(refused.is_empty(), "{spec}: {refused:#?}");
    }
    let long_but_legal = "a".repeat(63);
    assert!(refusals(&object(&long_but_legal, full_spec()), None).is_empty());
}

#[test]
fn bad_objects_are_refused_with_a_reason() {
    let too_long = "x".repeat(256);
    let cases: Vec<(Value, &str)> = vec![
        (
            with(full_spec(), "/displayName", json!("")),
            "/spec/displayName",
        ),
        (
            with(full_spec(), "/displayName", json!(too_long)),
            "/spec/displayName",
        ),
        (with(full_spec(), "/quotas/maxChats", json!(-1)), "maxChats"),
        (
            with(full_spec(), "/quotas/maxChats", json!(MAX_CHATS_LIMIT + 1)),
            "maxChats",
        ),
        (
            with(full_spec(), "/quotas/messagesPerSecond", json!(-1)),
            "messagesPerSecond",
        ),
        (
            with(
                full_spec(),
                "/quotas/messagesPerSecond",
                json!(RATE_LIMIT + 1),
            ),
            "messagesPerSecond",
        ),
        (
            with(full_spec(), "/quotas/messageBurst", json!(0)),
            "messageBurst",
        ),
        (
            with(full_spec(), "/quotas/messageBurst", json!(RATE_LIMIT + 1)),
            "messageBurst",
        ),
        (
            with(full_spec(), "/quotas/maxBodyBytes", json!(0)),
            "maxBodyBytes",
        ),
        (
            with(
                full_spec(),
                "/quotas/maxBodyBytes",
                json!(BODY_BYTES_LIMIT + 1),
            ),
            "maxBodyBytes",
        ),
        (
            with(full_spec(), "/quotas/maxSubscriptions", json!(-1)),
            "maxSubscriptions",
        ),
        (
            with(
                full_spec(),
                "/quotas/maxSubscriptions",
                json!(SUBSCRIPTIONS_LIMIT + 1),
            ),
            "maxSubscriptions",
        ),
        (
            with(full_spec(), "/tokenRotation/graceSeconds", json!(-1)),
            "graceSeconds",
        ),
        (
            with(
                full_spec(),
                "/tokenRotation/graceSeconds",
                json!(GRACE_SECONDS_LIMIT + 1),
            ),
            "graceSeconds",
        ),
        (
            with(full_spec(), "/tokenRotation/requestId", json!("a b")),
            "requestId",
        ),
        (
            with(full_spec(), "/tokenRotation/requestId", json!("")),
            "requestId",
        ),
        (
            with(full_spec(), "/deletionPolicy", json!("Orphan")),
            "deletionPolicy",
        ),
        (
            with(full_spec(), "/secretTemplate/name", json!("Bad_Name")),
            "secretTemplate/name",
        ),
        (
            with(
                full_spec(),
                "/secretTemplate/labels",
                json!({"app.kubernetes.io/managed-by": "me"}),
            ),
            "set by the operator",
        ),
        (
            with(
                full_spec(),
                "/secretTemplate/labels",
                json!({"confab.dev/application": "x"}),
            ),
            "set by the operator",
        ),
        (
            with(
                full_spec(),
                "/allowedOrigins",
                json!(many_origins(ALLOWED_ORIGINS_LIMIT + 1)),
            ),
            "/spec/allowedOrigins",
        ),
        (
            with(
                full_spec(),
                "/allowedOrigins",
                json!(["https://chat.example.com", "https://chat.example.com"]),
            ),
            "listed only once",
        ),
    ];
    for (spec, expected) in cases {
        let refused = refusals(&object("shop", spec.clone()), None);
        assert!(
            refused.iter().any(|r| r.contains(expected)),
            "{spec} should be refused about {expected}: {refused:#?}"
        );
    }
    for origin in NOT_ORIGINS {
        let spec = with(full_spec(), "/allowedOrigins", json!([origin]));
        let refused = refusals(&object("shop", spec), None);
        assert!(
            refused.iter().any(|r| r.contains("/spec/allowedOrigins/0")),
            "{origin:?} should be refused: {refused:#?}"
        );
    }
    let refused = refusals(&object(&"a".repeat(64), full_spec()), None);
    assert!(
        refused.iter().any(|r| r.contains("at most 63 characters")),
        "{refused:#?}"
    );
}

#[test]
fn changes_that_cannot_be_honoured_are_refused_on_update() {
    let old = object("shop", full_spec());
    let unset = |mut spec: Value, field: &str| {
        spec.as_object_mut().unwrap().remove(field);
        spec
    };
    let refused_updates = [
        (
            with(full_spec(), "/secretTemplate/name", json!("other")),
            "secretTemplate.name cannot be changed",
        ),
        (
            unset(full_spec(), "secretTemplate"),
            "secretTemplate.name cannot be changed",
        ),
        (
            with(full_spec(), "/tokenRotation/graceSeconds", json!(60)),
            "graceSeconds applies",
        ),
    ];
    for (spec, expected) in refused_updates {
        let refused = refusals(&object("shop", spec.clone()), Some(&old));
        assert!(
            refused.iter().any(|r| r.contains(expected)),
            "{spec} should be refused about {expected}: {refused:#?}"
        );
    }
    // Naming a Secret after creation is a change too.
    let unnamed = object("shop", json!({"displayName": "Shop"}));
    let named = object("shop", full_spec());
    assert!(!refusals(&named, Some(&unnamed)).is_empty());

    let allowed_updates = [
        with(full_spec(), "/displayName", json!("Shop 2")),
        with(full_spec(), "/quotas/maxChats", json!(5)),
        with(full_spec(), "/quotas/maxSubscriptions", json!(10)),
        with(full_spec(), "/deletionPolicy", json!("Retain")),
        with(
            full_spec(),
            "/allowedOrigins",
            json!(["https://shop.example"]),
        ),
        with(
            full_spec(),
            "/secretTemplate/labels",
            json!({"backup": "weekly"}),
        ),
        with(
            with(full_spec(), "/tokenRotation/requestId", json!("2026-12-01")),
            "/tokenRotation/graceSeconds",
            json!(0),
        ),
    ];
    for spec in allowed_updates {
        let refused = refusals(&object("shop", spec.clone()), Some(&old));
        assert!(refused.is_empty(), "{spec}: {refused:#?}");
    }
}

/// Every quota of the spec reaches the admin API under the api's name, and an unset one stays
/// unset (the api's default, followed when it changes).
#[test]
fn the_admin_api_is_asked_for_exactly_the_quotas_of_the_spec() {
    let spec: ApplicationSpec = serde_json::from_value(full_spec()).unwrap();
    let asked = spec.admin_spec();
    assert_eq!(asked.name, "Shop");
    assert_eq!(
        asked.quotas,
        confab_core::quota::QuotaRequest {
            max_chats: Some(MAX_CHATS_LIMIT),
            messages_per_second: Some(RATE_LIMIT),
            message_burst: Some(1),
            max_body_bytes: Some(BODY_BYTES_LIMIT),
            max_subscriptions: Some(SUBSCRIPTIONS_LIMIT),
        }
    );
    assert_eq!(
        asked.allowed_origins,
        [
            "https://chat.example.com",
            "http://localhost:5173",
            "http://[::1]:8080"
        ]
    );
    let plain: ApplicationSpec = serde_json::from_value(json!({"displayName": "Shop"})).unwrap();
    assert_eq!(
        plain.admin_spec().quotas,
        confab_core::quota::QuotaRequest::default()
    );
    assert!(plain.admin_spec().allowed_origins.is_empty());
    // An unset list stays out of the resource the operator writes back.
    assert!(serde_json::to_value(&plain)
        .unwrap()
        .get("allowedOrigins")
        .is_none());
}

/// `n` distinct origins.
fn many_origins(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("https://app{i}.example")).collect()
}

/// What `spec.allowedOrigins` refuses: not an origin as a browser sends it, or not one the api
/// accepts.
const NOT_ORIGINS: &[&str] = &[
    "",
    "chat.example.com",
    "//chat.example.com",
    "ftp://chat.example.com",
    "HTTPS://chat.example.com",
    "https://Chat.example.com",
    "https://chat.example.com/",
    "https://chat.example.com/app",
    "https://chat.example.com?x=1",
    "https://chat.example.com#x",
    "https://user@chat.example.com",
    "https://*.example.com",
    "https://chat_app.example.com",
    "https://-chat.example.com",
    "https://chat-.example.com",
    "https://chat..example.com",
    "https://.example.com",
    "https://example.com.",
    "https://chat.example.com:",
    "https://chat.example.com:0",
    "https://chat.example.com:65536",
    "https://chat.example.com:123456",
    "https://chat.example.com:080",
    "https://chat.example.com:http",
    "https://[::1",
    "https://[]",
    "https://[::1]/",
    "https://[::G]",
    " https://chat.example.com",
    "https://chat.example.com ",
    "https://chat.example.com\n",
    "null",
];

/// The schema's item rule (pattern and length) never lets through an origin the api refuses
/// (`confab_core::admin::valid_origin`), so a resource the API server accepts is never
/// `Rejected` for its origins; and the two agree on everything a browser may send.
#[test]
fn the_origin_rule_of_the_schema_is_the_apis() {
    let items = schema()["properties"]["spec"]["properties"]["allowedOrigins"]["items"].clone();
    let rule = jsonschema::validator_for(&items).unwrap();
    let accepted = |origin: &str| rule.is_valid(&json!(origin));

    let label63 = "a".repeat(63);
    let host253 = format!("{label63}.{label63}.{label63}.{}", "a".repeat(61));
    let hosts: Vec<String> = [
        "chat.example.com",
        "localhost",
        "127.0.0.1",
        "a",
        "a-b.c-d",
        "xn--bcher-kva.example",
        "[::1]",
        "[2001:db8::ff]",
        "[]",
        "[::1",
        "a_b",
        "-a",
        "a-",
        "a..b",
        ".a",
        "a.",
        "A.b",
        "",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([
        label63.clone(),
        format!("{label63}a"),
        host253.clone(),
        format!("{host253}a"),
        format!("{host253}.a"),
    ])
    .collect();
    let mut corpus: Vec<String> = NOT_ORIGINS.iter().map(|o| (*o).to_owned()).collect();
    for scheme in ["http://", "https://", "ws://", "HTTP://", ""] {
        for host in &hosts {
            for port in [
                "", ":1", ":80", ":443", ":8080", ":65535", ":65536", ":0", ":99999", ":", ":x",
                ":1:2",
            ] {
                for tail in ["", "/", "/x", "?q", " "] {
                    corpus.push(format!("{scheme}{host}{port}{tail}"));
                }
            }
        }
    }
    let mut agreed = 0;
    for origin in &corpus {
        let api = confab_core::admin::valid_origin(origin);
        assert!(
            !accepted(origin) || api,
            "the CRD accepts {origin:?}, which the api refuses"
        );
        agreed += usize::from(accepted(origin) == api);
    }
    assert!(
        agreed > corpus.len() * 9 / 10,
        "{agreed} of {}",
        corpus.len()
    );
    for origin in [
        "https://chat.example.com",
        "http://localhost:5173",
        "http://127.0.0.1:8080",
        "https://a:65535",
        "http://[::1]:3000",
        "http://[2001:db8::ff]",
    ] {
        assert!(
            accepted(origin) && confab_core::admin::valid_origin(origin),
            "{origin}"
        );
    }
    // The longest host the api accepts fits with `http://`; a longer origin is refused even
    // where the api would take it (hosts this long are not real).
    assert!(accepted(&format!("http://{host253}")));
    assert!(!accepted(&format!("https://{host253}")));
    // Where the api is laxer than what a browser sends (a port with leading zeros, uppercase
    // hex in an IPv6 address), the CRD refuses.
    for origin in ["https://a:080", "http://[::ABCD]"] {
        assert!(!accepted(origin), "{origin}");
    }
}
