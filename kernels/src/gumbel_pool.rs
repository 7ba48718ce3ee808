//! Fused Gumbel-softmax clustering and pooling (CALM stage 3), one cube per sample:
//!
//! 1. each thread takes one token of a tile: its `K` logits from the cluster head's hidden layer
//!    (`hidden · w + bias`), Gumbel noise from the shared generator, the temperature, the softmax
//!    over clusters and the token mask; the assignment goes to shared memory (and to `assign`
//!    only if the plan asks for it);
//! 2. each thread then owns `width / threads` columns of the stream and accumulates
//!    `Σ_t A[t, j] · x[t, :]` and `Σ_t A[t, j]` over the tile.
//!
//! The stream `x` is read once; the sums run over tokens in order within one cube, so the
//! result is the same on every run (no atomics).

use cubecl::prelude::*;

use crate::elementwise::cube_pos;
use crate::philox_cube::uniform_at;
use crate::rows::{row_times_matrix, softmax_in_registers};

/// Compile-time shape and options of one launch.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolConfig {
    /// Threads per cube, and tokens per tile.
    pub threads: u32,
    /// Clusters `K`.
    pub clusters: u32,
    /// Stream width `D`.
    pub width: u32,
    /// `w` is `[K, H]` rather than `[H, K]`.
    pub transpose_w: bool,
    pub temperature: bool,
    /// The generator stream of the Gumbel noise, if noise is drawn.
    pub noise_stream: Option<u32>,
    pub write_assign: bool,
}

/// The Gumbel noise `−log(−log u)` of element `index` of the logits, for the `u` the reference
/// executor draws for a `random_uniform` of the same key.
///
/// Vulkan bounds `log` only by an absolute error of 2⁻²¹ on [0.5, 2] (lavapipe uses that
/// freedom), which near `u = 1`, where `−log u` is tiny, would put percent-level errors into
/// the largest noise values. There `−log u = −log(1 − v)` comes from its series in `v = 1 − u`
/// (exact in f32): `v + v²/2 + … + v⁷/7`, which for `v < 1/16` is within 5·10⁻¹⁰ of it.
#[cube]
pub fn gumbel_at(seed: u32, offset: u32, #[comptime] stream: u32, index: u32) -> f32 {
    let u = uniform_at(seed, offset, stream, index);
    let v = 1.0 - u;
    let series = v * (1.0 + v * (0.5 + v * (1.0 / 3.0 + v * (0.25 + v * (0.2 + v * (1.0 / 6.0 + v / 7.0))))));
    let minus_log_u = select(v < 0.0625, series, -f32::ln(u));
    -f32::ln(minus_log_u)
}

/// Arguments: `hidden [B, T, H]`, `w`, `bias [K]`, `x [B, T, D]`, `mask [B, T]`, `tau` (1
/// element, read if `temperature`), `seed`, `offset` (1 element each, read if noise), results
/// `pooled [B, K, D]` and `assign [B, T, K]` (written if `write_assign`).
#[cube(launch)]
// `match` on comptime options: the cube macro expands it, not `if let`.
#[allow(clippy::too_many_arguments, clippy::single_match)]
pub fn gumbel_pool<F: Float>(
    hidden: &Array<F>,
    w: &Array<F>,
    bias: &Array<F>,
    x: &Array<F>,
    mask: &Array<F>,
    tau: &Array<F>,
    seed: &Array<u32>,
    offset: &Array<u32>,
    pooled: &mut Array<F>,
    assign: &mut Array<F>,
    batch: u32,
    tokens: u32,
    hid: u32,
    eps: f32,
    #[comptime] cfg: PoolConfig,
) {
    let b = cube_pos();
    if b >= batch {
        terminate!();
    }
    let tid = UNIT_POS_X;
    let threads = comptime![cfg.threads];
    let k = comptime![cfg.clusters];
    let d = comptime![cfg.width];
    let per_thread = comptime![cfg.width.div_ceil(cfg.threads)];
    let mut tile_a = SharedMemory::<f32>::new(comptime![(cfg.threads * cfg.clusters) as usize]);
    let mut acc = Array::<f32>::new(comptime![(per_thread * cfg.clusters) as usize]);
    let mut mass = Array::<f32>::new(comptime![cfg.clusters as usize]);
    let mut logit = Array::<f32>::new(comptime![cfg.clusters as usize]);
    #[unroll]
    for i in 0..per_thread * k {
        acc[i as usize] = 0.0;
    }
    #[unroll]
    for j in 0..k {
        mass[j as usize] = 0.0;
    }
    let tiles = tokens.div_ceil(threads);
    for tile in 0..tiles {
        // 1: one token per thread.
        let t = tile * threads + tid;
        if t < tokens {
            let row = b * tokens + t;
            row_times_matrix(hidden, row * hid, hid, w, 0, &mut logit, k, comptime![cfg.transpose_w]);
            #[unroll]
            for j in 0..k {
                let mut y = logit[j as usize] + f32::cast_from(bias[j as usize]);
                match comptime![cfg.noise_stream] {
                    Some(stream) => {
                        y += gumbel_at(seed[0], offset[0], stream, row * k + j);
                    }
                    None => {}
                }
                // Division, not a multiplication by 1/τ, to round as the reference does.
                if comptime![cfg.temperature] {
                    y /= f32::cast_from(tau[0]);
                }
                logit[j as usize] = y;
            }
            softmax_in_registers(&mut logit, k);
            let keep = f32::cast_from(mask[row as usize]);
            #[unroll]
            for j in 0..k {
                let a = logit[j as usize] * keep;
                tile_a[(tid * k + j) as usize] = a;
                if comptime![cfg.write_assign] {
                    assign[(row * k + j) as usize] = F::cast_from(a);
                }
            }
        }
        sync_cube();
        // 2: the tile's tokens into this thread's columns.
        let left = tokens - tile * threads;
        let in_tile = select(left < threads, left, threads);
        for tt in 0..in_tile {
            let row = b * tokens + tile * threads + tt;
            #[unroll]
            for j in 0..k {
                mass[j as usize] += tile_a[(tt * k + j) as usize];
            }
            #[unroll]
            for f in 0..per_thread {
                let col = tid + f * threads;
                if col < d {
                    let xv = f32::cast_from(x[(row * d + col) as usize]);
                    #[unroll]
                    for j in 0..k {
                        acc[(j * per_thread + f) as usize] += tile_a[(tt * k + j) as usize] * xv;
                    }
                }
            }
        }
        sync_cube();
    }
    #[unroll]
    for f in 0..per_thread {
        let col = tid + f * threads;
        if col < d {
            #[unroll]
            for j in 0..k {
                let at = (b * k + j) * d + col;
                pooled[at as usize] = F::cast_from(acc[(j * per_thread + f) as usize] / (mass[j as usize] + eps));
            }
        }
    }
}
