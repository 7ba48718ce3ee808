//! Top-k routing, alone or fused with a mixture's dispatch.

use calm_kernels::route::{self as kernels, RouteConfig, RouteDispatchConfig};
use calm_passes::plan::Kernel;
use cubecl::prelude::*;

use super::{arg, u32_of, Call};
use crate::device::DeviceFloat;

pub(super) fn route<R: Runtime, F: DeviceFloat>(c: Call<'_, R>) {
    let Kernel::Route { batch, width, experts, top_k, transpose_w, write_prob, write_chosen } = *c.kernel else {
        unreachable!("a route launch")
    };
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

pub(super) fn route_dispatch<R: Runtime, F: DeviceFloat>(c: Call<'_, R>) {
    let Kernel::RouteDispatch { units, width, experts, top_k, transpose_w, stats, threads, .. } = *c.kernel else {
        unreachable!("a route-dispatch launch")
    };
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
