//! `calm-models`: CALM as an IR graph, built from a [`CalmConfig`].
//!
//! [`build`] makes the inference graph (logits, identity state, cluster assignments) or the
//! training graph (every loss term of the spec and the load-balance statistics). One file per
//! stage of `calm-spec.md`; `docs/model.md` maps scopes to the spec.

pub mod config;
pub mod contrastive;
pub mod disentangle;
pub mod fusion;
pub mod identity_pool;
pub mod minilm;
pub mod model;
pub mod moe;
pub mod reflection;

pub use config::{Backbone, CalmConfig, ConfigError};
pub use model::{build, Mode};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot build the graph: {0}")]
    Build(#[from] calm_ir::BuildError),
    #[error("the built graph does not verify: {0}")]
    Verify(#[from] calm_ir::VerifyErrors),
}
