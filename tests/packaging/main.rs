//! Checks of what ships beside the binaries, runnable without helm, a cluster or docker:
//! every chart's values (and its `ci/` value files) validate against its `values.schema.json`
//! and the schema rejects known-bad values; the copies the charts carry (CRDs, dashboards, alert
//! rules) are byte-identical to their sources; every environment variable the charts set is one
//! the services read; the ports and probe paths the charts use are the services' own; pods are
//! restricted (`security`); the NetworkPolicies and the internal token (`network`); the
//! `helm test` script makes a real round trip (`helm_test`); every alert has a runbook section
//! and a `runbook_url` leading to it (`runbooks`); every relative link in the README, `docs/` and
//! the charts' READMEs resolves, and the README links every file in `docs/` (`links`).

#![allow(clippy::unwrap_used)]

mod helm_test;
mod links;
mod network;
mod runbooks;
mod security;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

const CHARTS: [&str; 2] = ["confab", "confab-operator"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(path: &Path) -> Value {
    let value: Value = serde_yaml::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
    if value.is_null() {
        Value::Object(serde_json::Map::new())
    } else {
        value
    }
}

fn files(dir: &Path, extensions: &[&str]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    out.retain(|p| {
        p.extension()
            .is_some_and(|e| extensions.iter().any(|x| e == *x))
    });
    out.sort();
    out
}

/// Helm's merge of a values file over the chart's: maps merge, `null` deletes, the rest replaces.
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(k);
                } else if let Some(existing) = b.get_mut(k) {
                    merge(existing, v);
                } else {
                    b.insert(k.clone(), v.clone());
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

fn validator(chart: &Path) -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(&read(&chart.join("values.schema.json"))).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

#[test]
fn chart_values_and_ci_values_match_their_schema() {
    for name in CHARTS {
        let chart = repo().join("charts").join(name);
        let validator = validator(&chart);
        let defaults = yaml(&chart.join("values.yaml"));
        let errors: Vec<String> = validator
            .iter_errors(&defaults)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{name}/values.yaml: {errors:#?}");
        let ci = files(&chart.join("ci"), &["yaml"]);
        assert!(!ci.is_empty(), "{name} has ci/ value files");
        for file in ci {
            let mut values = defaults.clone();
            merge(&mut values, &yaml(&file));
            let errors: Vec<String> = validator
                .iter_errors(&values)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{}: {errors:#?}", file.display());
        }
    }
}

#[test]
fn the_schemas_reject_known_bad_values() {
    for name in CHARTS {
        let chart = repo().join("charts").join(name);
        let validator = validator(&chart);
        let defaults = yaml(&chart.join("values.yaml"));
        let bad = files(&chart.join("tests/bad-values"), &["yaml"]);
        assert!(bad.len() >= 5, "{name} has bad-value cases");
        for file in bad {
            let mut values = defaults.clone();
            merge(&mut values, &yaml(&file));
            assert!(
                !validator.is_valid(&values),
                "{} should be rejected by {name}'s schema",
                file.display()
            );
        }
    }
}

#[test]
fn charts_carry_exact_copies_of_the_crds_dashboards_and_rules() {
    let root = repo();
    let pairs = [
        (
            "crds/applications.confab.dev.yaml",
            "charts/confab-operator/crds/applications.confab.dev.yaml",
        ),
        (
            "dashboards/alerts/confab.rules.yml",
            "charts/confab/files/confab.rules.yml",
        ),
    ];
    let mut checked = 0;
    for (source, copy) in pairs {
        assert!(
            read(&root.join(source)) == read(&root.join(copy)),
            "{copy} differs from {source}; copy it again"
        );
        checked += 1;
    }
    let sources = files(&root.join("dashboards"), &["json"]);
    let copies = files(&root.join("charts/confab/files/dashboards"), &["json"]);
    assert_eq!(
        sources.iter().map(|p| p.file_name()).collect::<Vec<_>>(),
        copies.iter().map(|p| p.file_name()).collect::<Vec<_>>(),
        "the chart ships every dashboard, and only those"
    );
    for (source, copy) in sources.iter().zip(&copies) {
        assert!(read(source) == read(copy), "{} is stale", copy.display());
        checked += 1;
    }
    assert!(checked >= 3);
    // Helm installs only YAML from crds/: nothing else may sit there.
    let crds = std::fs::read_dir(root.join("charts/confab-operator/crds")).unwrap();
    assert_eq!(crds.count(), 1);
}

/// Environment variable names in a text: Confab's, the connection URLs, the OTel ones, RUST_LOG.
fn env_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut token = String::new();
    for ch in text.chars().chain([' ']) {
        if ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == '_' {
            token.push(ch);
            continue;
        }
        let known = [
            "DATABASE_URL",
            "DATABASE_READ_URL",
            "REDIS_URL",
            "NATS_URL",
            "ELASTICSEARCH_URL",
            "RUST_LOG",
        ];
        if token.starts_with("CONFAB_") || token.starts_with("OTEL_") || known.contains(&&*token) {
            names.insert(token.clone());
        }
        token.clear();
    }
    names
}

fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_environment_variable_the_charts_set_is_read_by_a_service() {
    let root = repo();
    // What the services read: the quoted names in their (non-test) source.
    let mut sources = Vec::new();
    rust_sources(&root.join("services"), &mut sources);
    let mut read_by_code = BTreeSet::new();
    for file in sources {
        let text = read(&file);
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for name in env_names(code) {
            if code.contains(&format!("\"{name}\"")) {
                read_by_code.insert(name);
            }
        }
    }
    assert!(read_by_code.contains("CONFAB_ADMIN_TOKEN") && read_by_code.contains("DATABASE_URL"));
    let mut set_by_charts = BTreeSet::new();
    for name in CHARTS {
        let templates = root.join("charts").join(name).join("templates");
        for file in files(&templates, &["yaml", "tpl"]) {
            set_by_charts.extend(env_names(&read(&file)));
        }
    }
    set_by_charts.extend(env_names(&read(&root.join("Tiltfile"))));
    assert!(set_by_charts.len() > 20, "found {set_by_charts:?}");
    let unread: Vec<_> = set_by_charts.difference(&read_by_code).collect();
    assert!(
        unread.is_empty(),
        "set by a chart but read by no service: {unread:?}"
    );
}

#[test]
fn chart_ports_and_probe_paths_are_the_services_own() {
    let env = |pairs: &[(&str, &str)]| -> confab_runtime::Env {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let empty = env(&[]);
    let api = confab_api::ApiConfig::from_env(&empty).unwrap();
    let persister = confab_persister::PersisterConfig::from_env(&empty).unwrap();
    let indexer = confab_indexer::IndexerConfig::from_env(&empty).unwrap();
    let reconciler = confab_counter_reconciler::ReconcilerConfig::from_env(&empty).unwrap();
    let operator =
        confab_operator::OperatorConfig::from_env(&env(&[("CONFAB_ADMIN_TOKEN", "x")])).unwrap();

    let values = yaml(&repo().join("charts/confab/values.yaml"));
    let port = |component: &str, key: &str| values[component][key].as_u64().unwrap() as u16;
    assert_eq!(port("api", "adminPort"), api.common.admin_addr.port());
    assert_eq!(port("api", "httpPort"), api.http_addr.port());
    assert_eq!(
        port("persister", "adminPort"),
        persister.common.admin_addr.port()
    );
    assert_eq!(
        port("indexer", "adminPort"),
        indexer.common.admin_addr.port()
    );
    assert_eq!(port("indexer", "searchPort"), indexer.search_addr.port());
    assert_eq!(
        port("counterReconciler", "adminPort"),
        reconciler.common.admin_addr.port()
    );
    let operator_values = yaml(&repo().join("charts/confab-operator/values.yaml"));
    assert_eq!(
        operator_values["adminPort"].as_u64().unwrap() as u16,
        operator.admin_addr.port()
    );

    // Every HTTP path a chart probes or scrapes is one the admin server serves (the operator
    // adds `/livez`, its watch-progress check, to the shared routes).
    for name in CHARTS {
        let mut served = read(&repo().join("services/runtime/src/admin.rs"));
        if name == "confab-operator" {
            served.push_str(&read(&repo().join("services/operator/src/lib.rs")));
        }
        let templates = repo().join("charts").join(name).join("templates");
        for file in files(&templates, &["yaml", "tpl"]) {
            for line in read(&file).lines() {
                let Some(path) = line.trim().strip_prefix("path: /") else {
                    continue;
                };
                let path = format!("\"/{}\"", path.trim());
                assert!(
                    served.contains(&path),
                    "{} uses {path}, which the admin server does not serve",
                    file.display()
                );
            }
        }
    }
}
