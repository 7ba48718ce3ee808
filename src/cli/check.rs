//! `calm check FILE`: read and verify a graph.

use std::path::Path;

use calm_ir::text::group_digits;

use super::error::{read_graph, CliError};

pub fn run(file: &Path) -> Result<(), CliError> {
    let g = read_graph(file)?;
    println!(
        "ok: {}: graph `{}`, {} nodes, {} values, {} parameters ({} elements), {} outputs",
        file.display(),
        g.name,
        g.nodes.len(),
        g.values.len(),
        g.params().count(),
        group_digits(g.param_count()),
        g.outputs.len()
    );
    Ok(())
}
