//! The kernels a plan launches: each [`Kernel`] variant with its compile-time configuration,
//! the order of its buffer arguments, its work and its launch dimensions.

use calm_ir::program::Program;

use super::ComputeUnit;
use serde::{Deserialize, Serialize};

/// Threads per cube of the one-dimensional kernels.
pub const BLOCK: u32 = 256;

/// The most cubes along one grid dimension (WebGPU's and Vulkan's common limit).
pub const MAX_GRID: u32 = 65_535;

/// Attention over up to this many keys takes the kernel's short path (one thread per query
/// row, the key length compiled in, the scores in registers); longer ones its long path.
pub const ATTENTION_SHORT_KEYS: u64 = 16;

/// The most threads of a routing cube (one per group): at least one per expert, so a mixture
/// routes itself only up to this many experts per group (wgpu's default workgroup limit).
pub const ROUTE_THREADS: u64 = 256;

/// Query rows per cube of attention's long path (one cube per batch entry, head and tile).
pub const ATTENTION_QUERY_TILE: u32 = 64;

/// Threads of a cube of attention in tiles (four planes of 32; see `tiles` on
/// [`Kernel::Attention`]), over [`ATTENTION_QUERY_TILE`] query rows.
pub const ATTENTION_TILE_THREADS: u32 = 128;

/// Keys per step of attention in tiles.
pub const ATTENTION_KEY_TILE: u32 = 32;

/// Shared memory of a cube of attention in tiles over heads of `head_dim`, its operands staged
/// in `operand_bytes`-wide elements: the query, key and value tiles and the probabilities in
/// the operands' type, the scores and the output in f32 (score and probability rows padded by
/// 4 and 8 elements), and a scale per row; each buffer starts 128-byte aligned.
pub fn attention_tile_bytes(head_dim: u64, operand_bytes: u64) -> u64 {
    let (rows, keys) = (ATTENTION_QUERY_TILE as u64, ATTENTION_KEY_TILE as u64);
    let operands = [rows * head_dim, keys * head_dim, keys * head_dim, rows * (keys + 8)].map(|n| n * operand_bytes);
    let floats = [rows * (keys + 4), rows * head_dim, rows].map(|n| n * 4);
    operands.iter().chain(&floats).map(|b| b.next_multiple_of(128)).sum()
}

/// The widest head attention runs in tiles (its query and output tiles, 64 rows of it, then
/// take 48 KB of shared memory in tf32; wider heads keep one thread per query row).
pub const ATTENTION_TILE_MAX_HEAD: u64 = 128;

/// Query rows per thread of attention's long path on CPU drivers (a cube then has
/// `ATTENTION_QUERY_TILE / 8` threads, one SIMD group of llvmpipe's 256-bit lanes): each key
/// and value element a thread reads feeds this many rows. GPUs take one row per thread (eight
/// rows of 64-wide heads would not fit in a thread's registers).
pub const ATTENTION_ROWS_PER_THREAD: u32 = 8;

fn one_row() -> u32 {
    1
}

/// The query rows per thread attention's long path runs with for a plan's `rows_per_thread`
/// (at least one, at most a tile); the launch dimensions and the kernel both take it.
pub fn long_attention_rows(rows_per_thread: u32) -> u32 {
    rows_per_thread.clamp(1, ATTENTION_QUERY_TILE)
}

/// Reductions along one axis (the IR's, so fused and plan reductions are one type).
pub use calm_ir::fused::Reduction;

/// An elementwise program applied after a matmul's accumulation: argument 0 is the accumulator,
/// arguments 1.. are extra buffers read at strides over the output `[batch.., m, n]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Epilogue {
    pub program: Program,
    pub strides: Vec<Vec<u64>>,
}

/// The elementwise program a reduction reads through: evaluated over `shape` (the reduction's
/// `[outer, len, inner]`, unflattened) with argument `i` at `strides[i]`, as
/// [`Kernel::Elementwise`] would.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Prologue {
    pub shape: Vec<u64>,
    pub strides: Vec<Vec<u64>>,
    pub program: Program,
}

/// A kernel and its compile-time configuration. Buffer arguments (`Launch::reads`) come in the
/// order each variant's documentation gives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kernel", rename_all = "snake_case")]
pub enum Kernel {
    /// `program` evaluated over `shape`; reads one buffer per program argument, argument `i` at
    /// `offsets[i] + Σ coord[d] · strides[i][d]` (0 strides broadcast; no offsets: all 0, so a
    /// slice of a wider result is read where it lies); writes one buffer per program output.
    Elementwise {
        shape: Vec<u64>,
        strides: Vec<Vec<u64>>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        offsets: Vec<u64>,
        program: Program,
    },
    /// `C[b] = A[b] · B[b]` over `batch`, `A: m × k` at `a_strides` (row, column), `B: k × n` at
    /// `b_strides`, batch offsets `a_batch_strides`, `b_batch_strides`; `C` contiguous
    /// `[batch.., m, n]`; reads `a, b, epilogue args..`, then `A`'s second part when `a_split`
    /// is set, then `gamma, beta` when `a_norm` is, then the index array of a grouped GEMM;
    /// computed by the `gemm` kernel variant.
    MatMul {
        batch: Vec<u64>,
        a_batch_strides: Vec<u64>,
        b_batch_strides: Vec<u64>,
        m: u64,
        n: u64,
        k: u64,
        a_strides: [u64; 2],
        b_strides: [u64; 2],
        /// Where `A` starts in its buffer (non-zero for a slice of a wider result).
        #[serde(default)]
        a_offset: u64,
        gemm: Gemm,
        epilogue: Option<Epilogue>,
        /// A grouped GEMM over routed slots (batch = slots, rank 1): where B and each epilogue
        /// argument find their batch entry; the index buffer is then the last read.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grouped: Option<Grouped>,
        /// `A` is a concatenation of two parts along `k` that was never stored: columns from
        /// `a_split` on come from a second, contiguous `[m, k − a_split]` buffer, read last
        /// (shared-tile GEMMs only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        a_split: Option<u64>,
        /// `Some(eps)`: `A` is read through a layer norm of its rows (over all `k` columns) that
        /// was never stored, with `gamma` and `beta` (`k` each, stacked per expert in a
        /// grouped GEMM with folded rows and read at the tile's expert); shared-tile and
        /// tensor-core GEMMs only, not with `a_split`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        a_norm: Option<f64>,
        /// `Some(S)`: `k` is split in `S` shares and the launch writes `S` partial products
        /// `[S, m, n]` (no batch, no epilogue, not grouped; shared-tile and tensor-core GEMMs),
        /// which an elementwise launch then sums in order before the epilogue: products of
        /// few tiles over a long `k` get `S` times the cubes, each `S` times shorter.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        split_k: Option<u32>,
    },
    /// Softmax (or log-softmax) along the middle axis of `[outer, len, inner]`; reads `x`.
    Softmax {
        outer: u64,
        len: u64,
        inner: u64,
        log: bool,
        /// `Some(threads)`: a cube of `threads` threads (a power of two) per line, for lines
        /// along the last axis (`inner = 1`) on devices with fast shared memory; else one
        /// thread per line.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        row_cube: Option<u32>,
        /// With a cube per line, the device's plane width: each plane combines its threads'
        /// values by shuffles before the planes combine through shared memory.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        plane: Option<u32>,
    },
    /// Layer norm of `rows × cols`; reads `x, gamma, beta` (and, if `grouped`, the index
    /// buffer: rows are routed slots' tokens, gamma and beta per expert).
    LayerNorm {
        rows: u64,
        cols: u64,
        eps: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grouped: Option<GroupedNorm>,
        /// `Some(threads)`: a cube of `threads` threads (a power of two) per line, for lines
        /// along the last axis (`inner = 1`) on devices with fast shared memory; else one
        /// thread per line.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        row_cube: Option<u32>,
        /// With a cube per line, the device's plane width: each plane combines its threads'
        /// values by shuffles before the planes combine through shared memory.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        plane: Option<u32>,
    },
    /// `[outer, len, inner] → [outer, inner]`; reads `x`, or with a `prologue` the program's
    /// arguments (the reduction reads the program's output, never stored).
    Reduce {
        op: Reduction,
        outer: u64,
        len: u64,
        inner: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prologue: Option<Prologue>,
        /// `Some(threads)`: a cube of `threads` threads (a power of two) per line, for lines
        /// along the last axis (`inner = 1`) on devices with fast shared memory; else one
        /// thread per line.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        row_cube: Option<u32>,
        /// With a cube per line, the device's plane width: each plane combines its threads'
        /// values by shuffles before the planes combine through shared memory.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        plane: Option<u32>,
    },
    /// `out[o, c, i] = table[o, idx[c], i]`; reads `table, idx`.
    Gather { outer: u64, rows: u64, inner: u64, count: u64 },
    /// `out[o, r, i] = base[o, r, i] + Σ_{c: idx[c] = r} upd[o, c, i]`, in index order (so the
    /// result is the same on every run); reads `base, idx, upd`.
    ScatterAdd { outer: u64, rows: u64, inner: u64, count: u64 },
    /// The `k` largest of each row of `rows × cols`, ties to the lower index; reads `x`, writes
    /// `values, indices`.
    TopK { rows: u64, cols: u64, k: u64 },
    /// `out[c, d] = (idx[c] == d)`; reads `idx`.
    OneHot { count: u64, depth: u64 },
    /// `dst[dst_offset + Σ coord·dst_strides] = src[src_offset + Σ coord·src_strides]` over
    /// `shape`; reads `src`, writes `dst` (permutes, broadcasts, slices, concatenation parts).
    Copy { shape: Vec<u64>, src_strides: Vec<u64>, src_offset: u64, dst_strides: Vec<u64>, dst_offset: u64 },
    /// Multi-head attention with an online softmax; reads
    /// `q [batch, q_len, heads·head_dim]`, `k, v [batch, kv_len, ..]` (rows at `layout`) and,
    /// with `bias_strides` (over `[batch, heads, q_len, kv_len]`), the score bias; writes the
    /// merged context.
    Attention {
        batch: u64,
        q_len: u64,
        kv_len: u64,
        heads: u64,
        head_dim: u64,
        scale: f64,
        bias_strides: Option<[u64; 4]>,
        /// Row stride and start of `q`, `k` and `v` in their buffers: `[m, 0]` for a tensor of
        /// its own, wider for a slice of a joint projection read in place.
        layout: [[u64; 2]; 3],
        /// Query rows per thread on the long path (more than [`ATTENTION_SHORT_KEYS`] keys).
        #[serde(default = "one_row")]
        rows_per_thread: u32,
        /// GPUs, more than [`ATTENTION_SHORT_KEYS`] keys and a head width that is a multiple
        /// of 16 up to [`ATTENTION_TILE_MAX_HEAD`]: `Some(unit)` runs the long path in tiles (FlashAttention-2's loop, query and
        /// key tiles staged in shared memory), its two products on `unit` (a tensor-core unit,
        /// or the FP32 pipelines on devices without them); `None` one thread per query row.
        #[serde(default)]
        tiles: Option<ComputeUnit>,
    },
    /// Gumbel-softmax clustering and pooling, one cube of `threads` per sample; reads `hidden,
    /// w, bias, x, mask[, τ][, seed, offset]`, writes `pooled` and `assign` (the latter a
    /// one-element placeholder unless `write_assign`).
    GumbelPool {
        batch: u64,
        tokens: u64,
        hidden: u64,
        clusters: u64,
        width: u64,
        threads: u32,
        transpose_w: bool,
        temperature: bool,
        noise_stream: Option<u32>,
        eps: f64,
        write_assign: bool,
    },
    /// Orders one group's routed (unit, expert) pairs by expert into slots `first..first +
    /// units·top_k` of `slots`: reads the one-hot choices `[units, top_k, experts]` and the gate
    /// matrix; writes the index buffer (each slot's expert, from `first_expert`, then its unit),
    /// each slot's gate and each (unit, choice)'s slot.
    Dispatch { units: u64, experts: u64, top_k: u64, slots: u64, first: u64, first_expert: u64 },
    /// Averages each slot's `tokens` rows of `x [slots·tokens, width]` and mixes them back
    /// into units with the slots' gates, for `groups` groups from `first_group`, group `g` into
    /// columns `g·width..` of rows of `out_stride`; reads `x, slot_gate, unit_slot`.
    Combine { units: u64, width: u64, tokens: u64, top_k: u64, groups: u64, first_group: u64, out_stride: u64 },
    /// The routing and dispatch of a mixture's `groups` routers over the same `units` rows of
    /// `x [units, width]`, one cube of `threads` per group; reads `x`, the stacked weights and
    /// biases; writes the two scratch buffers, the index buffer, each slot's gate, each (unit,
    /// choice)'s slot, and with `stats` the statistics `f` and `P` `[groups, experts]` (else
    /// one-element placeholders).
    RouteDispatch {
        groups: u64,
        units: u64,
        width: u64,
        experts: u64,
        top_k: u64,
        transpose_w: bool,
        stats: bool,
        threads: u32,
    },
    /// Top-k routing, one thread per unit; reads `x [batch, width], w, bias [experts]`, writes
    /// the gate matrix, the probabilities and the one-hot choices (the last two one-element
    /// placeholders unless `write_prob`, `write_chosen`).
    Route { batch: u64, width: u64, experts: u64, top_k: u64, transpose_w: bool, write_prob: bool, write_chosen: bool },
}

/// Where an operand of a grouped GEMM finds its batch entry (see `calm_kernels::matmul::BatchIndex`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchIndex {
    /// The slot itself.
    Own,
    /// The slot's expert.
    Expert,
    /// The slot's unit.
    Unit,
}

/// The operands of a grouped GEMM: B (the stacked experts' weights) and the epilogue arguments.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Grouped {
    pub b: BatchIndex,
    pub extras: Vec<BatchIndex>,
    /// `Some(E)` (shared-tile and vector GEMMs): all slots' rows as one sequence, cut into
    /// tiles that each stay within one of the `E` experts' slots, so that a slot's few tokens
    /// share each loaded weight with their neighbours' (MegaBlocks' dropless grouping). The
    /// dispatch records where each expert's slots start; launched over all rows plus one tile
    /// per expert (`z = 1`).
    #[serde(default)]
    pub fold_experts: Option<u32>,
}

/// A layer norm over routed slots' tokens.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GroupedNorm {
    /// Tokens per slot.
    pub tokens: u64,
    /// Read the input rows at the slot's unit (the experts' first layer reads the units).
    pub gather: bool,
}

/// Which GEMM kernel computes a matmul, and its blocking.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "variant", rename_all = "snake_case")]
pub enum Gemm {
    /// Shared-memory tiles and register blocking (GPUs).
    SharedTiles(GemmTile),
    /// Each cube `rows` rows of `C`; each of its `threads` threads `cols` columns, `threads`
    /// apart; no shared memory (CPU Vulkan drivers, any layout).
    Registers { rows: u32, cols: u32, threads: u32 },
    /// Like `Registers`, reading `A` four elements of `k` at a time and `B`, `C` in vectors of
    /// `width` columns (row-major `A` with `k % 4 = 0`, row-major `B` with `n % width = 0`).
    Vectors { rows: u32, width: u32, threads: u32 },
    /// The shared-tile GEMM's staging, folding and epilogue with the products on tensor cores:
    /// [`TENSOR_TILE`]² of `C` per cube of [`TENSOR_PLANES`] planes, `16 × 16 × k` products of
    /// `unit`'s operand type (tensor-bf16, -f16 or -tf32) into f32 accumulators, `A` and `B`
    /// staged `tile_k` deep.
    TensorCores { unit: ComputeUnit, tile_k: u32 },
}

/// Rows and columns of `C` per cube of the tensor-core GEMM.
pub const TENSOR_TILE: u32 = 64;
/// Planes (warps of 32) per cube of the tensor-core GEMM, each owning a 32 × 32 quarter.
pub const TENSOR_PLANES: u32 = 4;

/// Work per cube and per thread of the tiled GEMM.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GemmTile {
    pub tile_m: u32,
    pub tile_n: u32,
    pub tile_k: u32,
    pub thread_m: u32,
    pub thread_n: u32,
}

impl Gemm {
    /// Rows and columns of `C` one cube computes.
    pub fn block(&self) -> (u64, u64) {
        match *self {
            Gemm::SharedTiles(t) => (t.tile_m as u64, t.tile_n as u64),
            Gemm::Registers { rows, cols, threads } => (rows as u64, (cols * threads) as u64),
            Gemm::Vectors { rows, width, threads } => (rows as u64, (width * threads) as u64),
            Gemm::TensorCores { .. } => (TENSOR_TILE as u64, TENSOR_TILE as u64),
        }
    }

    pub fn threads(&self) -> u32 {
        match *self {
            Gemm::SharedTiles(t) => t.threads(),
            Gemm::Registers { threads, .. } | Gemm::Vectors { threads, .. } => threads,
            Gemm::TensorCores { .. } => 32 * TENSOR_PLANES,
        }
    }

    /// Whether the GEMM stages tiles of A and B in shared memory (shared tiles and tensor
    /// cores): only these fold experts' slots, normalise A's rows or split `k`.
    pub fn stages_tiles(&self) -> bool {
        matches!(self, Gemm::SharedTiles(_) | Gemm::TensorCores { .. })
    }

    /// The tensor-core GEMM for products whose operands are `unit`'s type: `16 × 16 × 16`
    /// products in bf16 and f16, `16 × 16 × 8` in tf32, two of them per staged slice.
    pub fn tensor_cores(unit: ComputeUnit) -> Gemm {
        let tile_k = if unit == ComputeUnit::TensorTf32 { 16 } else { 32 };
        Gemm::TensorCores { unit, tile_k }
    }

    /// `k` of one tensor-core product of `unit`'s operands.
    pub fn mma_k(unit: ComputeUnit) -> u32 {
        if unit == ComputeUnit::TensorTf32 {
            8
        } else {
            16
        }
    }
}

impl GemmTile {
    /// The default tiling: 64 × 64 outputs per cube, 4 × 4 per thread (256 threads), k in 16s.
    pub const DEFAULT: GemmTile = GemmTile { tile_m: 64, tile_n: 64, tile_k: 16, thread_m: 4, thread_n: 4 };
    /// For products too small to give a GPU's SMs a default tile each: 32 × 32 outputs per
    /// cube (4× the cubes), 2 × 2 per thread (256 threads).
    pub const SMALL: GemmTile = GemmTile { tile_m: 32, tile_n: 32, tile_k: 16, thread_m: 2, thread_n: 2 };

    pub fn threads(&self) -> u32 {
        (self.tile_m / self.thread_m) * (self.tile_n / self.thread_n)
    }
}

impl Kernel {
    /// Whether this is an elementwise launch reading some argument from a start inside its
    /// buffer (a slice read in place); the lowering leaves `offsets` empty when every start is 0.
    pub fn reads_from_a_start(&self) -> bool {
        matches!(self, Kernel::Elementwise { offsets, .. } if !offsets.is_empty())
    }

    pub fn name(&self) -> &'static str {
        match self {
            Kernel::Elementwise { .. } => "elementwise",
            Kernel::MatMul { epilogue: None, .. } => "matmul",
            Kernel::MatMul { epilogue: Some(_), .. } => "matmul+epilogue",
            Kernel::Softmax { log: false, .. } => "softmax",
            Kernel::Softmax { log: true, .. } => "log_softmax",
            Kernel::LayerNorm { .. } => "layer_norm",
            Kernel::Reduce { op: Reduction::Sum, prologue: None, .. } => "reduce_sum",
            Kernel::Reduce { op: Reduction::Mean, prologue: None, .. } => "reduce_mean",
            Kernel::Reduce { op: Reduction::Max, prologue: None, .. } => "reduce_max",
            Kernel::Reduce { op: Reduction::Sum, prologue: Some(_), .. } => "elementwise+reduce_sum",
            Kernel::Reduce { op: Reduction::Mean, prologue: Some(_), .. } => "elementwise+reduce_mean",
            Kernel::Reduce { op: Reduction::Max, prologue: Some(_), .. } => "elementwise+reduce_max",
            Kernel::Gather { .. } => "gather",
            Kernel::ScatterAdd { .. } => "scatter_add",
            Kernel::TopK { .. } => "top_k",
            Kernel::OneHot { .. } => "one_hot",
            Kernel::Copy { .. } => "copy",
            Kernel::Attention { .. } => "attention",
            Kernel::GumbelPool { .. } => "gumbel_pool",
            Kernel::Route { .. } => "route",
            Kernel::Dispatch { .. } => "dispatch",
            Kernel::RouteDispatch { .. } => "route_dispatch",
            Kernel::Combine { .. } => "combine",
        }
    }

    /// The unit its arithmetic runs on, whose ceiling bounds it in a roofline: the tensor-core
    /// GEMM's operand type's tensor cores; every other kernel computes on the FP32 pipelines (in
    /// the plan's float type, widened to f32 where it is narrower).
    pub fn compute_unit(&self) -> ComputeUnit {
        match self {
            Kernel::MatMul { gemm: Gemm::TensorCores { unit, .. }, .. } => *unit,
            Kernel::Attention { tiles: Some(unit), .. } => *unit,
            _ => ComputeUnit::Fp32Cores,
        }
    }

    /// A row kernel's threads per line when it takes a cube per line (see `row_cube` on
    /// [`Kernel::Softmax`]); `None` for one thread per line and for every other kernel.
    pub fn row_cube(&self) -> Option<u32> {
        match *self {
            Kernel::Softmax { row_cube, .. } | Kernel::LayerNorm { row_cube, .. } | Kernel::Reduce { row_cube, .. } => {
                row_cube
            }
            _ => None,
        }
    }

    /// With a cube per line, the width of the planes its combination shuffles within (see
    /// `plane` on [`Kernel::Softmax`]); `None` for a tree in shared memory and other kernels.
    pub fn row_plane(&self) -> Option<u32> {
        match *self {
            Kernel::Softmax { plane, .. } | Kernel::LayerNorm { plane, .. } | Kernel::Reduce { plane, .. } => plane,
            _ => None,
        }
    }

    /// How many independent units of work the kernel's launch covers: output elements for
    /// elementwise kernels and copies, rows for row kernels, output tiles for the GEMM.
    pub fn work_items(&self) -> u64 {
        match self {
            Kernel::Elementwise { shape, .. } | Kernel::Copy { shape, .. } => shape.iter().product(),
            Kernel::MatMul { batch, m, n, gemm, split_k, .. } => {
                let (rows, cols) = gemm.block();
                batch.iter().product::<u64>() * m.div_ceil(rows) * n.div_ceil(cols) * split_k.unwrap_or(1) as u64
            }
            Kernel::Softmax { outer, inner, .. } | Kernel::Reduce { outer, inner, .. } => outer * inner,
            Kernel::LayerNorm { rows, .. } | Kernel::TopK { rows, .. } => *rows,
            Kernel::Gather { outer, count, inner, .. } => outer * count * inner,
            Kernel::ScatterAdd { outer, rows, inner, .. } => outer * rows * inner,
            Kernel::OneHot { count, depth } => count * depth,
            Kernel::Attention { batch, q_len, heads, .. } => batch * heads * q_len,
            Kernel::GumbelPool { batch, .. } | Kernel::Route { batch, .. } => *batch,
            Kernel::Dispatch { .. } => 1,
            Kernel::RouteDispatch { groups, units, .. } => groups * units,
            Kernel::Combine { units, width, groups, .. } => groups * units * width,
        }
    }

    /// Cube count and cube dimensions: the GEMM one cube per output tile (batch on z), the
    /// Gumbel pool one cube per sample, attention over many keys one cube per batch entry, head
    /// and tile of query rows, row kernels with a `row_cube` one cube per line, every other
    /// kernel one thread per work item in cubes of [`BLOCK`], the cube count tiled over x and y
    /// so that no dimension exceeds [`MAX_GRID`].
    pub fn launch_dims(&self) -> ([u32; 3], [u32; 3]) {
        if let Some(threads) = self.row_cube() {
            let lines = self.work_items().max(1);
            let x = lines.min(MAX_GRID as u64);
            return ([x as u32, lines.div_ceil(x) as u32, 1], [threads, 1, 1]);
        }
        match self {
            Kernel::MatMul { batch, m, n, gemm, grouped, split_k, .. } => {
                let (rows, cols) = gemm.block();
                let x = n.div_ceil(cols) as u32;
                // A split k's shares are the batch entries of the partial products.
                let entries = batch.iter().product::<u64>().max(1) * split_k.unwrap_or(1) as u64;
                // A grouped GEMM with folded rows runs over all slots' rows at once; each
                // expert's last tile may be partial.
                let (y, z) = if let Some(experts) = grouped.as_ref().and_then(|g| g.fold_experts) {
                    ((entries * m).div_ceil(rows) + experts as u64 - 1, 1)
                } else {
                    (m.div_ceil(rows), entries)
                };
                ([x, y as u32, z as u32], [gemm.threads(), 1, 1])
            }
            Kernel::Attention { batch, q_len, kv_len, heads, rows_per_thread, tiles, .. }
                if *kv_len > ATTENTION_SHORT_KEYS =>
            {
                // A cube per tile of query rows: four planes sharing a tile, or threads of
                // `rows_per_thread` rows each (the tile is their threads × rows).
                let (threads, tile) = match tiles {
                    Some(_) => (ATTENTION_TILE_THREADS, ATTENTION_QUERY_TILE),
                    None => {
                        let rows = long_attention_rows(*rows_per_thread);
                        (ATTENTION_QUERY_TILE / rows, ATTENTION_QUERY_TILE / rows * rows)
                    }
                };
                let cubes = batch * heads * q_len.div_ceil(tile as u64);
                let x = cubes.clamp(1, MAX_GRID as u64);
                ([x as u32, cubes.div_ceil(x).max(1) as u32, 1], [threads, 1, 1])
            }
            Kernel::RouteDispatch { groups, threads, .. } => ([*groups as u32, 1, 1], [*threads, 1, 1]),
            Kernel::GumbelPool { batch, threads, .. } => {
                let x = (*batch).clamp(1, MAX_GRID as u64);
                ([x as u32, batch.div_ceil(x) as u32, 1], [*threads, 1, 1])
            }
            other => {
                let cubes = other.work_items().div_ceil(BLOCK as u64).max(1);
                let x = cubes.min(MAX_GRID as u64);
                let y = cubes.div_ceil(x);
                ([x as u32, y as u32, 1], [BLOCK, 1, 1])
            }
        }
    }
}
