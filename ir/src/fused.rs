//! Fused ops: the ops that fusion passes create, kept apart from the primitives.
//!
//! The rest of the IR reaches a fused op only through [`Op::Fused`](crate::op::Op::Fused) and the
//! methods below, so a fusion pass adds its op here (a variant, its name, arity, results and its
//! shape rule in [`FusedOp::infer`]) and touches nothing else. No fusion pass exists yet: the
//! enum has no variants, and a JSON file that names a fused op is refused as an unknown op.

use serde::{Deserialize, Serialize};

use crate::infer::TypeError;
use crate::op::Arity;
use crate::types::TensorType;

/// An op produced by fusing primitives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kernel", rename_all = "snake_case")]
pub enum FusedOp {}

impl FusedOp {
    pub fn name(&self) -> &'static str {
        match *self {}
    }

    pub fn arity(&self) -> Arity {
        match *self {}
    }

    pub fn num_results(&self) -> usize {
        match *self {}
    }

    pub fn attrs_text(&self) -> String {
        match *self {}
    }

    /// Result types from argument types, as for the primitives.
    pub fn infer(&self, _args: &[&TensorType]) -> Result<Vec<TensorType>, TypeError> {
        match *self {}
    }
}
