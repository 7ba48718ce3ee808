//! `calm sample -o FILE`: write the IR's sample graph.

use std::path::Path;

use super::error::{write_graph, CliError};

pub fn run(output: &Path) -> Result<(), CliError> {
    let g = calm_ir::sample::tiny_classifier();
    write_graph(&g, output)?;
    println!("wrote {} ({} nodes)", output.display(), g.nodes.len());
    Ok(())
}
