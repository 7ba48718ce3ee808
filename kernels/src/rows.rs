//! Kernels along one axis: softmax and log-softmax, layer norm (also per expert over routed
//! slots), and sum/mean/max reductions.
//!
//! The data is `[outer, len, inner]` (the axis in the middle); one thread owns one
//! `(outer, inner)` line and walks it, accumulating in f32, so results are the same on every run
//! and no plane operations are needed.

use cubecl::prelude::*;

use crate::elementwise::{linear_pos, neg_infinity, registers, Program};

/// Reductions along an axis.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reduction {
    Sum,
    Mean,
    Max,
}

#[cube(launch)]
pub fn softmax<F: Float>(x: &Array<F>, out: &mut Array<F>, outer: u32, len: u32, inner: u32, #[comptime] log: bool) {
    let line = linear_pos();
    if line >= outer * inner {
        terminate!();
    }
    let base = (line / inner) * len * inner + line % inner;
    let mut max = neg_infinity();
    for l in 0..len {
        let v = f32::cast_from(x[(base + l * inner) as usize]);
        // NaN propagates, as in the reference (x − max is NaN either way).
        max = select(v > max || v.is_nan(), v, max);
    }
    let mut sum = 0.0f32;
    for l in 0..len {
        sum += f32::exp(f32::cast_from(x[(base + l * inner) as usize]) - max);
    }
    if log {
        let log_sum = f32::ln(sum);
        for l in 0..len {
            let at = (base + l * inner) as usize;
            out[at] = F::cast_from(f32::cast_from(x[at]) - max - log_sum);
        }
    } else {
        let inv = 1.0 / sum;
        for l in 0..len {
            let at = (base + l * inner) as usize;
            out[at] = F::cast_from(f32::exp(f32::cast_from(x[at]) - max) * inv);
        }
    }
}

/// Layer norms of a mixture of experts over routed slots (rows `[slots, tokens, cols]`): each
/// row's gamma and beta are its slot's expert's (stacked `[E, cols]`), and with `gather` the
/// input rows are the slot's unit's (`x: [units, tokens, cols]`). The index array holds the
/// experts of the slots, then their units.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct GroupedRows {
    pub tokens: u32,
    pub gather: bool,
}

#[cube(launch)]
// `match` on comptime options: the cube macro expands it, not `if let`.
#[allow(clippy::too_many_arguments, clippy::single_match)]
pub fn layer_norm<F: Float>(
    x: &Array<F>,
    gamma: &Array<F>,
    beta: &Array<F>,
    index: &Array<u32>,
    out: &mut Array<F>,
    rows: u32,
    cols: u32,
    eps: f32,
    #[comptime] grouped: Option<GroupedRows>,
) {
    let row = linear_pos();
    if row >= rows {
        terminate!();
    }
    let mut base = row * cols;
    let mut params = 0u32;
    match grouped {
        Some(g) => {
            let slot = row / g.tokens;
            params = index[slot as usize] * cols;
            if comptime![g.gather] {
                let slots = rows / g.tokens;
                base = (index[(slots + slot) as usize] * g.tokens + row % g.tokens) * cols;
            }
        }
        None => {}
    }
    let out_base = row * cols;
    let mut sum = 0.0f32;
    for c in 0..cols {
        sum += f32::cast_from(x[(base + c) as usize]);
    }
    let mean = sum / f32::cast_from(cols);
    // Two passes (mean, then the centred squares): as accurate as the reference's formula.
    let mut var = 0.0f32;
    for c in 0..cols {
        let d = f32::cast_from(x[(base + c) as usize]) - mean;
        var += d * d;
    }
    let inv = 1.0 / f32::sqrt(var / f32::cast_from(cols) + eps);
    for c in 0..cols {
        let y = (f32::cast_from(x[(base + c) as usize]) - mean) * inv;
        let p = (params + c) as usize;
        out[(out_base + c) as usize] = F::cast_from(y * f32::cast_from(gamma[p]) + f32::cast_from(beta[p]));
    }
}

#[cube]
fn reduce_start(#[comptime] op: Reduction) -> f32 {
    let mut acc = 0.0f32;
    if comptime![op == Reduction::Max] {
        acc = neg_infinity();
    }
    acc
}

#[cube]
fn reduce_step(acc: f32, v: f32, #[comptime] op: Reduction) -> f32 {
    match op {
        Reduction::Max => select(v > acc || v.is_nan(), v, acc),
        _ => acc + v,
    }
}

#[cube]
fn reduce_finish(acc: f32, len: u32, #[comptime] op: Reduction) -> f32 {
    let mut out = acc;
    if comptime![op == Reduction::Mean] {
        out /= f32::cast_from(len);
    }
    out
}

#[cube(launch)]
pub fn reduce<F: Float>(x: &Array<F>, out: &mut Array<F>, outer: u32, len: u32, inner: u32, #[comptime] op: Reduction) {
    let line = linear_pos();
    if line >= outer * inner {
        terminate!();
    }
    let base = (line / inner) * len * inner + line % inner;
    let mut acc = reduce_start(op);
    for l in 0..len {
        acc = reduce_step(acc, f32::cast_from(x[(base + l * inner) as usize]), op);
    }
    out[line as usize] = F::cast_from(reduce_finish(acc, len, op));
}

/// A reduction of an elementwise program's output (its first) along the middle axis of
/// `[outer, len, inner]`: the program is evaluated at each element as the elementwise kernel
/// would (`meta` holds its shape and its arguments' strides), so the product is never written.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn reduce_program<F: Float>(
    floats: &Sequence<Array<F>>,
    ints: &Sequence<Array<i32>>,
    uints: &Sequence<Array<u32>>,
    out: &mut Array<F>,
    meta: &Array<u32>,
    outer: u32,
    len: u32,
    inner: u32,
    #[comptime] program: Program,
    #[comptime] op: Reduction,
) {
    let line = linear_pos();
    if line >= outer * inner {
        terminate!();
    }
    let base = (line / inner) * len * inner + line % inner;
    let reg = comptime![program.outputs[0].0];
    let mut acc = reduce_start(op);
    for l in 0..len {
        let regs = registers::<F>(base + l * inner, floats, ints, uints, meta, program.clone());
        acc = reduce_step(acc, *regs.index(reg), op);
    }
    out[line as usize] = F::cast_from(reduce_finish(acc, len, op));
}

/// `out[j] = Σ_c x[base + c] · w[c, j]` for `j < n` (`w[j, c]` if `transpose_w`), `w` starting
/// at `w_base` of its buffer: a row times a narrow matrix into registers, for kernels that keep
/// `n` values per thread (K cluster logits, E router logits).
#[cube]
pub fn row_times_matrix<F: Float>(
    x: &Array<F>,
    base: u32,
    len: u32,
    w: &Array<F>,
    w_base: u32,
    out: &mut Array<f32>,
    #[comptime] n: u32,
    #[comptime] transpose_w: bool,
) {
    #[unroll]
    for j in 0..n {
        out[j as usize] = 0.0;
    }
    for c in 0..len {
        let xv = f32::cast_from(x[(base + c) as usize]);
        #[unroll]
        for j in 0..n {
            let at = w_base + if transpose_w { j * len + c } else { c * n + j };
            out[j as usize] += xv * f32::cast_from(w[at as usize]);
        }
    }
}

/// `v ← softmax(v)` over `n` registers, as the row kernel computes it (NaN propagates).
#[cube]
pub fn softmax_in_registers(v: &mut Array<f32>, #[comptime] n: u32) {
    let mut max = neg_infinity();
    #[unroll]
    for j in 0..n {
        let x = v[j as usize];
        max = select(x > max || x.is_nan(), x, max);
    }
    let mut total = 0.0f32;
    #[unroll]
    for j in 0..n {
        let e = f32::exp(v[j as usize] - max);
        v[j as usize] = e;
        total += e;
    }
    #[unroll]
    for j in 0..n {
        v[j as usize] /= total;
    }
}
