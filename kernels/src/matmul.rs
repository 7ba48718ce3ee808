//! Tiled GEMM with shared-memory tiles and register blocking, batched over a broadcast batch,
//! with transposes expressed as strides and a fused elementwise epilogue.
//!
//! Each cube computes a `tile_m × tile_n` block of `C`; each thread a `thread_m × thread_n`
//! sub-block, accumulated in f32 registers over `tile_k`-deep slices of `A` and `B` staged in
//! shared memory. No plane operations. The epilogue evaluates a program on the accumulator
//! (argument 0) and extra float arguments (bias, residual) before the single store of `C`.

use cubecl::prelude::*;

use crate::elementwise::{binary, cast, constant, unary, Op};

/// What a GEMM reads and writes besides `A · B`, the same for the shared-tile, vector and
/// tensor-core kernels (compile-time).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GemmIo {
    pub batch: Batching,
    /// The epilogue: ops over argument 0 (the accumulator) and extra arguments 1.., the register
    /// to store. `Arg(i)` for `i ≥ 1` reads extra argument `i − 1`.
    pub epilogue: Option<(Vec<Op>, usize)>,
    /// `A` in two parts along `k` (a concatenation never stored): `(split, at)` reads columns
    /// `split..` from `extra[at]`, a contiguous `[m, k − split]` matrix (batch folded into rows;
    /// the vector kernel needs `split` a multiple of 4 and no batch).
    pub a_tail: Option<(u32, usize)>,
    /// Grouped GEMMs over `E` experts: `Some(E)` folds the batch (rank 1, slots ordered by
    /// expert) into one sequence of rows, cut into tiles that stay within one expert's slots,
    /// so that each loaded weight feeds a tile of rows, not one slot's few (MegaBlocks'
    /// grouping, without padding). The index array holds, after the slots' experts and units,
    /// where each expert's slots start (`E + 1` entries). Launched with `z = 1` and
    /// `y = ⌈rows of all slots / tile rows⌉ + E − 1`; cubes past the last tile exit. Not with
    /// `a_tail`.
    pub fold_experts: Option<u32>,
    /// `A` read through a layer norm of its rows (a norm never stored; shared-tile and
    /// tensor-core kernels): see [`NormA`].
    pub a_norm: Option<NormA>,
    /// `Some(S)`: `k` split in `S` shares (multiples of the tile's depth); cube `z` computes its
    /// share's partial product and stores it as batch entry `z` (no batch, no epilogue; a
    /// later launch sums the partials in order). Shared-tile and tensor-core kernels.
    pub split_k: Option<u32>,
}

/// The columns of `A` (rows of `B`) this cube multiplies, `begin .. end`: all of `k`, or its
/// share of a split `k` ([`GemmIo::split_k`]), in whole tiles of depth `tk`.
#[cube]
pub(crate) fn k_range(meta: &Array<u32>, #[comptime] split: Option<u32>, #[comptime] tk: u32) -> (u32, u32) {
    let k = meta[2];
    let mut begin = 0u32;
    let mut end = k;
    if comptime![split.is_some()] {
        let share = k.div_ceil(comptime![split.unwrap_or(1)]).div_ceil(tk) * tk;
        begin = select(CUBE_POS_Z * share < k, CUBE_POS_Z * share, k);
        end = select(begin + share < k, begin + share, k);
    }
    (begin, end)
}

/// A layer norm applied to `A`'s rows as they are staged: each cube first computes its rows'
/// mean and inverse deviation over all `k` columns (two passes, as the layer-norm kernel does),
/// then stages `(a − mean) · inv · gamma + beta`. `gamma` and `beta` are extra arguments;
/// folded over experts they are stacked per expert (`k` each) and read at the tile's expert.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NormA {
    /// ε's f32 bits.
    pub eps_bits: u32,
    /// Where gamma and beta are in `extra`.
    pub gamma: usize,
    pub beta: usize,
}

/// The compile-time configuration of [`matmul`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GemmConfig {
    pub tile_m: u32,
    pub tile_n: u32,
    pub tile_k: u32,
    pub thread_m: u32,
    pub thread_n: u32,
    pub io: GemmIo,
}

impl GemmConfig {
    pub fn threads(&self) -> u32 {
        (self.tile_m / self.thread_m) * (self.tile_n / self.thread_n)
    }
}

/// One GEMM's sizes and strides, as the kernels read them from their metadata array.
pub struct GemmShape {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    /// Row and column strides of A and B.
    pub a: [u32; 2],
    pub b: [u32; 2],
    /// Where A starts in its buffer.
    pub a_offset: u32,
    /// Batch dimensions, and the batch strides of A and B (same length).
    pub batch: Vec<u32>,
    pub a_batch: Vec<u32>,
    pub b_batch: Vec<u32>,
}

impl GemmShape {
    /// The metadata array: `m, n, k, a_row, a_col, b_row, b_col, a_offset, batch dims, a batch
    /// strides, b batch strides`, then per extra argument `batch strides, row stride, column stride`.
    pub fn meta(&self, extra: &[Vec<u32>]) -> Vec<u32> {
        let mut out = vec![self.m, self.n, self.k, self.a[0], self.a[1], self.b[0], self.b[1], self.a_offset];
        out.extend_from_slice(&self.batch);
        out.extend_from_slice(&self.a_batch);
        out.extend_from_slice(&self.b_batch);
        for e in extra {
            out.extend_from_slice(e);
        }
        out
    }
}

/// Where an operand's batch coordinate comes from. Grouped GEMMs (a mixture of experts over
/// routed slots: batch entry = slot) read B at the slot's expert and may read an epilogue
/// argument at the slot's unit, from the launch's index array (`S` experts, then `S` units).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum BatchIndex {
    Own,
    Expert,
    Unit,
}

/// The batch of a GEMM launch: its rank and where each operand's coordinate comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Batching {
    pub rank: usize,
    /// B's coordinate (`Own` but in grouped GEMMs, which have rank 1).
    pub b: BatchIndex,
    /// Each epilogue argument's coordinate (missing ones: `Own`).
    pub extras: Vec<BatchIndex>,
}

impl Batching {
    /// A plain batch of `rank` dimensions.
    pub fn own(rank: usize) -> Batching {
        Batching { rank, b: BatchIndex::Own, extras: Vec::new() }
    }

    fn extra(&self, i: usize) -> BatchIndex {
        self.extras.get(i).copied().unwrap_or(BatchIndex::Own)
    }
}

/// Coordinate `coord` of a batch of `slots` entries, looked up as `mode` says.
#[cube]
fn remap(index: &Array<u32>, coord: u32, slots: u32, #[comptime] mode: BatchIndex) -> u32 {
    let mut out = coord;
    if comptime![mode == BatchIndex::Expert] {
        out = index[coord as usize];
    }
    if comptime![mode == BatchIndex::Unit] {
        out = index[(slots + coord) as usize];
    }
    out
}

/// The offsets of batch entry `bz`'s `A` and `B`, from the batch dimensions and strides in
/// `meta` (see [`GemmShape::meta`]).
#[cube]
pub(crate) fn batch_offsets(meta: &Array<u32>, index: &Array<u32>, bz: u32, #[comptime] batch: Batching) -> (u32, u32) {
    let rank = comptime![batch.rank];
    let mut rem = bz;
    // A may start inside its buffer (a slice of a wider result read in place).
    let mut a_off = meta[7];
    let mut b_off = 0u32;
    #[unroll]
    for r in 0..rank {
        let d = rank - 1 - r;
        let size = meta[8 + d];
        let coord = rem % size;
        rem /= size;
        a_off += coord * meta[8 + rank + d];
        b_off += remap(index, coord, size, comptime![batch.b]) * meta[8 + 2 * rank + d];
    }
    (a_off, b_off)
}

/// The rows `first .. end` of all slots' rows (slot-major, `m` per slot) that the cube's tile
/// `tile` covers when grouped rows are folded over `experts` experts (see
/// [`GemmIo::fold_experts`]): expert `e`'s slots `index[2S + e] .. index[2S + e + 1]`
/// are cut into tiles of `rows` rows, the last one partial. `found` is false for the cubes
/// past the last tile (the launch covers one spare tile per expert).
#[cube]
pub(crate) fn expert_tile(
    index: &Array<u32>,
    meta: &Array<u32>,
    tile: u32,
    #[comptime] rows: u32,
    #[comptime] experts: u32,
) -> (u32, u32, bool) {
    let m = meta[0];
    let slots = meta[8];
    let mut rest = tile;
    let mut first = 0u32;
    let mut end = 0u32;
    let mut found = false;
    for e in 0..experts {
        if !found {
            let (start, last) = (index[(2 * slots + e) as usize] * m, index[(2 * slots + e + 1) as usize] * m);
            let tiles = (last - start).div_ceil(rows);
            if rest < tiles {
                first = start + rest * rows;
                end = last;
                found = true;
            } else {
                rest -= tiles;
            }
        }
    }
    (first, end, found)
}

/// The rows of `C` a cube's tile covers and where its operands start: `(row0, end, bz, a_off,
/// b_off)`, rows `row0 .. end` of batch entry `bz` (tile `CUBE_POS_Y` of `tm` rows), or folded
/// (`fold = Some(E)`) rows counted over all slots within one expert's slots, every row of the
/// tile reading that expert's B. Folded, the tile's rows belong to several slots: `a_rows`
/// (`tm` entries) receives where each row of A starts, computed once per cube (rows past the
/// end read the last row; they are not stored). Cubes past the last folded tile exit.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_tile_rows(
    meta: &Array<u32>,
    index: &Array<u32>,
    a_rows: &mut SharedMemory<u32>,
    tid: u32,
    #[comptime] tm: u32,
    #[comptime] threads: u32,
    #[comptime] fold: Option<u32>,
    #[comptime] batch: Batching,
) -> (u32, u32, u32, u32, u32) {
    let m = meta[0];
    let mut row0 = CUBE_POS_Y * tm;
    let mut end = m;
    let mut bz = CUBE_POS_Z;
    if comptime![fold.is_some()] {
        let (first, last, found) = expert_tile(index, meta, CUBE_POS_Y, tm, comptime![fold.unwrap_or(0)]);
        if !found {
            terminate!();
        }
        row0 = first;
        end = last;
        bz = first / m;
        #[unroll]
        for l in 0..comptime![tm.div_ceil(threads)] {
            let i = tid + l * threads;
            if i < tm {
                let r = select(row0 + i < end, row0 + i, end - 1);
                a_rows[i as usize] = batch_offsets(meta, index, r / m, batch.clone()).0 + (r % m) * meta[3];
            }
        }
        sync_cube();
    }
    let (a_off, b_off) = batch_offsets(meta, index, bz, batch);
    (row0, end, bz, a_off, b_off)
}

/// The statistics of the tile's rows of `A` for [`GemmIo::a_norm`], into `norm`: the mean and
/// inverse deviation of row `i` at `2i` and `2i + 1` (rows past the end: the last row's).
/// `threads / tm` threads share a row, each every `threads / tm`-th column, combined in order.
/// Returns where the tile's gamma and beta start (its expert's, folded, else 0). Without a
/// norm, does nothing (`norm` may have one entry).
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn norm_rows<F: Float>(
    a: &Array<F>,
    meta: &Array<u32>,
    index: &Array<u32>,
    a_rows: &SharedMemory<u32>,
    norm: &mut SharedMemory<f32>,
    tile: (u32, u32, u32, u32),
    tid: u32,
    #[comptime] tm: u32,
    #[comptime] threads: u32,
    #[comptime] io: GemmIo,
) -> u32 {
    let mut params = 0u32;
    if comptime![io.a_norm.is_some()] {
        let eps = constant(comptime![io.a_norm.as_ref().map_or(0, |n| n.eps_bits)]);
        let fold = comptime![io.fold_experts.is_some()];
        let share = comptime![threads / tm];
        let (row0, end, bz, a_off) = tile;
        let (k, a_rs, a_cs) = (meta[2], meta[3], meta[4]);
        let mut partial = SharedMemory::<f32>::new(comptime![threads as usize]);
        let i = tid / share;
        let part = tid % share;
        let r = select(row0 + i < end, row0 + i, end - 1);
        let mut start = a_off + r * a_rs;
        if comptime![fold] {
            start = a_rows[i as usize];
        }
        // Pass 1: the mean; pass 2: the centred squares.
        let mut sum = 0.0f32;
        let mut c = part;
        while c < k {
            sum += f32::cast_from(a[(start + c * a_cs) as usize]);
            c += share;
        }
        partial[tid as usize] = sum;
        sync_cube();
        let mut mean = 0.0f32;
        for p in 0..share {
            mean += partial[(i * share + p) as usize];
        }
        mean /= f32::cast_from(k);
        sync_cube();
        let mut var = 0.0f32;
        c = part;
        while c < k {
            let d = f32::cast_from(a[(start + c * a_cs) as usize]) - mean;
            var += d * d;
            c += share;
        }
        partial[tid as usize] = var;
        sync_cube();
        if part == 0 {
            let mut total = 0.0f32;
            for p in 0..share {
                total += partial[(i * share + p) as usize];
            }
            norm[(2 * i) as usize] = mean;
            norm[(2 * i + 1) as usize] = 1.0 / f32::sqrt(total / f32::cast_from(k) + eps);
        }
        if comptime![fold] {
            params = index[bz as usize] * k;
        }
        sync_cube();
    }
    params
}

/// Stages the `tk`-deep slices of the tile's `A` (rows `row0 .. end`) and `B` (columns `col0..`)
/// at `k0` in shared memory, as `T`, zero outside the matrices and past `k_end`: `a_tile[kk · tm + i] =
/// A[row0 + i, k0 + kk]` (k-major: column-major A with stride `tm`), `b_tile[kk · tn + j] =
/// B[k0 + kk, col0 + j]` (row-major with stride `tn`). Consecutive threads take consecutive
/// elements of a row-major A's rows and B's rows. `A` may be folded rows (`a_rows`) or read
/// in two parts (`a_tail`, see [`GemmIo::a_tail`]).
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn stage_tiles<F: Float, T: Numeric>(
    a: &Array<F>,
    b: &Array<F>,
    extra: &Sequence<Array<F>>,
    meta: &Array<u32>,
    a_rows: &SharedMemory<u32>,
    norm: &SharedMemory<f32>,
    norm_params: u32,
    a_tile: &mut SharedMemory<T>,
    b_tile: &mut SharedMemory<T>,
    tile: (u32, u32, u32, u32, u32),
    k0: u32,
    k_end: u32,
    tid: u32,
    #[comptime] shape: (u32, u32, u32, u32),
    #[comptime] io: GemmIo,
) {
    let (tm, tn, tk, threads) = comptime![shape];
    let fold = comptime![io.fold_experts.is_some()];
    let (row0, end, col0, a_off, b_off) = tile;
    let (n, k) = (meta[1], meta[2]);
    let (a_rs, a_cs, b_rs, b_cs) = (meta[3], meta[4], meta[5], meta[6]);
    #[unroll]
    for l in 0..comptime![(tk * tm).div_ceil(threads)] {
        let idx = tid + l * threads;
        if idx < tk * tm {
            let kk = idx % tk;
            let i = idx / tk;
            let (r, kc) = (row0 + i, k0 + kk);
            let mut v = F::new(0.0);
            if r < end && kc < k_end {
                if comptime![fold] {
                    v = a[(a_rows[i as usize] + kc * a_cs) as usize];
                } else {
                    match io.a_tail {
                        Some(tail) => {
                            let (split, at) = comptime![tail];
                            if kc < split {
                                v = a[(a_off + r * a_rs + kc * a_cs) as usize];
                            } else {
                                v = extra.index(at)[(r * (k - split) + kc - split) as usize];
                            }
                        }
                        None => v = a[(a_off + r * a_rs + kc * a_cs) as usize],
                    }
                }
                if comptime![io.a_norm.is_some()] {
                    let (gamma, beta) = comptime![io.a_norm.as_ref().map_or((0, 0), |n| (n.gamma, n.beta))];
                    // The row's statistics, then the tile's (expert's) gamma and beta.
                    let p = (norm_params + kc) as usize;
                    let y = (f32::cast_from(v) - norm[(2 * i) as usize]) * norm[(2 * i + 1) as usize];
                    v = F::cast_from(y * f32::cast_from(extra.index(gamma)[p]) + f32::cast_from(extra.index(beta)[p]));
                }
            }
            a_tile[(kk * tm + i) as usize] = T::cast_from(v);
        }
    }
    #[unroll]
    for l in 0..comptime![(tk * tn).div_ceil(threads)] {
        let idx = tid + l * threads;
        if idx < tk * tn {
            let j = idx % tn;
            let kk = idx / tn;
            let (kc, col) = (k0 + kk, col0 + j);
            let mut v = F::new(0.0);
            if kc < k_end && col < n {
                v = b[(b_off + kc * b_rs + col * b_cs) as usize];
            }
            b_tile[(kk * tn + j) as usize] = T::cast_from(v);
        }
    }
}

/// Stores `C[row, col] = epilogue(acc)` where the element exists (`row < end`, `col < n`):
/// `row` of batch entry `bz`, or (folded) counted over all slots.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn store_c<F: Float>(
    acc: f32,
    extra: &Sequence<Array<F>>,
    meta: &Array<u32>,
    index: &Array<u32>,
    c: &mut Array<F>,
    at: (u32, u32, u32, u32),
    #[comptime] fold: bool,
    #[comptime] batch: Batching,
    #[comptime] program: Option<(Vec<Op>, usize)>,
) {
    let (bz, row, col, end) = at;
    let (m, n) = (meta[0], meta[1]);
    if row < end && col < n {
        // Folded, `row` counts over all slots: its slot and its row in the slot.
        let mut entry = bz;
        let mut local = row;
        if comptime![fold] {
            entry = row / m;
            local = row % m;
        }
        let value = epilogue(acc, extra, meta, index, entry, local, col, batch, program);
        c[((entry * m + local) * n + col) as usize] = F::cast_from(value);
    }
}

#[cube(launch, launch_unchecked)]
pub fn matmul<F: Float>(
    a: &Array<F>,
    b: &Array<F>,
    extra: &Sequence<Array<F>>,
    c: &mut Array<F>,
    meta: &Array<u32>,
    index: &Array<u32>,
    #[comptime] cfg: GemmConfig,
) {
    let (tm, tn, tk) = comptime![(cfg.tile_m, cfg.tile_n, cfg.tile_k)];
    let (thm, thn) = comptime![(cfg.thread_m, cfg.thread_n)];
    let threads = comptime![cfg.threads()];
    let fold = comptime![cfg.io.fold_experts.is_some()];
    let tid = UNIT_POS_X;
    let mut a_rows = SharedMemory::<u32>::new(comptime![if fold { tm as usize } else { 1 }]);
    let (row0, end, bz, a_off, b_off) =
        gemm_tile_rows(meta, index, &mut a_rows, tid, tm, threads, cfg.io.fold_experts, cfg.io.batch.clone());
    let mut norm = SharedMemory::<f32>::new(comptime![if cfg.io.a_norm.is_some() { (2 * tm) as usize } else { 1 }]);
    let norm_params =
        norm_rows(a, meta, index, &a_rows, &mut norm, (row0, end, bz, a_off), tid, tm, threads, cfg.io.clone());
    let per_row = comptime![tn / thn];
    let trow = tid / per_row;
    let tcol = tid % per_row;
    let col0 = CUBE_POS_X * tn;

    let mut acc = Array::<f32>::new(comptime![(thm * thn) as usize]);
    #[unroll]
    for i in 0..thm * thn {
        acc[i as usize] = 0.0;
    }
    let mut a_tile = SharedMemory::<F>::new(comptime![(tk * tm) as usize]);
    let mut b_tile = SharedMemory::<F>::new(comptime![(tk * tn) as usize]);
    let mut a_frag = Array::<f32>::new(comptime![thm as usize]);
    let mut b_frag = Array::<f32>::new(comptime![thn as usize]);

    let (mut k0, k_end) = k_range(meta, cfg.io.split_k, tk);
    while k0 < k_end {
        stage_tiles::<F, F>(
            a,
            b,
            extra,
            meta,
            &a_rows,
            &norm,
            norm_params,
            &mut a_tile,
            &mut b_tile,
            (row0, end, col0, a_off, b_off),
            k0,
            k_end,
            tid,
            comptime![(tm, tn, tk, threads)],
            cfg.io.clone(),
        );
        sync_cube();
        #[unroll]
        for kk in 0..tk {
            #[unroll]
            for r in 0..thm {
                a_frag[r as usize] = f32::cast_from(a_tile[(kk * tm + trow * thm + r) as usize]);
            }
            #[unroll]
            for cc in 0..thn {
                b_frag[cc as usize] = f32::cast_from(b_tile[(kk * tn + tcol * thn + cc) as usize]);
            }
            #[unroll]
            for r in 0..thm {
                #[unroll]
                for cc in 0..thn {
                    acc[(r * thn + cc) as usize] += a_frag[r as usize] * b_frag[cc as usize];
                }
            }
        }
        sync_cube();
        k0 += tk;
    }

    #[unroll]
    for r in 0..thm {
        #[unroll]
        for cc in 0..thn {
            let at = (bz, row0 + trow * thm + r, col0 + tcol * thn + cc, end);
            store_c(
                acc[(r * thn + cc) as usize],
                extra,
                meta,
                index,
                c,
                at,
                fold,
                cfg.io.batch.clone(),
                cfg.io.epilogue.clone(),
            );
        }
    }
}

/// The epilogue program at one output element (the accumulator as is without one).
#[cube]
#[allow(clippy::too_many_arguments)]
fn epilogue<F: Float>(
    acc: f32,
    extra: &Sequence<Array<F>>,
    meta: &Array<u32>,
    index: &Array<u32>,
    bz: u32,
    row: u32,
    col: u32,
    #[comptime] batch: Batching,
    #[comptime] program: Option<(Vec<Op>, usize)>,
) -> f32 {
    let batch_rank = comptime![batch.rank];
    match program {
        None => acc,
        Some((ops, out)) => {
            let extra_base = comptime![8 + 3 * batch_rank];
            let per_arg = comptime![batch_rank + 2];
            let mut regs = Sequence::<f32>::new();
            // Indexing, not iteration: `#[unroll]` needs a comptime range.
            #[allow(clippy::needless_range_loop)]
            #[unroll]
            for i in 0..ops.len() {
                let op = comptime![ops[i].clone()];
                let v = match op {
                    Op::Arg(0) => acc,
                    Op::Arg(e) => {
                        let slot = comptime![e - 1];
                        let base = comptime![extra_base + slot * per_arg];
                        let mut rem = bz;
                        let mut off = row * meta[base + batch_rank] + col * meta[base + batch_rank + 1];
                        #[unroll]
                        for r in 0..batch_rank {
                            let d = batch_rank - 1 - r;
                            let size = meta[8 + d];
                            off += remap(index, rem % size, size, comptime![batch.extra(slot)]) * meta[base + d];
                            rem /= size;
                        }
                        f32::cast_from(extra[slot][off as usize])
                    }
                    Op::Const(bits) => constant(bits),
                    Op::Unary(f, x) => unary(f, *regs.index(x)),
                    Op::Binary(f, a, b) => binary(f, *regs.index(a), *regs.index(b)),
                    Op::Cast(to, x) => cast(to, *regs.index(x)),
                    Op::Select(c, a, b) => select(*regs.index(c) != 0.0, *regs.index(a), *regs.index(b)),
                    _ => comptime![panic!("epilogues read their arguments and compute; no random numbers or indices")],
                };
                regs.push(v);
            }
            *regs.index(out)
        }
    }
}

/// Configuration of [`matmul_lanes`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LanesConfig {
    /// Rows per cube (the same for every thread: their loads of A are uniform).
    pub rows: u32,
    /// Columns per thread, `threads` apart (so neighbouring threads read neighbouring columns).
    pub cols: u32,
    /// Batch and epilogue; this kernel neither folds experts nor reads `A` in two parts.
    pub io: GemmIo,
}

/// A GEMM for devices without fast shared memory and barriers (CPU Vulkan drivers): each cube
/// owns `rows` rows and `threads · cols` columns of `C`; each thread a `rows × cols` register
/// block. No shared memory, no barriers: the rows' elements of `A` are the same for every
/// thread of a cube, and each thread reads columns of `B` next to its neighbours'.
#[cube(launch, launch_unchecked)]
pub fn matmul_lanes<F: Float>(
    a: &Array<F>,
    b: &Array<F>,
    extra: &Sequence<Array<F>>,
    c: &mut Array<F>,
    meta: &Array<u32>,
    index: &Array<u32>,
    #[comptime] cfg: LanesConfig,
) {
    let (rows, cols) = comptime![(cfg.rows, cfg.cols)];
    let m = meta[0];
    let n = meta[1];
    let k = meta[2];
    let (a_rs, a_cs, b_rs, b_cs) = (meta[3], meta[4], meta[5], meta[6]);
    let bz = CUBE_POS_Z;
    let (a_off, b_off) = batch_offsets(meta, index, bz, cfg.io.batch.clone());
    let threads = CUBE_DIM_X;
    let row0 = CUBE_POS_Y * rows;
    let col0 = CUBE_POS_X * threads * cols + UNIT_POS_X;
    let mut acc = Array::<f32>::new(comptime![(rows * cols) as usize]);
    #[unroll]
    for i in 0..rows * cols {
        acc[i as usize] = 0.0;
    }
    let mut a_frag = Array::<f32>::new(comptime![rows as usize]);
    // Rows past the end read row m − 1 (their results are not stored): no branch in the loop.
    let mut a_row = Array::<u32>::new(comptime![rows as usize]);
    #[unroll]
    for r in 0..rows {
        a_row[r as usize] = a_off + select(row0 + r < m, row0 + r, m - 1) * a_rs;
    }
    let mut b_col = Array::<u32>::new(comptime![cols as usize]);
    #[unroll]
    for cc in 0..cols {
        b_col[cc as usize] = b_off + select(col0 + cc * threads < n, col0 + cc * threads, n - 1) * b_cs;
    }
    for kk in 0..k {
        #[unroll]
        for r in 0..rows {
            a_frag[r as usize] = f32::cast_from(a[(a_row[r as usize] + kk * a_cs) as usize]);
        }
        #[unroll]
        for cc in 0..cols {
            let bv = f32::cast_from(b[(b_col[cc as usize] + kk * b_rs) as usize]);
            #[unroll]
            for r in 0..rows {
                acc[(r * cols + cc) as usize] += a_frag[r as usize] * bv;
            }
        }
    }
    #[unroll]
    for r in 0..rows {
        #[unroll]
        for cc in 0..cols {
            let row = row0 + r;
            let col = col0 + cc * threads;
            if row < m && col < n {
                let value = epilogue(
                    acc[(r * cols + cc) as usize],
                    extra,
                    meta,
                    index,
                    bz,
                    row,
                    col,
                    cfg.io.batch.clone(),
                    cfg.io.epilogue.clone(),
                );
                c[((bz * m + row) * n + col) as usize] = F::cast_from(value);
            }
        }
    }
}

/// Configuration of [`matmul_vector`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VectorConfig {
    /// Rows of `C` per cube.
    pub rows: u32,
    pub io: GemmIo,
}

/// Four consecutive rows of `B` (one vector of columns each), as f32.
type FourRows<N> = (Vector<f32, N>, Vector<f32, N>, Vector<f32, N>, Vector<f32, N>);

/// The four rows `k .. k + 4` of `B` (at `at`, `step` vectors apart) as f32 vectors.
#[cube]
fn b_rows<F: Float, N: Size>(b: &Array<Vector<F, N>>, at: u32, step: u32) -> FourRows<N> {
    (
        Vector::<f32, N>::cast_from(b[at as usize]),
        Vector::<f32, N>::cast_from(b[(at + step) as usize]),
        Vector::<f32, N>::cast_from(b[(at + 2 * step) as usize]),
        Vector::<f32, N>::cast_from(b[(at + 3 * step) as usize]),
    )
}

/// `acc + Σ_i a[i] · b_i`: one row's four steps of `k`.
#[cube]
fn fma4<N: Size>(acc: Vector<f32, N>, a: Vector<f32, Const<4>>, b: FourRows<N>) -> Vector<f32, N> {
    let (b0, b1, b2, b3) = b;
    let mut s = acc;
    s += Vector::new(a[0]) * b0;
    s += Vector::new(a[1]) * b1;
    s += Vector::new(a[2]) * b2;
    s += Vector::new(a[3]) * b3;
    s
}

/// A GEMM for CPU Vulkan drivers, where every load is the expensive part: `A` is read four
/// elements of `k` at a time, `B` and `C` in vectors of `N` columns; each thread owns `rows`
/// rows × `N` columns of `C` in registers. No shared memory or barriers. Needs `A` row-major
/// (`a_cs = 1`) with `k % 4 = 0`, and `B` row-major (`b_cs = 1`) with `n % N = 0`; the lowering
/// picks it only then. `a` is passed with vectors of 4, `b` and `c` with vectors of `N`.
#[cube(launch_unchecked)]
pub fn matmul_vector<F: Float, N: Size>(
    a: &Array<Vector<F, Const<4>>>,
    b: &Array<Vector<F, N>>,
    extra: &Sequence<Array<F>>,
    c: &mut Array<Vector<F, N>>,
    meta: &Array<u32>,
    index: &Array<u32>,
    #[comptime] cfg: VectorConfig,
) {
    let rows = comptime![cfg.rows];
    let width = N::value() as u32;
    let m = meta[0];
    let n = meta[1];
    let k = meta[2];
    let (a_rs, b_rs) = (meta[3], meta[5]);
    let nv = n / width;
    let col = CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X;
    let col_load = select(col < nv, col, nv - 1);
    // This cube's rows `row0 .. end`: of batch entry z, or of one expert's slots' rows.
    let mut row0 = CUBE_POS_Y * rows;
    let mut end = m;
    if comptime![cfg.io.fold_experts.is_some()] {
        let (first, last, found) =
            expert_tile(index, meta, CUBE_POS_Y, rows, comptime![cfg.io.fold_experts.unwrap_or(0)]);
        if !found {
            terminate!();
        }
        row0 = first;
        end = last;
    }
    // Every row of the cube reads the same B: its batch entry's, or its tile's expert's (that
    // of the tile's first slot).
    let mut bz0 = CUBE_POS_Z;
    if comptime![cfg.io.fold_experts.is_some()] {
        bz0 = row0 / m;
    }
    let (a_base, b_off) = batch_offsets(meta, index, bz0, cfg.io.batch.clone());
    let mut acc = Array::<Vector<f32, N>>::new(comptime![rows as usize]);
    let mut a_at = Array::<u32>::new(comptime![rows as usize]);
    // Each row's batch entry and its row in the entry.
    let mut entry = Array::<u32>::new(comptime![rows as usize]);
    let mut local = Array::<u32>::new(comptime![rows as usize]);
    #[unroll]
    for r in 0..rows {
        acc[r as usize] = Vector::new(0.0);
        // Rows past the end read the last row; their results are not stored.
        let row = select(row0 + r < end, row0 + r, end - 1);
        let mut bz = bz0;
        let mut t = row;
        let mut a_off = a_base;
        if comptime![cfg.io.fold_experts.is_some()] {
            bz = row / m;
            t = row % m;
            a_off = batch_offsets(meta, index, bz, cfg.io.batch.clone()).0;
        }
        a_at[r as usize] = (a_off + t * a_rs) / 4;
        entry[r as usize] = bz;
        local[r as usize] = t;
    }
    let b_at = b_off / width + col_load;
    let b_step = b_rs / width;
    // With a split A, `a` holds columns `..split` (rows `split` wide) and the tail the rest.
    let mut head_steps = k / 4;
    if comptime![cfg.io.a_tail.is_some()] {
        head_steps = comptime![cfg.io.a_tail.unwrap_or((0, 0)).0 / 4];
    }
    for kq in 0..head_steps {
        let bq = b_rows(b, b_at + kq * 4 * b_step, b_step);
        #[unroll]
        for r in 0..rows {
            let av = Vector::<f32, Const<4>>::cast_from(a[(a_at[r as usize] + kq) as usize]);
            acc[r as usize] = fma4(acc[r as usize], av, bq);
        }
    }
    if comptime![cfg.io.a_tail.is_some()] {
        let (split, at) = comptime![cfg.io.a_tail.unwrap_or((0, 0))];
        let tail = extra.index(at);
        let tail_width = k - split;
        for kq in head_steps..k / 4 {
            let bq = b_rows(b, b_at + kq * 4 * b_step, b_step);
            #[unroll]
            for r in 0..rows {
                let base = local[r as usize] * tail_width + kq * 4 - split;
                let mut av = Vector::<f32, Const<4>>::new(0.0);
                #[unroll]
                for i in 0..4u32 {
                    av[i as usize] = f32::cast_from(tail[(base + i) as usize]);
                }
                acc[r as usize] = fma4(acc[r as usize], av, bq);
            }
        }
    }
    if col < nv {
        #[unroll]
        for r in 0..rows {
            if row0 + r < end {
                let (bz, row) = (entry[r as usize], local[r as usize]);
                let v = acc[r as usize];
                let mut out = Vector::<F, N>::new(F::new(0.0));
                #[unroll]
                for e in 0..N::value() {
                    let value = epilogue(
                        v[e],
                        extra,
                        meta,
                        index,
                        bz,
                        row,
                        col * width + e as u32,
                        cfg.io.batch.clone(),
                        cfg.io.epilogue.clone(),
                    );
                    out[e] = F::cast_from(value);
                }
                c[((bz * m + row) * nv + col) as usize] = out;
            }
        }
    }
}
