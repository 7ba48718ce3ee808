//! Attention over many keys for GPUs, in tiles (FlashAttention-2's loop): a cube of
//! [`TILE_PLANES`] planes owns [`QUERY_TILE`] query rows of one batch entry and head, stages
//! them once in shared memory, then walks the keys [`KEY_TILE`] at a time: stage the block's
//! keys and values, score `S = Q Kᵀ` into shared memory, update each row's online softmax
//! (running maximum and sum; the block's probabilities `P` in the products' type), and
//! accumulate `O = O · rescale + P V` in shared memory (f32). The scores never reach global
//! memory.
//!
//! The two products run on the tensor cores (each plane owns 16 query rows: `cmma` fragments
//! of 16 × 16 read straight from the staged tiles) or, on devices without them, as plain
//! loops over the same tiles ([`TileProducts::Scalar`]). Everything else — which tile a cube
//! owns, the staging and its casts, the bias, the masking of keys past the end, the softmax
//! and the store — is one code path, so what lavapipe tests of the scalar form holds for the
//! tensor-core one but the products.

use cubecl::prelude::*;

use crate::attention::AttentionShape;
use crate::elementwise::{cube_pos, neg_infinity};
use crate::matmul_tensor::{operand, zeroed_accumulator};

/// Query rows per cube.
pub const QUERY_TILE: u32 = 64;
/// Keys per step.
pub const KEY_TILE: u32 = 32;
/// Planes (of 32 units) per cube; each owns `QUERY_TILE / TILE_PLANES` = 16 query rows in the
/// tensor-core products.
pub const TILE_PLANES: u32 = 4;
/// Plane width the tensor-core form is written for (CUDA's warps).
const PLANE: u32 = 32;
/// Row strides of the scores (f32) and probabilities in shared memory: padded past
/// [`KEY_TILE`] so that the softmax's threads (one per row, reading along their rows) do not
/// all hit one bank, and still multiples of 4 and 8 elements, as `cmma` strides must be.
const S_STRIDE: u32 = KEY_TILE + 4;
const P_STRIDE: u32 = KEY_TILE + 8;

/// How a tile's two products are computed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum TileProducts {
    /// Loops over the staged tiles on the FP32 pipelines.
    Scalar,
    /// `cmma` on the tensor cores, `k` of one product `mma_k` (16 for bf16 and f16, 8 for tf32).
    Tensor { mma_k: u32 },
}

/// `q: [B, Lq, m]`, `k, v: [B, Lk, m]` (rows as `shape` says), `bias` read at its strides if
/// `has_bias`, `out: [B, Lq, m]` contiguous, `m = heads · head_dim` with `head_dim` a multiple
/// of 16. Staged and multiplied in `I` (bf16, f16, tf32, or `F` for the scalar form), scores
/// and sums in f32. One cube of `32 · TILE_PLANES` units per (entry, head, tile of query rows).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn attention_tiles<F: Float, I: Numeric>(
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
    #[comptime] products: TileProducts,
) {
    let (qt, kt, hd) = comptime![(QUERY_TILE, KEY_TILE, head_dim)];
    let threads = comptime![PLANE * TILE_PLANES];
    let tiles = shape.q_len.div_ceil(qt);
    let cube = cube_pos();
    if cube >= shape.batch * heads * tiles {
        terminate!();
    }
    let h = (cube / tiles) % heads;
    let b = cube / (tiles * heads);
    let first = (cube % tiles) * qt;
    let tid = UNIT_POS_X;

    // `cmma` loads and stores need 32-byte aligned fragments: each starts at a multiple of 16
    // elements (8 in tf32) of rows whose strides are multiples of 8.
    let mut q_tile = SharedMemory::<I>::new_aligned(comptime![(qt * hd) as usize], 128usize);
    let mut k_tile = SharedMemory::<I>::new_aligned(comptime![(kt * hd) as usize], 128usize);
    let mut v_tile = SharedMemory::<I>::new_aligned(comptime![(kt * hd) as usize], 128usize);
    let mut s_tile = SharedMemory::<f32>::new_aligned(comptime![(qt * S_STRIDE) as usize], 128usize);
    let mut p_tile = SharedMemory::<I>::new_aligned(comptime![(qt * P_STRIDE) as usize], 128usize);
    let mut o_tile = SharedMemory::<f32>::new_aligned(comptime![(qt * hd) as usize], 128usize);
    let mut row_scale = SharedMemory::<f32>::new(comptime![qt as usize]);

    // The query rows (rows past the end read the last row; they are not stored), O zeroed.
    for l in 0..comptime![qt * hd / threads] {
        let idx = tid + l * threads;
        let row = last_at_most(first + idx / hd, shape.q_len);
        let at = (b * shape.q_len + row) * shape.q_stride + shape.q_offset + h * hd + idx % hd;
        q_tile[idx as usize] = I::cast_from(q[at as usize]);
        o_tile[idx as usize] = 0.0;
    }
    // Thread `tid < QUERY_TILE` keeps row `tid`'s running maximum and sum.
    let own_row = last_at_most(first + tid, shape.q_len);
    let bias_base = b * shape.bias_b + h * shape.bias_h + own_row * shape.bias_i;
    let mut max = neg_infinity();
    let mut sum = 0.0f32;
    sync_cube();

    let kv_len = shape.kv_len;
    for block in 0..kv_len.div_ceil(kt) {
        let j0 = block * kt;
        // The block's keys and values; keys past the end read the last key and score −∞.
        for l in 0..comptime![kt * hd / threads] {
            let idx = tid + l * threads;
            let key = b * kv_len + last_at_most(j0 + idx / hd, kv_len);
            let d = h * hd + idx % hd;
            k_tile[idx as usize] = I::cast_from(k[(key * shape.k_stride + shape.k_offset + d) as usize]);
            v_tile[idx as usize] = I::cast_from(v[(key * shape.v_stride + shape.v_offset + d) as usize]);
        }
        sync_cube();
        scores(&q_tile, &k_tile, &mut s_tile, tid, hd, products);
        sync_cube();
        if tid < qt {
            let row = tid * S_STRIDE;
            let mut next = max;
            for c in 0..kt {
                let j = j0 + c;
                let mut s = s_tile[(row + c) as usize] * scale;
                if comptime![has_bias] {
                    s += f32::cast_from(bias[(bias_base + last_at_most(j, kv_len) * shape.bias_j) as usize]);
                }
                s = select(j < kv_len, s, neg_infinity());
                s_tile[(row + c) as usize] = s;
                next = select(s > next, s, next);
            }
            // Keys scored −∞ before any finite score add nothing (and must not make ∞ − ∞).
            let none = next == neg_infinity();
            let rescale = select(none, 1.0, f32::exp(max - next));
            let mut block_sum = 0.0f32;
            for c in 0..kt {
                // The sum adds the probabilities as the products will read them (rounded to I).
                let p = I::cast_from(select(none, 0.0, f32::exp(s_tile[(row + c) as usize] - next)));
                p_tile[(tid * P_STRIDE + c) as usize] = p;
                block_sum += f32::cast_from(p);
            }
            sum = sum * rescale + block_sum;
            max = next;
            row_scale[tid as usize] = rescale;
        }
        sync_cube();
        accumulate(&p_tile, &v_tile, &mut o_tile, &row_scale, tid, hd, products);
        sync_cube();
    }
    if tid < qt {
        row_scale[tid as usize] = 1.0 / sum;
    }
    sync_cube();
    // A row with every key at −∞ gives 0 · (1/0) = NaN, as the reference's softmax does.
    let width = comptime![heads * head_dim];
    for l in 0..comptime![qt * hd / threads] {
        let idx = tid + l * threads;
        let row = first + idx / hd;
        if row < shape.q_len {
            let at = (b * shape.q_len + row) * width + h * hd + idx % hd;
            out[at as usize] = F::cast_from(o_tile[idx as usize] * row_scale[(idx / hd) as usize]);
        }
    }
}

/// `S = Q Kᵀ` for the staged tiles, row-major at stride [`S_STRIDE`].
#[cube]
fn scores<I: Numeric>(
    q_tile: &SharedMemory<I>,
    k_tile: &SharedMemory<I>,
    s_tile: &mut SharedMemory<f32>,
    tid: u32,
    #[comptime] hd: u32,
    #[comptime] products: TileProducts,
) {
    let (qt, kt, threads) = comptime![(QUERY_TILE, KEY_TILE, PLANE * TILE_PLANES)];
    match products {
        TileProducts::Scalar => {
            for l in 0..comptime![qt * kt / threads] {
                let idx = tid + l * threads;
                let (i, c) = (idx / kt, idx % kt);
                let mut s = 0.0f32;
                for d in 0..hd {
                    s += f32::cast_from(q_tile[(i * hd + d) as usize]) * f32::cast_from(k_tile[(c * hd + d) as usize]);
                }
                s_tile[(i * S_STRIDE + c) as usize] = s;
            }
        }
        TileProducts::Tensor { mma_k } => {
            // This plane's 16 rows against each 16 keys: A = Q rows (row-major, stride hd),
            // B = Kᵀ (the key tile read column-major, stride hd).
            let r0 = (tid / PLANE) * 16;
            let (q_len, k_len, s_len) = comptime![((qt * hd) as usize, (kt * hd) as usize, (qt * S_STRIDE) as usize)];
            #[unroll]
            for jt in 0..comptime![kt / 16] {
                let acc = zeroed_accumulator(mma_k);
                #[unroll]
                for d in 0..comptime![hd / mma_k] {
                    let a = operand::<I>(cmma::MatrixIdent::A, cmma::MatrixLayout::RowMajor, mma_k);
                    let bt = operand::<I>(cmma::MatrixIdent::B, cmma::MatrixLayout::ColMajor, mma_k);
                    cmma::load(&a, &q_tile.slice((r0 * hd + d * mma_k) as usize, q_len), hd);
                    cmma::load(&bt, &k_tile.slice((jt * 16 * hd + d * mma_k) as usize, k_len), hd);
                    cmma::execute::<I, I, f32, f32>(&a, &bt, &acc, &acc);
                }
                let at = (r0 * S_STRIDE + jt * 16) as usize;
                cmma::store(&mut s_tile.slice_mut(at, s_len), &acc, S_STRIDE, cmma::MatrixLayout::RowMajor);
            }
        }
    }
}

/// `O = O · rescale + P V` for the staged tiles (`O` row-major at stride `hd`, each row
/// rescaled by its `row_scale`).
#[cube]
fn accumulate<I: Numeric>(
    p_tile: &SharedMemory<I>,
    v_tile: &SharedMemory<I>,
    o_tile: &mut SharedMemory<f32>,
    row_scale: &SharedMemory<f32>,
    tid: u32,
    #[comptime] hd: u32,
    #[comptime] products: TileProducts,
) {
    let (qt, kt, threads) = comptime![(QUERY_TILE, KEY_TILE, PLANE * TILE_PLANES)];
    match products {
        TileProducts::Scalar => {
            for l in 0..comptime![qt * hd / threads] {
                let idx = tid + l * threads;
                let (i, d) = (idx / hd, idx % hd);
                let mut o = o_tile[idx as usize] * row_scale[i as usize];
                for c in 0..kt {
                    o += f32::cast_from(p_tile[(i * P_STRIDE + c) as usize])
                        * f32::cast_from(v_tile[(c * hd + d) as usize]);
                }
                o_tile[idx as usize] = o;
            }
        }
        TileProducts::Tensor { mma_k } => {
            // Each plane rescales its own 16 rows, then adds P V into them as accumulators
            // loaded from and stored back to shared memory.
            let lane = tid % PLANE;
            let r0 = (tid / PLANE) * 16;
            for l in 0..comptime![16 * hd / PLANE] {
                let idx = r0 * hd + lane + l * PLANE;
                o_tile[idx as usize] *= row_scale[(idx / hd) as usize];
            }
            sync_plane();
            let (o_len, p_len, v_len) = comptime![((qt * hd) as usize, (qt * P_STRIDE) as usize, (kt * hd) as usize)];
            #[unroll]
            for n in 0..comptime![hd / 16] {
                let at = (r0 * hd + n * 16) as usize;
                let acc = operand::<f32>(cmma::MatrixIdent::Accumulator, cmma::MatrixLayout::Undefined, mma_k);
                cmma::load_with_layout(&acc, &o_tile.slice(at, o_len), hd, cmma::MatrixLayout::RowMajor);
                #[unroll]
                for c in 0..comptime![kt / mma_k] {
                    let a = operand::<I>(cmma::MatrixIdent::A, cmma::MatrixLayout::RowMajor, mma_k);
                    let bv = operand::<I>(cmma::MatrixIdent::B, cmma::MatrixLayout::RowMajor, mma_k);
                    cmma::load(&a, &p_tile.slice((r0 * P_STRIDE + c * mma_k) as usize, p_len), P_STRIDE);
                    cmma::load(&bv, &v_tile.slice((c * mma_k * hd + n * 16) as usize, v_len), hd);
                    cmma::execute::<I, I, f32, f32>(&a, &bv, &acc, &acc);
                }
                cmma::store(&mut o_tile.slice_mut(at, o_len), &acc, hd, cmma::MatrixLayout::RowMajor);
            }
        }
    }
}

/// `i`, or the last index below `len` for indices past the end (read, never stored).
#[cube]
fn last_at_most(i: u32, len: u32) -> u32 {
    select(i < len, i, len - 1)
}
