//! The `vmfleet` command: parses the command line and hands it to `vmfleet::cli`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    vmfleet::cli::main(vmfleet::cli::Cli::parse())
}
