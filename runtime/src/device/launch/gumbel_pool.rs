//! Gumbel-softmax clustering and pooling.

use calm_kernels::gumbel_pool::{self as kernels, PoolConfig};
use calm_passes::plan::Kernel;
use cubecl::prelude::*;

use super::{arg, u32_of, Call};
use crate::device::DeviceFloat;

pub(super) fn gumbel_pool<R: Runtime, F: DeviceFloat>(c: Call<'_, R>) {
    let Kernel::GumbelPool {
        batch,
        tokens,
        hidden,
        clusters,
        width,
        threads,
        transpose_w,
        temperature,
        noise_stream,
        eps,
        write_assign,
    } = *c.kernel
    else {
        unreachable!("a Gumbel pool launch")
    };
    let takes = "hidden, w, bias, x, mask, then τ with a temperature, then seed, offset with noise -> pooled, assign";
    let ([(_, h), (_, w), (_, bias), (_, x), (_, mask), optional @ ..], [(_, pooled), (_, assign)]) = c.buffers()
    else {
        c.mismatch(takes)
    };
    // Optional arguments follow the five tensors: τ, then seed and offset. Absent ones are not
    // read; any buffer of the right kind fills their slots.
    let (tau, seed, offset) = match (temperature, noise_stream.is_some(), optional) {
        (false, false, []) => (h, h, h),
        (true, false, [(_, tau)]) => (tau, h, h),
        (false, true, [(_, seed), (_, offset)]) => (h, seed, offset),
        (true, true, [(_, tau), (_, seed), (_, offset)]) => (tau, seed, offset),
        _ => c.mismatch(takes),
    };
    let cfg = PoolConfig {
        threads,
        clusters: u32_of(clusters),
        width: u32_of(width),
        transpose_w,
        temperature,
        noise_stream,
        write_assign,
    };
    kernels::gumbel_pool::launch::<F, R>(
        c.client,
        c.count,
        c.dim,
        arg(h),
        arg(w),
        arg(bias),
        arg(x),
        arg(mask),
        arg(tau),
        arg(seed),
        arg(offset),
        arg(pooled),
        arg(assign),
        u32_of(batch),
        u32_of(tokens),
        u32_of(hidden),
        eps as f32,
        cfg,
    );
}
