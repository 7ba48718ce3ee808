//! Fused multi-head attention: `softmax(q kᵀ · scale + bias) v` per head, with the heads split
//! and merged by indexing (`q, k, v, out` stay `[B, L, heads · head_dim]`), and the scores never
//! written to memory.
//!
//! One thread owns one query row of one head and walks the keys once with an online softmax
//! (the running maximum and sum rescale the accumulated values, as in FlashAttention), so any
//! key length works with `head_dim` accumulators per thread and no shared memory or plane
//! operations. Up to [`SHORT_KEYS`] keys (CALM's clusters), the key length is compiled in: the
//! scores stay in registers and the softmax is exact, with no rescaling. Adjacent threads take adjacent query rows of the same head, so their key and
//! value reads coincide.

use cubecl::prelude::*;

use crate::elementwise::{linear_pos, neg_infinity};
use crate::rows::softmax_in_registers;

/// Key lengths up to this take the short path (scores in registers, unrolled).
pub const SHORT_KEYS: u32 = 16;

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
#[cube(launch)]
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
    let pos = linear_pos();
    if pos >= shape.batch * heads * shape.q_len {
        terminate!();
    }
    let i = pos % shape.q_len;
    let h = (pos / shape.q_len) % heads;
    let b = pos / (shape.q_len * heads);
    let width = comptime![heads * head_dim];
    let q_base = (b * shape.q_len + i) * shape.q_stride + shape.q_offset + h * head_dim;
    let mut qv = Array::<f32>::new(comptime![head_dim as usize]);
    for d in 0..head_dim {
        qv[d as usize] = f32::cast_from(q[(q_base + d) as usize]);
    }
    let mut bias_base = 0u32;
    if comptime![has_bias] {
        bias_base = b * shape.bias_b + h * shape.bias_h + i * shape.bias_i;
    }
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
            let out_base = (b * shape.q_len + i) * width + h * head_dim;
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
            for d in 0..head_dim {
                acc[d as usize] = 0.0;
            }
            let mut max = neg_infinity();
            let mut sum = 0.0f32;
            for j in 0..shape.kv_len {
                let key = b * shape.kv_len + j;
                let k_base = key * shape.k_stride + shape.k_offset + h * head_dim;
                let v_base = key * shape.v_stride + shape.v_offset + h * head_dim;
                let s = score(&qv, k, k_base, bias, bias_base + j * shape.bias_j, scale, head_dim, has_bias);
                let next = select(s > max, s, max);
                // A key scored −∞ before any finite score adds nothing (and must not make ∞ − ∞).
                if next != neg_infinity() {
                    let rescale = f32::exp(max - next);
                    let p = f32::exp(s - next);
                    sum = sum * rescale + p;
                    for d in 0..head_dim {
                        acc[d as usize] = acc[d as usize] * rescale + p * f32::cast_from(v[(v_base + d) as usize]);
                    }
                    max = next;
                }
            }
            // A row with every key at −∞ gives 0/0 = NaN, as the reference's softmax does.
            let inv = 1.0 / sum;
            let out_base = (b * shape.q_len + i) * width + h * head_dim;
            for d in 0..head_dim {
                out[(out_base + d) as usize] = F::cast_from(acc[d as usize] * inv);
            }
        }
    }
}
