//! Every alert has a runbook. Each rule of every Prometheus rule file the repository ships (the
//! source under `dashboards/`, and the chart's copy that its PrometheusRule is built from) carries
//! a `runbook_url` that names its own `## <AlertName>` section of `docs/runbooks.md`, and every
//! alert section there belongs to an alert that still exists. Read as text, without helm: the
//! chart's template only prepends `metrics.prometheusRule.runbookBaseUrl` to these paths.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::links::slug as anchor;
use crate::{read, repo, yaml};

/// Where the runbooks live, relative to the repository: also the path part of every
/// `runbook_url` in the rule files.
const RUNBOOKS: &str = "docs/runbooks.md";

/// The level-2 headings of a Markdown text, outside code fences.
fn sections(markdown: &str) -> Vec<String> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            if let Some(heading) = line.strip_prefix("## ") {
                out.push(heading.trim().to_owned());
            }
        }
    }
    out
}

/// Whether a heading is an alert's name (`ConfabSomething`), not a shared section's.
fn names_an_alert(heading: &str) -> bool {
    heading.len() > "Confab".len()
        && heading.starts_with("Confab")
        && heading.chars().all(|c| c.is_ascii_alphanumeric())
}

/// Files under `dir`, recursively, whose name ends in one of `extensions`.
fn walk(dir: &Path, extensions: &[&str], out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, extensions, out);
        } else if path
            .extension()
            .is_some_and(|e| extensions.iter().any(|x| e == *x))
        {
            out.push(path);
        }
    }
}

/// Whether a YAML text defines an alerting rule (a `- alert:` or `alert:` key).
fn defines_alerts(text: &str) -> bool {
    text.lines().any(|line| {
        let line = line.trim_start();
        line.starts_with("- alert:") || line.starts_with("alert:")
    })
}

/// One alerting rule: the file it is in, its name and its `runbook_url`, if any.
struct Alert {
    file: String,
    name: String,
    runbook_url: Option<String>,
}

/// The alerting rules of a rule file (`groups[].rules[]` with an `alert`).
fn alerts_of(path: &Path, file: &str) -> Vec<Alert> {
    let doc = yaml(path);
    let groups = doc["groups"]
        .as_array()
        .unwrap_or_else(|| panic!("{file} defines alerts but has no `groups` list"));
    let mut out = Vec::new();
    for group in groups {
        for rule in group["rules"].as_array().into_iter().flatten() {
            let Some(name) = rule["alert"].as_str() else {
                continue; // a recording rule
            };
            out.push(Alert {
                file: file.to_owned(),
                name: name.to_owned(),
                runbook_url: rule["annotations"]["runbook_url"]
                    .as_str()
                    .map(str::to_owned),
            });
        }
    }
    out
}

/// Every alert of every rule file under `dashboards/` and `charts/`. Chart templates are not
/// YAML until rendered; none may define alerts of its own, so that all of them are read here.
fn shipped_alerts(root: &Path) -> Vec<Alert> {
    let mut paths = Vec::new();
    for dir in ["dashboards", "charts"] {
        walk(&root.join(dir), &["yml", "yaml"], &mut paths);
    }
    paths.sort();
    let mut alerts = Vec::new();
    let mut rule_files = BTreeSet::new();
    for path in paths {
        let file = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        let text = read(&path);
        if !defines_alerts(&text) {
            continue;
        }
        assert!(
            !path.components().any(|c| c.as_os_str() == "templates"),
            "{file} defines alerts in a template: put them in a rules file the chart carries \
             (files/confab.rules.yml), which the runbook test reads"
        );
        alerts.extend(alerts_of(&path, &file));
        rule_files.insert(file);
    }
    for expected in [
        "dashboards/alerts/confab.rules.yml",
        "charts/confab/files/confab.rules.yml",
    ] {
        assert!(
            rule_files.contains(expected),
            "{expected} was not found among the rule files: {rule_files:?}"
        );
    }
    alerts
}

/// What is wrong with `alerts` against the runbooks' text, one line per problem, each naming
/// its alert.
fn problems(alerts: &[Alert], runbooks: &str) -> Vec<String> {
    let mut problems = Vec::new();
    // Every level-2 section by its anchor; an anchor used twice would make links ambiguous.
    let mut by_anchor: BTreeMap<String, String> = BTreeMap::new();
    for heading in sections(runbooks) {
        if let Some(first) = by_anchor.insert(anchor(&heading), heading.clone()) {
            problems.push(format!(
                "{RUNBOOKS}: the sections `## {first}` and `## {heading}` have the same anchor"
            ));
        }
    }
    let names: BTreeSet<&str> = alerts.iter().map(|a| a.name.as_str()).collect();
    for alert in alerts {
        let (name, file) = (&alert.name, &alert.file);
        let Some(url) = &alert.runbook_url else {
            problems.push(format!(
                "alert {name} ({file}) has no runbook_url annotation"
            ));
            continue;
        };
        let Some((path, fragment)) = url.split_once('#') else {
            problems.push(format!(
                "alert {name} ({file}): runbook_url {url} names no section (no `#anchor`)"
            ));
            continue;
        };
        if path != RUNBOOKS {
            problems.push(format!(
                "alert {name} ({file}): runbook_url {url} is not `{RUNBOOKS}#…` (the chart \
                 prepends metrics.prometheusRule.runbookBaseUrl to this path)"
            ));
        }
        match by_anchor.get(fragment) {
            None => problems.push(format!(
                "alert {name} ({file}): runbook_url {url} names #{fragment}, and {RUNBOOKS} has \
                 no such section; add `## {name}`"
            )),
            Some(heading) if heading != name => problems.push(format!(
                "alert {name} ({file}): runbook_url {url} leads to the section `## {heading}`, \
                 not to `## {name}` (#{})",
                anchor(name)
            )),
            Some(_) => {}
        }
    }
    for heading in by_anchor.values().filter(|h| names_an_alert(h)) {
        if !names.contains(heading.as_str()) {
            problems.push(format!(
                "{RUNBOOKS} has a section for alert {heading}, which no rule file defines any \
                 more: remove it or rename it"
            ));
        } else if !runbooks.contains(&format!("](#{})", anchor(heading))) {
            problems.push(format!(
                "{RUNBOOKS}: the index does not link the section of alert {heading} \
                 (#{})",
                anchor(heading)
            ));
        }
    }
    problems
}

#[test]
fn every_alert_has_a_runbook_section_and_every_section_an_alert() {
    let root = repo();
    let alerts = shipped_alerts(&root);
    assert!(alerts.len() >= 16, "found only {} alerts", alerts.len());
    let problems = problems(&alerts, &read(&root.join(RUNBOOKS)));
    assert!(problems.is_empty(), "{problems:#?}");

    // The chart's PrometheusRule is built from the copy read above, and turns its
    // repository-relative runbook_url into a link with the value that the chart documents.
    let template = read(&root.join("charts/confab/templates/prometheusrule.yaml"));
    assert!(template.contains(".Files.Get \"files/confab.rules.yml\""));
    assert!(template.contains("runbookBaseUrl"));
    let values = yaml(&root.join("charts/confab/values.yaml"));
    let base: &Value = &values["metrics"]["prometheusRule"]["runbookBaseUrl"];
    assert!(
        base.is_string(),
        "charts/confab/values.yaml sets metrics.prometheusRule.runbookBaseUrl, found {base}"
    );
}

#[test]
fn the_runbook_check_names_the_alert_at_fault() {
    let alert = |name: &str, url: Option<&str>| Alert {
        file: "rules.yml".to_owned(),
        name: name.to_owned(),
        runbook_url: url.map(str::to_owned),
    };
    let runbooks = "# Runbooks\n\n- [ConfabA](#confaba)\n- [ConfabGone](#confabgone)\n\n\
                    ## Shared steps\n\n```sh\n## ConfabInAFence\n```\n\n## ConfabA\n\n## ConfabGone\n";
    let found = problems(
        &[
            alert("ConfabA", Some("docs/runbooks.md#confaba")),
            alert("ConfabNoUrl", None),
            alert("ConfabNoSection", Some("docs/runbooks.md#confabnosection")),
            alert("ConfabWrongAnchor", Some("docs/runbooks.md#confaba")),
            alert("ConfabElsewhere", Some("README.md#confaba")),
        ],
        runbooks,
    );
    let expect = [
        ("ConfabNoUrl", "no runbook_url"),
        ("ConfabNoSection", "no such section"),
        ("ConfabWrongAnchor", "not to `## ConfabWrongAnchor`"),
        ("ConfabElsewhere", "is not `docs/runbooks.md#…`"),
        ("ConfabGone", "no rule file defines"),
    ];
    for (name, what) in expect {
        assert!(
            found.iter().any(|p| p.contains(name) && p.contains(what)),
            "expected a problem naming {name} ({what}) in {found:#?}"
        );
    }
    // The well-linked alert, and a heading inside a code fence, are not problems.
    assert!(
        !found
            .iter()
            .any(|p| p.starts_with("alert ConfabA ") || p.contains("ConfabInAFence")),
        "{found:#?}"
    );
}
