//! The command line of the built `confab-api` (the shared check in `tests/support/cli.rs`).

#[path = "../../../tests/support/cli.rs"]
mod cli;

#[test]
fn help_lists_the_commands_and_a_bogus_argument_is_refused() {
    cli::check(
        env!("CARGO_BIN_EXE_confab-api"),
        "confab-api",
        env!("CARGO_PKG_VERSION"),
        &["migrate"],
        ("migrat", "unrecognized subcommand 'migrat'"),
    );
}
