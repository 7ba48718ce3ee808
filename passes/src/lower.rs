//! Lowering: a verified graph (with or without fused ops) and concrete symbol sizes to a
//! [`KernelPlan`]. One launch per op (fusion passes run before, on the graph); reshapes are free
//! (the result aliases its argument's buffer); every other op maps to one kernel, or for
//! reductions over several axes, one per axis.

use calm_ir::cost::{node_cost_stored, route_flops_per_prob};
use calm_ir::entity::SecondaryMap;
use calm_ir::fused::{FusedOp, MixtureRouter, EXPERT_LAYER_PARAMS};
use calm_ir::program::{BinaryFn, Instr, Program, UnaryFn};
use calm_ir::types::ShapeError;
use calm_ir::{verify, Bindings, DType, Graph, NodeId, Op, ValueId, VerifyErrors};
use thiserror::Error;

use crate::fuse_projections::reads_slices_in_place;
use crate::memory::plan_memory;
use crate::plan::*;

/// How to compute matmuls: the device decides.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum GemmStrategy {
    /// Shared-memory tiles (GPUs).
    SharedTiles(GemmTile),
    /// Register blocking without shared memory, vector loads where the layout allows (CPU
    /// Vulkan drivers such as lavapipe, where barriers are costly and every load counts).
    Registers,
}

/// Threads per cube of the Gumbel pool kernel: tokens per tile, and the columns of the stream
/// are shared out among them.
const GUMBEL_POOL_THREADS: u32 = 128;

/// Compile options.
#[derive(Clone, Debug)]
pub struct LowerOptions {
    pub float: FloatType,
    pub gemm: GemmStrategy,
    /// Store weights that are only multiplied as `x · Wᵀ` transposed, so the GEMM reads them
    /// row-major.
    pub transpose_weights: bool,
    /// Query rows per thread of attention over many keys (see [`ATTENTION_ROWS_PER_THREAD`]).
    pub attention_rows: u32,
}

impl LowerOptions {
    /// For GPUs (CUDA): GEMMs in shared-memory tiles. The register-blocked GEMMs suit lavapipe,
    /// but their 32 × 16 accumulators per thread spill on a GPU (ptxas: 168–255 registers and
    /// ~10 KB of spills per thread on sm_90).
    pub fn gpu() -> Self {
        LowerOptions {
            gemm: GemmStrategy::SharedTiles(crate::plan::GemmTile::DEFAULT),
            attention_rows: 1,
            ..LowerOptions::default()
        }
    }
}

impl Default for LowerOptions {
    fn default() -> Self {
        LowerOptions {
            float: FloatType::F32,
            gemm: GemmStrategy::Registers,
            transpose_weights: true,
            attention_rows: ATTENTION_ROWS_PER_THREAD,
        }
    }
}

/// The GEMM kernel for an `m × n` product given the layouts of `A` and `B`.
fn choose_gemm(
    strategy: GemmStrategy,
    m: u64,
    n: u64,
    k: u64,
    a_strides: [u64; 2],
    b_strides: [u64; 2],
    a_offset: u64,
) -> Gemm {
    match strategy {
        GemmStrategy::SharedTiles(t) => Gemm::SharedTiles(t),
        GemmStrategy::Registers => {
            let width = [16u32, 8, 4].into_iter().find(|&w| n.is_multiple_of(w as u64));
            match width {
                // Measured on lavapipe (see BENCHMARKS.md): 32 rows by 16 columns per thread,
                // 8 threads per cube; fewer rows when the product has fewer.
                // A is read four elements at a time: its rows must start on multiples of 4.
                Some(width)
                    if a_strides[1] == 1
                        && k.is_multiple_of(4)
                        && a_strides[0].is_multiple_of(4)
                        && a_offset.is_multiple_of(4)
                        && b_strides[1] == 1 =>
                {
                    Gemm::Vectors { rows: m.clamp(1, 32) as u32, width, threads: 8 }
                }
                _ => Gemm::Registers { rows: m.clamp(1, 8) as u32, cols: 2, threads: 64 },
            }
        }
    }
}

#[derive(Debug, Error)]
pub enum LowerError {
    #[error("invalid graph: {0}")]
    Invalid(#[from] VerifyErrors),
    #[error("{0}")]
    Shape(#[from] ShapeError),
    #[error("{node} ({op} @ {scope}): {reason}")]
    Unsupported { node: NodeId, op: &'static str, scope: String, reason: String },
}

/// Row-major strides of a contiguous tensor.
pub fn contiguous_strides(shape: &[u64]) -> Vec<u64> {
    let mut strides = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    strides
}

/// Strides reading a contiguous `arg` at each coordinate of `out` under numpy broadcasting
/// (0 along broadcast dimensions).
pub fn broadcast_strides(arg: &[u64], out: &[u64]) -> Vec<u64> {
    broadcast(&contiguous_strides(arg), arg, out)
}

/// [`broadcast_strides`] for an `arg` laid out at strides `own`.
fn broadcast(own: &[u64], arg: &[u64], out: &[u64]) -> Vec<u64> {
    let offset = out.len() - arg.len();
    (0..out.len())
        .map(|d| if d < offset || arg[d - offset] != out[d] || arg[d - offset] == 1 { 0 } else { own[d - offset] })
        .collect()
}

/// A program that loads `n` arguments and applies `last` to them.
fn single(n: u32, last: Instr, out: DType) -> Program {
    let mut instrs: Vec<Instr> = (0..n).map(|index| Instr::Arg { index }).collect();
    instrs.push(last);
    Program { outputs: vec![(n, out)], instrs }
}

fn unary_fn(op: &Op) -> Option<UnaryFn> {
    Some(match op {
        Op::Neg => UnaryFn::Neg,
        Op::Exp => UnaryFn::Exp,
        Op::Log => UnaryFn::Log,
        Op::Sqrt => UnaryFn::Sqrt,
        Op::Rsqrt => UnaryFn::Rsqrt,
        Op::Tanh => UnaryFn::Tanh,
        Op::Sigmoid => UnaryFn::Sigmoid,
        Op::Relu => UnaryFn::Relu,
        Op::Gelu => UnaryFn::Gelu,
        _ => return None,
    })
}

fn binary_fn(op: &Op) -> Option<BinaryFn> {
    Some(match op {
        Op::Add => BinaryFn::Add,
        Op::Sub => BinaryFn::Sub,
        Op::Mul => BinaryFn::Mul,
        Op::Div => BinaryFn::Div,
        Op::Max => BinaryFn::Max,
        Op::Equal => BinaryFn::Equal,
        Op::Less => BinaryFn::Less,
        _ => return None,
    })
}

/// The elementwise program of a primitive, or `None` if the op is not elementwise.
pub fn primitive_program(op: &Op, arg_types: &[DType], out: DType) -> Option<Program> {
    let n = arg_types.len() as u32;
    if let Some(f) = unary_fn(op) {
        return Some(single(n, Instr::Unary { f, x: 0 }, out));
    }
    if let Some(f) = binary_fn(op) {
        return Some(single(n, Instr::Binary { f, a: 0, b: 1 }, out));
    }
    Some(match op {
        Op::Cast { to } => single(n, Instr::Cast { to: *to, x: 0 }, out),
        Op::Select => single(n, Instr::Select { cond: 0, a: 1, b: 2 }, out),
        Op::Constant { value, dtype } => single(0, Instr::Const { bits: value.0.to_bits(), dtype: *dtype }, out),
        Op::Iota { axis, .. } => single(0, Instr::Index { axis: *axis as u32 }, out),
        Op::RandomUniform { stream, .. } => {
            Program { instrs: vec![Instr::Uniform { stream: *stream, seed: 0, offset: 1 }], outputs: vec![(0, out)] }
        }
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

/// `[outer, len, inner]` around `axis`.
fn around(shape: &[u64], axis: usize) -> (u64, u64, u64) {
    (shape[..axis].iter().product(), shape[axis], shape[axis + 1..].iter().product())
}

/// The stride per flattened row of an argument read at `full` (its broadcast strides over a
/// product of `shape`) when the product's leading dimensions are folded into its rows, if one
/// stride serves: rows walk the batch dimensions, then the rows, so the argument must advance
/// by the same stride per flattened row throughout. Dimensions of size 1 do not move.
fn flat_row_stride(full: &[u64], shape: &[u64]) -> Option<u64> {
    let rank = shape.len();
    let after = |d: usize| shape[d + 1..rank - 1].iter().product::<u64>();
    let moving: Vec<usize> = (0..rank - 1).filter(|&d| shape[d] > 1).collect();
    let row = moving.last().map_or(0, |&d| full[d] / after(d));
    moving.iter().all(|&d| full[d] == row * after(d)).then_some(row)
}

struct Lowering<'a> {
    g: &'a Graph,
    bindings: &'a Bindings,
    opts: &'a LowerOptions,
    plan: KernelPlan,
    buffer_of: SecondaryMap<ValueId, Option<u32>>,
    /// Parameters stored transposed (see [`LowerOptions::transpose_weights`]).
    transposed: SecondaryMap<ValueId, bool>,
    users: SecondaryMap<ValueId, Vec<NodeId>>,
    /// Slices read in place: no buffer of their own (see [`View`]).
    views: SecondaryMap<ValueId, Option<View>>,
    /// Concatenations of two parts along the last axis that every reader (a GEMM's `A`) reads
    /// from the parts' own buffers: the two buffers and the first part's width.
    split: SecondaryMap<ValueId, Option<(u32, u32, u64)>>,
}

/// A slice along the last axis of a contiguous result, read where it lies: element `[.., j]` of
/// row `r` is at `offset + r · row_stride + j` in `buffer`.
#[derive(Copy, Clone, Debug)]
struct View {
    buffer: u32,
    offset: u64,
    row_stride: u64,
}

/// The parameter names a `Concat` node joins, if every argument is a parameter: the lowering
/// builds such a concatenation when the weights are loaded instead of launching a copy.
fn param_concat(g: &Graph, n: NodeId) -> Option<Vec<&str>> {
    let node = &g.nodes[n];
    if !matches!(node.op, Op::Concat { .. }) {
        return None;
    }
    node.args.iter().map(|&a| g.nodes[g.producer(a)].op.param_name()).collect()
}

/// Rank-2 weights (parameters, and load-time concatenations of them) read only as the `B` of
/// `A · Bᵀ` products.
fn transposable_weights(g: &Graph, users: &SecondaryMap<ValueId, Vec<NodeId>>) -> SecondaryMap<ValueId, bool> {
    let mut out: SecondaryMap<ValueId, bool> = SecondaryMap::new();
    let weights = g.nodes.iter().filter(|&(id, n)| matches!(n.op, Op::Param { .. }) || param_concat(g, id).is_some());
    for (_, node) in weights {
        let v = node.results[0];
        let as_weight = |u: NodeId| {
            let reader = &g.nodes[u];
            if let Op::Fused(f @ FusedOp::ExpertMixture { .. }) = &reader.op {
                return reader.args.iter().enumerate().all(|(i, &a)| a != v || f.reads_as_weight(i));
            }
            let transposed_b = match &reader.op {
                Op::MatMul { transpose_b, .. } | Op::Fused(FusedOp::MatMulEpilogue { transpose_b, .. }) => *transpose_b,
                _ => false,
            };
            transposed_b && reader.args[1] == v && reader.args[0] != v && !reader.args[2..].contains(&v)
        };
        out[v] = g.value_type(v).rank() == 2 && !users[v].is_empty() && users[v].iter().all(|&u| as_weight(u));
    }
    out
}

impl Lowering<'_> {
    fn shape(&self, v: ValueId) -> Result<Vec<u64>, LowerError> {
        let ty = self.g.value_type(v);
        ty.size_bytes(self.bindings)?;
        Ok(ty.dims(self.bindings)?)
    }

    fn new_buffer(&mut self, v: ValueId, role: Role) -> Result<u32, LowerError> {
        let len = self.shape(v)?.iter().product::<u64>().max(1);
        let id = self.plan.buffers.len() as u32;
        self.plan.buffers.push(Buffer {
            storage: Storage::of(self.g.value_type(v).dtype),
            len,
            role,
            value: v.to_string(),
        });
        self.buffer_of[v] = Some(id);
        Ok(id)
    }

    fn buf(&self, v: ValueId) -> u32 {
        self.buffer_of[v].expect("arguments are lowered before their readers")
    }

    /// A copy of `src` (read with `src_strides` from `src_offset`) into a new contiguous `out`.
    fn emit_copy(
        &mut self,
        n: NodeId,
        src: ValueId,
        out: ValueId,
        src_strides: Vec<u64>,
        src_offset: u64,
        out_shape: &[u64],
    ) -> Result<(), LowerError> {
        let kernel = Kernel::Copy {
            src_strides,
            src_offset,
            dst_strides: contiguous_strides(out_shape),
            dst_offset: 0,
            shape: out_shape.to_vec(),
        };
        let reads = vec![self.buf(src)];
        let w = self.new_buffer(out, Role::Temp)?;
        self.emit(n, kernel, reads, vec![w])
    }

    fn emit(&mut self, n: NodeId, kernel: Kernel, reads: Vec<u32>, writes: Vec<u32>) -> Result<(), LowerError> {
        let float_bytes = Some(self.plan.float.size_bytes());
        let cost = node_cost_stored(self.g, n, self.bindings, float_bytes).map_err(|e| e.source)?;
        self.emit_costed(n, kernel, reads, writes, cost);
        Ok(())
    }

    /// A launch that computes part of node `n`, with its own cost: `flops`, and the bytes of the
    /// buffers it reads and writes.
    fn emit_part(&mut self, n: NodeId, kernel: Kernel, reads: Vec<u32>, writes: Vec<u32>, flops: u64) {
        let bytes = |bs: &[u32]| bs.iter().map(|&b| self.plan.buffer_bytes(b)).sum::<u64>();
        let cost = calm_ir::cost::Cost { flops, bytes_read: bytes(&reads), bytes_written: bytes(&writes) };
        self.emit_costed(n, kernel, reads, writes, cost);
    }

    /// A temporary buffer no graph value holds: an intermediate of a multi-launch op, or the
    /// placeholder of a result that is not written. `label` names it in the plan.
    fn scratch(&mut self, storage: Storage, len: u64, label: String) -> u32 {
        let id = self.plan.buffers.len() as u32;
        self.plan.buffers.push(Buffer { storage, len: len.max(1), role: Role::Temp, value: label });
        id
    }

    fn emit_costed(&mut self, n: NodeId, kernel: Kernel, reads: Vec<u32>, writes: Vec<u32>, cost: calm_ir::cost::Cost) {
        let node = &self.g.nodes[n];
        let (cube_count, cube_dim) = kernel.launch_dims();
        // A slice or concatenation read in place has no launch of its own: its readers compute
        // it, and name it among their nodes.
        let mut nodes = vec![n.to_string()];
        for &a in &node.args {
            let producer = self.g.producer(a).to_string();
            if (self.views[a].is_some() || self.split[a].is_some()) && !nodes.contains(&producer) {
                nodes.push(producer);
            }
        }
        self.plan.launches.push(Launch {
            kernel,
            reads,
            writes,
            cube_count,
            cube_dim,
            nodes,
            scope: node.scope.clone(),
            cost,
        });
    }

    /// Whether a node or a graph output reads `v`.
    fn is_read(&self, v: ValueId) -> bool {
        !self.users[v].is_empty() || self.is_output(v)
    }

    fn is_output(&self, v: ValueId) -> bool {
        self.g.outputs.iter().any(|o| o.value == v)
    }

    /// An elementwise launch of `program` over `shape` and the buffers it reads: each argument
    /// at its broadcast strides, a slice read in place (see [`View`]) at its producer's row
    /// stride from its start.
    fn elementwise(
        &self,
        args: &[ValueId],
        shape: Vec<u64>,
        program: Program,
    ) -> Result<(Vec<u32>, Kernel), LowerError> {
        let (mut reads, mut strides, mut offsets) = (Vec::new(), Vec::new(), Vec::new());
        for &a in args {
            let own = self.shape(a)?;
            let (buffer, layout, offset) = match self.views[a] {
                Some(view) => {
                    let mut wide = own.clone();
                    *wide.last_mut().expect("a slice has rank >= 1") = view.row_stride;
                    (view.buffer, contiguous_strides(&wide), view.offset)
                }
                None => (self.buf(a), contiguous_strides(&own), 0),
            };
            reads.push(buffer);
            strides.push(broadcast(&layout, &own, &shape));
            offsets.push(offset);
        }
        if offsets.iter().all(|&o| o == 0) {
            offsets.clear();
        }
        Ok((reads, Kernel::Elementwise { shape, strides, offsets, program }))
    }

    /// Where the rows of `v` (`width` wide) lie: its buffer, their stride and the start.
    fn rows_of(&self, v: ValueId, width: u64) -> (u32, u64, u64) {
        match self.views[v] {
            Some(view) => (view.buffer, view.row_stride, view.offset),
            None => (self.buf(v), width, 0),
        }
    }

    /// Emits a launch of `kernel` reading all of node `n`'s arguments and writing its results,
    /// each only where `written` says so: the others get a one-element placeholder buffer (the
    /// kernel is told not to write it) and leave the launch's modelled bytes.
    fn emit_optional_results(&mut self, n: NodeId, kernel: Kernel, written: &[bool]) -> Result<(), LowerError> {
        let node = &self.g.nodes[n];
        let reads = node.args.iter().map(|&a| self.buf(a)).collect();
        let mut writes = Vec::new();
        let mut unwritten = 0u64;
        for (&r, &w) in node.results.iter().zip(written) {
            if w {
                writes.push(self.new_buffer(r, Role::Temp)?);
            } else {
                // As the cost model counts it: floats at the plan's float size.
                let t = self.g.value_type(r);
                let size = if t.dtype.is_float() { self.plan.float.size_bytes() } else { t.dtype.size_bytes() };
                unwritten += t.numel(self.bindings)? * size;
                writes.push(self.scratch(Storage::of(t.dtype), 1, format!("{r} (not written)")));
            }
        }
        self.emit(n, kernel, reads, writes)?;
        let cost = &mut self.plan.launches.last_mut().expect("just emitted").cost;
        cost.bytes_written = cost.bytes_written.saturating_sub(unwritten);
        Ok(())
    }

    fn unsupported(&self, n: NodeId, reason: &str) -> LowerError {
        let node = &self.g.nodes[n];
        LowerError::Unsupported { node: n, op: node.op.name(), scope: node.scope.clone(), reason: reason.to_string() }
    }

    /// Row and column strides of a GEMM's `B` (`k × n` as the product reads it): a weight stored
    /// transposed is the row-major `k × n` matrix it is on the device.
    fn b_strides(&self, b: ValueId, tb: bool, k: u64, n: u64) -> [u64; 2] {
        if tb && !self.transposed[b] {
            [1, k]
        } else {
            [n, 1]
        }
    }

    /// Whether matmul `n`, reading a concatenation whose first part is `head_width` wide as its
    /// `A`, would get a GEMM kernel that reads `A` in two parts (not the lanes kernel).
    fn gemm_reads_parts(&self, n: NodeId, head_width: u64) -> Result<bool, LowerError> {
        let node = &self.g.nodes[n];
        let tb = match &node.op {
            Op::MatMul { transpose_b, .. } | Op::Fused(FusedOp::MatMulEpilogue { transpose_b, .. }) => *transpose_b,
            _ => return Ok(false),
        };
        let (a, out) = (self.shape(node.args[0])?, self.shape(node.results[0])?);
        let (n_, k) = (out[out.len() - 1], a[a.len() - 1]);
        let b_strides = self.b_strides(node.args[1], tb, k, n_);
        let rows = out[..out.len() - 1].iter().product();
        let gemm = choose_gemm(self.opts.gemm, rows, n_, k, [head_width, 1], b_strides, 0);
        Ok(!matches!(gemm, Gemm::Registers { .. }))
    }

    /// A matmul, with the epilogue program of a fused one: its extra arguments (the node's
    /// arguments after `a` and `b`) are read at broadcast strides over the product.
    fn lower_matmul(
        &mut self,
        n: NodeId,
        args: &[ValueId],
        ta: bool,
        tb: bool,
        program: Option<&Program>,
    ) -> Result<(), LowerError> {
        let out = self.g.nodes[n].results[0];
        let out_shape = self.shape(out)?;
        let (a, b) = (self.shape(args[0])?, self.shape(args[1])?);
        let rank = out_shape.len();
        let (mut m, n_, k) =
            (out_shape[rank - 2], out_shape[rank - 1], if ta { a[a.len() - 2] } else { a[a.len() - 1] });
        let mut batch = out_shape[..rank - 2].to_vec();
        // Extra arguments' broadcast strides over the product's shape.
        let extras_full = args[2..]
            .iter()
            .map(|&e| Ok(broadcast_strides(&self.shape(e)?, &out_shape)))
            .collect::<Result<Vec<_>, LowerError>>()?;
        if self.folds_batch(n)? {
            m *= batch.iter().product::<u64>();
            batch.clear();
        }
        // op(A)[i, kk] and op(B)[kk, j] in contiguous A and B (A may be a slice read in place,
        // or a concatenation read from its two parts); a weight stored transposed is read as the
        // row-major `k × n` matrix it is on the device.
        let split = self.split[args[0]];
        let (a_buffer, a_row, a_offset) = match split {
            Some((head, _, width)) => (head, width, 0),
            None => self.rows_of(args[0], k),
        };
        let a_strides = if ta { [1, m] } else { [a_row, 1] };
        let b_strides = self.b_strides(args[1], tb, k, n_);
        // A batch entry of A spans its rows at A's row stride (wider for a slice).
        let a_rows_cols = if ta { a[a.len() - 2] * a[a.len() - 1] } else { a[a.len() - 2] * a_row };
        let batch_strides = |x: &[u64], rows_cols: u64| {
            let own: Vec<u64> = contiguous_strides(&x[..x.len() - 2]).iter().map(|s| s * rows_cols).collect();
            let offset = batch.len().saturating_sub(x.len() - 2);
            (0..batch.len())
                .map(|d| if d < offset || x[d - offset] == 1 { 0 } else { own[d - offset] })
                .collect::<Vec<u64>>()
        };
        let b_rows_cols = b[b.len() - 2] * b[b.len() - 1];
        let (a_batch_strides, b_batch_strides) = (batch_strides(&a, a_rows_cols), batch_strides(&b, b_rows_cols));
        // Extra arguments, read over the GEMM's own output view `[batch.., m, n]`: their
        // broadcast strides over the product's shape, regrouped the same way.
        let epilogue = program.map(|program| {
            let strides = extras_full
                .iter()
                .map(|full| match flat_row_stride(full, &out_shape) {
                    Some(row) if batch.is_empty() => vec![row, full[rank - 1]],
                    _ => full.clone(),
                })
                .collect();
            Epilogue { program: program.clone(), strides }
        });
        let kernel = Kernel::MatMul {
            a_batch_strides,
            b_batch_strides,
            batch,
            m,
            n: n_,
            k,
            a_strides,
            b_strides,
            a_offset,
            gemm: choose_gemm(self.opts.gemm, m, n_, k, a_strides, b_strides, a_offset),
            epilogue,
            grouped: None,
            a_split: split.map(|(_, _, width)| width),
        };
        let mut reads = vec![a_buffer, self.buf(args[1])];
        reads.extend(args[2..].iter().map(|&e| self.buf(e)));
        reads.extend(split.map(|(_, tail, _)| tail));
        let w = self.new_buffer(out, Role::Temp)?;
        self.emit(n, kernel, reads, vec![w])
    }

    /// A sparse mixture of experts ([`FusedOp::ExpertMixture`]) as launches over the routed
    /// slots: dispatch; per layer a grouped layer norm, the joint q/k/v GEMM, attention, the
    /// output projection with the residual, a grouped layer norm and the two FFN GEMMs; the mean
    /// over each slot's tokens; the combine into units.
    fn lower_experts(&mut self, n: NodeId, heads: u64, scale: f64, eps: f64) -> Result<(), LowerError> {
        let g = self.g;
        let node = &g.nodes[n];
        let args = node.args.clone();
        let Op::Fused(f @ FusedOp::ExpertMixture { groups, experts, top_k, layers, router, joined, .. }) = &node.op
        else {
            unreachable!()
        };
        let (groups, experts, top_k, layers, router, joined) = (*groups, *experts, *top_k, *layers, *router, *joined);
        // The mixed results (one, the concatenation, if joined), then the statistics.
        let mixed = if joined { 1 } else { groups as usize };
        let params = f.first_expert_param().expect("an expert mixture");
        let z = self.shape(args[0])?;
        let (units, tokens, m) = (z[0], z[1], z[2]);
        let per_group = units * top_k;
        let slots = groups * per_group;
        let rows = slots * tokens;
        let ffn = self.shape(args[params + 9])?[0] / (groups * experts);
        // Each slot's expert and unit, then where each expert's slots start.
        let index = self.scratch(Storage::U32, 2 * slots + groups * experts + 1, format!("{n}.index"));
        let slot_gate = self.scratch(Storage::Float, slots, format!("{n}.slot_gate"));
        let unit_slot = self.scratch(Storage::U32, slots, format!("{n}.unit_slot"));
        match router {
            Some(MixtureRouter { transpose_w, stats }) => {
                // One launch routes every group and orders its units: its own routers.
                if experts > ROUTE_THREADS {
                    let reason = format!("a mixture routes itself with at most {ROUTE_THREADS} experts per group");
                    return Err(self.unsupported(n, &reason));
                }
                let width = self.shape(args[1])?[1];
                let choice = self.scratch(Storage::U32, slots, format!("{n}.choice"));
                let probs = if stats { groups * units * experts } else { 0 };
                let route_scratch = self.scratch(Storage::Float, slots + probs, format!("{n}.route"));
                let (fraction, mean_prob) = if stats {
                    let (f, p) = (node.results[mixed], node.results[mixed + 1]);
                    (self.new_buffer(f, Role::Temp)?, self.new_buffer(p, Role::Temp)?)
                } else {
                    let mut placeholder =
                        |what: &str| self.scratch(Storage::Float, 1, format!("{n}.{what} (not written)"));
                    (placeholder("fraction"), placeholder("mean_prob"))
                };
                let writes = vec![choice, route_scratch, index, slot_gate, unit_slot, fraction, mean_prob];
                // A thread per unit up to the limit, and at least one per expert.
                let threads =
                    units.next_power_of_two().clamp(experts.next_power_of_two().max(32), ROUTE_THREADS) as u32;
                let kernel =
                    Kernel::RouteDispatch { groups, units, width, experts, top_k, transpose_w, stats, threads };
                let reads = vec![self.buf(args[1]), self.buf(args[2]), self.buf(args[3])];
                let flops = groups * units * experts * route_flops_per_prob(width, top_k);
                self.emit_part(n, kernel, reads, writes, flops);
            }
            None => {
                for group in 0..groups {
                    let (first, first_expert) = (group * per_group, group * experts);
                    let dispatch = Kernel::Dispatch { units, experts, top_k, slots, first, first_expert };
                    let (gates, chosen) = (args[1 + 2 * group as usize], args[2 + 2 * group as usize]);
                    let reads = vec![self.buf(chosen), self.buf(gates)];
                    self.emit_part(n, dispatch, reads, vec![index, slot_gate, unit_slot], 0);
                }
            }
        }
        let experts = groups * experts;
        // [x, gamma, beta, index] -> [rows, m]
        let norm = |l: &mut Self, x: u32, gamma: ValueId, beta: ValueId, gather: bool, what: &str| -> u32 {
            let out = l.scratch(Storage::Float, rows * m, format!("{n}.{what}"));
            let kernel = Kernel::LayerNorm { rows, cols: m, eps, grouped: Some(GroupedNorm { tokens, gather }) };
            let reads = vec![x, l.buf(gamma), l.buf(beta), index];
            l.emit_part(n, kernel, reads, vec![out], 8 * rows * m);
            out
        };
        // Per slot: its [tokens, k_in] rows of `a` times its expert's `k_in × width` block of
        // the stacked weight, plus its expert's bias, then the residual (read at the slot itself
        // or at its unit) and GELU where asked.
        #[allow(clippy::too_many_arguments)]
        let gemm = |l: &mut Self,
                    a: u32,
                    k_in: u64,
                    weight: ValueId,
                    bias: ValueId,
                    width: u64,
                    residual: Option<(u32, BatchIndex)>,
                    gelu: bool,
                    what: &str|
         -> u32 {
            let out = l.scratch(Storage::Float, rows * width, format!("{n}.{what}"));
            let stacked = experts * width;
            let mut instrs =
                vec![Instr::Arg { index: 0 }, Instr::Arg { index: 1 }, Instr::Binary { f: BinaryFn::Add, a: 0, b: 1 }];
            let mut strides = vec![vec![width, 0, 1]];
            let mut extras = vec![BatchIndex::Expert];
            let mut reads = vec![a, l.buf(weight), l.buf(bias)];
            if let Some((r, at)) = residual {
                let last = instrs.len() as u32 - 1;
                instrs.push(Instr::Arg { index: 2 });
                instrs.push(Instr::Binary { f: BinaryFn::Add, a: last, b: last + 1 });
                strides.push(vec![tokens * width, width, 1]);
                extras.push(at);
                reads.push(r);
            }
            if gelu {
                let last = instrs.len() as u32 - 1;
                instrs.push(Instr::Unary { f: UnaryFn::Gelu, x: last });
            }
            let program = Program { outputs: vec![(instrs.len() as u32 - 1, DType::F32)], instrs };
            reads.push(index);
            // Expert e's `k_in × width` block: columns e·width.. of the transposed stack, or
            // rows e·width.. of the stack as stored.
            let (b_strides, b_expert) =
                if l.transposed[weight] { ([stacked, 1], width) } else { ([1, k_in], width * k_in) };
            let a_strides = [k_in, 1];
            // A slot has only `tokens` rows (5 in CALM): the vector GEMM folds all slots' rows
            // into one sequence, in tiles within one expert's slots, so that each loaded weight
            // feeds 16 or 32 rows, not 5. Tiles of 32 (the dense GEMMs') when the average expert
            // fills three of them, else 16, which wastes less of each expert's last tile
            // (measured on lavapipe at the paper preset: see BENCHMARKS.md).
            let mut gemm = choose_gemm(l.opts.gemm, tokens, width, k_in, a_strides, b_strides, 0);
            let mut fold_experts = None;
            if let Gemm::Vectors { rows: per_cube, .. } = &mut gemm {
                let tile = if rows / experts >= 96 { 32 } else { 16 };
                *per_cube = rows.clamp(1, tile) as u32;
                fold_experts = Some(experts as u32);
            }
            let kernel = Kernel::MatMul {
                batch: vec![slots],
                a_batch_strides: vec![tokens * k_in],
                b_batch_strides: vec![b_expert],
                m: tokens,
                n: width,
                k: k_in,
                a_strides,
                b_strides,
                a_offset: 0,
                gemm,
                epilogue: Some(Epilogue { program, strides }),
                grouped: Some(Grouped { b: BatchIndex::Expert, extras, fold_experts }),
                a_split: None,
            };
            l.emit_part(n, kernel, reads, vec![out], 2 * rows * k_in * width);
            out
        };
        let z_buf = self.buf(args[0]);
        let mut x = z_buf;
        for layer in 0..layers as usize {
            let p = |i: usize| args[params + layer * EXPERT_LAYER_PARAMS.len() + i];
            let first = layer == 0;
            let h = norm(self, x, p(0), p(1), first, "ln1");
            let qkv = gemm(self, h, m, p(2), p(3), 3 * m, None, false, "qkv");
            let ctx = self.scratch(Storage::Float, rows * m, format!("{n}.attention"));
            let attention = Kernel::Attention {
                batch: slots,
                q_len: tokens,
                kv_len: tokens,
                heads,
                head_dim: m / heads,
                scale,
                bias_strides: None,
                layout: [[3 * m, 0], [3 * m, m], [3 * m, 2 * m]],
                rows_per_thread: self.opts.attention_rows,
            };
            self.emit_part(n, attention, vec![qkv, qkv, qkv], vec![ctx], 4 * rows * tokens * m);
            // The first layer's residual is the unit's own rows of z.
            let from = if first { BatchIndex::Unit } else { BatchIndex::Own };
            let x1 = gemm(self, ctx, m, p(4), p(5), m, Some((x, from)), false, "x1");
            let h = norm(self, x1, p(6), p(7), false, "ln2");
            let up = gemm(self, h, m, p(8), p(9), ffn, None, true, "ffn1");
            x = gemm(self, up, ffn, p(10), p(11), m, Some((x1, BatchIndex::Own)), false, "x2");
        }
        // Each slot's mean over its tokens, mixed back into units: all groups in one launch
        // into their concatenation if joined, else a launch per group.
        let combine = |first_group: u64, count: u64, out_stride: u64| Kernel::Combine {
            units,
            width: m,
            tokens,
            top_k,
            groups: count,
            first_group,
            out_stride,
        };
        let flops = |count: u64| count * per_group * (tokens + 2) * m;
        if joined {
            let out = self.new_buffer(node.results[0], Role::Temp)?;
            let kernel = combine(0, groups, groups * m);
            self.emit_part(n, kernel, vec![x, slot_gate, unit_slot], vec![out], flops(groups));
        } else {
            for group in 0..groups {
                let out = self.new_buffer(node.results[group as usize], Role::Temp)?;
                let kernel = combine(group, 1, m);
                self.emit_part(n, kernel, vec![x, slot_gate, unit_slot], vec![out], flops(1));
            }
        }
        Ok(())
    }

    /// Whether matmul `n` (plain or fused) runs as one GEMM over its batch folded into rows:
    /// `[.., m, k] x [k, n]` with A row-major is just more rows, if every epilogue argument can
    /// follow the flattened rows.
    fn folds_batch(&self, n: NodeId) -> Result<bool, LowerError> {
        let node = &self.g.nodes[n];
        let ta = match &node.op {
            Op::MatMul { transpose_a, .. } | Op::Fused(FusedOp::MatMulEpilogue { transpose_a, .. }) => *transpose_a,
            _ => return Ok(false),
        };
        if ta || self.g.value_type(node.args[1]).rank() != 2 {
            return Ok(false);
        }
        let product = self.shape(node.results[0])?;
        for &e in &node.args[2..] {
            if flat_row_stride(&broadcast_strides(&self.shape(e)?, &product), &product).is_none() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether concatenation `n` can stay unstored: two float parts joined along the last axis,
    /// each in a buffer of its own, read only as the row-major `A` of GEMMs that fold their
    /// batch into rows and whose kernel reads `A` in two parts (shared-tile and vector GEMMs;
    /// see [`choose_gemm`]). It then costs no copies; the GEMM reads each column from its part.
    fn read_in_parts(&self, n: NodeId) -> bool {
        let node = &self.g.nodes[n];
        let (out, rank) = (node.results[0], self.g.value_type(node.results[0]).rank());
        let Op::Concat { axis } = node.op else { return false };
        let Ok(first) = self.shape(node.args[0]) else { return false };
        let head_width = first.last().copied().unwrap_or(0);
        let as_a = |u: NodeId| {
            let reader = &self.g.nodes[u];
            self.folds_batch(u).unwrap_or(false)
                && reader.args[0] == out
                && !reader.args[1..].contains(&out)
                && self.gemm_reads_parts(u, head_width).unwrap_or(false)
        };
        axis + 1 == rank
            && rank >= 2
            && node.args.len() == 2
            && node.args.iter().all(|&a| self.views[a].is_none() && self.g.value_type(a).dtype.is_float())
            && !self.is_output(out)
            && !self.users[out].is_empty()
            && self.users[out].iter().all(|&u| as_a(u))
    }

    /// A reduction over `axes`, one launch per axis (the last axis first); with a `program`,
    /// the first launch evaluates it over the node's arguments instead of reading a stored
    /// input.
    fn lower_reduce(
        &mut self,
        n: NodeId,
        op: Reduction,
        axes: &[usize],
        program: Option<&Program>,
    ) -> Result<(), LowerError> {
        let (args, out) = (self.g.nodes[n].args.clone(), self.g.nodes[n].results[0]);
        if self.g.value_type(out).dtype.is_int() {
            return Err(self.unsupported(n, "integer reductions run on the reference executor only"));
        }
        // The reduced shape: a fused reduction's arguments broadcast to it.
        let shapes = args.iter().map(|&a| self.shape(a)).collect::<Result<Vec<_>, _>>()?;
        let rank = shapes.iter().map(Vec::len).max().unwrap_or(0);
        let mut shape = vec![1u64; rank];
        for s in &shapes {
            for (d, &size) in s.iter().enumerate() {
                let at = rank - s.len() + d;
                if size != 1 {
                    shape[at] = size;
                }
            }
        }
        let mut prologue = match program {
            Some(program) => {
                let strides =
                    args.iter()
                        .map(|&a| Ok(broadcast_strides(&self.shape(a)?, &shape)))
                        .collect::<Result<_, LowerError>>()?;
                Some(Prologue { shape: shape.clone(), strides, program: program.clone() })
            }
            None => None,
        };
        let mut reads: Vec<u32> = args.iter().map(|&a| self.buf(a)).collect();
        let mut sorted = axes.to_vec();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        for (i, &axis) in sorted.iter().enumerate() {
            let (outer, len, inner) = around(&shape, axis);
            shape[axis] = 1;
            // Intermediate results get buffers of their own; the last is the output.
            let w = if i + 1 == sorted.len() {
                self.new_buffer(out, Role::Temp)?
            } else {
                self.scratch(Storage::Float, outer * inner, format!("{out}.{i}"))
            };
            let kernel = Kernel::Reduce { op, outer, len, inner, prologue: prologue.take() };
            self.emit(n, kernel, std::mem::replace(&mut reads, vec![w]), vec![w])?;
        }
        Ok(())
    }

    fn lower_node(&mut self, n: NodeId) -> Result<(), LowerError> {
        let g = self.g;
        let node = &g.nodes[n];
        let args: Vec<ValueId> = node.args.clone();
        let out = node.results[0];
        let out_shape = self.shape(out)?;
        match &node.op {
            Op::Input { name, .. } => {
                let b = self.new_buffer(out, Role::Input)?;
                self.plan.inputs.push(Port::plain(name, b, out_shape));
            }
            // Read only by load-time concatenations: uploaded as part of those.
            Op::Param { .. }
                if !self.users[out].is_empty() && self.users[out].iter().all(|&u| param_concat(g, u).is_some()) => {}
            Op::Param { name, .. } => {
                let b = self.new_buffer(out, Role::Param)?;
                let port = Port { transposed: self.transposed[out], ..Port::plain(name, b, out_shape) };
                self.plan.params.push(port);
            }
            Op::Concat { axis } if param_concat(g, n).is_some() => {
                let parts = param_concat(g, n).expect("checked").into_iter().map(str::to_string).collect::<Vec<_>>();
                let b = self.new_buffer(out, Role::Param)?;
                let name = format!("concat({})", parts.join(", "));
                let concat = Some(ParamConcat { parts, axis: *axis });
                let port = Port { transposed: self.transposed[out], concat, ..Port::plain(&name, b, out_shape) };
                self.plan.params.push(port);
            }
            // Contiguous data reshaped is the same data.
            Op::Reshape { .. } => self.buffer_of[out] = Some(self.buf(args[0])),
            Op::MatMul { transpose_a, transpose_b } => self.lower_matmul(n, &args, *transpose_a, *transpose_b, None)?,
            Op::Softmax { axis } | Op::LogSoftmax { axis } => {
                let (outer, len, inner) = around(&out_shape, *axis);
                let kernel = Kernel::Softmax { outer, len, inner, log: matches!(node.op, Op::LogSoftmax { .. }) };
                let reads = vec![self.buf(args[0])];
                let w = self.new_buffer(out, Role::Temp)?;
                self.emit(n, kernel, reads, vec![w])?;
            }
            Op::LayerNorm { eps } => {
                let cols = *out_shape.last().expect("layer norm has rank >= 1");
                let rows = out_shape.iter().product::<u64>() / cols;
                let reads = args.iter().map(|&a| self.buf(a)).collect();
                let w = self.new_buffer(out, Role::Temp)?;
                self.emit(n, Kernel::LayerNorm { rows, cols, eps: *eps, grouped: None }, reads, vec![w])?;
            }
            Op::ReduceSum { .. } | Op::ReduceMean { .. } | Op::ReduceMax { .. } => {
                let (op, axes, _) = Reduction::of(&node.op).expect("a reduction");
                self.lower_reduce(n, op, axes, None)?;
            }
            Op::Fused(FusedOp::Reduce { reduction, axes, program, .. }) => {
                self.lower_reduce(n, *reduction, axes, Some(program))?;
            }
            Op::Permute { perm } => {
                let own = contiguous_strides(&self.shape(args[0])?);
                let src_strides = perm.iter().map(|&p| own[p]).collect();
                self.emit_copy(n, args[0], out, src_strides, 0, &out_shape)?;
            }
            Op::Broadcast { .. } => {
                let src_strides = broadcast_strides(&self.shape(args[0])?, &out_shape);
                self.emit_copy(n, args[0], out, src_strides, 0, &out_shape)?;
            }
            Op::Slice { axis, start, .. }
                if *axis + 1 == out_shape.len()
                    && self.views[args[0]].is_none()
                    && !self.is_output(out)
                    && !self.users[out].is_empty()
                    && self.users[out].iter().all(|&u| reads_slices_in_place(g, u, out)) =>
            {
                let row_stride = *self.shape(args[0])?.last().expect("a slice has rank >= 1");
                self.views[out] = Some(View { buffer: self.buf(args[0]), offset: *start, row_stride });
            }
            Op::Slice { axis, start, .. } => {
                let own = contiguous_strides(&self.shape(args[0])?);
                let offset = start * own[*axis];
                self.emit_copy(n, args[0], out, own, offset, &out_shape)?;
            }
            Op::Concat { .. } if self.read_in_parts(n) => {
                let width = self.shape(args[0])?.last().copied().unwrap_or(1);
                self.split[out] = Some((self.buf(args[0]), self.buf(args[1]), width));
            }
            Op::Concat { axis } => {
                let w = self.new_buffer(out, Role::Temp)?;
                let dst = contiguous_strides(&out_shape);
                let mut at = 0;
                for &a in &args {
                    let shape = self.shape(a)?;
                    let kernel = Kernel::Copy {
                        src_strides: contiguous_strides(&shape),
                        src_offset: 0,
                        dst_strides: dst.clone(),
                        dst_offset: at * dst[*axis],
                        shape: shape.clone(),
                    };
                    at += shape[*axis];
                    let reads = vec![self.buf(a)];
                    self.emit(n, kernel, reads, vec![w])?;
                }
            }
            Op::Gather { axis } => {
                let (outer, rows, inner) = around(&self.shape(args[0])?, *axis);
                let count = self.shape(args[1])?.iter().product();
                let reads = vec![self.buf(args[0]), self.buf(args[1])];
                let w = self.new_buffer(out, Role::Temp)?;
                self.emit(n, Kernel::Gather { outer, rows, inner, count }, reads, vec![w])?;
            }
            Op::ScatterAdd { axis } => {
                let (outer, rows, inner) = around(&out_shape, *axis);
                let count = self.shape(args[1])?.iter().product();
                let reads = args.iter().map(|&a| self.buf(a)).collect();
                let w = self.new_buffer(out, Role::Temp)?;
                self.emit(n, Kernel::ScatterAdd { outer, rows, inner, count }, reads, vec![w])?;
            }
            Op::TopK { k } => {
                let src = self.shape(args[0])?;
                let cols = *src.last().expect("top-k has rank >= 1");
                let rows = src.iter().product::<u64>() / cols;
                let reads = vec![self.buf(args[0])];
                let values = self.new_buffer(node.results[0], Role::Temp)?;
                let indices = self.new_buffer(node.results[1], Role::Temp)?;
                self.emit(n, Kernel::TopK { rows, cols, k: *k }, reads, vec![values, indices])?;
            }
            Op::OneHot { depth, .. } => {
                let count = self.shape(args[0])?.iter().product();
                let reads = vec![self.buf(args[0])];
                let w = self.new_buffer(out, Role::Temp)?;
                self.emit(n, Kernel::OneHot { count, depth: *depth }, reads, vec![w])?;
            }
            Op::Fused(FusedOp::Elementwise { program, .. }) => {
                let (reads, kernel) = self.elementwise(&args, out_shape, program.clone())?;
                let writes = node.results.iter().map(|&r| self.new_buffer(r, Role::Temp)).collect::<Result<_, _>>()?;
                self.emit(n, kernel, reads, writes)?;
            }
            Op::Fused(FusedOp::MatMulEpilogue { transpose_a, transpose_b, program }) => {
                self.lower_matmul(n, &args, *transpose_a, *transpose_b, Some(program))?;
            }
            Op::Fused(FusedOp::Attention { heads, scale, bias }) => {
                let (q, kv) = (self.shape(args[0])?, self.shape(args[1])?);
                let (batch, q_len, kv_len) = (q[0], q[1], kv[1]);
                let bias_strides = if *bias {
                    let strides = broadcast_strides(&self.shape(args[3])?, &[batch, *heads, q_len, kv_len]);
                    Some([strides[0], strides[1], strides[2], strides[3]])
                } else {
                    None
                };
                let width = q[2];
                let rows: Vec<(u32, u64, u64)> = args[..3].iter().map(|&a| self.rows_of(a, width)).collect();
                let kernel = Kernel::Attention {
                    batch,
                    q_len,
                    kv_len,
                    heads: *heads,
                    head_dim: width / heads,
                    scale: *scale,
                    bias_strides,
                    layout: [0, 1, 2].map(|i| [rows[i].1, rows[i].2]),
                    rows_per_thread: self.opts.attention_rows,
                };
                let mut reads: Vec<u32> = rows.iter().map(|r| r.0).collect();
                reads.extend(args[3..].iter().map(|&a| self.buf(a)));
                let w = self.new_buffer(out, Role::Temp)?;
                self.emit(n, kernel, reads, vec![w])?;
            }
            Op::Fused(FusedOp::GumbelPool { transpose_w, temperature, noise_stream, eps }) => {
                let (hidden, x) = (self.shape(args[0])?, self.shape(args[3])?);
                let clusters = self.shape(args[2])?[0];
                // The assignment is written only if something reads it.
                let write_assign = self.is_read(node.results[1]);
                let kernel = Kernel::GumbelPool {
                    batch: hidden[0],
                    tokens: hidden[1],
                    hidden: hidden[2],
                    clusters,
                    width: x[2],
                    threads: GUMBEL_POOL_THREADS,
                    transpose_w: *transpose_w,
                    temperature: *temperature,
                    noise_stream: *noise_stream,
                    eps: *eps,
                    write_assign,
                };
                self.emit_optional_results(n, kernel, &[true, write_assign])?;
            }
            Op::Fused(FusedOp::ExpertMixture { heads, scale, eps, .. }) => {
                self.lower_experts(n, *heads, *scale, *eps)?
            }
            Op::Fused(FusedOp::Route { top_k, transpose_w }) => {
                let x = self.shape(args[0])?;
                let [_, prob, chosen] = node.results[..] else { unreachable!("route has three results") };
                let (write_prob, write_chosen) = (self.is_read(prob), self.is_read(chosen));
                let kernel = Kernel::Route {
                    batch: x[0],
                    width: x[1],
                    experts: self.shape(args[2])?[0],
                    top_k: *top_k,
                    transpose_w: *transpose_w,
                    write_prob,
                    write_chosen,
                };
                self.emit_optional_results(n, kernel, &[true, write_prob, write_chosen])?;
            }
            op => {
                let arg_types: Vec<DType> = args.iter().map(|&a| g.value_type(a).dtype).collect();
                let program = primitive_program(op, &arg_types, g.value_type(out).dtype)
                    .ok_or_else(|| self.unsupported(n, "no kernel lowers this op"))?;
                let integer_math = arg_types.iter().any(|t| t.is_int())
                    && (unary_fn(op).is_some() || binary_fn(op).is_some_and(|f| !f.is_comparison()));
                if integer_math {
                    return Err(self.unsupported(n, "integer arithmetic runs on the reference executor only"));
                }
                let (reads, kernel) = self.elementwise(&args, out_shape, program)?;
                let w = self.new_buffer(out, Role::Temp)?;
                self.emit(n, kernel, reads, vec![w])?;
            }
        }
        Ok(())
    }
}

/// Lowers `g` for the symbol sizes `bindings`.
pub fn lower(g: &Graph, bindings: &Bindings, opts: &LowerOptions) -> Result<KernelPlan, LowerError> {
    verify(g)?;
    let users = g.users();
    let mut l = Lowering {
        g,
        bindings,
        opts,
        plan: KernelPlan {
            format: PLAN_FORMAT.to_string(),
            graph: g.name.clone(),
            bindings: bindings.iter().map(|(k, v)| (k.to_string(), v)).collect(),
            float: opts.float,
            buffers: Vec::new(),
            launches: Vec::new(),
            inputs: Vec::new(),
            params: Vec::new(),
            outputs: Vec::new(),
            memory: MemoryPlan::default(),
        },
        buffer_of: SecondaryMap::with_default(None),
        transposed: if opts.transpose_weights { transposable_weights(g, &users) } else { SecondaryMap::new() },
        users,
        views: SecondaryMap::with_default(None),
        split: SecondaryMap::with_default(None),
    };
    for n in g.topo_order().expect("verified graphs are acyclic") {
        l.lower_node(n)?;
    }
    for o in &g.outputs {
        let shape = l.shape(o.value)?;
        let buffer = l.buf(o.value);
        l.plan.outputs.push(Port::plain(&o.name, buffer, shape));
    }
    let mut plan = l.plan;
    plan.memory = plan_memory(&plan);
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_for_contiguous_and_broadcast_reads() {
        assert_eq!(contiguous_strides(&[2, 3, 4]), [12, 4, 1]);
        assert_eq!(contiguous_strides(&[]), Vec::<u64>::new());
        assert_eq!(broadcast_strides(&[3, 1], &[2, 3, 4]), [0, 1, 0]);
        assert_eq!(broadcast_strides(&[4], &[2, 3, 4]), [0, 0, 1]);
        assert_eq!(broadcast_strides(&[], &[5]), [0]);
        assert_eq!(broadcast_strides(&[1, 1], &[1, 1]), [0, 0]);
    }
}
