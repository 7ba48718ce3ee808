//! Matmuls and fused epilogues: one `MatMul` launch each, its GEMM kernel chosen by the device's
//! strategy and the operands' layouts. `A` may be a slice read in place or a concatenation read
//! from its two parts ([`Parts`]), which this file also decides; a batch folds into the rows
//! where every epilogue argument can follow them.

use calm_ir::fused::FusedOp;
use calm_ir::program::{Instr, Program};
use calm_ir::{BinaryFn, DType, NodeId, Op, ValueId};

use super::{LowerError, LowerOptions, Lowering};
use crate::fuse_elementwise::splice_program;
use crate::layout::{broadcast_strides, contiguous_strides, flat_row_stride, Parts};
use crate::plan::{Epilogue, Gemm, GemmTile, Kernel, Role, Storage};

/// How to compute matmuls: the device decides.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum GemmStrategy {
    /// Shared-memory tiles (GPUs).
    SharedTiles(GemmTile),
    /// Register blocking without shared memory, vector loads where the layout allows (CPU
    /// Vulkan drivers such as lavapipe, where barriers are costly and every load counts).
    Registers,
}

/// The GEMM kernel for an `m × n` product given the layouts of `A` and `B`: on shared tiles,
/// the tensor cores where the device has a unit for the plan's operands and the precision
/// allows it (see [`LowerOptions::tensor_unit`]).
pub(super) fn choose_gemm(
    opts: &LowerOptions,
    m: u64,
    n: u64,
    k: u64,
    a_strides: [u64; 2],
    b_strides: [u64; 2],
    a_offset: u64,
) -> Gemm {
    match opts.gemm {
        GemmStrategy::SharedTiles(t) => opts.tensor_unit().map_or(Gemm::SharedTiles(t), Gemm::tensor_cores),
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

/// Streaming multiprocessors of the GPUs calm is tuned for (H100 and H200: 132).
const GPU_SMS: u64 = 132;

/// The shared-tile GEMM of a product of `entries` batch entries of `m × n`: the default tile,
/// or the small one where the default's cubes would leave most of a GPU's SMs idle. The
/// reflection rounds' GEMMs (64 rows at d = 384: 6 default tiles) ran at 0.3 TFLOP/s on the
/// H200 of 2026-12-04; the small tile gives them 4× the cubes. Other kernels are kept.
fn fill_the_device(gemm: Gemm, entries: u64, m: u64, n: u64) -> Gemm {
    let (rows, cols) = (GemmTile::DEFAULT.tile_m as u64, GemmTile::DEFAULT.tile_n as u64);
    match gemm {
        Gemm::SharedTiles(t) if t == GemmTile::DEFAULT && entries * m.div_ceil(rows) * n.div_ceil(cols) < GPU_SMS => {
            Gemm::SharedTiles(GemmTile::SMALL)
        }
        other => other,
    }
}

/// The most shares of a split `k`: the elementwise launch that sums them reads each as an
/// argument of its own, and with 8 and an epilogue's arguments it spilled on sm_90.
const MAX_SPLITS: u64 = 4;

/// The shares of `k` a GEMM of `tiles` output tiles splits into (see `split_k` on
/// [`Kernel::MatMul`]): on shared tiles and tensor cores, when its tiles would leave most of a
/// GPU's SMs idle, enough shares to give them a cube each (at most [`MAX_SPLITS`]), each at least four
/// staged slices deep. A cube's slices run one after another, so a 64-row product over a long
/// `k` takes as long with few cubes as with many: the reflection rounds' GEMMs (64 × 512 ×
/// 1024 at d = 384) ran at 0.3 TFLOP/s on the H200 of 2026-12-04; split 4 ways, each cube
/// walks a quarter of `k`.
fn split_k(opts: &LowerOptions, gemm: &Gemm, tiles: u64, k: u64) -> Option<u32> {
    let depth = match *gemm {
        Gemm::SharedTiles(t) => t.tile_k as u64,
        Gemm::TensorCores { tile_k, .. } => tile_k as u64,
        _ => return None,
    };
    let shares = (GPU_SMS / tiles.max(1)).min(k / (4 * depth)).min(MAX_SPLITS);
    (opts.split_k && 2 * tiles <= GPU_SMS && shares >= 2).then_some(shares as u32)
}

/// The program that sums `splits` partial products (arguments `0..splits`, in order) and then
/// applies `epilogue` (its argument 0, the accumulator, becomes the sum; its others follow the
/// partials).
fn sum_then(splits: u32, epilogue: Option<&Program>) -> Program {
    let mut instrs = vec![Instr::Arg { index: 0 }];
    for s in 1..splits {
        let last = instrs.len() as u32 - 1;
        instrs.push(Instr::Arg { index: s });
        instrs.push(Instr::Binary { f: BinaryFn::Add, a: last, b: last + 1 });
    }
    let sum = instrs.len() as u32 - 1;
    let Some(epilogue) = epilogue else {
        return Program { instrs, outputs: vec![(sum, DType::F32)] };
    };
    // The epilogue's registers renumbered after the sum's; its accumulator is the sum, its
    // other arguments follow the partials.
    let at = splice_program(
        epilogue,
        &mut instrs,
        |index, instrs| {
            if index == 0 {
                return sum;
            }
            instrs.push(Instr::Arg { index: index + splits - 1 });
            instrs.len() as u32 - 1
        },
        |key| key + splits - 1,
    );
    let outputs = epilogue.outputs.iter().map(|&(r, t)| (at[r as usize], t)).collect();
    Program { instrs, outputs }
}

/// The transposes of a plain or fused matmul, `None` for other ops.
fn transposes(op: &Op) -> Option<(bool, bool)> {
    match op {
        Op::MatMul { transpose_a, transpose_b }
        | Op::Fused(FusedOp::MatMulEpilogue { transpose_a, transpose_b, .. }) => Some((*transpose_a, *transpose_b)),
        _ => None,
    }
}

impl Lowering<'_> {
    /// A matmul, with the epilogue program of a fused one: its extra arguments (the node's
    /// arguments after `a` and `b`) are read at broadcast strides over the product.
    pub(super) fn lower_matmul(&mut self, n: NodeId) -> Result<(), LowerError> {
        let node = &self.g.nodes[n];
        let (ta, tb) = transposes(&node.op).expect("a matmul");
        let program = match &node.op {
            Op::Fused(FusedOp::MatMulEpilogue { program, .. }) => Some(program),
            _ => None,
        };
        let (args, out) = (&node.args, node.results[0]);
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
            Some(parts) => (parts.head, parts.head_width, 0),
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
        let gemm = choose_gemm(self.opts, m, n_, k, a_strides, b_strides, a_offset);
        let gemm = fill_the_device(gemm, batch.iter().product(), m, n_);
        let (rows, cols) = gemm.block();
        let splits =
            if batch.is_empty() { split_k(self.opts, &gemm, m.div_ceil(rows) * n_.div_ceil(cols), k) } else { None };
        let (epilogue, after) = match splits {
            Some(_) => (None, epilogue),
            None => (epilogue, None),
        };
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
            gemm,
            epilogue,
            grouped: None,
            a_split: split.map(|parts| parts.head_width),
            a_norm: None,
            split_k: splits,
        };
        let mut reads = vec![a_buffer, self.buf(args[1])];
        let Some(splits) = splits else {
            reads.extend(self.bufs(&args[2..]));
            reads.extend(split.map(|parts| parts.tail));
            let w = self.new_buffer(out, Role::Temp)?;
            return self.emit(n, kernel, reads, vec![w]);
        };
        // Split k: the partial products, then one elementwise launch summing them in order and
        // applying the epilogue (reading its arguments at the same strides over `[m, n]`).
        reads.extend(split.map(|parts| parts.tail));
        let size = m * n_;
        let partials = self.scratch(Storage::Float, splits as u64 * size, format!("{n}.partials"));
        self.emit_part(n, kernel, reads, vec![partials], 2 * m * n_ * k);
        let program = sum_then(splits, after.as_ref().map(|e| &e.program));
        let flops = size * (splits as u64 - 1 + program.flops_per_element());
        let mut strides = vec![vec![n_, 1]; splits as usize];
        let mut offsets: Vec<u64> = (0..splits as u64).map(|s| s * size).collect();
        let mut reads = vec![partials; splits as usize];
        if let Some(e) = &after {
            strides.extend(e.strides.iter().cloned());
            offsets.extend(e.strides.iter().map(|_| 0));
            reads.extend(self.bufs(&args[2..]));
        }
        let sum = Kernel::Elementwise { shape: vec![m, n_], strides, offsets, program };
        let w = self.new_buffer(out, Role::Temp)?;
        self.emit_part(n, sum, reads, vec![w], flops);
        Ok(())
    }

    /// Row and column strides of a GEMM's `B` (`k × n` as the product reads it): a weight stored
    /// transposed is the row-major `k × n` matrix it is on the device.
    pub(super) fn b_strides(&self, b: ValueId, tb: bool, k: u64, n: u64) -> [u64; 2] {
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
        let Some((_, tb)) = transposes(&node.op) else { return Ok(false) };
        let (a, out) = (self.shape(node.args[0])?, self.shape(node.results[0])?);
        let (n_, k) = (out[out.len() - 1], a[a.len() - 1]);
        let b_strides = self.b_strides(node.args[1], tb, k, n_);
        let rows = out[..out.len() - 1].iter().product();
        let gemm = choose_gemm(self.opts, rows, n_, k, [head_width, 1], b_strides, 0);
        Ok(!matches!(gemm, Gemm::Registers { .. }))
    }

    /// Whether matmul `n` (plain or fused) runs as one GEMM over its batch folded into rows:
    /// `[.., m, k] x [k, n]` with A row-major is just more rows, if every epilogue argument can
    /// follow the flattened rows.
    fn folds_batch(&self, n: NodeId) -> Result<bool, LowerError> {
        let node = &self.g.nodes[n];
        let Some((ta, _)) = transposes(&node.op) else { return Ok(false) };
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

    /// The [`Parts`] of concatenation `n` if it can stay unstored: two float parts joined along
    /// the last axis, each in a buffer of its own, read only as the row-major `A` of GEMMs that
    /// fold their batch into rows and whose kernel reads `A` in two parts (shared-tile and
    /// vector GEMMs; see [`choose_gemm`]). It then costs no copies; the GEMM reads each column
    /// from its part.
    pub(super) fn read_in_parts(&self, n: NodeId) -> Option<Parts> {
        let node = &self.g.nodes[n];
        let (out, rank) = (node.results[0], self.g.value_type(node.results[0]).rank());
        let Op::Concat { axis } = node.op else { return None };
        let head_width = self.shape(node.args[0]).ok()?.last().copied().unwrap_or(0);
        let as_a = |u: NodeId| {
            let reader = &self.g.nodes[u];
            self.folds_batch(u).unwrap_or(false)
                && reader.args[0] == out
                && !reader.args[1..].contains(&out)
                && self.gemm_reads_parts(u, head_width).unwrap_or(false)
        };
        let unstored = axis + 1 == rank
            && rank >= 2
            && node.args.len() == 2
            && node.args.iter().all(|&a| self.views[a].is_none() && self.g.value_type(a).dtype.is_float())
            && !self.is_output(out)
            && !self.users[out].is_empty()
            && self.users[out].iter().all(|&u| as_a(u));
        unstored.then(|| Parts { head: self.buf(node.args[0]), tail: self.buf(node.args[1]), head_width })
    }
}
