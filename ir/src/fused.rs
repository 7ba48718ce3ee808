//! Fused ops: the ops that fusion passes create, kept apart from the primitives.
//!
//! The rest of the IR reaches a fused op only through [`Op::Fused`](crate::op::Op::Fused) and the
//! methods below, so a fusion pass adds its op here (a variant, its name, arity, results and its
//! shape rule in [`FusedOp::infer`]) and touches nothing else.

use serde::{Deserialize, Serialize};

use crate::infer::{broadcast_shapes, infer, TypeError};
use crate::op::{Arity, Op};
use crate::program::Program;
use crate::types::{DType, Shape, TensorType};

/// An op produced by fusing primitives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kernel", rename_all = "snake_case")]
pub enum FusedOp {
    /// A chain of elementwise ops as one program over `shape`: arguments broadcast to it, one
    /// result per program output.
    Elementwise { shape: Shape, program: Program },
    /// A matmul followed by an elementwise program on its result: arguments `a, b, extra..`;
    /// program argument 0 is the product, arguments `1..` the extras (broadcast to the product).
    MatMulEpilogue { transpose_a: bool, transpose_b: bool, program: Program },
}

impl FusedOp {
    pub fn name(&self) -> &'static str {
        match self {
            FusedOp::Elementwise { .. } => "fused_elementwise",
            FusedOp::MatMulEpilogue { .. } => "fused_matmul",
        }
    }

    pub fn arity(&self) -> Arity {
        match self {
            FusedOp::Elementwise { .. } => Arity::AtLeast(0),
            FusedOp::MatMulEpilogue { .. } => Arity::AtLeast(2),
        }
    }

    pub fn num_results(&self) -> usize {
        match self {
            FusedOp::Elementwise { program, .. } => program.outputs.len(),
            FusedOp::MatMulEpilogue { .. } => 1,
        }
    }

    pub fn attrs_text(&self) -> String {
        let n = |p: &Program| p.instrs.len();
        match self {
            FusedOp::Elementwise { program, .. } => format!("{} instrs", n(program)),
            FusedOp::MatMulEpilogue { transpose_a, transpose_b, program } => {
                format!(
                    "{}{}+{} instrs",
                    if *transpose_a { "tA," } else { "" },
                    if *transpose_b { "tB," } else { "" },
                    n(program)
                )
            }
        }
    }

    /// Result types from argument types, as for the primitives.
    pub fn infer(&self, args: &[&TensorType]) -> Result<Vec<TensorType>, TypeError> {
        let program_error = |e: String| TypeError::Attribute(format!("program: {e}"));
        match self {
            FusedOp::Elementwise { shape, program } => {
                program.check(args.len()).map_err(program_error)?;
                let mut all: Vec<&[crate::types::Dim]> = args.iter().map(|t| t.shape.as_slice()).collect();
                all.push(shape);
                if broadcast_shapes(&all)? != *shape {
                    return Err(TypeError::Shape(format!("arguments do not broadcast to {shape:?}")));
                }
                Ok(program.outputs.iter().map(|&(_, dtype)| TensorType::new(dtype, shape.clone())).collect())
            }
            FusedOp::MatMulEpilogue { transpose_a, transpose_b, program } => {
                let product =
                    infer(&Op::MatMul { transpose_a: *transpose_a, transpose_b: *transpose_b }, &args[..2])?.remove(0);
                program.check(args.len() - 1).map_err(program_error)?;
                if program.outputs.len() != 1 {
                    return Err(TypeError::Attribute("a matmul epilogue has one output".into()));
                }
                let mut all: Vec<&[crate::types::Dim]> = args[2..].iter().map(|t| t.shape.as_slice()).collect();
                all.push(&product.shape);
                if broadcast_shapes(&all)? != product.shape {
                    return Err(TypeError::Shape("epilogue arguments do not broadcast to the product".into()));
                }
                let dtype: DType = program.outputs[0].1;
                Ok(vec![TensorType::new(dtype, product.shape)])
            }
        }
    }
}
