//! The `calm` command line: a thin dispatcher over the subcommands in `cli/`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = calm::cli::Cli::parse();
    match calm::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, so scripts and people see the reason at once.
            eprintln!("calm: error: {e}");
            ExitCode::FAILURE
        }
    }
}
