//! Subcommands of `calm`, one file each; [`run`] dispatches.

mod check;
mod error;
mod sample;
mod show;
mod stats;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub use error::CliError;

/// Compiler and runtime for CALM, the culturally self-aware language model.
///
/// Graphs are files in the `calm-ir/1` JSON form. Every command exits non-zero with a one-line
/// reason on any error.
#[derive(Parser, Debug)]
#[command(name = "calm", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Read a graph file and verify it; prints a one-line summary when it is valid.
    Check {
        /// Graph file (calm-ir/1 JSON).
        file: PathBuf,
    },
    /// Print a graph as a summary, a full listing, JSON or Graphviz DOT.
    Show {
        /// Graph file (calm-ir/1 JSON).
        file: PathBuf,
        /// summary: inputs, outputs, op counts and scopes; text: one line per node;
        /// json: the canonical file form; dot: Graphviz, clustered by scope (`| dot -Tsvg`).
        #[arg(long, value_enum, default_value_t = show::Format::Summary)]
        format: show::Format,
        /// Scope depth for the summary's per-scope counts.
        #[arg(long, default_value_t = 2)]
        depth: usize,
    },
    /// Parameters, FLOPs and bytes moved, by scope, for given sizes of the graph's symbols.
    Stats {
        /// Graph file (calm-ir/1 JSON).
        file: PathBuf,
        /// Sizes of the graph's symbols, e.g. `batch=64,tokens=128`.
        #[arg(long)]
        bind: Option<String>,
        /// Roll scopes up to this many path segments (0: no roll-up).
        #[arg(long, default_value_t = 2)]
        depth: usize,
        /// Print the rows as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Write a small sample graph (a one-block attention classifier) to try the other commands on.
    Sample {
        /// Where to write the graph.
        #[arg(short, long)]
        output: PathBuf,
    },
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Check { file } => check::run(&file),
        Command::Show { file, format, depth } => show::run(&file, format, depth),
        Command::Stats { file, bind, depth, json } => stats::run(&file, bind.as_deref().unwrap_or(""), depth, json),
        Command::Sample { output } => sample::run(&output),
    }
}
