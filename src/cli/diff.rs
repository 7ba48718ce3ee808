//! `calm diff A B`: what changed between two graphs, by scope.

use std::path::Path;

use super::error::{read_graph, CliError};

pub fn run(a: &Path, b: &Path, depth: usize, params: bool) -> Result<(), CliError> {
    let (ga, gb) = (read_graph(a)?, read_graph(b)?);
    print!("{}", calm_ir::diff::render(&calm_ir::diff::diff(&ga, &gb, depth), params));
    Ok(())
}
