//! Stage 5: fusion with the original knowledge. The mean backbone state, projected, is gated
//! together with the mixture's output into the identity state.
//!
//! Scopes: `calm/fusion/{states_proj, gate, norm}`.

use calm_ir::nn;
use calm_ir::{BuildResult, GraphBuilder, ValueId};

use crate::config::CalmConfig;

/// `h̄ = mean_t(H) W_h`, `γ = σ([h̄ ; M] W_γ)`, `I = LayerNorm(h̄ + γ ⊙ M)`.
pub fn build(
    b: &mut GraphBuilder,
    cfg: &CalmConfig,
    states: ValueId,
    mask: ValueId,
    m: ValueId,
) -> BuildResult<ValueId> {
    b.scoped("fusion", |b| {
        let mean = nn::masked_mean(b, states, mask)?;
        let h = nn::linear(b, "states_proj", mean, cfg.width)?;
        let both = b.concat(&[h, m], -1)?;
        let gate = nn::linear(b, "gate", both, cfg.width)?;
        let gate = b.sigmoid(gate)?;
        let gated = b.mul(gate, m)?;
        let r = b.add(h, gated)?;
        nn::layer_norm(b, "norm", r, cfg.layer_norm_eps)
    })
}
