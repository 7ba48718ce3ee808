//! `calm build`: the CALM graph from a preset or config; `calm preset`: a preset as TOML.

use std::path::{Path, PathBuf};

use calm_ir::Graph;

use calm_ir::text::group_digits;
use calm_models::{build, Backbone, CalmConfig, Mode};
use calm_passes::{ablate_all, Ablation};

use super::error::{write_graph, CliError};

/// Where a CALM graph comes from: a preset or config, a backbone, the mode and ablations.
#[derive(clap::Args, Debug, Clone)]
pub struct GraphSource {
    /// Built-in config: `paper` (the spec's defaults), `small` (quarter widths) or `tiny` (small sizes for quick runs).
    #[arg(long, conflicts_with = "config", default_value = "paper")]
    pub preset: String,
    /// Config file (TOML, or JSON by extension); fields it omits keep the paper defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Backbone: `states` (hidden states are an input), `minilm-l6` (token ids in, the encoder
    /// in the graph) or `qwen3-32b-states` (states input of width 5120).
    #[arg(long)]
    pub backbone: Option<String>,
    /// Build the training graph: labels, temperature and random keys in; every loss term out.
    #[arg(long)]
    pub train: bool,
    /// Ablations to apply after building, comma-separated (see `calm ablations`).
    #[arg(long)]
    pub variant: Option<String>,
}

impl GraphSource {
    /// Builds the graph; also returns a description (`preset paper inference graph without ...`).
    pub fn build(&self) -> Result<(Graph, String), CliError> {
        let (mut config, source) = match &self.config {
            Some(path) => (CalmConfig::from_file(path)?, path.display().to_string()),
            None => (CalmConfig::preset(&self.preset)?, format!("preset {}", self.preset)),
        };
        if let Some(name) = &self.backbone {
            config.backbone = Backbone::parse(name)?;
        }
        let mode = if self.train { Mode::Training } else { Mode::Inference };
        // Check the variant names before the (longer) build.
        let ablations = Ablation::parse_list(self.variant.as_deref().unwrap_or(""))?;
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
        let description = format!(
            "{source}{} {} graph{}",
            self.backbone.as_ref().map(|b| format!(" ({b} backbone)")).unwrap_or_default(),
            if self.train { "training" } else { "inference" },
            if applied.is_empty() { String::new() } else { format!(" without {}", applied.join(", ")) },
        );
        Ok((g, description))
    }
}

pub fn run(source: &GraphSource, output: &Path) -> Result<(), CliError> {
    let (g, description) = source.build()?;
    write_graph(&g, output)?;
    println!(
        "wrote {}: {description}, {} nodes, {} parameters",
        output.display(),
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
