use std::path::PathBuf;

use thiserror::Error;

/// Everything that can go wrong while encoding, training or evaluating; each names the file,
/// field or step at fault.
#[derive(Debug, Error)]
pub enum TrainError {
    #[error("cannot read or write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} not found: run scripts/fetch-minilm (it downloads all-MiniLM-L6-v2 with pip into $CALM_HOME/minilm-l6), or train on the tiny test backbone with --backbone tiny")]
    BackboneMissing { path: PathBuf },
    #[error("tokenizer {path}: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("states cache {path}: {reason}")]
    Cache { path: PathBuf, reason: String },
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("{0}")]
    Settings(String),
    /// The backend asked for does not start (one line: what is missing).
    #[error("{0}")]
    Backend(String),
    #[error(transparent)]
    Data(#[from] calm_data::DataError),
    #[error(transparent)]
    Model(#[from] calm_models::ModelError),
    #[error(transparent)]
    Ablate(#[from] calm_passes::AblateError),
    #[error(transparent)]
    Compile(#[from] calm_passes::compile::CompileError),
    #[error(transparent)]
    Weights(#[from] calm_runtime::params::LoadError),
    #[error(transparent)]
    Memory(#[from] calm_runtime::limits::MemoryError),
    #[error(transparent)]
    Safetensors(#[from] calm_runtime::safetensors::SafetensorsError),
    #[error("reference executor: {0}")]
    Run(#[from] calm_runtime::reference::RunError),
    #[error(transparent)]
    Device(#[from] calm_runtime::device::select::RunOnDeviceError),
    #[error(transparent)]
    Select(#[from] calm_runtime::device::select::SelectError),
    /// The backend failed during a step (a device lost, out of memory); `then` says what the
    /// user can do next.
    #[error("step {step}: the {backend} backend failed: {source}; {then}")]
    BackendFault { step: u64, backend: &'static str, source: Box<calm_runtime::device::DeviceError>, then: String },
    #[error("step {step}: {what}; training stopped and saved the state before this step to {} (`calm train --resume --check-numerics` replays it)", checkpoint.display())]
    NonFinite { step: u64, what: String, checkpoint: PathBuf },
}
