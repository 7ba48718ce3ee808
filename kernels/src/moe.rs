//! The two ends of a sparse mixture of experts: `dispatch` orders the routed (unit, expert)
//! pairs by expert into slots, and `combine` mixes the experts' outputs back into units with
//! the gates. Between them every expert layer runs over the slots (grouped GEMMs and layer
//! norms that look up each slot's expert and unit in the index array `dispatch` writes).
//!
//! Dropless: each unit has exactly `top_k` slots, so there are always `units · top_k` of them,
//! however uneven the routing.

use cubecl::prelude::*;

use crate::elementwise::linear_pos;

/// One group of a mixture (one of CALM's dimensions): from its one-hot choices `[units, k, E]`
/// and gate matrix `[units, E]`, its `units · k` slots starting at `first`: their experts
/// (numbered from `first_expert`) and units in the index array (`slots` experts, then `slots`
/// units, over all groups, then where each expert's slots start: `experts of all groups + 1`
/// entries), their gates, and each (unit, choice)'s slot (at `first + u·k + j`); slots ordered
/// by expert, then unit, then choice. One thread: the work is `units · k · E` comparisons, and
/// the order is then the same on every run.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn dispatch<F: Float>(
    chosen: &Array<F>,
    gates: &Array<F>,
    index: &mut Array<u32>,
    slot_gate: &mut Array<F>,
    unit_slot: &mut Array<u32>,
    units: u32,
    slots: u32,
    first: u32,
    first_expert: u32,
    #[comptime] experts: u32,
    #[comptime] top_k: u32,
) {
    if linear_pos() > 0 {
        terminate!();
    }
    let mut next = first;
    #[unroll]
    for e in 0..experts {
        index[(2 * slots + first_expert + e) as usize] = next;
        for u in 0..units {
            #[unroll]
            for j in 0..top_k {
                if f32::cast_from(chosen[((u * top_k + j) * experts + e) as usize]) > 0.5 {
                    index[next as usize] = first_expert + e;
                    index[(slots + next) as usize] = u;
                    slot_gate[next as usize] = gates[(u * experts + e) as usize];
                    unit_slot[(first + u * top_k + j) as usize] = next;
                    next += 1;
                }
            }
        }
    }
    index[(2 * slots + first_expert + experts) as usize] = next;
}

/// `out[u, c] = Σ_j gate(slot(u, j)) · mean_t x[slot(u, j), t, c]` for `groups` groups from
/// `first_group` (group `g`'s choices' slots at `g·units·top_k` in `unit_slot`): the experts'
/// last layer `x: [slots, tokens, width]` averaged over each slot's tokens and mixed back into
/// units, one thread per output element, choices in order. Group `g`'s `[units, width]` is
/// written at column `g·width` of rows of `out_stride` (`groups·width` writes the groups'
/// concatenation, `width` one group alone).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn combine<F: Float>(
    x: &Array<F>,
    slot_gate: &Array<F>,
    unit_slot: &Array<u32>,
    out: &mut Array<F>,
    units: u32,
    width: u32,
    tokens: u32,
    groups: u32,
    first_group: u32,
    out_stride: u32,
    #[comptime] top_k: u32,
) {
    let pos = linear_pos();
    if pos >= groups * units * width {
        terminate!();
    }
    let (g, u, c) = (pos / (units * width), pos / width % units, pos % width);
    let first = (first_group + g) * units * top_k;
    let mut sum = 0.0f32;
    #[unroll]
    for j in 0..top_k {
        let slot = unit_slot[(first + u * top_k + j) as usize];
        let mut total = 0.0f32;
        for t in 0..tokens {
            total += f32::cast_from(x[((slot * tokens + t) * width + c) as usize]);
        }
        sum += f32::cast_from(slot_gate[slot as usize]) * (total / f32::cast_from(tokens));
    }
    out[(u * out_stride + g * width + c) as usize] = F::cast_from(sum);
}
