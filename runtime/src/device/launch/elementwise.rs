//! Elementwise programs, and the program arguments a reduction's prologue shares with them.

use calm_ir::program::Program as IrProgram;
use calm_kernels::elementwise::{self as kernels, Buf, Kind, Program};
use calm_passes::plan::{Kernel, Storage};
use cubecl::prelude::*;

use super::{Buffers, Call};
use crate::device::{convert, DeviceFloat};

/// Buffers with the kernel argument kinds of their storage.
fn kinds(bufs: Buffers<'_>) -> Vec<(Kind, &Buf)> {
    bufs.iter().map(|(s, b)| (convert::kind(*s), b)).collect()
}

/// `program` over a shape of `rank` as the elementwise kernels take it, and the launch's reads
/// as its `arity` arguments (one per strides entry in the metadata) with their kinds.
pub(super) fn program_args<'a, R: Runtime>(
    c: &Call<'a, R>,
    program: &IrProgram,
    rank: usize,
    arity: usize,
) -> (Program, Vec<(Kind, &'a Buf)>) {
    if c.reads.len() != arity {
        c.mismatch(&format!("{arity} program arguments"));
    }
    let storages: Vec<Storage> = c.reads.iter().map(|(s, _)| *s).collect();
    (convert::elementwise(program, rank, &storages), kinds(c.reads))
}

/// `program` over a shape of `rank`: reads its `arity` arguments, writes one buffer per output.
pub(super) fn elementwise<R: Runtime, F: DeviceFloat>(c: Call<'_, R>) {
    let Kernel::Elementwise { ref shape, ref strides, ref program, .. } = *c.kernel else {
        unreachable!("an elementwise launch")
    };
    let (rank, arity) = (shape.len(), strides.len());
    let (p, args) = program_args(&c, program, rank, arity);
    if c.writes.len() != program.outputs.len() {
        c.mismatch(&format!("{} program outputs", program.outputs.len()));
    }
    let outs = kinds(c.writes);
    kernels::launch::<R, F>(c.client, &p, &args, &outs, c.meta(), c.items(), c.count, c.dim);
}
