//! Stage 4: the culture-informed mixture of experts. Per communicative dimension a router
//! picks the top-k of E experts for each sample (its K aligned cluster tokens); each expert is a
//! small pre-LN transformer; outputs are mixed by the renormalised gates and the dimensions
//! concatenated and projected.
//!
//! The graph states the mixture densely (every expert on every sample, weighted by a gate matrix
//! that is zero off the top-k); the sparse dispatch pass computes only the routed pairs.
//!
//! Scopes: `calm/moe/{summary, dim<c>/{router, gates, expert<e>/layer<i>, combine, balance}, mix, balance}`.

use calm_ir::nn::{self, MultiHeadAttention};
use calm_ir::{BuildResult, DType, Dim, GraphBuilder, ValueId};

use crate::config::CalmConfig;

pub struct Mixture {
    /// `M: [B, m]`.
    pub m: ValueId,
    /// Load balancing, for training.
    pub balance: Option<Balance>,
}

pub struct Balance {
    /// `L_lb = mean_c E Σ_e f_e P_e`.
    pub loss: ValueId,
    /// `f: [D, E]`, share of the top-k slots given to each expert.
    pub fraction: ValueId,
    /// `P: [D, E]`, mean router probability of each expert.
    pub prob: ValueId,
}

struct Routed {
    m: ValueId,
    /// `(f, P): ([E], [E])`, for training.
    stats: Option<(ValueId, ValueId)>,
}

pub fn build(b: &mut GraphBuilder, cfg: &CalmConfig, z: ValueId, training: bool) -> BuildResult<Mixture> {
    b.scoped("moe", |b| {
        let summary = b.scoped("summary", |b| b.reduce_mean(z, &[1], false))?;
        let mut dims = Vec::new();
        for c in 0..cfg.dimensions {
            dims.push(b.scoped(&format!("dim{c}"), |b| dimension(b, cfg, z, summary, training))?);
        }
        let outs: Vec<ValueId> = dims.iter().map(|d| d.m).collect();
        let cat = if outs.len() == 1 { outs[0] } else { b.scoped("mix", |b| b.concat(&outs, -1))? };
        let m = nn::linear(b, "mix", cat, cfg.width)?;
        let balance = if training { Some(b.scoped("balance", |b| balance(b, cfg, &dims))?) } else { None };
        Ok(Mixture { m, balance })
    })
}

fn dimension(
    b: &mut GraphBuilder,
    cfg: &CalmConfig,
    z: ValueId,
    summary: ValueId,
    training: bool,
) -> BuildResult<Routed> {
    let (experts, k) = (cfg.experts, cfg.top_k);
    let batch = b.shape_of(z)[0].clone();
    // p = softmax(mean_j Z · W_r)
    let logits = nn::linear(b, "router", summary, experts)?;
    let prob = b.scoped("router", |b| b.softmax(logits, -1))?;
    // Top-k, gates renormalised over the chosen experts, scattered into a [B, E] gate matrix.
    let (gate_matrix, chosen) = b.scoped("gates", |b| {
        let (values, indices) = b.top_k(prob, k)?;
        let total = b.reduce_sum(values, &[-1], true)?;
        let gates = b.div(values, total)?;
        let chosen = b.one_hot(indices, experts, DType::F32)?;
        let gates = b.reshape(gates, vec![batch.clone(), Dim::Fixed(k), Dim::Fixed(1)])?;
        let weighted = b.mul(chosen, gates)?;
        Ok((b.reduce_sum(weighted, &[1], false)?, chosen))
    })?;
    let mut outs = Vec::new();
    for e in 0..experts {
        let out = b.scoped(&format!("expert{e}"), |b| expert(b, cfg, z))?;
        outs.push(b.scoped("combine", |b| b.reshape(out, vec![batch.clone(), Dim::Fixed(1), Dim::Fixed(cfg.width)]))?);
    }
    let m = b.scoped("combine", |b| {
        let stacked = if outs.len() == 1 { outs[0] } else { b.concat(&outs, 1)? };
        let g = b.reshape(gate_matrix, vec![batch.clone(), Dim::Fixed(experts), Dim::Fixed(1)])?;
        let weighted = b.mul(stacked, g)?;
        b.reduce_sum(weighted, &[1], false)
    })?;
    if !training {
        return Ok(Routed { m, stats: None });
    }
    let stats = b.scoped("balance", |b| {
        // f_e: share of the B·k slots that went to e; P_e: mean router probability.
        let per_sample = b.reduce_sum(chosen, &[1], false)?;
        let mean = b.reduce_mean(per_sample, &[0], false)?;
        let inv_k = b.scalar(1.0 / k as f64)?;
        Ok((b.mul(mean, inv_k)?, b.reduce_mean(prob, &[0], false)?))
    })?;
    Ok(Routed { m, stats: Some(stats) })
}

/// One expert: `expert_layers` pre-LN transformer layers over the K cluster tokens, then the
/// mean over them.
fn expert(b: &mut GraphBuilder, cfg: &CalmConfig, z: ValueId) -> BuildResult<ValueId> {
    let mut x = z;
    for i in 0..cfg.expert_layers {
        x = b.scoped(&format!("layer{i}"), |b| {
            let h = nn::layer_norm(b, "ln1", x, cfg.layer_norm_eps)?;
            let attention = MultiHeadAttention::new(b, "attention", cfg.width, cfg.heads)?;
            let a = b.scoped("attention", |b| attention.apply(b, h, h, None))?;
            let x = b.add(x, a)?;
            let h = nn::layer_norm(b, "ln2", x, cfg.layer_norm_eps)?;
            let h = nn::linear(b, "ffn1", h, cfg.expert_ffn)?;
            let h = b.gelu(h)?;
            let h = nn::linear(b, "ffn2", h, cfg.width)?;
            b.add(x, h)
        })?;
    }
    b.reduce_mean(x, &[1], false)
}

/// `L_lb = mean_c (E Σ_e f_e P_e)`, and the statistics stacked to `[D, E]`.
fn balance(b: &mut GraphBuilder, cfg: &CalmConfig, dims: &[Routed]) -> BuildResult<Balance> {
    let e = Dim::Fixed(cfg.experts);
    let stack = |b: &mut GraphBuilder, pick: fn((ValueId, ValueId)) -> ValueId| -> BuildResult<ValueId> {
        let rows = dims
            .iter()
            .map(|d| {
                let stats = d.stats.expect("training graphs compute routing statistics");
                b.reshape(pick(stats), vec![Dim::Fixed(1), e.clone()])
            })
            .collect::<BuildResult<Vec<_>>>()?;
        if rows.len() == 1 {
            Ok(rows[0])
        } else {
            b.concat(&rows, 0)
        }
    };
    let fraction = stack(b, |(f, _)| f)?;
    let prob = stack(b, |(_, p)| p)?;
    let fp = b.mul(fraction, prob)?;
    let per_dim = b.reduce_sum(fp, &[1], false)?;
    let scale = b.scalar(cfg.experts as f64)?;
    let per_dim = b.mul(per_dim, scale)?;
    let loss = b.reduce_mean(per_dim, &[0], false)?;
    Ok(Balance { loss, fraction, prob })
}
