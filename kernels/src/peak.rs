//! Microbenchmarks of a device's ceilings: arithmetic (independent fused multiply-adds on
//! vectors in registers) and memory (a vectorised copy). `calm bench` runs them beside the
//! kernels it measures, so each kernel's speed reads as a share of what the device can do.

use cubecl::prelude::*;

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
    out[((CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) * CUBE_DIM_X + UNIT_POS_X) as usize] =
        a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
}

/// `dst = src`, one vector per thread.
#[cube(launch_unchecked)]
pub fn copy<N: Size>(src: &Array<Vector<f32, N>>, dst: &mut Array<Vector<f32, N>>) {
    let i = ((CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) * CUBE_DIM_X + UNIT_POS_X) as usize;
    if i < dst.len() {
        dst[i] = src[i];
    }
}
