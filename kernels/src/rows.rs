//! Kernels along one axis: softmax and log-softmax, layer norm (also per expert over routed
//! slots), and sum/mean/max reductions.
//!
//! The data is `[outer, len, inner]` (the axis in the middle). Each kernel has two forms,
//! chosen at compile time by `row_cube`:
//! - `None`: one thread owns one `(outer, inner)` line and walks it (devices without fast
//!   shared memory, such as lavapipe, and lines across a non-last axis, where neighbouring
//!   threads already read neighbouring elements);
//! - `Some(threads)`: one cube of `threads` threads owns one contiguous line (`inner = 1`), each
//!   thread every `threads`-th element, combined through shared memory in a fixed tree (GPUs: a
//!   row of 384 or 5120 floats is read by a whole cube at full bandwidth, not by one thread).
//!
//!
//! On devices with planes of a fixed width (CUDA's warps), a cube per line first combines
//! within each plane by a butterfly of shuffles, then the planes' partials in order
//! ([`RowCube::plane`]); the tree in shared memory serves the others.
//!
//! All forms accumulate in f32 in a fixed order, so results are the same on every run; only
//! the plane form needs plane operations.

use cubecl::prelude::*;

use crate::elementwise::{cube_pos, linear_pos, neg_infinity, registers, Program};

/// Reductions along an axis.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reduction {
    Sum,
    Mean,
    Max,
}

/// A cube per line: its threads (a power of two), and the width of the device's planes where
/// the combination may shuffle within them (a power of two dividing `threads`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct RowCube {
    pub threads: u32,
    pub plane: Option<u32>,
}

/// The line this thread works on and the first element of it it takes (then every
/// [`line_step`]-th): one thread per line, or a cube per line (see the module).
#[cube]
fn line_share(#[comptime] row_cube: Option<RowCube>) -> (u32, u32) {
    let mut line = linear_pos();
    let mut first = 0u32;
    if comptime![row_cube.is_some()] {
        line = cube_pos();
        first = UNIT_POS_X;
    }
    (line, first)
}

/// `value` of every thread of the line combined by `op`: the value itself with one thread per
/// line, the cube's combination with a cube per line.
#[cube]
fn line_total(value: f32, #[comptime] row_cube: Option<RowCube>, #[comptime] op: Reduction) -> f32 {
    match row_cube {
        Some(cube) => match cube.plane {
            Some(width) => plane_combine(value, cube.threads, width, op),
            None => cube_combine(value, cube.threads, op),
        },
        None => value,
    }
}

/// The stride between a thread's elements of its line: the cube's threads, or 1.
fn line_step(row_cube: Option<RowCube>) -> u32 {
    row_cube.map_or(1, |c| c.threads)
}

/// Softmax (or log-softmax) of each line.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn softmax<F: Float>(
    x: &Array<F>,
    out: &mut Array<F>,
    outer: u32,
    len: u32,
    inner: u32,
    #[comptime] log: bool,
    #[comptime] row_cube: Option<RowCube>,
) {
    let (line, first) = line_share(row_cube);
    if line >= outer * inner {
        terminate!();
    }
    let step = comptime![line_step(row_cube)];
    let base = (line / inner) * len * inner + line % inner;
    // NaN propagates, as in the reference (x − max is NaN either way).
    let mut max = neg_infinity();
    let mut l = first;
    while l < len {
        max = reduce_step(max, f32::cast_from(x[(base + l * inner) as usize]), Reduction::Max);
        l += step;
    }
    let max = line_total(max, row_cube, Reduction::Max);
    let mut sum = 0.0f32;
    l = first;
    while l < len {
        sum += f32::exp(f32::cast_from(x[(base + l * inner) as usize]) - max);
        l += step;
    }
    let sum = line_total(sum, row_cube, Reduction::Sum);
    let mut log_sum = 0.0f32;
    let mut inv = 0.0f32;
    if log {
        log_sum = f32::ln(sum);
    } else {
        inv = 1.0 / sum;
    }
    l = first;
    while l < len {
        let at = (base + l * inner) as usize;
        if log {
            out[at] = F::cast_from(f32::cast_from(x[at]) - max - log_sum);
        } else {
            out[at] = F::cast_from(f32::exp(f32::cast_from(x[at]) - max) * inv);
        }
        l += step;
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

/// Where row `row` of a layer norm reads its input, and where its gamma and beta start: its
/// own row and the one pair, or (grouped) its slot's expert's pair and, with `gather`, its
/// slot's unit's row.
#[cube]
// `match` on comptime options: the cube macro expands it, not `if let`.
#[allow(clippy::single_match)]
fn norm_row(
    index: &Array<u32>,
    row: u32,
    rows: u32,
    cols: u32,
    #[comptime] grouped: Option<GroupedRows>,
) -> (u32, u32) {
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
    (base, params)
}

/// Layer norm of each row of `[rows, cols]` (grouped: over routed slots).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
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
    #[comptime] row_cube: Option<RowCube>,
) {
    let (row, first) = line_share(row_cube);
    if row >= rows {
        terminate!();
    }
    let step = comptime![line_step(row_cube)];
    let (base, params) = norm_row(index, row, rows, cols, grouped);
    let out_base = row * cols;
    let mut sum = 0.0f32;
    let mut c = first;
    while c < cols {
        sum += f32::cast_from(x[(base + c) as usize]);
        c += step;
    }
    let mean = line_total(sum, row_cube, Reduction::Sum) / f32::cast_from(cols);
    // Two passes (mean, then the centred squares): as accurate as the reference's formula.
    let mut var = 0.0f32;
    c = first;
    while c < cols {
        let d = f32::cast_from(x[(base + c) as usize]) - mean;
        var += d * d;
        c += step;
    }
    let var = line_total(var, row_cube, Reduction::Sum);
    let inv = 1.0 / f32::sqrt(var / f32::cast_from(cols) + eps);
    c = first;
    while c < cols {
        let y = (f32::cast_from(x[(base + c) as usize]) - mean) * inv;
        let p = (params + c) as usize;
        out[(out_base + c) as usize] = F::cast_from(y * f32::cast_from(gamma[p]) + f32::cast_from(beta[p]));
        c += step;
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

/// `[outer, len, inner] → [outer, inner]` by `op`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn reduce<F: Float>(
    x: &Array<F>,
    out: &mut Array<F>,
    outer: u32,
    len: u32,
    inner: u32,
    #[comptime] op: Reduction,
    #[comptime] row_cube: Option<RowCube>,
) {
    let (line, first) = line_share(row_cube);
    if line >= outer * inner {
        terminate!();
    }
    let step = comptime![line_step(row_cube)];
    let base = (line / inner) * len * inner + line % inner;
    let mut acc = reduce_start(op);
    let mut l = first;
    while l < len {
        acc = reduce_step(acc, f32::cast_from(x[(base + l * inner) as usize]), op);
        l += step;
    }
    let acc = line_total(acc, row_cube, op);
    if first == 0 {
        out[line as usize] = F::cast_from(reduce_finish(acc, len, op));
    }
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
    #[comptime] row_cube: Option<RowCube>,
) {
    let (line, first) = line_share(row_cube);
    if line >= outer * inner {
        terminate!();
    }
    let step = comptime![line_step(row_cube)];
    let base = (line / inner) * len * inner + line % inner;
    let reg = comptime![program.outputs[0].0];
    let mut acc = reduce_start(op);
    let mut l = first;
    while l < len {
        let regs = registers::<F>(base + l * inner, floats, ints, uints, meta, program.clone());
        acc = reduce_step(acc, *regs.index(reg), op);
        l += step;
    }
    let acc = line_total(acc, row_cube, op);
    if first == 0 {
        out[line as usize] = F::cast_from(reduce_finish(acc, len, op));
    }
}

/// `value` of every thread of the cube combined by `op` (a mean combines as a sum), returned
/// to every thread: through shared memory, halving each round, so the order is fixed. The
/// cube must be `threads` wide, a power of two (the plan's reader and the launch check both).
#[cube]
fn cube_combine(value: f32, #[comptime] threads: u32, #[comptime] op: Reduction) -> f32 {
    let mut partial = SharedMemory::<f32>::new(threads as usize);
    let tid = UNIT_POS_X;
    partial[tid as usize] = value;
    sync_cube();
    // Read from the cube's dimension (equal to `threads`) so that `half` is a runtime variable
    // the loop can halve; a comptime start would make the macro evaluate the loop itself.
    let mut half = CUBE_DIM_X / 2;
    while half > 0 {
        if tid < half {
            partial[tid as usize] = reduce_step(partial[tid as usize], partial[(tid + half) as usize], op);
        }
        sync_cube();
        half /= 2;
    }
    let out = partial[0];
    // Every thread has read the total before any could overwrite it in a later round.
    sync_cube();
    out
}

/// [`cube_combine`] on planes of `width` units: a butterfly of `log2(width)` shuffles within
/// each plane (every lane ends with the same value: each step combines the same two values,
/// in either order), then the planes' partials in order through shared memory.
#[cube]
fn plane_combine(value: f32, #[comptime] threads: u32, #[comptime] width: u32, #[comptime] op: Reduction) -> f32 {
    let mut partial = SharedMemory::<f32>::new(comptime![(threads / width) as usize]);
    let mut v = value;
    #[unroll]
    for step in 0..comptime![width.trailing_zeros()] {
        v = reduce_step(v, plane_shuffle_xor(v, comptime![width / 2] >> step), op);
    }
    let tid = UNIT_POS_X;
    if UNIT_POS_PLANE == 0 {
        partial[(tid / width) as usize] = v;
    }
    sync_cube();
    let mut out = partial[0];
    for p in 1..comptime![threads / width] {
        out = reduce_step(out, partial[p as usize], op);
    }
    // Every thread has read the partials before any could overwrite them in a later round.
    sync_cube();
    out
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
