//! The kernel plan: the contract between the compiler and the runtime, and all an executor
//! needs to run a graph (it never sees the graph). Buffers (flat, typed), an ordered list of
//! launches (kernel, compile-time configuration, buffer arguments, launch dimensions), the
//! graph's inputs, parameters and outputs as ports with their types, and the memory plan.
//! Buffers, slots and launches are arenas indexed by their own ids (`b3`, `s1`, `l12`), which
//! the JSON form writes as printed.
//!
//! A plan is for concrete symbol bindings: every size in it is a number.

mod kernel;
mod unit;

use std::collections::BTreeMap;

use calm_ir::cost::Cost;
use calm_ir::entity::PrimaryMap;
use calm_ir::{entity_id, DType, NodeId};
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use kernel::*;
pub use unit::{ComputeUnit, Precision};

/// The format tag of serialised plans. 2: typed ids, port dtypes, named slot fields. 3: the
/// precision the plan was lowered under.
pub const PLAN_FORMAT: &str = "calm-plan/3";

entity_id!(
    /// A buffer of a plan.
    BufferId,
    "b"
);
entity_id!(
    /// A memory slot: one device allocation that buffers of disjoint lifetimes share.
    SlotId,
    "s"
);
entity_id!(
    /// A launch, by its position in the plan's order.
    LaunchId,
    "l"
);

/// The floating-point type device buffers and kernels compute in (a compile option).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FloatType {
    F32,
    F16,
    Bf16,
}

impl FloatType {
    pub fn size_bytes(self) -> u64 {
        match self {
            FloatType::F32 => 4,
            FloatType::F16 | FloatType::Bf16 => 2,
        }
    }
}

/// How a buffer's elements are stored on the device. Bools are u32 0/1.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    Float,
    I32,
    U32,
    Bool,
}

impl Storage {
    pub fn of(dtype: calm_ir::DType) -> Storage {
        use calm_ir::DType::*;
        match dtype {
            F32 | F16 | Bf16 => Storage::Float,
            I32 => Storage::I32,
            U32 => Storage::U32,
            Bool => Storage::Bool,
        }
    }

    pub fn size_bytes(self, float: FloatType) -> u64 {
        match self {
            Storage::Float => float.size_bytes(),
            _ => 4,
        }
    }

    /// Bytes of `len` elements, saturating: sizes near 2^64 bytes are refused by the memory
    /// checks, not wrapped.
    pub fn bytes(self, len: u64, float: FloatType) -> u64 {
        len.saturating_mul(self.size_bytes(float))
    }
}

/// What a buffer holds.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Uploaded from a graph input.
    Input,
    /// Uploaded from the weights.
    Param,
    /// Computed by a launch (graph outputs are computed buffers too, listed in `outputs`).
    Temp,
}

/// A flat device array of one storage type; buffers of disjoint lifetimes share a [`Slot`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Buffer {
    pub storage: Storage,
    /// Elements.
    pub len: u64,
    pub role: Role,
    /// The graph value it holds first (`v12`; reshapes alias it under other values), or for a
    /// buffer no value holds (a multi-launch op's intermediate, an unwritten placeholder), what
    /// it is for (`n7.ln1`).
    pub value: String,
}

/// A named input, parameter or output and its buffer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Port {
    pub name: String,
    pub buffer: BufferId,
    /// The value's IR type: its element type and concrete shape (a plan's floats are stored
    /// as [`KernelPlan::float`] whatever the IR says; the dtype says what the host reads back).
    pub dtype: DType,
    pub shape: Vec<u64>,
    /// A matrix stored transposed on the device (a weight only ever multiplied as `x · Wᵀ`, so
    /// that the GEMM reads it row by row).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub transposed: bool,
    /// For a parameter buffer built at load time from several parameters (the weights a
    /// horizontal fusion concatenated): the parts, joined along `axis` before any transpose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concat: Option<ParamConcat>,
}

/// The parameters a load-time concatenation joins, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamConcat {
    pub parts: Vec<String>,
    pub axis: usize,
}

impl Port {
    /// A port for a graph input, output or parameter stored as it is.
    pub fn plain(name: &str, buffer: BufferId, dtype: DType, shape: Vec<u64>) -> Port {
        Port { name: name.to_string(), buffer, dtype, shape, transposed: false, concat: None }
    }
}

/// One kernel launch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Launch {
    pub kernel: Kernel,
    /// Buffer arguments in the order the kernel's variant documents.
    pub reads: Vec<BufferId>,
    pub writes: Vec<BufferId>,
    pub cube_count: [u32; 3],
    pub cube_dim: [u32; 3],
    /// The graph nodes this launch computes (of the graph it was lowered from), and the scope
    /// of the first.
    pub nodes: Vec<NodeId>,
    pub scope: String,
    /// Modelled FLOPs and bytes of the nodes it computes.
    pub cost: Cost,
}

/// One device allocation, sized for the largest buffer it holds.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub storage: Storage,
    /// Elements.
    pub len: u64,
}

/// Where each buffer lives: buffers of disjoint lifetimes share a slot (one device allocation).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryPlan {
    pub slots: PrimaryMap<SlotId, Slot>,
    /// The slot of each buffer (one entry per buffer, in buffer order).
    pub slot_of: PrimaryMap<BufferId, SlotId>,
    /// Bytes of all slots, and of one allocation per buffer.
    pub peak_bytes: u64,
    pub naive_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelPlan {
    /// [`PLAN_FORMAT`].
    pub format: String,
    /// The name of the graph it was lowered from.
    pub graph: String,
    pub bindings: BTreeMap<String, u64>,
    pub float: FloatType,
    /// What the user allowed matrix products of f32 buffers to use (see [`Precision`]).
    pub precision: Precision,
    pub buffers: PrimaryMap<BufferId, Buffer>,
    /// In the order they run.
    pub launches: PrimaryMap<LaunchId, Launch>,
    pub inputs: Vec<Port>,
    pub params: Vec<Port>,
    pub outputs: Vec<Port>,
    pub memory: MemoryPlan,
}

impl KernelPlan {
    /// Bytes of buffer `b`.
    pub fn buffer_bytes(&self, b: BufferId) -> u64 {
        let buf = &self.buffers[b];
        buf.storage.bytes(buf.len, self.float)
    }

    /// Bytes of memory slot `s`.
    pub fn slot_bytes(&self, s: SlotId) -> u64 {
        let slot = self.memory.slots[s];
        slot.storage.bytes(slot.len, self.float)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plans serialise")
    }

    /// Reads a plan written by [`to_json`](Self::to_json): a plan of another format (written
    /// by another version of calm) is refused before its fields are read, and every buffer id
    /// must name a buffer, and every buffer have a slot of its storage, before the plan is
    /// handed to an executor.
    pub fn from_json(text: &str) -> Result<KernelPlan, PlanError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| PlanError::Syntax(e.to_string()))?;
        let format = value.get("format").and_then(serde_json::Value::as_str).unwrap_or("(none)");
        if format != PLAN_FORMAT {
            return Err(PlanError::Format(format.to_string()));
        }
        // From the text, not the value: serde_json's errors then say where (line and column).
        let plan: KernelPlan = serde_json::from_str(text).map_err(|e| PlanError::Field(e.to_string()))?;
        plan.check_ids()?;
        plan.check_launches()?;
        plan.check_index_range()?;
        crate::memory::check_memory(&plan).map_err(|errors| PlanError::Memory(errors.join("; ")))?;
        Ok(plan)
    }

    /// Proves that every index a launch's kernel computes fits the `u32` it computes it in (the
    /// GEMM and attention kernels run unchecked, and the runtime narrows every size to `u32`):
    /// each buffer the launch reads or writes holds at most `u32::MAX` elements, so its largest
    /// index is below it, and so do its work items and every size, stride and offset of its
    /// kernel (every unsigned integer field, found by walking the kernel's serialised form, so
    /// a field added later is covered too; programs' constants are values, not indices). A
    /// plan that fails is refused naming the launch and the field.
    pub fn check_index_range(&self) -> Result<(), PlanError> {
        const LIMIT: u64 = u32::MAX as u64;
        for (id, l) in self.launches.iter() {
            let refuse = |what: String, value: u64| PlanError::IndexRange {
                at: format!("launch {id} ({} at {})", l.kernel.name(), l.scope),
                what,
                value,
            };
            for &b in l.reads.iter().chain(&l.writes) {
                let len = self.buffers.get(b).map_or(0, |buf| buf.len);
                if len > LIMIT {
                    return Err(refuse(format!("buffer {b} has {len} elements"), len));
                }
            }
            let items = l.kernel.work_items();
            if items > LIMIT {
                return Err(refuse(format!("{items} work items"), items));
            }
            let fields = serde_json::to_value(&l.kernel).expect("kernels serialise");
            if let Some((path, value)) = first_over(&fields, "kernel", LIMIT) {
                return Err(refuse(format!("`{path}` is {value}"), value));
            }
        }
        Ok(())
    }

    /// Every launch has the grid its kernel is written for (the kernels index by it: a cube
    /// per line's tree reduction, the tensor-core GEMM's planes) and a cube per line is a power
    /// of two wide.
    pub(crate) fn check_launches(&self) -> Result<(), PlanError> {
        for (id, l) in self.launches.iter() {
            let at = || format!("launch {id} ({})", l.kernel.name());
            let (count, dim) = l.kernel.launch_dims();
            if (l.cube_count, l.cube_dim) != (count, dim) {
                let reason = format!(
                    "launched as {:?} cubes of {:?}, but its kernel needs {count:?} of {dim:?}",
                    l.cube_count, l.cube_dim
                );
                return Err(PlanError::Launch { at: at(), reason });
            }
            if let Some(t) = l.kernel.row_cube().filter(|t| !t.is_power_of_two()) {
                let reason = format!("a cube per line of {t} threads (not a power of two)");
                return Err(PlanError::Launch { at: at(), reason });
            }
            if let Some(reason) = gemm_rule_broken(&l.kernel) {
                return Err(PlanError::Launch { at: at(), reason });
            }
            if let Some(w) = l.kernel.row_plane() {
                if !w.is_power_of_two() || l.kernel.row_cube().is_none_or(|t| t % w != 0) {
                    let reason = format!(
                        "planes of {w} units must be a power of two dividing a cube per line, not {:?}",
                        l.kernel.row_cube()
                    );
                    return Err(PlanError::Launch { at: at(), reason });
                }
            }
            if let Kernel::Attention { kv_len, head_dim, tiles: Some(_), .. } = l.kernel {
                if kv_len <= ATTENTION_SHORT_KEYS || head_dim % 16 != 0 || head_dim > ATTENTION_TILE_MAX_HEAD {
                    let reason = format!(
                        "attention in tiles needs more than {ATTENTION_SHORT_KEYS} keys and a head width that \
                         is a multiple of 16 up to {ATTENTION_TILE_MAX_HEAD}, not {kv_len} keys of width {head_dim}"
                    );
                    return Err(PlanError::Launch { at: at(), reason });
                }
            }
        }
        Ok(())
    }

    /// Every buffer a launch or port names exists.
    fn check_ids(&self) -> Result<(), PlanError> {
        let known = |b: &BufferId| self.buffers.is_valid(*b);
        for (id, l) in self.launches.iter() {
            if let Some(b) = l.reads.iter().chain(&l.writes).find(|b| !known(b)) {
                return Err(PlanError::Dangling { at: format!("launch {id} ({})", l.kernel.name()), buffer: *b });
            }
        }
        let ports = self.inputs.iter().chain(&self.params).chain(&self.outputs);
        for p in ports {
            if !known(&p.buffer) {
                return Err(PlanError::Dangling { at: format!("port `{}`", p.name), buffer: p.buffer });
            }
        }
        Ok(())
    }
}

/// Why a plan file cannot be run.
#[derive(Debug, Error)]
pub enum PlanError {
    #[error("not JSON: {0}")]
    Syntax(String),
    #[error(
        "plan format `{0}` is not this calm's `{PLAN_FORMAT}` (written by another version): lower the graph again with `calm compile --emit plan`"
    )]
    Format(String),
    #[error("{0}")]
    Field(String),
    #[error("{at} names buffer {buffer}, which the plan does not have")]
    Dangling { at: String, buffer: BufferId },
    #[error("memory plan: {0}")]
    Memory(String),
    #[error("{at}: {reason}")]
    Launch { at: String, reason: String },
    #[error("{at}: {what}, over the {} the kernels index with 32-bit integers; bind smaller sizes (a smaller batch) or split the work", u32::MAX)]
    IndexRange { at: String, what: String, value: u64 },
}

/// The first unsigned integer over `limit` in `v` (outside elementwise programs, whose
/// constants are values), with its path.
fn first_over(v: &serde_json::Value, path: &str, limit: u64) -> Option<(String, u64)> {
    match v {
        serde_json::Value::Number(n) => n.as_u64().filter(|&x| x > limit).map(|x| (path.to_string(), x)),
        serde_json::Value::Array(items) => {
            items.iter().enumerate().find_map(|(i, x)| first_over(x, &format!("{path}[{i}]"), limit))
        }
        serde_json::Value::Object(fields) => fields
            .iter()
            .filter(|(k, _)| k.as_str() != "program")
            .find_map(|(k, x)| first_over(x, &format!("{path}.{k}"), limit)),
        _ => None,
    }
}

/// The rule a GEMM launch breaks, if any: which variants take a k split, a normalised A, A in
/// two parts and folded expert rows. The lowering emits only what these allow; the runtime's
/// GEMM launch relies on them (every plan it runs passed this check, in the lowering or in
/// `from_json`).
fn gemm_rule_broken(kernel: &Kernel) -> Option<String> {
    let Kernel::MatMul { gemm, batch, epilogue, grouped, a_split, a_norm, split_k, .. } = kernel else {
        return None;
    };
    let fold_experts = grouped.as_ref().and_then(|g| g.fold_experts);
    if let Some(splits) = *split_k {
        if !gemm.stages_tiles() || splits < 2 || !batch.is_empty() || epilogue.is_some() || grouped.is_some() {
            return Some(format!(
                "k split in {splits} shares needs at least 2, a shared-tile or tensor-core GEMM, and no batch, \
                 epilogue or grouping"
            ));
        }
    }
    if a_norm.is_some() {
        let whole_rows = (gemm.threads() as u64).is_multiple_of(gemm.block().0);
        if !gemm.stages_tiles() || a_split.is_some() || !whole_rows {
            return Some(
                "a layer norm of A is read by shared-tile and tensor-core GEMMs only (whole groups of threads per \
                 row), never with A in two parts"
                    .to_string(),
            );
        }
    }
    let registers = matches!(gemm, Gemm::Registers { .. });
    if registers && (a_split.is_some() || fold_experts.is_some()) {
        return Some("the register GEMM reads neither A in two parts nor folded expert rows".to_string());
    }
    if let (Gemm::Vectors { .. }, Some(split)) = (gemm, *a_split) {
        if split % 4 != 0 || !batch.is_empty() {
            return Some(format!(
                "the vector GEMM reads A's first part 4 columns at a time, without a batch, not {split} columns"
            ));
        }
    }
    if fold_experts.is_some() && a_split.is_some() {
        return Some("folded expert rows read A through their slots' offsets, not in two parts".to_string());
    }
    None
}
