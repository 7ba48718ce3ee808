//! Microbenchmarks of a device's ceilings, one per execution unit: the FP32 pipelines
//! (independent fused multiply-adds on vectors in registers), the tensor cores (chains of
//! `cmma` products on register tiles, per operand type), memory (a vectorised copy), and the
//! cost of a launch (a kernel that does nothing). `calm device-peak` runs them; the profiler
//! reads each kernel as a share of the ceiling of the unit it runs on.

use cubecl::prelude::*;

use crate::elementwise::linear_pos;

/// `iters` rounds of multiply-adds on 8 independent vectors per thread: 16 · N FLOPs a round.
#[cube(launch_unchecked)]
pub fn fma<N: Size>(out: &mut Array<Vector<f32, N>>, iters: u32) {
    let seed = f32::cast_from(UNIT_POS_X) * 0.001;
    let mut a0 = Vector::<f32, N>::new(seed);
    let mut a1 = a0 + Vector::new(1.0);
    let mut a2 = a0 + Vector::new(2.0);
    let mut a3 = a0 + Vector::new(3.0);
    let mut a4 = a0 + Vector::new(4.0);
    let mut a5 = a0 + Vector::new(5.0);
    let mut a6 = a0 + Vector::new(6.0);
    let mut a7 = a0 + Vector::new(7.0);
    let m = Vector::<f32, N>::new(0.999);
    let c = Vector::<f32, N>::new(0.001);
    for _ in 0..iters {
        a0 = a0 * m + c;
        a1 = a1 * m + c;
        a2 = a2 * m + c;
        a3 = a3 * m + c;
        a4 = a4 * m + c;
        a5 = a5 * m + c;
        a6 = a6 * m + c;
        a7 = a7 * m + c;
    }
    out[linear_pos() as usize] = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
}

/// `dst = src`, one vector per thread.
#[cube(launch_unchecked)]
pub fn copy<N: Size>(src: &Array<Vector<f32, N>>, dst: &mut Array<Vector<f32, N>>) {
    let i = linear_pos() as usize;
    if i < dst.len() {
        dst[i] = src[i];
    }
}

/// Tensor-core throughput: each plane keeps one `16 × 16 × k` A and B tile and four independent
/// f32 accumulators in registers and runs `rounds` products into each (four chains, so one
/// product's latency hides behind the others'): `2 · 16 · 16 · k · 4 · rounds` FLOPs a plane.
/// `lhs` and `rhs` hold one tile each (`16 · k` elements); `out` four accumulator tiles a plane.
/// Cubes are `32 × planes` units; plane `UNIT_POS_Y` of cube `CUBE_POS_X`.
#[cube(launch_unchecked)]
pub fn mma<I: Numeric>(lhs: &Array<I>, rhs: &Array<I>, out: &mut Array<f32>, rounds: u32, #[comptime] k: usize) {
    let a = cmma::Matrix::<I>::from_slice(
        cmma::MatrixIdent::A,
        16usize,
        16usize,
        k,
        cmma::MatrixLayout::RowMajor,
        &lhs.to_slice(),
        k as u32,
    );
    let b = cmma::Matrix::<I>::from_slice(
        cmma::MatrixIdent::B,
        16usize,
        16usize,
        k,
        cmma::MatrixLayout::RowMajor,
        &rhs.to_slice(),
        16u32,
    );
    let c0 = zeroed_accumulator(k);
    let c1 = zeroed_accumulator(k);
    let c2 = zeroed_accumulator(k);
    let c3 = zeroed_accumulator(k);
    for _ in 0..rounds {
        cmma::execute::<I, I, f32, f32>(&a, &b, &c0, &c0);
        cmma::execute::<I, I, f32, f32>(&a, &b, &c1, &c1);
        cmma::execute::<I, I, f32, f32>(&a, &b, &c2, &c2);
        cmma::execute::<I, I, f32, f32>(&a, &b, &c3, &c3);
    }
    // Each accumulator to a tile of its own, so none of the chains is dead code.
    let first = (CUBE_POS_X * CUBE_DIM_Y + UNIT_POS_Y) as usize * 4;
    store_tile(out, first, &c0);
    store_tile(out, first + 1, &c1);
    store_tile(out, first + 2, &c2);
    store_tile(out, first + 3, &c3);
}

/// A `16 × 16` f32 accumulator of `16 × 16 × k` products, zeroed.
#[cube]
fn zeroed_accumulator(#[comptime] k: usize) -> cmma::Matrix<f32> {
    cmma::Matrix::<f32>::from_value(
        cmma::MatrixIdent::Accumulator,
        16usize,
        16usize,
        k,
        cmma::MatrixLayout::Undefined,
        0.0,
    )
}

/// Stores accumulator `c` as the `tile`-th `16 × 16` row-major tile of `out`.
#[cube]
fn store_tile(out: &mut Array<f32>, tile: usize, c: &cmma::Matrix<f32>) {
    let start = tile * 256;
    cmma::store(&mut out.slice_mut(start, start + 256), c, 16, cmma::MatrixLayout::RowMajor);
}

/// Nothing but a launch: one unit writes one word (so the launch is not empty). Timing many
/// of these back to back gives what each launch costs beyond its work.
#[cube(launch_unchecked)]
pub fn nothing(out: &mut Array<u32>) {
    if ABSOLUTE_POS == 0 {
        out[0] = 1u32;
    }
}
