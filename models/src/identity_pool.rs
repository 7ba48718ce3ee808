//! Stage 3: the identity alignment pool. Each cultural stream is softly clustered into K slots
//! by a Gumbel-softmax assignment and pooled; latent clusters then attend to explicit ones.
//!
//! Scopes: `calm/identity_pool/cluster_{e,l}/{head, assign, pool}` and
//! `calm/identity_pool/cross_attention/{attention, norm}`.

use calm_ir::nn::{self, MultiHeadAttention};
use calm_ir::{BuildResult, Dim, GraphBuilder, ValueId};

use crate::config::CalmConfig;

pub struct Pooled {
    /// `Z = LayerNorm(C_L + MHA(C_L, C_E)): [B, K, m]`.
    pub z: ValueId,
    /// Assignments `A: [B, T, K]` of each stream.
    pub assign_e: ValueId,
    pub assign_l: ValueId,
}

/// `temperature` is τ_g (an input when training, a constant at inference); `noise` adds Gumbel noise.
pub fn build(
    b: &mut GraphBuilder,
    cfg: &CalmConfig,
    e: ValueId,
    l: ValueId,
    mask: ValueId,
    temperature: ValueId,
    noise: bool,
) -> BuildResult<Pooled> {
    b.scoped("identity_pool", |b| {
        let (c_e, assign_e) = b.scoped("cluster_e", |b| cluster(b, cfg, e, mask, temperature, noise))?;
        let (c_l, assign_l) = b.scoped("cluster_l", |b| cluster(b, cfg, l, mask, temperature, noise))?;
        let z = b.scoped("cross_attention", |b| {
            let attention = MultiHeadAttention::new(b, "attention", cfg.width, cfg.heads)?;
            let a = b.scoped("attention", |b| attention.apply(b, c_l, c_e, None))?;
            let r = b.add(c_l, a)?;
            nn::layer_norm(b, "norm", r, cfg.layer_norm_eps)
        })?;
        Ok(Pooled { z, assign_e, assign_l })
    })
}

/// One stream: `π = Q(X)`, `A = softmax((π + g)/τ) · mask`, `C = Aᵀ X / (Σ_t A + ε)`.
pub fn cluster(
    b: &mut GraphBuilder,
    cfg: &CalmConfig,
    x: ValueId,
    mask: ValueId,
    temperature: ValueId,
    noise: bool,
) -> BuildResult<(ValueId, ValueId)> {
    let logits = nn::mlp(b, "head", x, cfg.cluster_hidden, cfg.clusters, cfg.dropout)?;
    let assign = b.scoped("assign", |b| {
        let mut y = logits;
        if noise {
            // g = −log(−log u), u ~ U(0, 1) from the shared counter-based generator.
            let u = b.random_uniform(b.shape_of(logits).clone())?;
            let t = b.log(u)?;
            let t = b.neg(t)?;
            let t = b.log(t)?;
            let g = b.neg(t)?;
            y = b.add(y, g)?;
        }
        let y = b.div(y, temperature)?;
        let a = b.softmax(y, -1)?;
        let mut mask_shape = b.shape_of(mask).clone();
        mask_shape.push(Dim::Fixed(1));
        let m = b.reshape(mask, mask_shape)?;
        b.mul(a, m)
    })?;
    let pooled = b.scoped("pool", |b| {
        let num = b.matmul(assign, x, true, false)?;
        let den = b.reduce_sum(assign, &[1], true)?;
        let den = b.permute(den, &[0, 2, 1])?;
        let eps = b.scalar(cfg.pool_eps)?;
        let den = b.add(den, eps)?;
        b.div(num, den)
    })?;
    Ok((pooled, assign))
}
