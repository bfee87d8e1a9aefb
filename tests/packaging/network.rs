//! The charts' NetworkPolicies and the api–indexer shared secret, checked over the templates and
//! values (no helm here): on by default; the indexer's search port admits the api's pods and
//! nothing else; every admin port (the operator's too) admits only the configured metrics
//! sources; the only rule open to any source is the api's tenant port; and the api and the
//! indexer get the same `CONFAB_INTERNAL_TOKEN`.

use serde_json::Value;

use crate::{read, repo, yaml};

fn template(name: &str) -> String {
    read(&repo().join("charts/confab/templates").join(name))
}

/// The ingress rules of the template: each `- ports:` item up to the next one.
fn rules(text: &str) -> Vec<String> {
    let ingress = text
        .split("  ingress:\n")
        .nth(1)
        .expect("an ingress section");
    ingress
        .split("    - ports:\n")
        .skip(1)
        .map(str::to_owned)
        .collect()
}

#[test]
fn network_policies_admit_only_the_api_to_the_search_port_and_only_prometheus_to_admin_ports() {
    let values = yaml(&repo().join("charts/confab/values.yaml"));
    let np = &values["networkPolicy"];
    assert_eq!(np["enabled"], true, "on by default");
    let sources = np["metricsFrom"].as_array().unwrap();
    assert!(!sources.is_empty());
    for peer in sources {
        assert!(
            peer.as_object().is_some_and(|p| !p.is_empty()),
            "a metrics source must select something: {peer}"
        );
    }
    assert_eq!(np["apiFrom"], Value::Array(vec![]));

    let text = template("networkpolicy.yaml");
    assert!(text.contains("{{- if .Values.networkPolicy.enabled }}"));
    assert!(text.contains("policyTypes:\n    - Ingress"));
    // One policy per component, each selecting exactly that component's pods.
    for component in [
        "\"api\"",
        "\"persister\"",
        "\"indexer\"",
        "\"counter-reconciler\"",
    ] {
        assert!(text.contains(&format!("(list {component} ")), "{component}");
    }
    assert!(text.contains(
        "podSelector:\n    matchLabels:\n      {{- include \"confab.selectorLabels\" $c"
    ));

    let rules = rules(&text);
    assert_eq!(rules.len(), 3, "{rules:#?}");
    let search: Vec<&String> = rules
        .iter()
        .filter(|r| r.contains("port: search"))
        .collect();
    assert_eq!(search.len(), 1);
    assert!(
        search[0].contains("from:")
            && search[0].contains("include \"confab.selectorLabels\" $api")
            && text.contains("{{- $api := dict \"root\" $ \"component\" \"api\""),
        "the search port admits the api's pods: {}",
        search[0]
    );
    assert!(
        text.contains(
            "{{- if eq $c.component \"indexer\" }}\n    # The internal search endpoint: the api's \
             pods only.\n    - ports:\n        - port: search"
        ),
        "the search rule is the indexer's"
    );
    let admin: Vec<&String> = rules.iter().filter(|r| r.contains("port: admin")).collect();
    assert_eq!(admin.len(), 1, "one admin rule, shared by every component");
    assert!(
        admin[0].contains("from:\n        {{- toYaml $np.metricsFrom"),
        "{}",
        admin[0]
    );
    // The tenant port is the only rule that may have no `from` (apiFrom empty: anyone).
    let open: Vec<&String> = rules.iter().filter(|r| !r.contains("from:")).collect();
    assert!(
        open.is_empty(),
        "every rule has a from, or a `with` guarding it: {open:#?}"
    );
    let http = rules.iter().find(|r| r.contains("port: http")).unwrap();
    assert!(
        http.contains("{{- with $np.apiFrom }}\n      from:"),
        "{http}"
    );
    assert!(
        http.contains("\"component\" \"test\""),
        "the helm test pod keeps its way in"
    );
}

#[test]
fn the_api_and_the_indexer_share_the_internal_token() {
    let values = yaml(&repo().join("charts/confab/values.yaml"));
    assert_eq!(values["internalToken"]["enabled"], true, "on by default");
    let env = template("_env.tpl");
    for component in ["confab.env.api", "confab.env.indexer"] {
        let block = env
            .split(&format!("{{{{- define \"{component}\" -}}}}"))
            .nth(1)
            .and_then(|b| b.split("{{- end }}\n\n").next())
            .unwrap_or_else(|| panic!("{component} is defined"));
        assert!(
            block.contains("{{- include \"confab.env.internalToken\" . }}"),
            "{component} gets CONFAB_INTERNAL_TOKEN"
        );
    }
    let helpers = template("_helpers.tpl");
    let token = helpers
        .split("{{- define \"confab.env.internalToken\" -}}")
        .nth(1)
        .unwrap();
    assert!(token.contains("- name: CONFAB_INTERNAL_TOKEN\n  valueFrom:\n    secretKeyRef:"));
    assert!(token.contains("include \"confab.internalTokenSecretName\""));
    let secret = template("secret-internal-token.yaml");
    assert!(secret.contains("internal-token: {{ $token | quote }}"));
    assert!(
        secret.contains("lookup \"v1\" \"Secret\""),
        "kept across upgrades"
    );
}

#[test]
fn the_operator_admits_only_prometheus_to_its_admin_port() {
    let chart = repo().join("charts/confab-operator");
    let values = yaml(&chart.join("values.yaml"));
    assert_eq!(values["networkPolicy"]["enabled"], true, "on by default");
    assert!(values["networkPolicy"]["metricsFrom"]
        .as_array()
        .is_some_and(|peers| !peers.is_empty()));
    let text = read(&chart.join("templates/networkpolicy.yaml"));
    assert!(text.contains("{{- if .Values.networkPolicy.enabled }}"));
    assert!(text.contains("{{- include \"confab-operator.selectorLabels\" . | nindent 6 }}"));
    let rules = rules(&text);
    assert_eq!(rules.len(), 1, "{rules:#?}");
    assert!(rules[0].contains("port: admin"));
    assert!(
        rules[0].contains("from:\n        {{- toYaml .Values.networkPolicy.metricsFrom"),
        "{}",
        rules[0]
    );
}
