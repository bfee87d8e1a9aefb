//! The command line of the built `confab-indexer` (the shared check in `tests/support/cli.rs`).

#[path = "../../../tests/support/cli.rs"]
mod cli;

#[test]
fn help_lists_the_commands_and_a_bogus_argument_is_refused() {
    cli::check(
        env!("CARGO_BIN_EXE_confab-indexer"),
        "confab-indexer",
        env!("CARGO_PKG_VERSION"),
        &["reindex"],
        ("re-index", "unrecognized subcommand 're-index'"),
    );
}
