//! Top-k routing, alone or fused with a mixture's dispatch.

use calm_kernels::route::{self as kernels, RouteConfig, RouteDispatchConfig};
use cubecl::prelude::*;

use super::{arg, u32_of, Call};
use crate::device::DeviceFloat;

#[allow(clippy::too_many_arguments)]
pub(super) fn route<R: Runtime, F: DeviceFloat>(
    c: Call<'_, R>,
    batch: u64,
    width: u64,
    experts: u64,
    top_k: u64,
    transpose_w: bool,
    write_prob: bool,
    write_chosen: bool,
) {
    let ([(_, x), (_, w), (_, bias)], [(_, gates), (_, prob), (_, chosen)]) = c.buffers() else {
        c.mismatch("x, w, bias -> gates, prob, chosen")
    };
    let cfg = RouteConfig { experts: u32_of(experts), top_k: u32_of(top_k), transpose_w, write_prob, write_chosen };
    kernels::route::launch::<F, R>(
        c.client,
        c.count,
        c.dim,
        arg(x),
        arg(w),
        arg(bias),
        arg(gates),
        arg(prob),
        arg(chosen),
        u32_of(batch),
        u32_of(width),
        cfg,
    );
}

#[allow(clippy::too_many_arguments)]
pub(super) fn route_dispatch<R: Runtime, F: DeviceFloat>(
    c: Call<'_, R>,
    units: u64,
    width: u64,
    experts: u64,
    top_k: u64,
    transpose_w: bool,
    stats: bool,
    threads: u32,
) {
    let takes = "x, w, bias -> choice, scratch, index, slot_gate, unit_slot, fraction, mean_prob";
    let [(_, x), (_, w), (_, bias)] = c.reads else { c.mismatch(takes) };
    let [(_, choice), (_, scratch), (_, index), (_, slot_gate), (_, unit_slot), (_, fraction), (_, mean_prob)] =
        c.writes
    else {
        c.mismatch(takes)
    };
    let cfg = RouteDispatchConfig { experts: u32_of(experts), top_k: u32_of(top_k), transpose_w, stats, threads };
    kernels::route_dispatch::launch::<F, R>(
        c.client,
        c.count,
        c.dim,
        arg(x),
        arg(w),
        arg(bias),
        arg(choice),
        arg(scratch),
        arg(index),
        arg(slot_gate),
        arg(unit_slot),
        arg(fraction),
        arg(mean_prob),
        u32_of(units),
        u32_of(width),
        cfg,
    );
}
