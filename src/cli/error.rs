//! The command line's error: every failure of every subcommand, printed on one line.

use std::path::PathBuf;

use calm_ir::cost::CostError;
use calm_ir::json::ReadError;
use calm_ir::types::ShapeError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CliError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: ReadError },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Bindings(#[from] ShapeError),
    #[error("{what} unbound: {names} (give sizes with --bind {example})")]
    Unbound { what: &'static str, names: String, example: String },
    #[error("{0}")]
    Cost(#[from] CostError),
    #[error("{0}")]
    Config(#[from] calm_models::ConfigError),
    #[error("{0}")]
    Model(#[from] calm_models::ModelError),
    #[error("{0}")]
    Ablate(#[from] calm_passes::AblateError),
    #[error("{0}")]
    Weights(#[from] calm_runtime::params::LoadError),
    #[error("{0}")]
    File(#[from] calm_runtime::safetensors::SafetensorsError),
    #[error("{0}")]
    RandomInputs(#[from] calm_runtime::inputs::RandomInputError),
    #[error("{0}")]
    Run(#[from] calm_runtime::reference::RunError),
    #[error("{0}")]
    Memory(#[from] calm_runtime::limits::MemoryError),
    #[error("{0}")]
    Compile(#[from] calm_passes::compile::CompileError),
    #[error("{0}")]
    Device(#[from] calm_runtime::device::select::RunOnDeviceError),
    #[error("{0}")]
    Select(#[from] calm_runtime::device::select::SelectError),
    #[error("{0}")]
    Profile(#[from] calm_runtime::profile::ProfileError),
    #[error(transparent)]
    Data(#[from] calm_data::DataError),
    #[error("{0}")]
    Train(#[from] calm_train::TrainError),
    #[error("{0}")]
    Other(#[from] OtherError),
}

/// A command-line problem with no richer type: a malformed flag value.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct OtherError(pub String);

/// Writes a graph file atomically, naming the file in any error.
pub fn write_graph(g: &calm_ir::Graph, path: &std::path::Path) -> Result<(), CliError> {
    calm_ir::json::write_file(g, path).map_err(|source| CliError::Write { path: path.to_path_buf(), source })
}

/// Writes an output file atomically, naming it in any error.
pub fn write_file(path: &std::path::Path, bytes: &[u8]) -> Result<(), CliError> {
    calm_ir::files::write_atomic(path, bytes).map_err(|source| CliError::Write { path: path.to_path_buf(), source })
}

/// Reads and verifies a graph file, naming the file in any error.
pub fn read_graph(path: &std::path::Path) -> Result<calm_ir::Graph, CliError> {
    calm_ir::json::read_file(path).map_err(|source| CliError::Read { path: path.to_path_buf(), source })
}
