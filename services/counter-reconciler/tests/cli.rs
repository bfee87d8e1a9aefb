//! The command line of the built `confab-counter-reconciler`: `--help` and `--version` answer, and a mistyped
//! argument is a usage error (exit 2) instead of starting the service.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_confab-counter-reconciler");

/// Runs the binary; fails if it is still running after 30 s (it started the service).
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!(
                "`confab-counter-reconciler {}` did not exit",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn help_lists_the_commands_and_a_bogus_argument_is_refused() {
    let help = run(&["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("Usage: confab-counter-reconciler"), "{text}");
    assert!(text.contains("repair"), "{text}");
    let version = run(&["--version"]);
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        concat!("confab-counter-reconciler ", env!("CARGO_PKG_VERSION"))
    );

    for (bogus, error) in [
        (&["repiar"][..], "unrecognized subcommand 'repiar'"),
        (&["--bogus"][..], "unexpected argument '--bogus'"),
    ] {
        let out = run(bogus);
        assert_eq!(out.status.code(), Some(2), "{bogus:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(error), "{bogus:?}: {stderr}");
    }
}
