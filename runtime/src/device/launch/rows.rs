//! Row kernels: softmax, layer norm and reductions (with or without an elementwise prologue).

use calm_kernels::rows::{self as kernels, GroupedRows};
use calm_passes::plan::{Kernel, Reduction};
use cubecl::prelude::*;

use super::elementwise::program_args;
use super::{arg, u32_of, Call};
use crate::device::DeviceFloat;

pub(super) fn softmax<R: Runtime, F: DeviceFloat>(c: Call<'_, R>) {
    let Kernel::Softmax { outer, len, inner, log } = *c.kernel else { unreachable!("a softmax launch") };
    let ([(_, x)], [(_, out)]) = c.buffers() else { c.mismatch("x -> out") };
    let (outer, len, inner) = (u32_of(outer), u32_of(len), u32_of(inner));
    kernels::softmax::launch::<F, R>(c.client, c.count, c.dim, arg(x), arg(out), outer, len, inner, log);
}

pub(super) fn layer_norm<R: Runtime, F: DeviceFloat>(c: Call<'_, R>) {
    let Kernel::LayerNorm { rows, cols, eps, grouped } = *c.kernel else { unreachable!("a layer norm launch") };
    let takes = "x, gamma, beta (and the index buffer if grouped) -> out";
    let ([(_, x), (_, gamma), (_, beta), rest @ ..], [(_, out)]) = c.buffers() else { c.mismatch(takes) };
    let index = c.optional(grouped.is_some(), rest, x, takes);
    let grouped = grouped.map(|g| GroupedRows { tokens: u32_of(g.tokens), gather: g.gather });
    kernels::layer_norm::launch::<F, R>(
        c.client,
        c.count,
        c.dim,
        arg(x),
        arg(gamma),
        arg(beta),
        arg(index),
        arg(out),
        u32_of(rows),
        u32_of(cols),
        eps as f32,
        grouped,
    );
}

/// `[outer, len, inner] → [outer, inner]` over `x`, or over the `prologue` program's output
/// (never stored) when there is one.
pub(super) fn reduce<R: Runtime, F: DeviceFloat>(c: Call<'_, R>) {
    let Kernel::Reduce { op, outer, len, inner, ref prologue } = *c.kernel else { unreachable!("a reduce launch") };
    let prologue = prologue.as_ref();
    let op = match op {
        Reduction::Sum => kernels::Reduction::Sum,
        Reduction::Mean => kernels::Reduction::Mean,
        Reduction::Max => kernels::Reduction::Max,
    };
    let (outer, len, inner) = (u32_of(outer), u32_of(len), u32_of(inner));
    let [(_, out)] = c.writes else { c.mismatch("x, or its prologue's arguments, -> out") };
    match prologue {
        None => {
            let [(_, x)] = c.reads else { c.mismatch("x -> out") };
            kernels::reduce::launch::<F, R>(c.client, c.count, c.dim, arg(x), arg(out), outer, len, inner, op);
        }
        Some(p) => {
            let (program, args) = program_args(&c, &p.program, p.shape.len(), p.strides.len());
            let (floats, ints, uints) = calm_kernels::elementwise::sequences::<R, F>(&args);
            let meta = arg(c.meta());
            kernels::reduce_program::launch::<F, R>(
                c.client,
                c.count,
                c.dim,
                floats,
                ints,
                uints,
                arg(out),
                meta,
                outer,
                len,
                inner,
                program,
                op,
            );
        }
    }
}
