//! `calm build`: the CALM graph from a preset or config; `calm preset`: a preset as TOML.

use std::path::PathBuf;

use calm_ir::text::group_digits;
use calm_models::{build, Backbone, CalmConfig, Mode};
use calm_passes::{ablate_all, Ablation};

use super::error::{write_graph, CliError};

pub struct Args {
    pub preset: String,
    pub config: Option<PathBuf>,
    pub backbone: Option<String>,
    pub train: bool,
    pub variant: Option<String>,
    pub output: PathBuf,
}

pub fn run(args: Args) -> Result<(), CliError> {
    let (mut config, source) = match &args.config {
        Some(path) => (CalmConfig::from_file(path)?, path.display().to_string()),
        None => (CalmConfig::preset(&args.preset)?, format!("preset {}", args.preset)),
    };
    if let Some(name) = &args.backbone {
        config.backbone = Backbone::parse(name)?;
    }
    let mode = if args.train { Mode::Training } else { Mode::Inference };
    // Check the variant names before the (longer) build.
    let ablations = Ablation::parse_list(args.variant.as_deref().unwrap_or(""))?;
    let mut g = build(&config, mode)?;
    let mut applied = Vec::new();
    for a in ablations {
        if mode == Mode::Inference && a.training_only() {
            eprintln!(
                "calm: note: `{}` changes only the training graph; the inference graph is the full model's",
                a.name()
            );
            continue;
        }
        ablate_all(&mut g, &[a])?;
        applied.push(a.name());
    }
    write_graph(&g, &args.output)?;
    println!(
        "wrote {}: {} {} graph{}, {} nodes, {} parameters",
        args.output.display(),
        source,
        if args.train { "training" } else { "inference" },
        if applied.is_empty() { String::new() } else { format!(" without {}", applied.join(", ")) },
        g.nodes.len(),
        group_digits(g.param_count())
    );
    Ok(())
}

pub fn preset(name: &str) -> Result<(), CliError> {
    let config = CalmConfig::preset(name)?;
    print!("# calm preset `{name}`; edit and pass with `calm build --config FILE`\n{}", config.to_toml());
    Ok(())
}
