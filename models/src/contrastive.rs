//! Stage 2 (training only): the contrastive window. Independent heads project `ē` and `l̄`,
//! and a supervised NT-Xent loss per stream pulls together samples of the same culture.
//!
//! Scopes: `calm/contrastive/{proj_e, proj_l, positives, loss_e, loss_l}`.

use calm_ir::nn;
use calm_ir::{BuildResult, DType, GraphBuilder, ValueId};

use crate::config::CalmConfig;

/// `L_con = mean_i ℓ_i(e) + mean_i ℓ_i(l)` over anchors that have a positive.
pub fn build(
    b: &mut GraphBuilder,
    cfg: &CalmConfig,
    e_bar: ValueId,
    l_bar: ValueId,
    culture: ValueId,
) -> BuildResult<ValueId> {
    let (m, out) = (cfg.width, cfg.contrastive_dim);
    b.scoped("contrastive", |b| {
        let pe = nn::mlp(b, "proj_e", e_bar, m, out, cfg.dropout)?;
        let pl = nn::mlp(b, "proj_l", l_bar, m, out, cfg.dropout)?;
        let (positive, diagonal) = b.scoped("positives", |b| {
            // positive[i, a]: same culture and a ≠ i; diagonal[i, a]: a = i.
            let batch = b.shape_of(culture)[0].clone();
            let one = calm_ir::Dim::Fixed(1);
            let col = b.reshape(culture, vec![batch.clone(), one.clone()])?;
            let row = b.reshape(culture, vec![one, batch.clone()])?;
            let same = b.equal(col, row)?;
            let i = b.iota(vec![batch.clone(), batch.clone()], 0)?;
            let j = b.iota(vec![batch.clone(), batch], 1)?;
            let diagonal = b.equal(i, j)?;
            let no = b.constant(0.0, DType::Bool)?;
            Ok((b.select(diagonal, no, same)?, diagonal))
        })?;
        let loss_e = b.scoped("loss_e", |b| {
            let z = nn::l2_normalize(b, pe)?;
            nt_xent(b, z, positive, diagonal, cfg.contrastive_temperature)
        })?;
        let loss_l = b.scoped("loss_l", |b| {
            let z = nn::l2_normalize(b, pl)?;
            nt_xent(b, z, positive, diagonal, cfg.contrastive_temperature)
        })?;
        b.add(loss_e, loss_l)
    })
}

/// Supervised NT-Xent over normalised `z: [B, n]`:
/// `ℓ_i = −1/|P(i)| Σ_{p∈P(i)} log(exp(z_i·z_p/τ) / Σ_{a≠i} exp(z_i·z_a/τ))`, averaged over the
/// anchors with at least one positive (0 when none has). Masking uses `select`, never a multiply,
/// so the `-inf` on the diagonal cannot turn into NaN.
fn nt_xent(b: &mut GraphBuilder, z: ValueId, positive: ValueId, diagonal: ValueId, tau: f64) -> BuildResult<ValueId> {
    let sim = b.matmul(z, z, false, true)?;
    let inv_tau = b.scalar(1.0 / tau)?;
    let sim = b.mul(sim, inv_tau)?;
    let neg_inf = b.scalar(f64::NEG_INFINITY)?;
    let logits = b.select(diagonal, neg_inf, sim)?;
    let logp = b.log_softmax(logits, -1)?;
    let zero = b.scalar(0.0)?;
    let one = b.scalar(1.0)?;
    let picked = b.select(positive, logp, zero)?;
    let sum = b.reduce_sum(picked, &[-1], false)?;
    let positive_f = b.cast(positive, DType::F32)?;
    let count = b.reduce_sum(positive_f, &[-1], false)?;
    let per_anchor = b.neg(sum)?;
    let count_or_one = b.max(count, one)?;
    let per_anchor = b.div(per_anchor, count_or_one)?;
    let has_positive = b.less(zero, count)?;
    let kept = b.select(has_positive, per_anchor, zero)?;
    let total = b.reduce_sum(kept, &[0], false)?;
    let anchors_f = b.cast(has_positive, DType::F32)?;
    let anchors = b.reduce_sum(anchors_f, &[0], false)?;
    let anchors = b.max(anchors, one)?;
    b.div(total, anchors)
}
