//! Top-k routing (CALM stage 4).
//!
//! - [`route`]: one thread per routed unit: the router's logits (`x · w + bias`), their
//!   softmax, the `k` most probable experts (ties to the lower index), the chosen probabilities
//!   renormalised to sum to one and scattered into a row of the gate matrix; optionally the
//!   probabilities and the one-hot choices.
//! - [`route_dispatch`]: the routing of a sparse mixture of experts with its dispatch, one cube
//!   per group (router): each unit's choices as above, then per expert its count, where its
//!   slots start and the permutation of the routed (unit, choice) pairs into slots, and the
//!   load-balance statistics `f_e` and `P_e`.

use cubecl::prelude::*;

use crate::elementwise::{linear_pos, neg_infinity};
use crate::rows::{row_times_matrix, softmax_in_registers};

/// Compile-time shape and options of one [`route`] launch.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteConfig {
    pub experts: u32,
    pub top_k: u32,
    /// `w` is `[E, m]` rather than `[m, E]`.
    pub transpose_w: bool,
    pub write_prob: bool,
    pub write_chosen: bool,
}

/// Unit `u`'s router probabilities into `p` (`E` registers) and its `k` choices into `pick`
/// (the largest probability not yet taken, the lower index on ties); returns the sum of the
/// chosen probabilities (the gates' denominator). `w` and `bias` are read from `w_base` and
/// `bias_base` (a group's router in a stack).
#[cube]
#[allow(clippy::too_many_arguments)]
fn route_unit<F: Float>(
    x: &Array<F>,
    u: u32,
    width: u32,
    w: &Array<F>,
    w_base: u32,
    bias: &Array<F>,
    bias_base: u32,
    p: &mut Array<f32>,
    pick: &mut Array<u32>,
    #[comptime] experts: u32,
    #[comptime] top_k: u32,
    #[comptime] transpose_w: bool,
) -> f32 {
    row_times_matrix(x, u * width, width, w, w_base, p, experts, transpose_w);
    #[unroll]
    for e in 0..experts {
        p[e as usize] += f32::cast_from(bias[(bias_base + e) as usize]);
    }
    softmax_in_registers(p, experts);
    let mut chosen_sum = 0.0f32;
    #[unroll]
    for j in 0..top_k {
        let mut best = 0u32;
        let mut best_p = neg_infinity();
        let mut found = false;
        #[unroll]
        for e in 0..experts {
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
    chosen_sum
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
    let mut pick = Array::<u32>::new(comptime![cfg.top_k as usize]);
    let chosen_sum = route_unit(x, b, width, w, 0, bias, 0, &mut p, &mut pick, e_count, k, comptime![cfg.transpose_w]);
    #[unroll]
    for e in 0..e_count {
        gates[(b * e_count + e) as usize] = F::new(0.0);
        if comptime![cfg.write_prob] {
            prob[(b * e_count + e) as usize] = F::cast_from(p[e as usize]);
        }
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

/// Compile-time shape and options of one [`route_dispatch`] launch.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteDispatchConfig {
    pub experts: u32,
    pub top_k: u32,
    /// Each group's `w` is `[E, m]` rather than `[m, E]`.
    pub transpose_w: bool,
    /// Write the load-balance statistics `f` and `P`.
    pub stats: bool,
    /// Threads per cube (one cube per group).
    pub threads: u32,
}

/// The routing and dispatch of `groups` routers over the same `units` rows of `x: [units,
/// width]`, one cube per group `g`, its weights at `g·width·E` of the stacked `w` and its biases
/// at `g·E`. Slots: group `g` owns `first = g·units·k ..` of `slots = groups·units·k`, ordered
/// by expert, then unit, then choice (the order of `moe::dispatch`, which serves mixtures whose
/// routers stay apart), so that results do not depend on the thread count. Writes:
/// - `index`: each slot's expert (numbered over all groups), then each slot's unit, then where
///   each expert's slots start (`groups·E + 1` entries);
/// - `slot_gate`: each slot's renormalised gate; `unit_slot`: each (unit, choice)'s slot, at
///   `first + u·k + j`;
/// - with `stats`: `f[g, e]` (the share of the group's slots given to `e`) and `P[g, e]` (the
///   mean probability of `e`), each `[groups, E]`.
///
/// `choice` (u32) and `scratch` (float) hold each (unit, choice)'s expert and gate between the
/// two phases (`slots` entries each), then, with `stats`, the probabilities
/// (`groups·units·E` more floats). All of it is deterministic: every sum runs in unit order.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn route_dispatch<F: Float>(
    x: &Array<F>,
    w: &Array<F>,
    bias: &Array<F>,
    choice: &mut Array<u32>,
    scratch: &mut Array<F>,
    index: &mut Array<u32>,
    slot_gate: &mut Array<F>,
    unit_slot: &mut Array<u32>,
    fraction: &mut Array<F>,
    mean_prob: &mut Array<F>,
    units: u32,
    width: u32,
    #[comptime] cfg: RouteDispatchConfig,
) {
    let g = CUBE_POS_X;
    let t = UNIT_POS_X;
    let e_count = comptime![cfg.experts];
    let k = comptime![cfg.top_k];
    let per_group = units * k;
    let slots = CUBE_COUNT_X * per_group;
    let first = g * per_group;
    // Phase 1: each unit's choices and gates, one thread per unit.
    let mut u = t;
    while u < units {
        let mut p = Array::<f32>::new(comptime![cfg.experts as usize]);
        let mut pick = Array::<u32>::new(comptime![cfg.top_k as usize]);
        let chosen_sum = route_unit(
            x,
            u,
            width,
            w,
            g * width * e_count,
            bias,
            g * e_count,
            &mut p,
            &mut pick,
            e_count,
            k,
            comptime![cfg.transpose_w],
        );
        #[unroll]
        for j in 0..k {
            let e = pick[j as usize];
            choice[(first + u * k + j) as usize] = e;
            scratch[(first + u * k + j) as usize] = F::cast_from(p[e as usize] / chosen_sum);
        }
        if comptime![cfg.stats] {
            #[unroll]
            for e in 0..e_count {
                scratch[(slots + (g * units + u) * e_count + e) as usize] = F::cast_from(p[e as usize]);
            }
        }
        u += comptime![cfg.threads];
    }
    sync_storage();
    // Phase 2: one thread per expert counts its slots (and sums its probabilities).
    let mut counts = SharedMemory::<u32>::new(comptime![cfg.experts as usize]);
    if t < e_count {
        let mut count = 0u32;
        for i in 0..per_group {
            count += select(choice[(first + i) as usize] == t, 1u32, 0u32);
        }
        counts[t as usize] = count;
        if comptime![cfg.stats] {
            let mut sum = 0.0f32;
            for v in 0..units {
                sum += f32::cast_from(scratch[(slots + (g * units + v) * e_count + t) as usize]);
            }
            // As the graph states it: the mean over units of the per-unit count, over k.
            let share = f32::cast_from(count) / f32::cast_from(units) * (1.0f32 / f32::cast_from(k));
            fraction[(g * e_count + t) as usize] = F::cast_from(share);
            mean_prob[(g * e_count + t) as usize] = F::cast_from(sum / f32::cast_from(units));
        }
    }
    sync_cube();
    // Phase 3: each expert's slots from its start, in (unit, choice) order.
    if t < e_count {
        let mut next = first;
        for e in 0..t {
            next += counts[e as usize];
        }
        let starts = 2 * slots + g * e_count;
        index[(starts + t) as usize] = next;
        if t == e_count - 1 && g == CUBE_COUNT_X - 1 {
            // The last group's end (every other group's end is the next one's first start).
            index[(starts + e_count) as usize] = next + counts[t as usize];
        }
        for i in 0..per_group {
            if choice[(first + i) as usize] == t {
                index[next as usize] = g * e_count + t;
                index[(slots + next) as usize] = i / k;
                slot_gate[next as usize] = scratch[(first + i) as usize];
                unit_slot[(first + i) as usize] = next;
                next += 1;
            }
        }
    }
}
