//! The command-line check every binary's `tests/cli.rs` runs on the built binary (included with
//! `#[path]`, so each crate tests its own executable): `--help` lists the commands and
//! `--version` answers; a mistyped command and an unknown flag are usage errors (exit 2) that
//! start nothing.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `bin`; fails if it is still running after 30 s (it started the service).
fn run(bin: &str, args: &[&str]) -> Output {
    let mut child = Command::new(bin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("`{bin} {}` did not exit", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Checks the binary at `bin` (named `name`, at `version`): its help lists `commands`; `typo`
/// is refused with `typo_error`, and so is `--bogus`.
pub fn check(
    bin: &str,
    name: &str,
    version: &str,
    commands: &[&str],
    (typo, typo_error): (&str, &str),
) {
    let help = run(bin, &["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains(&format!("Usage: {name}")), "{text}");
    for command in commands {
        assert!(text.contains(command), "{command} in {text}");
    }
    let shown = run(bin, &["--version"]);
    assert!(shown.status.success());
    assert_eq!(
        String::from_utf8_lossy(&shown.stdout).trim(),
        format!("{name} {version}")
    );
    for (bogus, error) in [
        (typo, typo_error),
        ("--bogus", "unexpected argument '--bogus'"),
    ] {
        let out = run(bin, &[bogus]);
        assert_eq!(out.status.code(), Some(2), "{bogus}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(error), "{bogus}: {stderr}");
    }
}
