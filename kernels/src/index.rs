//! Data movement and indexing: strided copies, gather, scatter-add, one-hot and top-k.
//!
//! One thread per output element (per row for top-k). Scatter-add sums the updates of each
//! output element in index order instead of using atomics, so every run gives the same bits.
//! Indices outside the table give 0 (the reference executor reports them as errors).

use cubecl::prelude::*;

use crate::elementwise::linear_pos;

/// `dst[dst_offset + Σ coord·dst_strides] = src[src_offset + Σ coord·src_strides]` over a shape
/// of comptime `rank`; `meta` holds `shape, src_strides, dst_strides, src_offset, dst_offset`.
#[cube(launch)]
pub fn copy<T: Numeric>(src: &Array<T>, dst: &mut Array<T>, meta: &Array<u32>, len: u32, #[comptime] rank: usize) {
    let pos = linear_pos();
    if pos >= len {
        terminate!();
    }
    let mut rem = pos;
    let mut s = meta[3 * rank];
    let mut d = meta[3 * rank + 1];
    #[unroll]
    for r in 0..rank {
        let dim = rank - 1 - r;
        let size = meta[dim];
        let coord = rem % size;
        rem /= size;
        s += coord * meta[rank + dim];
        d += coord * meta[2 * rank + dim];
    }
    dst[d as usize] = src[s as usize];
}

/// `out[o, c, i] = table[o, idx[c], i]`.
#[cube(launch)]
pub fn gather<T: Numeric>(
    table: &Array<T>,
    idx: &Array<i32>,
    out: &mut Array<T>,
    rows: u32,
    inner: u32,
    count: u32,
    len: u32,
) {
    let pos = linear_pos();
    if pos >= len {
        terminate!();
    }
    let i = pos % inner;
    let c = (pos / inner) % count;
    let o = pos / (inner * count);
    let row = idx[c as usize];
    if row < 0 || row >= rows as i32 {
        out[pos as usize] = T::from_int(0);
    } else {
        out[pos as usize] = table[((o * rows + row as u32) * inner + i) as usize];
    }
}

/// `out[o, r, i] = base[o, r, i] + Σ_{c: idx[c] = r} upd[o, c, i]`, summed in index order.
#[cube(launch)]
pub fn scatter_add<F: Float>(
    base: &Array<F>,
    idx: &Array<i32>,
    upd: &Array<F>,
    out: &mut Array<F>,
    rows: u32,
    inner: u32,
    count: u32,
    len: u32,
) {
    let pos = linear_pos();
    if pos >= len {
        terminate!();
    }
    let i = pos % inner;
    let r = (pos / inner) % rows;
    let o = pos / (inner * rows);
    let mut acc = f32::cast_from(base[pos as usize]);
    for c in 0..count {
        if idx[c as usize] == r as i32 {
            acc += f32::cast_from(upd[((o * count + c) * inner + i) as usize]);
        }
    }
    out[pos as usize] = F::cast_from(acc);
}

/// `out[c, d] = (idx[c] == d)`.
#[cube(launch)]
pub fn one_hot<T: Numeric>(idx: &Array<i32>, out: &mut Array<T>, depth: u32, len: u32) {
    let pos = linear_pos();
    if pos >= len {
        terminate!();
    }
    let hit = idx[(pos / depth) as usize] == (pos % depth) as i32;
    out[pos as usize] = select(hit, T::from_int(1), T::from_int(0));
}

/// The `k` largest of each row, by repeated selection: ties go to the lower index and NaN
/// counts as the largest value, as in the reference executor.
#[cube(launch)]
pub fn top_k<F: Float>(
    x: &Array<F>,
    values: &mut Array<F>,
    indices: &mut Array<i32>,
    rows: u32,
    cols: u32,
    #[comptime] k: u32,
) {
    let row = linear_pos();
    if row >= rows {
        terminate!();
    }
    let base = row * cols;
    let mut chosen = Array::<u32>::new(k as usize);
    #[unroll]
    for p in 0..k {
        let mut best = 0u32;
        let mut found = false;
        let mut best_value = 0.0f32;
        let mut best_nan = false;
        for j in 0..cols {
            let mut taken = false;
            #[unroll]
            for q in 0..p {
                taken = taken || chosen[q as usize] == j;
            }
            let v = f32::cast_from(x[(base + j) as usize]);
            let v_nan = f32::is_nan(v);
            // v beats the best so far if it is NaN and the best is not, or larger (a strict
            // comparison keeps the lower index on ties).
            let better = !found || (v_nan && !best_nan) || (!best_nan && v > best_value);
            if !taken && better {
                best = j;
                best_value = v;
                best_nan = v_nan;
                found = true;
            }
        }
        chosen[p as usize] = best;
        values[(row * k + p) as usize] = x[(base + best) as usize];
        indices[(row * k + p) as usize] = best as i32;
    }
}
