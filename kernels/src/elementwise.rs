//! The generated elementwise kernel: one kernel per [`Program`], which the CubeCL compiler
//! expands instruction by instruction (the program is a compile-time argument), so a fused chain
//! of elementwise ops becomes one straight-line kernel.
//!
//! Registers are f32 whatever the storage type (f16 buffers compute in f32; integers are exact
//! below 2²⁴). Arguments come in three sequences by storage (floats, i32, u32 — bools are u32
//! 0/1), read at `offset + Σ coord[d] · strides[d]` from a metadata array (the offset places a
//! slice of a wider result); the output shape, strides and offsets are runtime values, so
//! programs that differ only in shape share one compiled kernel.
//! No plane (warp) operations: it runs on CPU Vulkan drivers.

pub use calm_ir::op::{BinaryFn, UnaryFn};
use cubecl::prelude::*;

use crate::philox_cube::uniform_at;

/// How an argument or output is stored.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Float,
    Int,
    /// u32, and bools as 0/1.
    UInt,
}

/// What a cast computes on the f32 register (registers are f32 whatever the storage).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum CastTo {
    /// Between float types: the value itself.
    ToFloat,
    /// To an integer type: truncation toward zero.
    ToInt,
    /// To bool: `x != 0` as 0/1.
    ToBool,
}

/// One instruction; operands are earlier registers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Argument `arg` (its position in [`Program::args`]).
    Arg(usize),
    /// A constant, as f32 bits.
    Const(u32),
    /// The IR's functions ([`UnaryFn`], [`BinaryFn`]): the list is the IR's, computed here.
    Unary(UnaryFn, usize),
    Binary(BinaryFn, usize, usize),
    Cast(CastTo, usize),
    Select(usize, usize, usize),
    /// A uniform number from the shared generator for this element, `stream`, and the u32
    /// scalars of arguments `seed` and `offset`.
    Uniform {
        stream: u32,
        seed: usize,
        offset: usize,
    },
    /// The element's coordinate along `axis`.
    Index(usize),
}

/// A compiled program: argument kinds (each with its index within its kind's sequence),
/// instructions, and outputs (register, kind, index within its kind's output sequence).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Program {
    pub rank: usize,
    pub args: Vec<(Kind, usize)>,
    pub ops: Vec<Op>,
    pub outputs: Vec<(usize, Kind, usize)>,
}

/// Coordinates of linear index `pos` in `shape` (meta[0..rank]), and the offset of argument
/// `arg` (of `args`) at those coordinates: its strides follow the shape in `meta`, and after
/// every argument's strides come the arguments' starts (see [`meta`]).
#[cube]
fn arg_offset(
    pos: u32,
    meta: &Array<u32>,
    #[comptime] rank: usize,
    #[comptime] args: usize,
    #[comptime] arg: usize,
) -> u32 {
    let mut rem = pos;
    let mut offset = meta[comptime![rank * (args + 1) + arg]];
    #[unroll]
    for r in 0..rank {
        let d = rank - 1 - r;
        let size = meta[d];
        let coord = rem % size;
        rem /= size;
        offset += coord * meta[rank * (arg + 1) + d];
    }
    offset
}

#[cube]
fn coordinate(pos: u32, meta: &Array<u32>, #[comptime] rank: usize, #[comptime] axis: usize) -> u32 {
    let mut rem = pos;
    let mut out = 0u32;
    #[unroll]
    for r in 0..rank {
        let d = rank - 1 - r;
        let size = meta[d];
        if comptime![d == axis] {
            out = rem % size;
        }
        rem /= size;
    }
    out
}

/// −∞ (WGSL has no literal for it).
#[cube]
pub fn neg_infinity() -> f32 {
    f32_from_bits(0xFF80_0000u32)
}

/// The float with these bits, for the values no literal spells (±∞, NaN). The bits are or-ed
/// with a zero CubeCL cannot fold (`UNIT_POS_X & 0`): CubeCL 0.10's CUDA compiler emits the
/// bitcast of a constant as `reinterpret_cast<float const&>(uint32(…))`, which NVRTC rejects
/// (a reference to a temporary); of a variable, it is valid C++ and WGSL alike.
#[cube]
#[allow(clippy::erasing_op)]
fn f32_from_bits(#[comptime] bits: u32) -> f32 {
    f32::reinterpret(bits | (UNIT_POS_X & 0))
}

#[cube]
pub(crate) fn constant(#[comptime] bits: u32) -> f32 {
    if comptime![f32::from_bits(bits).is_finite()] {
        f32::new(comptime![f32::from_bits(bits)])
    } else {
        f32_from_bits(bits)
    }
}

#[cube]
pub(crate) fn unary(#[comptime] f: UnaryFn, x: f32) -> f32 {
    match f {
        UnaryFn::Neg => -x,
        UnaryFn::Exp => f32::exp(x),
        UnaryFn::Log => f32::ln(x),
        UnaryFn::Sqrt => f32::sqrt(x),
        UnaryFn::Rsqrt => 1.0 / f32::sqrt(x),
        UnaryFn::Tanh => f32::tanh(x),
        UnaryFn::Sigmoid => 0.5 + 0.5 * f32::tanh(0.5 * x),
        UnaryFn::Relu => select(x > 0.0, x, 0.0),
        UnaryFn::Gelu => 0.5 * x * (1.0 + Erf::erf(x * 0.70710677)),
    }
}

#[cube]
pub(crate) fn cast(#[comptime] to: CastTo, x: f32) -> f32 {
    match to {
        CastTo::ToFloat => x,
        CastTo::ToInt => f32::trunc(x),
        CastTo::ToBool => select(x != 0.0, 1.0, 0.0),
    }
}

#[cube]
pub(crate) fn binary(#[comptime] f: BinaryFn, a: f32, b: f32) -> f32 {
    match f {
        BinaryFn::Add => a + b,
        BinaryFn::Sub => a - b,
        BinaryFn::Mul => a * b,
        BinaryFn::Div => a / b,
        // NaN in either argument gives NaN.
        BinaryFn::Max => select(a < b || b.is_nan(), b, a),
        BinaryFn::Equal => select(a == b, 1.0, 0.0),
        BinaryFn::Less => select(a < b, 1.0, 0.0),
    }
}

/// Linear position of this thread over a grid tiled in x and y.
#[cube]
pub fn linear_pos() -> u32 {
    cube_pos() * CUBE_DIM_X + UNIT_POS_X
}

/// The cube's position in a launch whose cube count is tiled over x and y (see the plan's
/// `launch_dims`): one cube per sample, row or line of such kernels.
#[cube]
pub fn cube_pos() -> u32 {
    CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X
}

/// The registers of `program` at element `pos` of its output shape (arguments read at their
/// strides in `meta`). Shared by the elementwise kernel and the reductions with a prologue.
#[cube]
pub fn registers<F: Float>(
    pos: u32,
    floats: &Sequence<Array<F>>,
    ints: &Sequence<Array<i32>>,
    uints: &Sequence<Array<u32>>,
    meta: &Array<u32>,
    #[comptime] program: Program,
) -> Sequence<f32> {
    let rank = comptime![program.rank];
    let mut regs = Sequence::<f32>::new();
    #[unroll]
    for i in 0..program.ops.len() {
        let op = comptime![program.ops[i].clone()];
        let value = match op {
            Op::Arg(a) => {
                let (kind, slot) = comptime![program.args[a]];
                let at = arg_offset(pos, meta, rank, comptime![program.args.len()], a) as usize;
                match kind {
                    Kind::Float => f32::cast_from(floats[slot][at]),
                    Kind::Int => f32::cast_from(ints[slot][at]),
                    Kind::UInt => f32::cast_from(uints[slot][at]),
                }
            }
            // WGSL has no literals for infinities or NaN: those go in as bits.
            Op::Const(bits) => constant(bits),
            Op::Unary(f, x) => unary(f, *regs.index(x)),
            Op::Binary(f, a, b) => binary(f, *regs.index(a), *regs.index(b)),
            Op::Cast(to, x) => cast(to, *regs.index(x)),
            Op::Select(c, a, b) => select(*regs.index(c) != 0.0, *regs.index(a), *regs.index(b)),
            Op::Uniform { stream, seed, offset } => {
                let (_, seed_slot) = comptime![program.args[seed]];
                let (_, offset_slot) = comptime![program.args[offset]];
                uniform_at(uints[seed_slot][0], uints[offset_slot][0], stream, pos)
            }
            Op::Index(axis) => f32::cast_from(coordinate(pos, meta, rank, axis)),
        };
        regs.push(value);
    }
    regs
}

#[cube(launch)]
pub fn elementwise<F: Float>(
    floats: &Sequence<Array<F>>,
    ints: &Sequence<Array<i32>>,
    uints: &Sequence<Array<u32>>,
    float_out: &mut Sequence<Array<F>>,
    int_out: &mut Sequence<Array<i32>>,
    uint_out: &mut Sequence<Array<u32>>,
    meta: &Array<u32>,
    len: u32,
    #[comptime] program: Program,
) {
    let pos = linear_pos();
    if pos >= len {
        terminate!();
    }
    let regs = registers::<F>(pos, floats, ints, uints, meta, program.clone());
    #[unroll]
    for o in 0..program.outputs.len() {
        let (reg, kind, slot) = comptime![program.outputs[o]];
        let value = *regs.index(reg);
        let at = pos as usize;
        match kind {
            Kind::Float => {
                let out = float_out.index_mut(slot);
                out[at] = F::cast_from(value);
            }
            Kind::Int => {
                let out = int_out.index_mut(slot);
                out[at] = i32::cast_from(value);
            }
            Kind::UInt => {
                let out = uint_out.index_mut(slot);
                out[at] = u32::cast_from(value);
            }
        }
    }
}

/// A device buffer argument: its handle and length in elements.
#[derive(Clone)]
pub struct Buf {
    pub handle: cubecl::server::Handle,
    pub len: usize,
}

/// The metadata array of a launch: the output shape, then each argument's strides, then where
/// each argument starts in its buffer (`offsets`; missing ones start at 0).
pub fn meta(shape: &[u32], strides: &[Vec<u32>], offsets: &[u32]) -> Vec<u32> {
    let mut m = shape.to_vec();
    for s in strides {
        m.extend_from_slice(s);
    }
    m.extend((0..strides.len()).map(|i| offsets.get(i).copied().unwrap_or(0)));
    // Scalars (rank 0) still need a non-empty array.
    if m.is_empty() {
        m.push(1);
    }
    m
}

/// The three sequences (floats, i32, u32) of a program's buffers, each in its kind's order.
pub type Sequences<R, F> = (SequenceArg<R, Array<F>>, SequenceArg<R, Array<i32>>, SequenceArg<R, Array<u32>>);

/// Splits `bufs` into the kernels' three sequences by kind.
pub fn sequences<R: Runtime, F: Float + CubeElement>(bufs: &[(Kind, &Buf)]) -> Sequences<R, F> {
    let (mut floats, mut ints, mut uints) = (SequenceArg::new(), SequenceArg::new(), SequenceArg::new());
    for (kind, b) in bufs {
        let arg = unsafe { ArrayArg::from_raw_parts(b.handle.clone(), b.len) };
        match kind {
            Kind::Float => floats.push(arg),
            Kind::Int => ints.push(arg),
            Kind::UInt => uints.push(arg),
        }
    }
    (floats, ints, uints)
}

/// Launches `program` over `len` elements; `args` and `outs` in the program's order, each
/// with its kind; `meta` from [`meta`], already on the device.
#[allow(clippy::too_many_arguments)]
pub fn launch<R: Runtime, F: Float + CubeElement>(
    client: &ComputeClient<R>,
    program: &Program,
    args: &[(Kind, &Buf)],
    outs: &[(Kind, &Buf)],
    meta: &Buf,
    len: u32,
    cube_count: CubeCount,
    cube_dim: CubeDim,
) {
    let (floats, ints, uints) = sequences::<R, F>(args);
    let (float_out, int_out, uint_out) = sequences::<R, F>(outs);
    let meta = unsafe { ArrayArg::from_raw_parts(meta.handle.clone(), meta.len) };
    elementwise::launch::<F, R>(
        client,
        cube_count,
        cube_dim,
        floats,
        ints,
        uints,
        float_out,
        int_out,
        uint_out,
        meta,
        len,
        program.clone(),
    );
}
