//! Fused multi-head attention: `softmax(q kᵀ · scale + bias) v` per head, with the heads split
//! and merged by indexing (`q, k, v, out` stay `[B, L, heads · head_dim]`), and the scores never
//! written to memory. No shared memory or plane operations. Two paths, chosen by the key length:
//!
//! - Short (up to the length the caller compiles in; CALM's K = 5 clusters): one thread per
//!   query row over all batch entries and heads, every score in registers and the softmax exact.
//! - Long: one cube per (batch entry, head, tile of `CUBE_DIM_X · rows` query rows), each thread
//!   owning `rows` query rows (strided by `CUBE_DIM_X`), walking the keys [`KEY_BLOCK`] at a
//!   time with an online softmax per row (the running maximum and sum rescale the accumulated
//!   values once per block, as in FlashAttention). Every thread of a cube reads the same keys
//!   and values, and each key or value element read feeds `rows` FMAs: on CPU drivers, where a
//!   thread is a SIMD lane and a cube-uniform element is loaded and broadcast to the lanes,
//!   the broadcast rather than the FMA was the cost at one row per thread (BENCHMARKS.md).

use cubecl::prelude::*;

use crate::elementwise::{cube_pos, linear_pos, neg_infinity};
use crate::rows::softmax_in_registers;

/// Keys per step of the long path.
pub const KEY_BLOCK: u32 = 4;

/// Sizes of one attention launch (runtime values; the head layout is compile-time).
#[derive(CubeLaunch, CubeType)]
pub struct AttentionShape {
    pub batch: u32,
    pub q_len: u32,
    pub kv_len: u32,
    /// Row stride and start of `q`, `k` and `v` in their buffers (`m` and 0 unless a slice of a
    /// joint projection is read in place).
    pub q_stride: u32,
    pub q_offset: u32,
    pub k_stride: u32,
    pub k_offset: u32,
    pub v_stride: u32,
    pub v_offset: u32,
    /// Strides of the bias over `[B, heads, Lq, Lk]` (0 where it broadcasts).
    pub bias_b: u32,
    pub bias_h: u32,
    pub bias_i: u32,
    pub bias_j: u32,
}

/// Which path a launch compiles in.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum AttentionPath {
    /// At most this many keys, all scored in registers; one thread per query row.
    Short(u32),
    /// Any number of keys, online softmax; this many query rows per thread.
    Long(u32),
}

/// `q: [B, Lq, m]`, `k, v: [B, Lk, m]` (rows as `shape` says), `bias` read at its strides if
/// `has_bias` (any buffer otherwise), `out: [B, Lq, m]` contiguous, with `m = heads · head_dim`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn attention<F: Float>(
    q: &Array<F>,
    k: &Array<F>,
    v: &Array<F>,
    bias: &Array<F>,
    out: &mut Array<F>,
    shape: AttentionShape,
    scale: f32,
    #[comptime] heads: u32,
    #[comptime] head_dim: u32,
    #[comptime] has_bias: bool,
    #[comptime] path: AttentionPath,
) {
    // `match` on the comptime path: the cube macro expands it.
    match path {
        AttentionPath::Short(len) => attention_short(q, k, v, bias, out, &shape, scale, heads, head_dim, has_bias, len),
        AttentionPath::Long(rows) => attention_long(q, k, v, bias, out, &shape, scale, heads, head_dim, has_bias, rows),
    }
}

/// Query row `i` of batch entry `b`, head `h`, into `qv[at..at + head_dim]`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_query<F: Float>(
    q: &Array<F>,
    shape: &AttentionShape,
    b: u32,
    h: u32,
    i: u32,
    qv: &mut Array<f32>,
    at: u32,
    #[comptime] head_dim: u32,
) {
    let q_base = (b * shape.q_len + i) * shape.q_stride + shape.q_offset + h * head_dim;
    #[unroll]
    for d in 0..head_dim {
        qv[(at + d) as usize] = f32::cast_from(q[(q_base + d) as usize]);
    }
}

/// The short path: one thread per (entry, head, query row), `len` keys compiled in.
#[cube]
#[allow(clippy::too_many_arguments)]
fn attention_short<F: Float>(
    q: &Array<F>,
    k: &Array<F>,
    v: &Array<F>,
    bias: &Array<F>,
    out: &mut Array<F>,
    shape: &AttentionShape,
    scale: f32,
    #[comptime] heads: u32,
    #[comptime] head_dim: u32,
    #[comptime] has_bias: bool,
    #[comptime] len: u32,
) {
    let pos = linear_pos();
    if pos >= shape.batch * heads * shape.q_len {
        terminate!();
    }
    let i = pos % shape.q_len;
    let h = (pos / shape.q_len) % heads;
    let b = pos / (shape.q_len * heads);
    let mut qv = Array::<f32>::new(comptime![head_dim as usize]);
    load_query(q, shape, b, h, i, &mut qv, 0, head_dim);
    let bias_base = b * shape.bias_b + h * shape.bias_h + i * shape.bias_i;
    // Every score in registers, the softmax exactly as the row kernel computes it, then one
    // pass over the values.
    let mut p = Array::<f32>::new(comptime![len as usize]);
    #[unroll]
    for j in 0..len {
        let k_base = (b * len + j) * shape.k_stride + shape.k_offset + h * head_dim;
        let mut s = 0.0f32;
        for d in 0..head_dim {
            s += qv[d as usize] * f32::cast_from(k[(k_base + d) as usize]);
        }
        s *= scale;
        if comptime![has_bias] {
            s += f32::cast_from(bias[(bias_base + j * shape.bias_j) as usize]);
        }
        p[j as usize] = s;
    }
    softmax_in_registers(&mut p, len);
    let out_base = (b * shape.q_len + i) * comptime![heads * head_dim] + h * head_dim;
    for d in 0..head_dim {
        let mut o = 0.0f32;
        #[unroll]
        for j in 0..len {
            let v_at = (b * len + j) * shape.v_stride + shape.v_offset + h * head_dim + d;
            o += p[j as usize] * f32::cast_from(v[v_at as usize]);
        }
        out[(out_base + d) as usize] = F::cast_from(o);
    }
}

/// The long path: one cube per (entry, head, tile of query rows), `rows` rows per thread.
#[cube]
#[allow(clippy::too_many_arguments)]
fn attention_long<F: Float>(
    q: &Array<F>,
    k: &Array<F>,
    v: &Array<F>,
    bias: &Array<F>,
    out: &mut Array<F>,
    shape: &AttentionShape,
    scale: f32,
    #[comptime] heads: u32,
    #[comptime] head_dim: u32,
    #[comptime] has_bias: bool,
    #[comptime] rows: u32,
) {
    let tile = CUBE_DIM_X * rows;
    let tiles = shape.q_len.div_ceil(tile);
    let cube = cube_pos();
    if cube >= shape.batch * heads * tiles {
        terminate!();
    }
    let h = (cube / tiles) % heads;
    let b = cube / (tiles * heads);
    let first = (cube % tiles) * tile + UNIT_POS_X;
    // Row r of this thread is `first + r·CUBE_DIM_X`; rows past the end compute on the last
    // row and store nothing.
    let mut qv = Array::<f32>::new(comptime![(rows * head_dim) as usize]);
    let mut bias_base = Array::<u32>::new(comptime![rows as usize]);
    let mut acc = Array::<f32>::new(comptime![(rows * head_dim) as usize]);
    let mut max = Array::<f32>::new(comptime![rows as usize]);
    let mut sum = Array::<f32>::new(comptime![rows as usize]);
    #[unroll]
    for r in 0..rows {
        let row = first + r * CUBE_DIM_X;
        let i = select(row < shape.q_len, row, shape.q_len - 1);
        load_query(q, shape, b, h, i, &mut qv, r * head_dim, head_dim);
        bias_base[r as usize] = b * shape.bias_b + h * shape.bias_h + i * shape.bias_i;
        #[unroll]
        for d in 0..head_dim {
            acc[(r * head_dim + d) as usize] = 0.0;
        }
        max[r as usize] = neg_infinity();
        sum[r as usize] = 0.0;
    }
    let kv_len = shape.kv_len;
    let mut k_at = Array::<u32>::new(comptime![KEY_BLOCK as usize]);
    let mut v_at = Array::<u32>::new(comptime![KEY_BLOCK as usize]);
    let mut s = Array::<f32>::new(comptime![(rows * KEY_BLOCK) as usize]);
    let mut p = Array::<f32>::new(comptime![(rows * KEY_BLOCK) as usize]);
    let mut rescale = Array::<f32>::new(comptime![rows as usize]);
    for block in 0..kv_len.div_ceil(KEY_BLOCK) {
        let j0 = block * KEY_BLOCK;
        #[unroll]
        for c in 0..KEY_BLOCK {
            // Keys past the end read the last key and score −∞.
            let key = b * kv_len + select(j0 + c < kv_len, j0 + c, kv_len - 1);
            k_at[c as usize] = key * shape.k_stride + shape.k_offset + h * head_dim;
            v_at[c as usize] = key * shape.v_stride + shape.v_offset + h * head_dim;
        }
        #[unroll]
        for x in 0..rows * KEY_BLOCK {
            s[x as usize] = 0.0;
        }
        // Each key element, read once, scores every row of the thread.
        #[unroll]
        for d in 0..head_dim {
            #[unroll]
            for c in 0..KEY_BLOCK {
                let kd = f32::cast_from(k[(k_at[c as usize] + d) as usize]);
                #[unroll]
                for r in 0..rows {
                    s[(r * KEY_BLOCK + c) as usize] += qv[(r * head_dim + d) as usize] * kd;
                }
            }
        }
        #[unroll]
        for r in 0..rows {
            let mut next = max[r as usize];
            #[unroll]
            for c in 0..KEY_BLOCK {
                let j = j0 + c;
                let mut sc = s[(r * KEY_BLOCK + c) as usize] * scale;
                if comptime![has_bias] {
                    let j_read = select(j < kv_len, j, kv_len - 1);
                    sc += f32::cast_from(bias[(bias_base[r as usize] + j_read * shape.bias_j) as usize]);
                }
                sc = select(j < kv_len, sc, neg_infinity());
                s[(r * KEY_BLOCK + c) as usize] = sc;
                next = select(sc > next, sc, next);
            }
            // Keys scored −∞ before any finite score add nothing (and must not make ∞ − ∞).
            // Branch-free: a branch on the scores would diverge across a cube's lanes.
            let none = next == neg_infinity();
            rescale[r as usize] = select(none, 1.0, f32::exp(max[r as usize] - next));
            let mut block_sum = 0.0f32;
            #[unroll]
            for c in 0..KEY_BLOCK {
                let e = select(none, 0.0, f32::exp(s[(r * KEY_BLOCK + c) as usize] - next));
                p[(r * KEY_BLOCK + c) as usize] = e;
                block_sum += e;
            }
            sum[r as usize] = sum[r as usize] * rescale[r as usize] + block_sum;
            max[r as usize] = next;
        }
        // Each value element, read once, accumulates into every row of the thread.
        #[unroll]
        for d in 0..head_dim {
            #[unroll]
            for r in 0..rows {
                acc[(r * head_dim + d) as usize] *= rescale[r as usize];
            }
            #[unroll]
            for c in 0..KEY_BLOCK {
                let vd = f32::cast_from(v[(v_at[c as usize] + d) as usize]);
                #[unroll]
                for r in 0..rows {
                    acc[(r * head_dim + d) as usize] += p[(r * KEY_BLOCK + c) as usize] * vd;
                }
            }
        }
    }
    // A row with every key at −∞ gives 0/0 = NaN, as the reference's softmax does.
    let width = comptime![heads * head_dim];
    #[unroll]
    for r in 0..rows {
        let row = first + r * CUBE_DIM_X;
        if row < shape.q_len {
            let out_base = (b * shape.q_len + row) * width + h * head_dim;
            let inv = 1.0 / sum[r as usize];
            #[unroll]
            for d in 0..head_dim {
                out[(out_base + d) as usize] = F::cast_from(acc[(r * head_dim + d) as usize] * inv);
            }
        }
    }
}
