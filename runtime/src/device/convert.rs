//! From plan kernels (IR programs, plan configurations) to the kernels crate's compile-time
//! configurations.

use calm_ir::program::{Instr, Program as IrProgram};
use calm_ir::DType;
use calm_kernels::elementwise::{CastTo, Kind, Op, Program};
use calm_passes::plan::Storage;

/// The kernel argument kind of a storage type.
pub fn kind(storage: Storage) -> Kind {
    match storage {
        Storage::Float => Kind::Float,
        Storage::I32 => Kind::Int,
        Storage::U32 | Storage::Bool => Kind::UInt,
    }
}

fn kind_of(dtype: DType) -> Kind {
    kind(Storage::of(dtype))
}

/// Positions of each item within its kind: `[(Float, 0), (UInt, 0), (Float, 1)]` for kinds
/// `[Float, UInt, Float]`.
pub fn slots(kinds: &[Kind]) -> Vec<(Kind, usize)> {
    let mut counts = [0usize; 3];
    kinds
        .iter()
        .map(|&k| {
            let i = k as usize;
            counts[i] += 1;
            (k, counts[i] - 1)
        })
        .collect()
}

/// The kernel ops of an IR program (registers and argument numbers carry over).
pub fn ops(p: &IrProgram) -> Vec<Op> {
    p.instrs
        .iter()
        .map(|i| match *i {
            Instr::Arg { index } => Op::Arg(index as usize),
            Instr::Const { bits, .. } => Op::Const((f64::from_bits(bits) as f32).to_bits()),
            Instr::Unary { f, x } => Op::Unary(f, x as usize),
            Instr::Binary { f, a, b } => Op::Binary(f, a as usize, b as usize),
            Instr::Select { cond, a, b } => Op::Select(cond as usize, a as usize, b as usize),
            Instr::Cast { to, x } => Op::Cast(
                match to {
                    DType::Bool => CastTo::ToBool,
                    t if t.is_int() => CastTo::ToInt,
                    _ => CastTo::ToFloat,
                },
                x as usize,
            ),
            Instr::Uniform { stream, seed, offset } => {
                Op::Uniform { stream, seed: seed as usize, offset: offset as usize }
            }
            Instr::Index { axis } => Op::Index(axis as usize),
        })
        .collect()
}

/// The elementwise kernel's program for an IR program whose arguments are stored as `args`.
pub fn elementwise(p: &IrProgram, rank: usize, args: &[Storage]) -> Program {
    let arg_kinds: Vec<Kind> = args.iter().map(|&s| kind(s)).collect();
    let out_kinds: Vec<Kind> = p.outputs.iter().map(|&(_, t)| kind_of(t)).collect();
    let out_slots = slots(&out_kinds);
    Program {
        rank,
        args: slots(&arg_kinds),
        ops: ops(p),
        outputs: p.outputs.iter().zip(out_slots).map(|(&(reg, _), (k, slot))| (reg as usize, k, slot)).collect(),
    }
}

/// The kernels' batching of a GEMM launch from the plan's.
pub fn batching(rank: usize, grouped: Option<&calm_passes::plan::Grouped>) -> calm_kernels::matmul::Batching {
    use calm_kernels::matmul::{BatchIndex as K, Batching};
    use calm_passes::plan::BatchIndex as P;
    let map = |b: &P| match b {
        P::Own => K::Own,
        P::Expert => K::Expert,
        P::Unit => K::Unit,
    };
    match grouped {
        None => Batching::own(rank),
        Some(g) => Batching { rank, b: map(&g.b), extras: g.extras.iter().map(map).collect() },
    }
}
