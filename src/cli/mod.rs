//! Subcommands of `calm`, one file each; [`run`] dispatches.

mod ablate;
mod bench;
mod build;
mod check;
mod compile;
mod cuda;
mod data;
mod diff;
mod error;
mod profile;
mod run;
mod sample;
mod show;
mod stats;
mod train;

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
    /// Build the CALM graph from a preset or config file (inference graph, or --train).
    Build {
        #[command(flatten)]
        source: build::GraphSource,
        /// Where to write the graph.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Apply named ablations to a graph file (as graph edits, then dead-code elimination).
    Ablate {
        /// Graph file (calm-ir/1 JSON).
        file: PathBuf,
        /// Ablations to apply, comma-separated, in order (see `calm ablations`).
        #[arg(long, required = true)]
        drop: String,
        /// Where to write the ablated graph.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// List the named ablations with what each one removes.
    Ablations,
    /// Compare two graphs: inputs, outputs, and nodes and parameters by scope.
    Diff {
        /// The graph before.
        a: PathBuf,
        /// The graph after.
        b: PathBuf,
        /// Roll scopes up to this many path segments (0: full paths).
        #[arg(long, default_value_t = 3)]
        depth: usize,
        /// List every added, removed or changed parameter under its scope.
        #[arg(long)]
        params: bool,
    },
    /// Compile a graph to a kernel plan for given symbol sizes: fusion passes, lowering, memory plan.
    Compile(compile::Args),
    /// Run a graph and summarise each output: on a device (compiled, fused kernels) when one
    /// starts, else on the reference executor.
    ///
    /// Without --inputs, inputs are random (shaped by --bind, drawn from --seed); without
    /// --weights, parameters are initialised from --seed.
    Run(run::Args),
    /// Benchmark on the device: its ceilings (FP32, tensor cores, memory, launch), calm's GEMM
    /// against Burn's (wgpu with fusion, and Flex on the CPU) and every cubek-matmul strategy on
    /// the same device, with their errors, and the CALM head forward fused,
    /// unfused and through Burn (wgpu and, where CUDA answers, CUDA, both with fusion; Flex),
    /// all side by side in one run.
    Bench(bench::Args),
    /// Time every launch of the fused plan on the device, against the cost model and the
    /// device's measured ceilings (a roofline), beside calm unfused, Burn's fusion engine and
    /// Burn Flex in the same run. `--model h200` gives modelled times instead, with no device.
    ///
    /// The device's peaks are measured once and cached in $CALM_HOME/device-peaks.json
    /// (default ~/.cache/calm). Outputs: a table per kernel and scope pattern (--all: per
    /// launch), --json, --trace (Chrome trace for Perfetto), --plot (roofline SVG).
    Profile(profile::Args),
    /// The device's ceilings by microbenchmark, one per execution unit: FP32 multiply-adds on
    /// every SM, tensor-core products per operand type (bf16, f16, tf32, where the device has
    /// cmma), copy bandwidth on a buffer 16× the last-level cache (≥ 1 GiB on a GPU), and the
    /// cost of a launch. Measured once per device and cached in $CALM_HOME/device-peaks.json
    /// (default ~/.cache/calm); entries of an older format are measured again.
    DevicePeak {
        /// `auto` tries CUDA, then Vulkan through wgpu.
        #[arg(long, value_enum, default_value_t = run::DeviceArg::Auto)]
        device: run::DeviceArg,
        /// Measure again (on a quiet machine) instead of reading the cache.
        #[arg(long)]
        remeasure: bool,
    },
    /// Datasets for training and evaluation: `calm data stats FILE` counts samples per culture
    /// and class.
    ///
    /// A dataset is a CREHate split (a CSV with five countries' labels a post) or a CSV/JSONL
    /// table given the names of its text, culture and label columns.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Train CALM (or a baseline) on a cultural dataset from the frozen backbone's states.
    ///
    /// Texts are encoded once by all-MiniLM-L6-v2 (scripts/fetch-minilm installs it) and the
    /// states cached in $CALM_HOME/states. Each step runs the training graph under Burn's
    /// autodiff (on Burn's CUDA backend where a GPU answers, else Flex; --backend) with every loss term of the spec, then AdamW with
    /// warm-up and linear decay. After every epoch: validation, OUT/last.safetensors and, when
    /// better, OUT/best.safetensors (weights, optimizer state and step in one file, written
    /// atomically). --resume continues exactly where a run stopped.
    Train(Box<train::TrainArgs>),
    /// Score a checkpoint on a split: accuracy and macro-F1 per culture and overall, on the
    /// reference executor or the fused plan (--compare: both, and how often they agree).
    Eval(train::EvalArgs),
    /// Train and score every variant (CALM, its ablations, the linear and MLP baselines) with
    /// several seeds; writes a markdown table (mean ± std per culture), an SVG bar chart and the
    /// results as JSON. Runs already finished in --out are kept, so a stopped study resumes.
    Study(Box<train::StudyArgs>),
    /// Print a preset config as TOML, to start a config file from.
    Preset {
        /// `paper`, `small` or `tiny`.
        #[arg(default_value = "paper")]
        name: String,
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
        Command::Build { source, output } => build::run(&source, &output),
        Command::Ablate { file, drop, output } => ablate::run(&file, &drop, &output),
        Command::Ablations => ablate::list(),
        Command::Diff { a, b, depth, params } => diff::run(&a, &b, depth, params),
        Command::Preset { name } => build::preset(&name),
        Command::Bench(args) => bench::run(&args),
        Command::Compile(args) => compile::run(args),
        Command::Run(args) => run::run(args),
        Command::Profile(args) => profile::run(args),
        Command::DevicePeak { device, remeasure } => profile::device_peak(device, remeasure),
        Command::Sample { output } => sample::run(&output),
        Command::Data(command) => data::run(command),
        Command::Train(args) => train::train(*args),
        Command::Eval(args) => train::eval(args),
        Command::Study(args) => train::study(*args),
    }
}
