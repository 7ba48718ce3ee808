//! Fused multi-head attention: `softmax(q kᵀ · scale + bias) v` per head, with the heads split
//! and merged by indexing (`q, k, v, out` stay `[B, L, heads · head_dim]`), and the scores never
//! written to memory. No shared memory or plane operations; a thread owns one query row of one
//! head. Two paths, chosen by the key length:
//!
//! - Short (up to the length the caller compiles in; CALM's K = 5 clusters): one thread per
//!   query row over all batch entries and heads, every score in registers and the softmax exact.
//! - Long: one cube per (batch entry, head, tile of `CUBE_DIM_X` query rows), walking the keys
//!   [`KEY_BLOCK`] at a time with an online softmax (the running maximum and sum rescale the
//!   accumulated values once per block, as in FlashAttention). Every thread of a cube reads the
//!   same keys and values (addresses uniform across the cube, which CPU drivers can load once
//!   for all lanes; on lavapipe this gained only 17%, see BENCHMARKS.md), and the block's scores
//!   are independent dot products, not one long chain.

use cubecl::prelude::*;

use crate::elementwise::{linear_pos, neg_infinity};
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

/// One key's score: `q · k[k_base..] · scale`, plus `bias[bias_at]` if `has_bias`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn score<F: Float>(
    qv: &Array<f32>,
    k: &Array<F>,
    k_base: u32,
    bias: &Array<F>,
    bias_at: u32,
    scale: f32,
    #[comptime] head_dim: u32,
    #[comptime] has_bias: bool,
) -> f32 {
    let mut s = 0.0f32;
    for d in 0..head_dim {
        s += qv[d as usize] * f32::cast_from(k[(k_base + d) as usize]);
    }
    s *= scale;
    if comptime![has_bias] {
        s += f32::cast_from(bias[bias_at as usize]);
    }
    s
}

/// `q: [B, Lq, m]`, `k, v: [B, Lk, m]` (rows as `shape` says), `bias` read at its strides if
/// `has_bias` (any buffer otherwise), `out: [B, Lq, m]` contiguous, with `m = heads · head_dim`.
#[cube(launch_unchecked)]
// `b`, `h`, `i` are declared, then set in whichever path is compiled in.
#[allow(unused_assignments)]
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
    #[comptime] short: Option<u32>,
) {
    let width = comptime![heads * head_dim];
    // This thread's batch entry, head and query row; `live` is false for the rows a cube's
    // last tile has past the end, which compute on the last row and store nothing.
    let mut b: u32 = 0;
    let mut h: u32 = 0;
    let mut i: u32 = 0;
    let mut live = true;
    if comptime![short.is_some()] {
        let pos = linear_pos();
        if pos >= shape.batch * heads * shape.q_len {
            terminate!();
        }
        i = pos % shape.q_len;
        h = (pos / shape.q_len) % heads;
        b = pos / (shape.q_len * heads);
    } else {
        let tiles = shape.q_len.div_ceil(CUBE_DIM_X);
        let cube = CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X;
        if cube >= shape.batch * heads * tiles {
            terminate!();
        }
        let row = (cube % tiles) * CUBE_DIM_X + UNIT_POS_X;
        live = row < shape.q_len;
        i = select(live, row, shape.q_len - 1);
        h = (cube / tiles) % heads;
        b = cube / (tiles * heads);
    }
    let q_base = (b * shape.q_len + i) * shape.q_stride + shape.q_offset + h * head_dim;
    let mut qv = Array::<f32>::new(comptime![head_dim as usize]);
    #[unroll]
    for d in 0..head_dim {
        qv[d as usize] = f32::cast_from(q[(q_base + d) as usize]);
    }
    let mut bias_base = 0u32;
    if comptime![has_bias] {
        bias_base = b * shape.bias_b + h * shape.bias_h + i * shape.bias_i;
    }
    let out_base = (b * shape.q_len + i) * width + h * head_dim;
    // `match` on the comptime option: the cube macro expands it.
    match short {
        Some(len) => {
            // Few keys (CALM's K = 5 clusters): every score in registers, the softmax exactly
            // as the row kernel computes it, then one pass over the values.
            let mut p = Array::<f32>::new(comptime![len as usize]);
            #[unroll]
            for j in 0..len {
                let k_base = (b * len + j) * shape.k_stride + shape.k_offset + h * head_dim;
                let bias_at = bias_base + j * shape.bias_j;
                p[j as usize] = score(&qv, k, k_base, bias, bias_at, scale, head_dim, has_bias);
            }
            softmax_in_registers(&mut p, len);
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
        None => {
            let mut acc = Array::<f32>::new(comptime![head_dim as usize]);
            #[unroll]
            for d in 0..head_dim {
                acc[d as usize] = 0.0;
            }
            let mut max = neg_infinity();
            let mut sum = 0.0f32;
            let kv_len = shape.kv_len;
            let mut k_at = Array::<u32>::new(comptime![KEY_BLOCK as usize]);
            let mut v_at = Array::<u32>::new(comptime![KEY_BLOCK as usize]);
            let mut s = Array::<f32>::new(comptime![KEY_BLOCK as usize]);
            for block in 0..kv_len.div_ceil(KEY_BLOCK) {
                let j0 = block * KEY_BLOCK;
                #[unroll]
                for c in 0..KEY_BLOCK {
                    // Keys past the end read the last key and score −∞.
                    let key = b * kv_len + select(j0 + c < kv_len, j0 + c, kv_len - 1);
                    k_at[c as usize] = key * shape.k_stride + shape.k_offset + h * head_dim;
                    v_at[c as usize] = key * shape.v_stride + shape.v_offset + h * head_dim;
                    s[c as usize] = 0.0;
                }
                #[unroll]
                for d in 0..head_dim {
                    let qd = qv[d as usize];
                    #[unroll]
                    for c in 0..KEY_BLOCK {
                        s[c as usize] += qd * f32::cast_from(k[(k_at[c as usize] + d) as usize]);
                    }
                }
                let mut next = max;
                #[unroll]
                for c in 0..KEY_BLOCK {
                    let j = j0 + c;
                    let mut sc = s[c as usize] * scale;
                    if comptime![has_bias] {
                        let j_read = select(j < kv_len, j, kv_len - 1);
                        sc += f32::cast_from(bias[(bias_base + j_read * shape.bias_j) as usize]);
                    }
                    sc = select(j < kv_len, sc, neg_infinity());
                    s[c as usize] = sc;
                    next = select(sc > next, sc, next);
                }
                // Keys scored −∞ before any finite score add nothing (and must not make ∞ − ∞).
                // Branch-free: a branch on the scores would diverge across a cube's lanes.
                let none = next == neg_infinity();
                let rescale = select(none, 1.0, f32::exp(max - next));
                let mut p = Array::<f32>::new(comptime![KEY_BLOCK as usize]);
                let mut block_sum = 0.0f32;
                #[unroll]
                for c in 0..KEY_BLOCK {
                    p[c as usize] = select(none, 0.0, f32::exp(s[c as usize] - next));
                    block_sum += p[c as usize];
                }
                sum = sum * rescale + block_sum;
                #[unroll]
                for d in 0..head_dim {
                    let mut a = acc[d as usize] * rescale;
                    #[unroll]
                    for c in 0..KEY_BLOCK {
                        a += p[c as usize] * f32::cast_from(v[(v_at[c as usize] + d) as usize]);
                    }
                    acc[d as usize] = a;
                }
                max = next;
            }
            // A row with every key at −∞ gives 0/0 = NaN, as the reference's softmax does.
            if live {
                let inv = 1.0 / sum;
                #[unroll]
                for d in 0..head_dim {
                    out[(out_base + d) as usize] = F::cast_from(acc[d as usize] * inv);
                }
            }
        }
    }
}
