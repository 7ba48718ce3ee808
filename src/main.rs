//! The `calm` command line: a thin dispatcher over the subcommands in `cli/`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Output piped into `head` and the like: end quietly when the reader goes away, as other
    // command-line tools do, instead of panicking on the failed write (Rust ignores SIGPIPE).
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
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
