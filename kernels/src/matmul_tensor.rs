//! The tensor-core GEMM: the shared-tile GEMM ([`matmul`](crate::matmul::matmul)) with its
//! products on the tensor cores. Everything but the products is the shared-tile GEMM's own
//! code — which tile of `C` a cube owns (batch entry, or one expert's folded slots), the staging
//! of `A` (in place, folded or in two parts) and `B` in shared memory, the fused epilogue and
//! the bounds of the store — so what lavapipe (which has no tensor cores) tests of that kernel
//! holds here; only the products, and the staging's cast to their type, differ.
//!
//! A cube of [`TENSOR_PLANES`] planes owns [`TENSOR_TILE`]² of `C`; each plane a 32 × 32
//! quarter as 2 × 2 accumulators of 16 × 16 in f32. Operands are staged in the products' type
//! `I` (bf16, f16, or tf32 from f32 buffers), `tile_k` deep, and read by `cmma` straight from
//! the staged layout (`A` column-major, `B` row-major). The accumulators go through shared
//! memory to the element-by-element epilogue and store.

use cubecl::prelude::*;

use crate::matmul::{gemm_tile_rows, k_range, norm_rows, stage_tiles, store_c, GemmIo};

/// Rows and columns of `C` per cube.
pub const TENSOR_TILE: u32 = 64;
/// Planes (of 32 units) per cube, each owning a 32 × 32 quarter of the tile.
pub const TENSOR_PLANES: u32 = 4;
/// Plane width the kernel is written for (CUDA's warps).
const PLANE: u32 = 32;

/// The compile-time configuration.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorConfig {
    /// `k` of one product: 16 for bf16 and f16 operands, 8 for tf32.
    pub mma_k: u32,
    /// Depth of the staged slices of `A` and `B`, a multiple of `mma_k`.
    pub tile_k: u32,
    pub io: GemmIo,
}

/// `C = epilogue(A · B)` with the products on tensor cores of operand type `I`; buffers of
/// type `F`. Launched with `32 · TENSOR_PLANES` units per cube and the shared-tile GEMM's
/// cube count for [`TENSOR_TILE`]² tiles.
#[cube(launch_unchecked)]
pub fn matmul_tensor<F: Float, I: Numeric>(
    a: &Array<F>,
    b: &Array<F>,
    extra: &Sequence<Array<F>>,
    c: &mut Array<F>,
    meta: &Array<u32>,
    index: &Array<u32>,
    #[comptime] cfg: TensorConfig,
) {
    let (tm, tn) = comptime![(TENSOR_TILE, TENSOR_TILE)];
    let (tk, mk) = comptime![(cfg.tile_k, cfg.mma_k)];
    let threads = comptime![PLANE * TENSOR_PLANES];
    let fold = comptime![cfg.io.fold_experts.is_some()];
    let tid = UNIT_POS_X;
    let mut a_rows = SharedMemory::<u32>::new(comptime![if fold { tm as usize } else { 1 }]);
    let (row0, end, bz, a_off, b_off) =
        gemm_tile_rows(meta, index, &mut a_rows, tid, tm, threads, cfg.io.fold_experts, cfg.io.batch.clone());
    let mut norm = SharedMemory::<f32>::new(comptime![if cfg.io.a_norm.is_some() { (2 * tm) as usize } else { 1 }]);
    let norm_params =
        norm_rows(a, meta, index, &a_rows, &mut norm, (row0, end, bz, a_off), tid, tm, threads, cfg.io.clone());
    let col0 = CUBE_POS_X * tn;
    // cmma loads and stores need 32-byte aligned tiles; every fragment below starts at a
    // multiple of 16 elements of a row or column of 64.
    let mut a_tile = SharedMemory::<I>::new_aligned(comptime![(tk * tm) as usize], 128usize);
    let mut b_tile = SharedMemory::<I>::new_aligned(comptime![(tk * tn) as usize], 128usize);
    // This plane's quarter: rows `pr .. pr + 32`, columns `pc .. pc + 32` of the tile.
    let plane = tid / PLANE;
    let pr = (plane / 2) * 32;
    let pc = (plane % 2) * 32;
    let c00 = zeroed_accumulator(mk);
    let c01 = zeroed_accumulator(mk);
    let c10 = zeroed_accumulator(mk);
    let c11 = zeroed_accumulator(mk);
    let a0 = operand::<I>(cmma::MatrixIdent::A, cmma::MatrixLayout::ColMajor, mk);
    let a1 = operand::<I>(cmma::MatrixIdent::A, cmma::MatrixLayout::ColMajor, mk);
    let b0 = operand::<I>(cmma::MatrixIdent::B, cmma::MatrixLayout::RowMajor, mk);
    let b1 = operand::<I>(cmma::MatrixIdent::B, cmma::MatrixLayout::RowMajor, mk);
    let (a_len, b_len) = comptime![((tk * tm) as usize, (tk * tn) as usize)];

    let (mut k0, k_end) = k_range(meta, cfg.io.split_k, tk);
    while k0 < k_end {
        stage_tiles::<F, I>(
            a,
            b,
            extra,
            meta,
            &a_rows,
            &norm,
            norm_params,
            &mut a_tile,
            &mut b_tile,
            (row0, end, col0, a_off, b_off),
            k0,
            k_end,
            tid,
            comptime![(tm, tn, tk, threads)],
            cfg.io.clone(),
        );
        sync_cube();
        #[unroll]
        for s in 0..comptime![tk / mk] {
            // A column-major (element (i, kk) at kk · tm + i), B row-major (kk · tn + j).
            let a_at = (s * mk * tm + pr) as usize;
            let b_at = (s * mk * tn + pc) as usize;
            cmma::load(&a0, &a_tile.slice(a_at, a_len), tm);
            cmma::load(&a1, &a_tile.slice(a_at + 16, a_len), tm);
            cmma::load(&b0, &b_tile.slice(b_at, b_len), tn);
            cmma::load(&b1, &b_tile.slice(b_at + 16, b_len), tn);
            cmma::execute::<I, I, f32, f32>(&a0, &b0, &c00, &c00);
            cmma::execute::<I, I, f32, f32>(&a0, &b1, &c01, &c01);
            cmma::execute::<I, I, f32, f32>(&a1, &b0, &c10, &c10);
            cmma::execute::<I, I, f32, f32>(&a1, &b1, &c11, &c11);
        }
        sync_cube();
        k0 += tk;
    }

    // The accumulators, row-major in shared memory, then the epilogue and the store of each
    // element that exists, as the shared-tile GEMM does them.
    let mut c_tile = SharedMemory::<f32>::new_aligned(comptime![(tm * tn) as usize], 128usize);
    let c_len = comptime![(tm * tn) as usize];
    let at = pr * tn + pc;
    cmma::store(&mut c_tile.slice_mut(at as usize, c_len), &c00, tn, cmma::MatrixLayout::RowMajor);
    cmma::store(&mut c_tile.slice_mut((at + 16) as usize, c_len), &c01, tn, cmma::MatrixLayout::RowMajor);
    cmma::store(&mut c_tile.slice_mut((at + 16 * tn) as usize, c_len), &c10, tn, cmma::MatrixLayout::RowMajor);
    cmma::store(&mut c_tile.slice_mut((at + 16 * tn + 16) as usize, c_len), &c11, tn, cmma::MatrixLayout::RowMajor);
    sync_cube();
    #[unroll]
    for l in 0..comptime![(tm * tn) / threads] {
        let idx = tid + l * threads;
        let at = (bz, row0 + idx / tn, col0 + idx % tn, end);
        store_c(c_tile[idx as usize], extra, meta, index, c, at, fold, cfg.io.batch.clone(), cfg.io.epilogue.clone());
    }
}

/// A `16 × 16` f32 accumulator of `16 × 16 × k` products, zeroed.
#[cube]
pub(crate) fn zeroed_accumulator(#[comptime] k: u32) -> cmma::Matrix<f32> {
    cmma::Matrix::<f32>::from_value(
        cmma::MatrixIdent::Accumulator,
        16usize,
        16usize,
        k as usize,
        cmma::MatrixLayout::Undefined,
        0.0,
    )
}

/// A fragment (`A`: 16 × k, `B`: k × 16, an accumulator 16 × 16) of type `I`, uninitialised:
/// loaded before use.
#[cube]
pub(crate) fn operand<I: Numeric>(
    #[comptime] ident: cmma::MatrixIdent,
    #[comptime] layout: cmma::MatrixLayout,
    #[comptime] k: u32,
) -> cmma::Matrix<I> {
    unsafe { cmma::Matrix::<I>::uninitialized(ident, 16usize, 16usize, k as usize, layout) }
}
