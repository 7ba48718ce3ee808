//! A mixture of experts' dispatch of routed units into slots, and the combine back.

use calm_kernels::moe as kernels;
use calm_passes::plan::Kernel;
use cubecl::prelude::*;

use super::{arg, u32_of, Call};
use crate::device::DeviceFloat;

pub(super) fn dispatch<R: Runtime, F: DeviceFloat>(c: Call<'_, R>) {
    let Kernel::Dispatch { units, experts, top_k, slots, first, first_expert } = *c.kernel else {
        unreachable!("a dispatch launch")
    };
    let takes = "chosen, gates -> index, slot_gate, unit_slot";
    let ([(_, chosen), (_, gates)], [(_, index), (_, slot_gate), (_, unit_slot)]) = c.buffers() else {
        c.mismatch(takes)
    };
    kernels::dispatch::launch::<F, R>(
        c.client,
        c.count,
        c.dim,
        arg(chosen),
        arg(gates),
        arg(index),
        arg(slot_gate),
        arg(unit_slot),
        u32_of(units),
        u32_of(slots),
        u32_of(first),
        u32_of(first_expert),
        u32_of(experts),
        u32_of(top_k),
    );
}

pub(super) fn combine<R: Runtime, F: DeviceFloat>(c: Call<'_, R>) {
    let Kernel::Combine { units, width, tokens, top_k, groups, first_group, out_stride } = *c.kernel else {
        unreachable!("a combine launch")
    };
    let ([(_, x), (_, slot_gate), (_, unit_slot)], [(_, out)]) = c.buffers() else {
        c.mismatch("x, slot_gate, unit_slot -> out")
    };
    kernels::combine::launch::<F, R>(
        c.client,
        c.count,
        c.dim,
        arg(x),
        arg(slot_gate),
        arg(unit_slot),
        arg(out),
        u32_of(units),
        u32_of(width),
        u32_of(tokens),
        u32_of(groups),
        u32_of(first_group),
        u32_of(out_stride),
        u32_of(top_k),
    );
}
