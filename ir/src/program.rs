//! Elementwise programs: a straight-line list of scalar instructions over a fused op's
//! arguments, evaluated once per output element. Fusion passes build them from chains of
//! elementwise primitives; the lowering turns single primitives into one-instruction programs;
//! the kernels evaluate them (one generated kernel per program).
//!
//! Register `i` holds the value of instruction `i`. Values are logically typed (float, integer,
//! bool); arguments are read at the output element's position after numpy broadcasting.

use serde::{Deserialize, Serialize};

use crate::op::Op;
pub use crate::op::{BinaryFn, UnaryFn};
use crate::types::DType;

/// One instruction; operands are earlier registers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "i", rename_all = "snake_case")]
pub enum Instr {
    /// Argument `index` of the op, at this element (broadcast).
    Arg {
        index: u32,
    },
    /// A constant of `dtype`, as the bits of an f64 (so programs can be hashed and compared).
    Const {
        bits: u64,
        dtype: DType,
    },
    Unary {
        f: UnaryFn,
        x: u32,
    },
    Binary {
        f: BinaryFn,
        a: u32,
        b: u32,
    },
    /// `cond ? a : b`.
    Select {
        cond: u32,
        a: u32,
        b: u32,
    },
    Cast {
        to: DType,
        x: u32,
    },
    /// A uniform number in (0, 1) from the shared generator: the element's linear index in the
    /// output, this `stream`, and the `seed` and `offset` (u32 scalar arguments).
    Uniform {
        stream: u32,
        seed: u32,
        offset: u32,
    },
    /// The element's coordinate along `axis` of the output.
    Index {
        axis: u32,
    },
}

impl Instr {
    /// An f32 constant.
    pub fn constant(value: f64) -> Instr {
        Instr::Const { bits: value.to_bits(), dtype: DType::F32 }
    }

    /// The registers this instruction reads.
    pub fn operands(&self) -> Vec<u32> {
        match *self {
            Instr::Arg { .. } | Instr::Const { .. } | Instr::Uniform { .. } | Instr::Index { .. } => vec![],
            Instr::Unary { x, .. } | Instr::Cast { x, .. } => vec![x],
            Instr::Binary { a, b, .. } => vec![a, b],
            Instr::Select { cond, a, b } => vec![cond, a, b],
        }
    }
}

/// A program and the registers it writes out, each with its element type.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Program {
    pub instrs: Vec<Instr>,
    pub outputs: Vec<(u32, DType)>,
}

impl Program {
    /// The program of one primitive op (arguments of `arg_types`, result of `out`), or `None`
    /// if the op is not elementwise: what the lowering launches for a lone op, and what the
    /// fusion passes splice together, so a fused program computes exactly what its primitives do.
    pub fn of_primitive(op: &Op, arg_types: &[DType], out: DType) -> Option<Program> {
        let n = arg_types.len() as u32;
        Some(match op {
            Op::Unary(f) => single(n, Instr::Unary { f: *f, x: 0 }, out),
            Op::Binary(f) => single(n, Instr::Binary { f: *f, a: 0, b: 1 }, out),
            Op::Cast { to } => single(n, Instr::Cast { to: *to, x: 0 }, out),
            Op::Select => single(n, Instr::Select { cond: 0, a: 1, b: 2 }, out),
            Op::Constant { value, dtype } => single(0, Instr::Const { bits: value.0.to_bits(), dtype: *dtype }, out),
            Op::Iota { axis, .. } => single(0, Instr::Index { axis: *axis as u32 }, out),
            Op::RandomUniform { stream, .. } => Program {
                instrs: vec![Instr::Uniform { stream: *stream, seed: 0, offset: 1 }],
                outputs: vec![(0, out)],
            },
            Op::Dropout { p, stream } => {
                // drop where u < p (in f32, as the reference), else x / (1 - p).
                let instrs = vec![
                    Instr::Arg { index: 0 },
                    Instr::Uniform { stream: *stream, seed: 1, offset: 2 },
                    Instr::constant(*p as f32 as f64),
                    Instr::Binary { f: BinaryFn::Less, a: 1, b: 2 },
                    Instr::constant(1.0 / (1.0 - p)),
                    Instr::Binary { f: BinaryFn::Mul, a: 0, b: 4 },
                    Instr::constant(0.0),
                    Instr::Select { cond: 3, a: 6, b: 5 },
                ];
                Program { instrs, outputs: vec![(7, out)] }
            }
            _ => return None,
        })
    }

    /// Checks that operands refer to earlier registers and outputs to existing ones.
    pub fn check(&self, num_args: usize) -> Result<(), String> {
        for (i, instr) in self.instrs.iter().enumerate() {
            if let Some(bad) = instr.operands().into_iter().find(|&r| r as usize >= i) {
                return Err(format!("instruction {i} reads register {bad}, which is not earlier"));
            }
            let args: &[u32] = match instr {
                Instr::Arg { index } => &[*index],
                Instr::Uniform { seed, offset, .. } => &[*seed, *offset],
                _ => &[],
            };
            if let Some(bad) = args.iter().find(|&&a| a as usize >= num_args) {
                return Err(format!("instruction {i} reads argument {bad} of {num_args}"));
            }
        }
        if self.outputs.is_empty() {
            return Err("a program needs at least one output".into());
        }
        if let Some((r, _)) = self.outputs.iter().find(|(r, _)| *r as usize >= self.instrs.len()) {
            return Err(format!("output register {r} does not exist"));
        }
        Ok(())
    }

    /// Scalar FLOPs per element (one per arithmetic instruction).
    pub fn flops_per_element(&self) -> u64 {
        self.instrs
            .iter()
            .filter(|i| {
                matches!(i, Instr::Unary { .. } | Instr::Binary { .. } | Instr::Select { .. } | Instr::Uniform { .. })
            })
            .count() as u64
    }
}

/// A program that loads `n` arguments and applies `last` to them.
fn single(n: u32, last: Instr, out: DType) -> Program {
    let mut instrs: Vec<Instr> = (0..n).map(|index| Instr::Arg { index }).collect();
    instrs.push(last);
    Program { outputs: vec![(n, out)], instrs }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_check_their_registers() {
        let ok = Program {
            instrs: vec![Instr::Arg { index: 0 }, Instr::constant(2.0), Instr::Binary { f: BinaryFn::Mul, a: 0, b: 1 }],
            outputs: vec![(2, DType::F32)],
        };
        ok.check(1).unwrap();
        assert_eq!(ok.flops_per_element(), 1);
        assert!(ok.check(0).is_err(), "argument 0 of none");
        let forward = Program { instrs: vec![Instr::Unary { f: UnaryFn::Exp, x: 0 }], outputs: vec![(0, DType::F32)] };
        assert!(forward.check(0).is_err());
        let json = serde_json::to_string(&ok).unwrap();
        assert_eq!(serde_json::from_str::<Program>(&json).unwrap(), ok);
    }
}
