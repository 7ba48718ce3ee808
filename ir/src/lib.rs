//! `calm-ir`: the typed tensor IR that every other part of `calm` works on.
//!
//! - [`graph`]: nodes and values in arenas addressed by typed ids ([`entity`]);
//! - [`op`]: the closed set of primitive ops, and [`fused`] for the ops fusion passes add;
//! - [`program`]: elementwise programs, what fused elementwise kernels evaluate;
//! - [`infer`]: one shape/dtype rule per op, shared by the [`builder`] and the [`verify`]er;
//! - [`nn`]: layers composed from primitives; [`sample`]: a small model for tests and docs;
//! - [`cost`]: FLOPs, bytes and parameter counts by scope; [`diff`]: two graphs compared by scope;
//! - [`json`], [`dot`], [`text`]: the file, Graphviz and human-readable forms.
//!
//! `docs/ir.md` describes the IR in one page.

pub mod builder;
pub mod cost;
pub mod diff;
pub mod dot;
pub mod entity;
pub mod files;
pub mod fused;
pub mod graph;
pub mod infer;
pub mod json;
pub mod limits;
pub mod nn;
pub mod op;
pub mod program;
pub mod sample;
pub mod text;
pub mod types;
pub mod verify;

pub use builder::{BuildError, BuildResult, GraphBuilder};
pub use graph::{Graph, Node, NodeId, ValueId};
pub use op::{BinaryFn, Init, Op, OpClass, UnaryFn};
pub use types::{Bindings, DType, Dim, Shape, TensorType};
pub use verify::{verify, VerifyError, VerifyErrorKind, VerifyErrors};
