//! Stage 6: self-prompted reflective learning. R rounds refine the identity state through a
//! culturally conditioned soft prompt; the final prompt conditions the output head.
//!
//! Parameters are shared by all rounds and live in `calm/reflection/{prompt, head, calibrate,
//! cal_mlp, norm}`; each round's computation is in `calm/reflection/round<r>`, the output head's
//! in `calm/reflection/output`, and `L_ref` in `calm/reflection/ref_loss`.

use calm_ir::nn::{LayerNorm, Linear, Mlp};
use calm_ir::{BuildResult, GraphBuilder, ValueId};

use crate::config::CalmConfig;

pub struct Reflected {
    /// `o = Head([s̄ ; tanh(I_R W_p)]): [B, Y]`.
    pub logits: ValueId,
    /// `o_r` of each round.
    pub round_logits: Vec<ValueId>,
    /// `L_ref = mean_b ‖I_R − I_{R−1}‖²`, for training with R ≥ 1.
    pub ref_loss: Option<ValueId>,
}

pub fn build(
    b: &mut GraphBuilder,
    cfg: &CalmConfig,
    s_bar: ValueId,
    identity: ValueId,
    training: bool,
) -> BuildResult<Reflected> {
    let (m, y, rounds) = (cfg.width, cfg.classes, cfg.reflective_rounds);
    b.scoped("reflection", |b| {
        let prompt = Linear::new(b, "prompt", m, m, true)?;
        let head = Mlp::new(b, "head", 2 * m, m, y, cfg.dropout)?;
        let calibration = if rounds > 0 {
            Some((
                Linear::new(b, "calibrate", y, m, true)?,
                Mlp::new(b, "cal_mlp", 2 * m, m, m, cfg.dropout)?,
                LayerNorm::new(b, "norm", m, cfg.layer_norm_eps)?,
            ))
        } else {
            None
        };
        // o = Head([s̄ ; tanh(I W_p)])
        let reason = |b: &mut GraphBuilder, state: ValueId| -> BuildResult<ValueId> {
            let p = prompt.apply(b, state)?;
            let p = b.tanh(p)?;
            let both = b.concat(&[s_bar, p], -1)?;
            head.apply(b, both)
        };
        let mut states = vec![identity];
        let mut round_logits = Vec::new();
        if let Some((calibrate, cal_mlp, norm)) = calibration {
            for r in 0..rounds {
                let state = *states.last().expect("starts with I_0");
                let (o, next) = b.scoped(&format!("round{r}"), |b| {
                    let o = reason(b, state)?;
                    // q_r = softmax(o_r) W_y; I_{r+1} = LayerNorm(I_r + MLP_cal([I_r ; q_r]))
                    let q = b.softmax(o, -1)?;
                    let q = calibrate.apply(b, q)?;
                    let both = b.concat(&[state, q], -1)?;
                    let delta = cal_mlp.apply(b, both)?;
                    let r = b.add(state, delta)?;
                    Ok((o, norm.apply(b, r)?))
                })?;
                round_logits.push(o);
                states.push(next);
            }
        }
        let last = *states.last().expect("starts with I_0");
        let logits = b.scoped("output", |b| reason(b, last))?;
        let ref_loss = match states.len() {
            n if training && n >= 2 => Some(b.scoped("ref_loss", |b| {
                let d = b.sub(states[n - 1], states[n - 2])?;
                let d2 = b.mul(d, d)?;
                let per_sample = b.reduce_sum(d2, &[-1], false)?;
                b.reduce_mean(per_sample, &[0], false)
            })?),
            _ => None,
        };
        Ok(Reflected { logits, round_logits, ref_loss })
    })
}
