//! `calm sample -o FILE`: write the IR's sample graph.

use std::path::Path;

use super::error::CliError;

pub fn run(output: &Path) -> Result<(), CliError> {
    let g = calm_ir::sample::tiny_classifier();
    calm_ir::json::write_file(&g, output).map_err(|source| CliError::Write { path: output.to_path_buf(), source })?;
    println!("wrote {} ({} nodes)", output.display(), g.nodes.len());
    Ok(())
}
