//! Top-k routing (CALM stage 4), one thread per routed unit: the router's logits
//! (`x · w + bias`), their softmax, the `k` most probable experts (ties to the lower index), the
//! chosen probabilities renormalised to sum to one and scattered into a row of the gate matrix;
//! optionally the probabilities and the one-hot choices (the load-balancing statistics read them).

use cubecl::prelude::*;

use crate::elementwise::{linear_pos, neg_infinity};
use crate::rows::{row_times_matrix, softmax_in_registers};

/// Compile-time shape and options of one launch.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteConfig {
    pub experts: u32,
    pub top_k: u32,
    /// `w` is `[E, m]` rather than `[m, E]`.
    pub transpose_w: bool,
    pub write_prob: bool,
    pub write_chosen: bool,
}

/// `x: [batch, width]`; writes `gates: [batch, E]`, `prob: [batch, E]`, `chosen: [batch, k, E]`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn route<F: Float>(
    x: &Array<F>,
    w: &Array<F>,
    bias: &Array<F>,
    gates: &mut Array<F>,
    prob: &mut Array<F>,
    chosen: &mut Array<F>,
    batch: u32,
    width: u32,
    #[comptime] cfg: RouteConfig,
) {
    let b = linear_pos();
    if b >= batch {
        terminate!();
    }
    let e_count = comptime![cfg.experts];
    let k = comptime![cfg.top_k];
    let mut p = Array::<f32>::new(comptime![cfg.experts as usize]);
    row_times_matrix(x, b * width, width, w, &mut p, e_count, comptime![cfg.transpose_w]);
    #[unroll]
    for e in 0..e_count {
        p[e as usize] += f32::cast_from(bias[e as usize]);
    }
    softmax_in_registers(&mut p, e_count);
    #[unroll]
    for e in 0..e_count {
        gates[(b * e_count + e) as usize] = F::new(0.0);
        if comptime![cfg.write_prob] {
            prob[(b * e_count + e) as usize] = F::cast_from(p[e as usize]);
        }
    }
    // Selection: the largest probability not yet taken, the lower index on ties.
    let mut pick = Array::<u32>::new(comptime![cfg.top_k as usize]);
    let mut chosen_sum = 0.0f32;
    #[unroll]
    for j in 0..k {
        let mut best = 0u32;
        let mut best_p = neg_infinity();
        let mut found = false;
        #[unroll]
        for e in 0..e_count {
            let mut taken = false;
            #[unroll]
            for q in 0..j {
                taken = taken || pick[q as usize] == e;
            }
            let better = !found || p[e as usize] > best_p;
            if !taken && better {
                best = e;
                best_p = p[e as usize];
                found = true;
            }
        }
        pick[j as usize] = best;
        chosen_sum += best_p;
    }
    #[unroll]
    for j in 0..k {
        let e = pick[j as usize];
        gates[(b * e_count + e) as usize] = F::cast_from(p[e as usize] / chosen_sum);
        if comptime![cfg.write_chosen] {
            #[unroll]
            for c in 0..e_count {
                chosen[((b * k + j) * e_count + c) as usize] = F::cast_from(select(c == e, 1.0f32, 0.0f32));
            }
        }
    }
}
