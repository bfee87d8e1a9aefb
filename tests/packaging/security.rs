//! Restricted pod security by default (the Pod Security Standards' `restricted` profile, plus a
//! read-only root filesystem) in both charts. Without helm the rendered pods cannot be produced,
//! so this checks both halves that make them: the security contexts in each chart's values (the
//! defaults and every `ci/` values file merged over them), and that every pod template in the
//! chart takes its pod and container security contexts from exactly those values.

use std::path::Path;

use serde_json::Value;

use crate::{files, merge, read, repo, yaml, CHARTS};

/// Why `pod` + `container` security contexts are not restricted, if they are not.
fn violations(pod: &Value, container: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let either = |key: &str| {
        if container[key].is_null() {
            pod[key].clone()
        } else {
            container[key].clone()
        }
    };
    if either("runAsNonRoot") != Value::Bool(true) {
        out.push("runAsNonRoot is not true".to_owned());
    }
    if either("runAsUser") == 0 {
        out.push("runAsUser is 0".to_owned());
    }
    let seccomp = either("seccompProfile")["type"].clone();
    if seccomp != "RuntimeDefault" && seccomp != "Localhost" {
        out.push(format!("seccompProfile.type is {seccomp}"));
    }
    if container["allowPrivilegeEscalation"] != Value::Bool(false) {
        out.push("allowPrivilegeEscalation is not false".to_owned());
    }
    if container["privileged"] == Value::Bool(true) {
        out.push("privileged".to_owned());
    }
    let drops = container["capabilities"]["drop"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !drops.contains(&Value::from("ALL")) {
        out.push("capabilities.drop lacks ALL".to_owned());
    }
    if let Some(added) = container["capabilities"]["add"].as_array() {
        if added.iter().any(|c| c != "NET_BIND_SERVICE") {
            out.push(format!("capabilities.add {added:?}"));
        }
    }
    if container["readOnlyRootFilesystem"] != Value::Bool(true) {
        out.push("readOnlyRootFilesystem is not true".to_owned());
    }
    out
}

#[test]
fn the_default_and_ci_security_contexts_are_restricted() {
    for name in CHARTS {
        let chart = repo().join("charts").join(name);
        let defaults = yaml(&chart.join("values.yaml"));
        let mut cases = vec![("values.yaml".to_owned(), defaults.clone())];
        for file in files(&chart.join("ci"), &["yaml"]) {
            let mut values = defaults.clone();
            merge(&mut values, &yaml(&file));
            cases.push((file.display().to_string(), values));
        }
        for (file, values) in cases {
            let found = violations(
                &values["podSecurityContext"],
                &values["containerSecurityContext"],
            );
            assert!(found.is_empty(), "{name} {file}: {found:#?}");
        }
    }
    // The check itself bites.
    let pod =
        serde_json::json!({"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}});
    let loose = serde_json::json!({"allowPrivilegeEscalation": true, "capabilities": {"add": ["SYS_ADMIN"]}});
    assert_eq!(
        violations(&pod, &loose).len(),
        4,
        "{:?}",
        violations(&pod, &loose)
    );
}

/// Each template (and helper) that declares containers gives the pod the chart's pod security
/// context and every container the container security context, and never sets its own.
#[test]
fn every_pod_template_uses_the_restricted_security_contexts() {
    let mut pods = 0;
    for name in CHARTS {
        let templates = repo().join("charts").join(name).join("templates");
        let mut paths = files(&templates, &["yaml", "tpl"]);
        paths.extend(files(&templates.join("tests"), &["yaml"]));
        for path in paths {
            let text = read(&path);
            let containers = text.matches("\n      image: ").count()
                + text.matches("\n          image: ").count();
            if containers == 0 {
                continue;
            }
            pods += 1;
            let file = display(&path);
            assert_eq!(
                text.matches("Values.podSecurityContext").count(),
                1,
                "{file}: one pod, the chart's pod security context"
            );
            assert_eq!(
                text.matches("Values.containerSecurityContext").count(),
                containers,
                "{file}: every container gets the container security context"
            );
            for forbidden in [
                "privileged:",
                "hostNetwork",
                "hostPID",
                "hostPath",
                "runAsUser: 0",
            ] {
                assert!(!text.contains(forbidden), "{file} sets {forbidden}");
            }
        }
    }
    // The platform's pod template helper, the migration Job, the helm test Pod, the operator.
    assert_eq!(pods, 4, "found {pods} pod templates");
}

fn display(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}
