//! Lowering: a verified graph (with or without fused ops) and concrete symbol sizes to a
//! [`KernelPlan`]. One launch per op (fusion passes run before, on the graph); reshapes are free
//! (the result aliases its argument's buffer); every other op maps to one kernel, or for
//! reductions over several axes, one per axis.
//!
//! This file is the driver: the options, the [`Lowering`] state (buffers of graph values,
//! views, launches) and the dispatch of each node by its op group to the file of its kernel
//! family:
//!
//! | file | lowers | kernels |
//! |---|---|---|
//! | `sources.rs` | inputs, parameters, load-time weight concatenations | none (uploads) |
//! | `elementwise.rs` | elementwise primitives and fused chains | `Elementwise` |
//! | `matmul.rs` | matmuls, fused epilogues, concatenations read in parts | `MatMul` |
//! | `rows.rs` | softmax, layer norm, reductions (fused prologues too) | `Softmax`, `LayerNorm`, `Reduce` |
//! | `movement.rs` | permute, broadcast, slice (in place where it can), concat | `Copy` |
//! | `index.rs` | gather, scatter-add, top-k, one-hot | `Gather`, `ScatterAdd`, `TopK`, `OneHot` |
//! | `attention.rs` | fused attention | `Attention` |
//! | `gumbel_pool.rs` | CALM's clustering and pooling | `GumbelPool` |
//! | `route.rs` | top-k routing | `Route` |
//! | `experts.rs` | sparse expert mixtures | `RouteDispatch`/`Dispatch`, grouped `LayerNorm` and `MatMul`, `Attention`, `Combine` |
//!
//! Where tensors lie in buffers (strides, views of slices) is `crate::layout`.

mod attention;
mod elementwise;
mod experts;
mod gumbel_pool;
mod index;
mod matmul;
mod movement;
mod route;
mod rows;
mod sources;

use calm_ir::cost::{node_cost_stored, Cost};
use calm_ir::entity::SecondaryMap;
use calm_ir::fused::FusedOp;
use calm_ir::types::ShapeError;
use calm_ir::{verify, Bindings, Graph, NodeId, Op, OpClass, ValueId, VerifyErrors};
use thiserror::Error;

use crate::layout::{Parts, View};
use crate::memory::plan_memory;
use crate::plan::*;

pub use matmul::GemmStrategy;
pub use rows::ROW_CUBE_MIN_LEN;

/// Shared memory per cube every CUDA GPU since Kepler offers without opting in (48 KiB), the
/// GPU lowering's assumption when it does not ask the device.
pub const GPU_SHARED_MEMORY: u64 = 48 << 10;
/// Shared memory per cube on Hopper (H100, H200) with CUDA's opt-in, which CubeCL's launches
/// make: 227 KiB.
pub const SM90_SHARED_MEMORY: u64 = 227 << 10;

/// Compile options.
#[derive(Clone, Debug)]
pub struct LowerOptions {
    pub float: FloatType,
    /// What matrix products of f32 buffers may use: exact f32 (`highest`), or TF32 / bf16
    /// tensor cores where the device has them. Products of bf16 and f16 buffers use their own
    /// type's tensor cores whatever it says (their operands are already that narrow).
    pub precision: Precision,
    pub gemm: GemmStrategy,
    /// The tensor-core units the device has (`cmma` products it reports, 16 × 16 × 16 in bf16
    /// and f16, 16 × 16 × 8 in tf32): with shared tiles, a GEMM whose operands one of them can
    /// multiply runs on it. Empty: every GEMM on the FP32 pipelines.
    pub tensor_units: Vec<ComputeUnit>,
    /// Store weights that are only multiplied as `x · Wᵀ` transposed, so the GEMM reads them
    /// row-major.
    pub transpose_weights: bool,
    /// Query rows per thread of attention over many keys (see [`ATTENTION_ROWS_PER_THREAD`]).
    pub attention_rows: u32,
    /// Attention over many keys in tiles staged in shared memory (GPUs), its products on the
    /// tensor cores where [`tensor_unit`](Self::tensor_unit) allows; heads whose width is not a
    /// multiple of 16 keep one thread per query row.
    pub attention_tiles: bool,
    /// Split `k` of GEMMs whose tiles would leave most of a GPU's SMs idle (shared tiles and
    /// tensor cores; see `split_k` on [`Kernel::MatMul`]).
    pub split_k: bool,
    /// Bytes of shared memory one cube may use (the device's limit): attention runs in tiles
    /// only where its tiles fit.
    pub shared_memory: u64,
    /// Row kernels (softmax, layer norm, reductions) over contiguous lines of at least
    /// [`ROW_CUBE_MIN_LEN`] elements: `Some(most)` gives each line a cube of up to `most`
    /// threads (GPUs: a row is read by many threads at once); `None` one thread per line
    /// (lavapipe, where a cube's barriers cost more than the row).
    pub row_threads: Option<u32>,
    /// The device's plane width where all its planes have one (CUDA's warps: 32) and plane
    /// operations: a cube per line then combines within planes by shuffles. `None`: the tree
    /// in shared memory only.
    pub plane_width: Option<u32>,
}

impl LowerOptions {
    /// For an NVIDIA Hopper GPU (sm_90: H100, H200) without asking it: [`gpu`](Self::gpu) with
    /// its bf16, f16 and tf32 tensor cores. `calm compile --target cuda` and the H200 model
    /// lower for it; a device at hand reports its own units.
    pub fn sm90() -> Self {
        LowerOptions {
            tensor_units: vec![ComputeUnit::TensorBf16, ComputeUnit::TensorF16, ComputeUnit::TensorTf32],
            shared_memory: SM90_SHARED_MEMORY,
            plane_width: Some(32),
            ..LowerOptions::gpu()
        }
    }

    /// The tensor-core unit a GEMM of this plan's buffers runs on, if the device has it and the
    /// precision allows it: bf16 and f16 buffers their own type's, f32 buffers what
    /// [`Precision::allowed_tensor_unit`] allows (none under `highest`).
    pub fn tensor_unit(&self) -> Option<ComputeUnit> {
        let unit = match self.float {
            FloatType::Bf16 => Some(ComputeUnit::TensorBf16),
            FloatType::F16 => Some(ComputeUnit::TensorF16),
            FloatType::F32 => self.precision.allowed_tensor_unit(),
        }?;
        self.tensor_units.contains(&unit).then_some(unit)
    }

    /// For GPUs (CUDA): GEMMs in shared-memory tiles. The register-blocked GEMMs suit lavapipe,
    /// but their 32 × 16 accumulators per thread spill on a GPU (ptxas: 168–255 registers and
    /// ~10 KB of spills per thread on sm_90).
    pub fn gpu() -> Self {
        LowerOptions {
            gemm: GemmStrategy::SharedTiles(GemmTile::DEFAULT),
            attention_rows: 1,
            attention_tiles: true,
            split_k: true,
            shared_memory: GPU_SHARED_MEMORY,
            row_threads: Some(256),
            ..LowerOptions::default()
        }
    }
}

impl Default for LowerOptions {
    fn default() -> Self {
        LowerOptions {
            float: FloatType::F32,
            precision: Precision::Highest,
            gemm: GemmStrategy::Registers,
            transpose_weights: true,
            attention_rows: ATTENTION_ROWS_PER_THREAD,
            attention_tiles: false,
            split_k: false,
            shared_memory: GPU_SHARED_MEMORY,
            row_threads: None,
            plane_width: None,
            tensor_units: Vec::new(),
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
    #[error("{0}")]
    Plan(#[from] crate::plan::PlanError),
}

/// The state of one lowering: the graph, the plan so far, and where each value lives.
struct Lowering<'a> {
    g: &'a Graph,
    bindings: &'a Bindings,
    opts: &'a LowerOptions,
    plan: KernelPlan,
    buffer_of: SecondaryMap<ValueId, Option<BufferId>>,
    /// Parameters stored transposed (see [`LowerOptions::transpose_weights`]).
    transposed: SecondaryMap<ValueId, bool>,
    users: SecondaryMap<ValueId, Vec<NodeId>>,
    /// Slices read in place: no buffer of their own.
    views: SecondaryMap<ValueId, Option<View>>,
    /// Concatenations never stored: every reader (a GEMM's `A`) reads the parts' own buffers.
    split: SecondaryMap<ValueId, Option<Parts>>,
}

impl Lowering<'_> {
    fn shape(&self, v: ValueId) -> Result<Vec<u64>, LowerError> {
        let ty = self.g.value_type(v);
        ty.size_bytes(self.bindings)?;
        Ok(ty.dims(self.bindings)?)
    }

    /// A port naming `v`'s buffer `b`, with `v`'s type.
    fn port(&self, name: &str, v: ValueId, b: BufferId) -> Result<Port, LowerError> {
        Ok(Port::plain(name, b, self.g.value_type(v).dtype, self.shape(v)?))
    }

    fn new_buffer(&mut self, v: ValueId, role: Role) -> Result<BufferId, LowerError> {
        let len = self.shape(v)?.iter().product::<u64>().max(1);
        let storage = Storage::of(self.g.value_type(v).dtype);
        let id = self.plan.buffers.push(Buffer { storage, len, role, value: v.to_string() });
        self.buffer_of[v] = Some(id);
        Ok(id)
    }

    fn buf(&self, v: ValueId) -> BufferId {
        self.buffer_of[v].expect("arguments are lowered before their readers")
    }

    /// The buffers of `values`, in order.
    fn bufs(&self, values: &[ValueId]) -> Vec<BufferId> {
        values.iter().map(|&v| self.buf(v)).collect()
    }

    /// A temporary buffer no graph value holds: an intermediate of a multi-launch op, or the
    /// placeholder of a result that is not written. `label` names it in the plan.
    fn scratch(&mut self, storage: Storage, len: u64, label: String) -> BufferId {
        self.plan.buffers.push(Buffer { storage, len: len.max(1), role: Role::Temp, value: label })
    }

    /// A launch that computes node `n`, costed as the node.
    fn emit(
        &mut self,
        n: NodeId,
        kernel: Kernel,
        reads: Vec<BufferId>,
        writes: Vec<BufferId>,
    ) -> Result<(), LowerError> {
        let float_bytes = Some(self.plan.float.size_bytes());
        let cost = node_cost_stored(self.g, n, self.bindings, float_bytes).map_err(|e| e.source)?;
        self.emit_costed(n, kernel, reads, writes, cost);
        Ok(())
    }

    /// A launch that computes part of node `n`, with its own cost: `flops`, and the bytes of the
    /// buffers it reads and writes.
    fn emit_part(&mut self, n: NodeId, kernel: Kernel, reads: Vec<BufferId>, writes: Vec<BufferId>, flops: u64) {
        let bytes = |bs: &[BufferId]| bs.iter().map(|&b| self.plan.buffer_bytes(b)).sum::<u64>();
        let cost = Cost { flops, bytes_read: bytes(&reads), bytes_written: bytes(&writes) };
        self.emit_costed(n, kernel, reads, writes, cost);
    }

    fn emit_costed(&mut self, n: NodeId, kernel: Kernel, reads: Vec<BufferId>, writes: Vec<BufferId>, cost: Cost) {
        let node = &self.g.nodes[n];
        let (cube_count, cube_dim) = kernel.launch_dims();
        // A slice or concatenation read in place has no launch of its own: its readers compute
        // it, and name it among their nodes.
        let mut nodes = vec![n];
        for &a in &node.args {
            let producer = self.g.producer(a);
            if (self.views[a].is_some() || self.split[a].is_some()) && !nodes.contains(&producer) {
                nodes.push(producer);
            }
        }
        let scope = node.scope.clone();
        self.plan.launches.push(Launch { kernel, reads, writes, cube_count, cube_dim, nodes, scope, cost });
    }

    /// Emits a launch of `kernel` reading all of node `n`'s arguments and writing its results,
    /// each only where `written` says so: the others get a one-element placeholder buffer (the
    /// kernel is told not to write it) and leave the launch's modelled bytes.
    fn emit_optional_results(&mut self, n: NodeId, kernel: Kernel, written: &[bool]) -> Result<(), LowerError> {
        let node = &self.g.nodes[n];
        let reads = self.bufs(&node.args);
        let mut writes = Vec::new();
        let mut unwritten = 0u64;
        for (&r, &w) in node.results.iter().zip(written) {
            if w {
                writes.push(self.new_buffer(r, Role::Temp)?);
            } else {
                // As the cost model counts it: floats at the plan's float size.
                let t = self.g.value_type(r);
                let size = if t.dtype.is_float() { self.plan.float.size_bytes() } else { t.dtype.size_bytes() };
                let bytes = t.numel(self.bindings)?.checked_mul(size).and_then(|b| unwritten.checked_add(b));
                unwritten = bytes.ok_or_else(|| ShapeError::Overflow(format!("the bytes of {r}: {t}")))?;
                writes.push(self.scratch(Storage::of(t.dtype), 1, format!("{r} (not written)")));
            }
        }
        self.emit(n, kernel, reads, writes)?;
        let cost = &mut self.plan.launches.values_mut().last().expect("just emitted").cost;
        cost.bytes_written = cost.bytes_written.saturating_sub(unwritten);
        Ok(())
    }

    /// Where the rows of `v` (`width` wide) lie: its buffer, their stride and the start (a
    /// slice read in place lies in its producer's wider rows).
    fn rows_of(&self, v: ValueId, width: u64) -> (BufferId, u64, u64) {
        match self.views[v] {
            Some(view) => (view.buffer, view.row_stride, view.offset),
            None => (self.buf(v), width, 0),
        }
    }

    /// Whether a node or a graph output reads `v`.
    fn is_read(&self, v: ValueId) -> bool {
        !self.users[v].is_empty() || self.is_output(v)
    }

    fn is_output(&self, v: ValueId) -> bool {
        self.g.outputs.iter().any(|o| o.value == v)
    }

    fn unsupported(&self, n: NodeId, reason: &str) -> LowerError {
        let node = &self.g.nodes[n];
        LowerError::Unsupported { node: n, op: node.op.name(), scope: node.scope.clone(), reason: reason.to_string() }
    }

    /// Lowers one node by its op group to its kernel family.
    fn lower_node(&mut self, n: NodeId) -> Result<(), LowerError> {
        let op = &self.g.nodes[n].op;
        if sources::is_param_concat(self.g, n) {
            return self.lower_param_concat(n);
        }
        match (op.class(), op) {
            (OpClass::Source, Op::Input { .. } | Op::Param { .. }) => self.lower_source(n),
            // Constants, iota and random numbers are elementwise programs of no arguments.
            (OpClass::Source | OpClass::Elementwise, _) => self.lower_elementwise(n),
            (OpClass::MatMul, _) => self.lower_matmul(n),
            (OpClass::Normalize | OpClass::Reduce, _) => self.lower_rows(n),
            (OpClass::Movement, _) => self.lower_movement(n),
            (OpClass::Index, _) => self.lower_index(n),
            (OpClass::Fused, Op::Fused(fused)) => match fused {
                FusedOp::Elementwise { .. } => self.lower_elementwise(n),
                FusedOp::MatMulEpilogue { .. } => self.lower_matmul(n),
                FusedOp::Reduce { .. } => self.lower_rows(n),
                FusedOp::Attention { .. } => self.lower_attention(n),
                FusedOp::GumbelPool { .. } => self.lower_gumbel_pool(n),
                FusedOp::Route { .. } => self.lower_route(n),
                FusedOp::ExpertMixture { .. } => self.lower_experts(n),
            },
            (OpClass::Fused, _) => unreachable!("only fused ops are in the fused class"),
        }
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
            precision: opts.precision,
            buffers: Default::default(),
            launches: Default::default(),
            inputs: Vec::new(),
            params: Vec::new(),
            outputs: Vec::new(),
            memory: MemoryPlan::default(),
        },
        buffer_of: SecondaryMap::with_default(None),
        transposed: if opts.transpose_weights { sources::transposable_weights(g, &users) } else { SecondaryMap::new() },
        users,
        views: SecondaryMap::with_default(None),
        split: SecondaryMap::with_default(None),
    };
    for n in g.topo_order().expect("verified graphs are acyclic") {
        l.lower_node(n)?;
    }
    for o in &g.outputs {
        let port = l.port(&o.name, o.value, l.buf(o.value))?;
        l.plan.outputs.push(port);
    }
    let mut plan = l.plan;
    plan.check_launches()?;
    plan.check_index_range()?;
    plan.memory = plan_memory(&plan);
    Ok(plan)
}
