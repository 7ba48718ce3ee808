//! Stage 1: three channels from the same states (task semantics S, explicit culture E, latent
//! culture L), their masked token means, and the disentanglement loss `L_orth`.
//!
//! Scopes: `calm/disentangle/{mlp_s, mlp_e, mlp_l, culture_embedding, pool, orth_loss}`.

use calm_ir::nn;
use calm_ir::{BuildResult, Dim, GraphBuilder, Init, ValueId};

use crate::config::CalmConfig;

pub struct Streams {
    /// `S, E, L: [B, T, m]`.
    pub s: ValueId,
    pub e: ValueId,
    pub l: ValueId,
    /// `s̄ = mean_t S: [B, m]` (the reflection stage reads it).
    pub s_bar: ValueId,
    /// `ē, l̄`, built for training (the contrastive and orthogonality losses read them).
    pub e_bar: Option<ValueId>,
    pub l_bar: Option<ValueId>,
    /// `L_orth`, for training.
    pub orth: Option<ValueId>,
}

pub fn build(
    b: &mut GraphBuilder,
    cfg: &CalmConfig,
    states: ValueId,
    mask: ValueId,
    culture: ValueId,
    training: bool,
) -> BuildResult<Streams> {
    let m = cfg.width;
    b.scoped("disentangle", |b| {
        let s = nn::mlp(b, "mlp_s", states, m, m, cfg.dropout)?;
        let e_task = nn::mlp(b, "mlp_e", states, m, m, cfg.dropout)?;
        let l = nn::mlp(b, "mlp_l", states, m, m, cfg.dropout)?;
        // E = MLP_e(H) + U[c], the culture embedding broadcast over tokens.
        let e = b.scoped("culture_embedding", |b| {
            let table =
                b.param("weight", vec![Dim::Fixed(cfg.cultures), Dim::Fixed(m)], Init::Normal { mean: 0.0, std: 1.0 })?;
            let u = b.gather(table, culture, 0)?;
            let batch = b.shape_of(culture)[0].clone();
            let u = b.reshape(u, vec![batch, Dim::Fixed(1), Dim::Fixed(m)])?;
            b.add(e_task, u)
        })?;
        let (s_bar, e_bar, l_bar) = b.scoped("pool", |b| {
            let s_bar = nn::masked_mean(b, s, mask)?;
            if !training {
                return Ok((s_bar, None, None));
            }
            Ok((s_bar, Some(nn::masked_mean(b, e, mask)?), Some(nn::masked_mean(b, l, mask)?)))
        })?;
        let orth = match (e_bar, l_bar) {
            (Some(e_bar), Some(l_bar)) => Some(b.scoped("orth_loss", |b| {
                // L_orth = mean_b(cos²(s̄, ē) + cos²(s̄, l̄))
                let se = nn::cos_squared(b, s_bar, e_bar)?;
                let sl = nn::cos_squared(b, s_bar, l_bar)?;
                let both = b.add(se, sl)?;
                b.reduce_mean(both, &[0], false)
            })?),
            _ => None,
        };
        Ok(Streams { s, e, l, s_bar, e_bar, l_bar, orth })
    })
}
