//! Every relative link in the Markdown people read — `README.md`, `docs/*.md` and each chart's
//! `README.md` — leads somewhere: the file or directory exists, and an `#anchor` into a Markdown
//! file names one of its headings, as GitHub derives anchors from headings. The README is the
//! way into `docs/`, so it must also link every file there. Links with a scheme (`https:`,
//! `mailto:`) are left alone, and nothing inside code (fenced blocks, inline code spans) is a link.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crate::{files, read, repo};

/// A link as written in a Markdown file, with its 1-based line.
struct Link {
    line: usize,
    target: String,
}

/// The anchor GitHub gives a heading: lower case; letters, digits, `-` and `_` kept; each space
/// becomes `-`; any other character is dropped. (The runbook check uses it too.)
pub(crate) fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The lines of a Markdown text outside fenced code blocks, with their 1-based numbers.
fn prose_lines(markdown: &str) -> Vec<(usize, &str)> {
    // The open fence's character and length: it closes on a line of at least as many.
    let mut fence: Option<(char, usize)> = None;
    let mut out = Vec::new();
    for (i, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        let run = |c: char| trimmed.chars().take_while(|&x| x == c).count();
        match fence {
            Some((c, len)) => {
                if run(c) >= len {
                    fence = None;
                }
            }
            None => {
                if let Some(c) = ['`', '~'].into_iter().find(|&c| run(c) >= 3) {
                    fence = Some((c, run(c)));
                } else {
                    out.push((i + 1, line));
                }
            }
        }
    }
    out
}

/// `line` with its inline code spans removed: a span opens with a run of backticks and closes
/// with the next run of the same length. An unclosed run is literal text.
fn without_code_spans(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let run_at = |i: usize| chars[i..].iter().take_while(|&&c| c == '`').count();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let open = run_at(i);
        let mut j = i + open;
        let close = loop {
            match (j..chars.len()).find(|&k| chars[k] == '`') {
                None => break None,
                Some(k) if run_at(k) == open => break Some(k + open),
                Some(k) => j = k + run_at(k),
            }
        };
        match close {
            Some(end) => {
                out.push(' ');
                i = end;
            }
            None => {
                out.extend(&chars[i..i + open]);
                i += open;
            }
        }
    }
    out
}

/// The text a heading shows: its links reduced to their text (`[text](target)` → `text`).
fn heading_text(heading: &str) -> String {
    let mut out = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find("](").map(|c| open + c) else {
            break;
        };
        let Some(end) = rest[close..].find(')').map(|e| close + e) else {
            break;
        };
        out.push_str(&rest[..open]);
        out.push_str(&rest[open + 1..close]);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The anchors of a Markdown text's headings (`#` to `######`). A heading repeated gets `-1`,
/// `-2`, … after its first anchor, as on GitHub.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = BTreeSet::new();
    for (_, line) in prose_lines(markdown) {
        if line.len() - line.trim_start().len() > 3 {
            continue; // indented: code, not a heading
        }
        let line = line.trim();
        let level = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&level) {
            continue;
        }
        let rest = &line[level..];
        if !(rest.is_empty() || rest.starts_with(' ') || rest.starts_with('\t')) {
            continue; // `#hashtag`, not a heading
        }
        // An optional closing sequence of `#`s, after a space, is not part of the heading.
        let text = rest.trim_end_matches('#');
        let text = if text.ends_with(' ') || text.is_empty() {
            text
        } else {
            rest
        };
        let base = slug(&heading_text(text));
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 { base } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

/// The links of a Markdown text: inline links and images (`[text](target)`, `![alt](target)`)
/// and reference definitions (`[label]: target`), outside code.
fn links(markdown: &str) -> Vec<Link> {
    let mut out = Vec::new();
    for (number, line) in prose_lines(markdown) {
        let line = without_code_spans(line);
        let trimmed = line.trim_start();
        if line.len() - trimmed.len() <= 3 && trimmed.starts_with('[') {
            if let Some(close) = trimmed.find("]:") {
                if !trimmed[..close].contains("](") {
                    let target = trimmed[close + 2..].split_whitespace().next().unwrap_or("");
                    out.push(Link {
                        line: number,
                        target: target.trim_matches(['<', '>']).to_owned(),
                    });
                    continue;
                }
            }
        }
        let mut rest = line.as_str();
        while let Some(start) = rest.find("](") {
            let after = &rest[start + 2..];
            // The target runs to the `)` that balances the opening one.
            let mut depth = 0usize;
            let end = after
                .char_indices()
                .find(|&(_, c)| match c {
                    '(' => {
                        depth += 1;
                        false
                    }
                    ')' if depth == 0 => true,
                    ')' => {
                        depth -= 1;
                        false
                    }
                    _ => false,
                })
                .map_or(after.len(), |(i, _)| i);
            // A title (`[x](target "title")`) follows the target after a space.
            let target = after[..end].split_whitespace().next().unwrap_or("");
            out.push(Link {
                line: number,
                target: target.trim_matches(['<', '>']).to_owned(),
            });
            rest = &after[end..];
        }
    }
    out
}

/// Whether a target starts with a URI scheme (`https:`, `mailto:`): not a file of this
/// repository.
fn has_scheme(target: &str) -> bool {
    let Some(colon) = target.find(':') else {
        return false;
    };
    let scheme = &target[..colon];
    scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// A link's path with its `%XX` escapes decoded (`my%20file.md` → `my file.md`).
fn decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every broken relative link in `documents` (paths under `root`), one line each:
/// `file:line: target: what is wrong`.
fn broken_links(root: &Path, documents: &[PathBuf]) -> Vec<String> {
    let shown = |path: &Path| {
        path.strip_prefix(root)
            .unwrap_or(path)
            .display()
            .to_string()
    };
    let mut anchors_of: HashMap<PathBuf, BTreeSet<String>> = HashMap::new();
    let mut broken = Vec::new();
    for document in documents {
        for link in links(&read(document)) {
            if link.target.is_empty() || has_scheme(&link.target) {
                continue;
            }
            let (path, anchor) = match link.target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (link.target.as_str(), None),
            };
            let target = if path.is_empty() {
                document.clone()
            } else {
                document.parent().unwrap().join(decode(path))
            };
            let place = format!("{}:{}: {}", shown(document), link.line, link.target);
            if !target.exists() {
                broken.push(format!("{place}: {} does not exist", shown(&target)));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if target.extension().is_none_or(|e| e != "md") {
                continue; // anchors into other files (`#L10`) are not headings
            }
            let known = anchors_of
                .entry(target.clone())
                .or_insert_with(|| anchors(&read(&target)));
            if !known.contains(anchor) {
                broken.push(format!(
                    "{place}: {} has no heading whose anchor is `{anchor}`",
                    shown(&target)
                ));
            }
        }
    }
    broken
}

/// The Markdown files this check covers: `README.md`, `docs/*.md` and `charts/*/README.md`.
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.join("README.md")];
    out.extend(files(&root.join("docs"), &["md"]));
    let mut charts: Vec<PathBuf> = std::fs::read_dir(root.join("charts"))
        .unwrap()
        .map(|entry| entry.unwrap().path().join("README.md"))
        .filter(|readme| readme.is_file())
        .collect();
    charts.sort();
    out.extend(charts);
    out
}

#[test]
fn every_relative_link_in_the_readme_docs_and_chart_readmes_resolves() {
    let root = repo();
    let documents = documents(&root);
    assert!(
        documents.len() >= 4,
        "README.md, docs/ and the charts' READMEs: {documents:?}"
    );
    let broken = broken_links(&root, &documents);
    assert!(
        broken.is_empty(),
        "{} broken link(s):\n{}",
        broken.len(),
        broken.join("\n")
    );
}

#[test]
fn the_readme_links_every_file_in_docs() {
    let root = repo();
    let readme = root.join("README.md");
    let linked: BTreeSet<PathBuf> = links(&read(&readme))
        .into_iter()
        .filter(|link| !has_scheme(&link.target))
        .filter_map(|link| {
            let path = link.target.split('#').next().unwrap_or("").to_owned();
            root.join(decode(&path)).canonicalize().ok()
        })
        .collect();
    let docs = files(&root.join("docs"), &["md"]);
    assert!(!docs.is_empty(), "docs/ has Markdown files");
    let unlinked: Vec<String> = docs
        .iter()
        .filter(|doc| !linked.contains(&doc.canonicalize().unwrap()))
        .map(|doc| doc.strip_prefix(&root).unwrap_or(doc).display().to_string())
        .collect();
    assert!(
        unlinked.is_empty(),
        "README.md's map of docs/ does not link: {unlinked:?}"
    );
}

#[test]
fn broken_links_are_reported_with_their_file_and_line() {
    let root = std::env::temp_dir().join(format!("confab-links-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("docs")).unwrap();
    std::fs::write(
        root.join("README.md"),
        "# Title\n\
         \n\
         [fine](docs/guide.md) and [fine too](docs/guide.md#set-up-the-api-v2)\n\
         [missing file](docs/gone.md)\n\
         [missing heading](docs/guide.md#nowhere)\n\
         [same file](#title), [second of two](docs/guide.md#notes-1), [web](https://example.com/x)\n\
         `[in code](nowhere.md)` and [bad self](#titel)\n\
         ```sh\n\
         [in a block](nowhere.md)\n\
         ```\n\
         [dir](docs/) [escaped](docs/with%20space.md)\n",
    )
    .unwrap();
    std::fs::write(
        root.join("docs/guide.md"),
        "# Guide\n\n## Set up: the `api` (v2)\n\n## Notes\n\n## Notes\n",
    )
    .unwrap();
    std::fs::write(root.join("docs/with space.md"), "# Spaced\n").unwrap();

    let broken = broken_links(&root, &[root.join("README.md")]);
    std::fs::remove_dir_all(&root).unwrap();
    assert_eq!(
        broken,
        [
            "README.md:4: docs/gone.md: docs/gone.md does not exist",
            "README.md:5: docs/guide.md#nowhere: docs/guide.md has no heading whose anchor is \
             `nowhere`",
            "README.md:7: #titel: README.md has no heading whose anchor is `titel`",
        ]
    );
}

#[test]
fn anchors_follow_github() {
    assert_eq!(
        slug("Kubernetes: operator, charts, images, Tilt"),
        "kubernetes-operator-charts-images-tilt"
    );
    assert_eq!(slug("Quotas and the admin API"), "quotas-and-the-admin-api");
    assert_eq!(slug("`scripts/dev` commands"), "scriptsdev-commands");
    assert_eq!(
        anchors("# A\n\n## A\n\n```\n# not a heading\n```\n\n### [Linked](x.md) — done ###\n"),
        BTreeSet::from(["a".to_owned(), "a-1".to_owned(), "linked--done".to_owned()])
    );
}
