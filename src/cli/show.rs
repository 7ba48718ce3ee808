//! `calm show FILE --format summary|text|json|dot`.

use std::path::Path;

use calm_ir::{dot, json, text};

use super::error::{read_graph, CliError};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Summary,
    Text,
    Json,
    Dot,
}

pub fn run(file: &Path, format: Format, depth: usize) -> Result<(), CliError> {
    let g = read_graph(file)?;
    let out = match format {
        Format::Summary => text::summary(&g, depth),
        Format::Text => text::listing(&g),
        Format::Json => json::to_json(&g),
        Format::Dot => dot::to_dot(&g),
    };
    print!("{out}");
    Ok(())
}
