//! Row kernels: softmax, layer norm and reductions (with or without an elementwise prologue).

use calm_kernels::rows::{self as kernels, GroupedRows, RowCube};
use calm_passes::plan::{Kernel, Reduction};
use cubecl::prelude::*;

use super::elementwise::program_args;
use super::{arg, u32_of, Call};
use crate::device::DeviceFloat;

/// A cube per line, as the kernels take it. Their tree reduction sizes its shared memory by
/// `threads` and halves the cube's width, so the launch must be exactly `threads` wide, a power
/// of two, over contiguous lines; planes must divide it.
fn row_cube<R: Runtime>(c: &Call<'_, R>, inner: u64) -> Option<RowCube> {
    let (threads, plane) = (c.kernel.row_cube()?, c.kernel.row_plane());
    assert!(
        threads.is_power_of_two() && c.dim.x == threads && c.dim.y == 1 && c.dim.z == 1 && inner == 1,
        "a cube per line of {threads} threads launched as {:?} over lines {inner} apart",
        c.dim
    );
    assert!(
        plane.is_none_or(|w| w.is_power_of_two() && threads % w == 0),
        "planes of {plane:?} units in a cube of {threads}"
    );
    Some(RowCube { threads, plane })
}

pub(super) fn softmax<R: Runtime, F: DeviceFloat>(c: Call<'_, R>) {
    let Kernel::Softmax { outer, len, inner, log, .. } = *c.kernel else { unreachable!("a softmax launch") };
    let row_cube = row_cube(&c, inner);
    let ([(_, x)], [(_, out)]) = c.buffers() else { c.mismatch("x -> out") };
    let (outer, len, inner) = (u32_of(outer), u32_of(len), u32_of(inner));
    let (x, out) = (arg(x), arg(out));
    kernels::softmax::launch::<F, R>(c.client, c.count, c.dim, x, out, outer, len, inner, log, row_cube);
}

pub(super) fn layer_norm<R: Runtime, F: DeviceFloat>(c: Call<'_, R>) {
    let Kernel::LayerNorm { rows, cols, eps, grouped, .. } = *c.kernel else { unreachable!("a layer norm launch") };
    let row_cube = row_cube(&c, 1);
    let takes = "x, gamma, beta (and the index buffer if grouped) -> out";
    let ([(_, x), (_, gamma), (_, beta), rest @ ..], [(_, out)]) = c.buffers() else { c.mismatch(takes) };
    let index = c.optional(grouped.is_some(), rest, x, takes);
    let grouped = grouped.map(|g| GroupedRows { tokens: u32_of(g.tokens), gather: g.gather });
    let (x, gamma, beta, index, out) = (arg(x), arg(gamma), arg(beta), arg(index), arg(out));
    let (rows, cols, eps) = (u32_of(rows), u32_of(cols), eps as f32);
    let (client, count, dim) = (c.client, c.count, c.dim);
    kernels::layer_norm::launch::<F, R>(
        client, count, dim, x, gamma, beta, index, out, rows, cols, eps, grouped, row_cube,
    );
}

/// `[outer, len, inner] → [outer, inner]` over `x`, or over the `prologue` program's output
/// (never stored) when there is one.
pub(super) fn reduce<R: Runtime, F: DeviceFloat>(c: Call<'_, R>) {
    let Kernel::Reduce { op, outer, len, inner, ref prologue, .. } = *c.kernel else { unreachable!("a reduce launch") };
    let prologue = prologue.as_ref();
    let op = match op {
        Reduction::Sum => kernels::Reduction::Sum,
        Reduction::Mean => kernels::Reduction::Mean,
        Reduction::Max => kernels::Reduction::Max,
    };
    let row_cube = row_cube(&c, inner);
    let (outer, len, inner) = (u32_of(outer), u32_of(len), u32_of(inner));
    let [(_, out)] = c.writes else { c.mismatch("x, or its prologue's arguments, -> out") };
    let out = arg(out);
    match prologue {
        None => {
            let [(_, x)] = c.reads else { c.mismatch("x -> out") };
            let x = arg(x);
            kernels::reduce::launch::<F, R>(c.client, c.count, c.dim, x, out, outer, len, inner, op, row_cube);
        }
        Some(p) => {
            let (program, args) = program_args(&c, &p.program, p.shape.len(), p.strides.len());
            let (floats, ints, uints) = calm_kernels::elementwise::sequences::<R, F>(&args);
            let meta = arg(c.meta());
            let (client, count, dim) = (c.client, c.count, c.dim);
            kernels::reduce_program::launch::<F, R>(
                client, count, dim, floats, ints, uints, out, meta, outer, len, inner, program, op, row_cube,
            );
        }
    }
}
