//! `calm ablate IN --drop NAMES -o OUT` and `calm ablations`.

use std::path::Path;

use calm_ir::text::group_digits;
use calm_passes::{ablate_all, Ablation};

use super::error::{read_graph, write_graph, CliError};

pub fn run(file: &Path, drop: &str, output: &Path) -> Result<(), CliError> {
    let ablations = Ablation::parse_list(drop)?;
    let mut g = read_graph(file)?;
    let before = (g.nodes.len(), g.param_count());
    ablate_all(&mut g, &ablations)?;
    write_graph(&g, output)?;
    let names: Vec<&str> = ablations.iter().map(|a| a.name()).collect();
    println!(
        "wrote {}: dropped {}; nodes {} -> {}, parameters {} -> {}",
        output.display(),
        names.join(", "),
        before.0,
        g.nodes.len(),
        group_digits(before.1),
        group_digits(g.param_count())
    );
    Ok(())
}

pub fn list() -> Result<(), CliError> {
    for a in Ablation::ALL {
        println!("{:<20} {}", a.name(), a.description());
    }
    Ok(())
}
