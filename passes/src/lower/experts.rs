//! A sparse mixture of experts ([`FusedOp::ExpertMixture`]) as launches over the routed slots:
//! the routing and dispatch (the mixture's own routers in one `RouteDispatch`, or a `Dispatch`
//! per group of given routes); per expert layer a grouped layer norm, the joint q/k/v GEMM,
//! attention, the output projection with the residual, a grouped layer norm and the two FFN
//! GEMMs; each slot's mean over its tokens mixed back into units by one `Combine`.

use calm_ir::cost::route_flops_per_prob;
use calm_ir::fused::{FusedOp, MixtureRouter, EXPERT_LAYER_PARAMS};
use calm_ir::program::{BinaryFn, Instr, Program, UnaryFn};
use calm_ir::{DType, NodeId, Op, ValueId};

use super::{matmul::choose_gemm, LowerError, Lowering};
use crate::plan::{BatchIndex, BufferId, Epilogue, Gemm, Grouped, GroupedNorm, Kernel, Role, Storage, ROUTE_THREADS};

/// The sizes of a mixture's routed rows and the buffers its launches share.
struct Slots {
    /// The mixture node.
    node: NodeId,
    /// Slots (routed (unit, choice) pairs) of all groups, and experts of all groups.
    slots: u64,
    experts: u64,
    /// Tokens per slot, all slots' token rows, and the mixture's width.
    tokens: u64,
    rows: u64,
    width: u64,
    /// Each slot's expert and unit, then where each expert's slots start.
    index: BufferId,
    eps: f64,
}

/// A grouped GEMM's epilogue: its expert's bias, then the residual (read at the slot itself or
/// at its unit) and GELU where asked.
struct ExpertEpilogue {
    residual: Option<(BufferId, BatchIndex)>,
    gelu: bool,
}

/// The rows a grouped GEMM multiplies: as stored, or through a layer norm with an expert's
/// `gamma` and `beta` (with `gather`, each slot's rows read at its unit).
enum ExpertRows {
    Plain(BufferId),
    Normed { x: BufferId, norm: [ValueId; 2], gather: bool, what: &'static str },
}

impl Lowering<'_> {
    pub(super) fn lower_experts(&mut self, n: NodeId) -> Result<(), LowerError> {
        let g = self.g;
        let node = &g.nodes[n];
        let args = &node.args;
        let Op::Fused(f @ FusedOp::ExpertMixture { groups, experts, top_k, layers, router, joined, heads, scale, eps }) =
            &node.op
        else {
            unreachable!("an expert mixture")
        };
        let params = f.first_expert_param().expect("an expert mixture");
        let z = self.shape(args[0])?;
        let (units, tokens, m) = (z[0], z[1], z[2]);
        let slots = groups * units * top_k;
        let ffn = self.shape(args[params + 9])?[0] / (groups * experts);
        let s = Slots {
            node: n,
            slots,
            experts: groups * experts,
            tokens,
            rows: slots * tokens,
            width: m,
            index: self.scratch(Storage::U32, 2 * slots + groups * experts + 1, format!("{n}.index")),
            eps: *eps,
        };
        let slot_gate = self.scratch(Storage::Float, slots, format!("{n}.slot_gate"));
        let unit_slot = self.scratch(Storage::U32, slots, format!("{n}.unit_slot"));
        self.route_slots(&s, *router, [slot_gate, unit_slot])?;
        let mut x = self.buf(args[0]);
        for layer in 0..*layers as usize {
            let p = |i: usize| args[params + layer * EXPERT_LAYER_PARAMS.len() + i];
            let first = layer == 0;
            let h = ExpertRows::Normed { x, norm: [p(0), p(1)], gather: first, what: "ln1" };
            let qkv =
                self.grouped_gemm(&s, h, m, p(2), p(3), 3 * m, ExpertEpilogue { residual: None, gelu: false }, "qkv");
            let ctx = self.scratch(Storage::Float, s.rows * m, format!("{n}.attention"));
            let attention = Kernel::Attention {
                batch: slots,
                q_len: tokens,
                kv_len: tokens,
                heads: *heads,
                head_dim: m / heads,
                scale: *scale,
                bias_strides: None,
                layout: [[3 * m, 0], [3 * m, m], [3 * m, 2 * m]],
                rows_per_thread: self.opts.attention_rows,
                tiles: self.attention_tiles(tokens, m / heads),
            };
            self.emit_part(n, attention, vec![qkv, qkv, qkv], vec![ctx], 4 * s.rows * tokens * m);
            // The first layer's residual is the unit's own rows of z.
            let from = if first { BatchIndex::Unit } else { BatchIndex::Own };
            let x1 = ExpertEpilogue { residual: Some((x, from)), gelu: false };
            let x1 = self.grouped_gemm(&s, ExpertRows::Plain(ctx), m, p(4), p(5), m, x1, "x1");
            let h = ExpertRows::Normed { x: x1, norm: [p(6), p(7)], gather: false, what: "ln2" };
            let up =
                self.grouped_gemm(&s, h, m, p(8), p(9), ffn, ExpertEpilogue { residual: None, gelu: true }, "ffn1");
            let x2 = ExpertEpilogue { residual: Some((x1, BatchIndex::Own)), gelu: false };
            x = self.grouped_gemm(&s, ExpertRows::Plain(up), ffn, p(10), p(11), m, x2, "x2");
        }
        // Each slot's mean over its tokens, mixed back into units: all groups in one launch
        // into their concatenation if joined, else a launch per group.
        let combine = |first_group: u64, count: u64, out_stride: u64| Kernel::Combine {
            units,
            width: m,
            tokens,
            top_k: *top_k,
            groups: count,
            first_group,
            out_stride,
        };
        let flops = |count: u64| count * units * top_k * (tokens + 2) * m;
        let reads = vec![x, slot_gate, unit_slot];
        if *joined {
            let out = self.new_buffer(node.results[0], Role::Temp)?;
            self.emit_part(n, combine(0, *groups, groups * m), reads, vec![out], flops(*groups));
        } else {
            for group in 0..*groups {
                let out = self.new_buffer(node.results[group as usize], Role::Temp)?;
                self.emit_part(n, combine(group, 1, m), reads.clone(), vec![out], flops(1));
            }
        }
        Ok(())
    }

    /// The launches that fill the index buffer, each slot's gate and each (unit, choice)'s
    /// slot: one `RouteDispatch` computing the mixture's own routers (and, in training graphs,
    /// the load-balance statistics, the mixture's results after the mixed ones), else a
    /// `Dispatch` per group from the routes the graph computed.
    fn route_slots(
        &mut self,
        s: &Slots,
        router: Option<MixtureRouter>,
        [slot_gate, unit_slot]: [BufferId; 2],
    ) -> Result<(), LowerError> {
        let n = s.node;
        let node = &self.g.nodes[n];
        let Op::Fused(FusedOp::ExpertMixture { groups, experts, top_k, joined, .. }) = node.op else {
            unreachable!("an expert mixture")
        };
        let units = s.slots / (groups * top_k);
        let per_group = units * top_k;
        let Some(MixtureRouter { transpose_w, stats }) = router else {
            for group in 0..groups {
                let (first, first_expert) = (group * per_group, group * experts);
                let dispatch = Kernel::Dispatch { units, experts, top_k, slots: s.slots, first, first_expert };
                let (gates, chosen) = (node.args[1 + 2 * group as usize], node.args[2 + 2 * group as usize]);
                let reads = vec![self.buf(chosen), self.buf(gates)];
                self.emit_part(n, dispatch, reads, vec![s.index, slot_gate, unit_slot], 0);
            }
            return Ok(());
        };
        if experts > ROUTE_THREADS {
            let reason = format!("a mixture routes itself with at most {ROUTE_THREADS} experts per group");
            return Err(self.unsupported(n, &reason));
        }
        let width = self.shape(node.args[1])?[1];
        let choice = self.scratch(Storage::U32, s.slots, format!("{n}.choice"));
        let probs = if stats { groups * units * experts } else { 0 };
        let route_scratch = self.scratch(Storage::Float, s.slots + probs, format!("{n}.route"));
        // The mixed results (one, the concatenation, if joined), then the statistics.
        let mixed = if joined { 1 } else { groups as usize };
        let (fraction, mean_prob) = if stats {
            let (f, p) = (node.results[mixed], node.results[mixed + 1]);
            (self.new_buffer(f, Role::Temp)?, self.new_buffer(p, Role::Temp)?)
        } else {
            let mut placeholder = |what: &str| self.scratch(Storage::Float, 1, format!("{n}.{what} (not written)"));
            (placeholder("fraction"), placeholder("mean_prob"))
        };
        let writes = vec![choice, route_scratch, s.index, slot_gate, unit_slot, fraction, mean_prob];
        // A thread per unit up to the limit, and at least one per expert.
        let threads = units.next_power_of_two().clamp(experts.next_power_of_two().max(32), ROUTE_THREADS) as u32;
        let kernel = Kernel::RouteDispatch { groups, units, width, experts, top_k, transpose_w, stats, threads };
        let reads = self.bufs(&node.args[1..4]);
        let flops = groups * units * experts * route_flops_per_prob(width, top_k);
        self.emit_part(n, kernel, reads, writes, flops);
        Ok(())
    }

    /// A layer norm of every slot's token rows `[rows, width]` with its expert's `gamma` and
    /// `beta`; with `gather`, reading each slot's rows at its unit.
    fn grouped_norm(
        &mut self,
        s: &Slots,
        x: BufferId,
        [gamma, beta]: [ValueId; 2],
        gather: bool,
        what: &str,
    ) -> BufferId {
        let (n, rows, cols) = (s.node, s.rows, s.width);
        let out = self.scratch(Storage::Float, rows * cols, format!("{n}.{what}"));
        let grouped = Some(GroupedNorm { tokens: s.tokens, gather });
        let row_cube = self.row_cube(cols, 1);
        let kernel = Kernel::LayerNorm { rows, cols, eps: s.eps, grouped, row_cube, plane: self.row_plane(row_cube) };
        let reads = vec![x, self.buf(gamma), self.buf(beta), s.index];
        self.emit_part(n, kernel, reads, vec![out], 8 * rows * cols);
        out
    }

    /// Every slot's `[tokens, k_in]` rows of `a` times its expert's `k_in × width` block of the
    /// stacked `weight`, plus its expert's block of `bias`, then the epilogue. Rows to normalise
    /// are normalised as the GEMM reads them where its kernel can (shared tiles and tensor cores
    /// fold whole tiles of one expert's rows, which then share one gamma and beta; not rows
    /// gathered from their units), else by a layer-norm launch first.
    #[allow(clippy::too_many_arguments)]
    fn grouped_gemm(
        &mut self,
        s: &Slots,
        a: ExpertRows,
        k_in: u64,
        weight: ValueId,
        bias: ValueId,
        width: u64,
        epilogue: ExpertEpilogue,
        what: &str,
    ) -> BufferId {
        let (n, tokens, experts, rows) = (s.node, s.tokens, s.experts, s.rows);
        let out = self.scratch(Storage::Float, rows * width, format!("{n}.{what}"));
        let stacked = experts * width;
        let mut instrs =
            vec![Instr::Arg { index: 0 }, Instr::Arg { index: 1 }, Instr::Binary { f: BinaryFn::Add, a: 0, b: 1 }];
        let mut strides = vec![vec![width, 0, 1]];
        let mut extras = vec![BatchIndex::Expert];
        let mut reads = vec![self.buf(weight), self.buf(bias)];
        if let Some((r, at)) = epilogue.residual {
            let last = instrs.len() as u32 - 1;
            instrs.push(Instr::Arg { index: 2 });
            instrs.push(Instr::Binary { f: BinaryFn::Add, a: last, b: last + 1 });
            strides.push(vec![tokens * width, width, 1]);
            extras.push(at);
            reads.push(r);
        }
        if epilogue.gelu {
            let last = instrs.len() as u32 - 1;
            instrs.push(Instr::Unary { f: UnaryFn::Gelu, x: last });
        }
        let program = Program { outputs: vec![(instrs.len() as u32 - 1, DType::F32)], instrs };
        // Expert e's `k_in × width` block: columns e·width.. of the transposed stack, or
        // rows e·width.. of the stack as stored.
        let (b_strides, b_expert) =
            if self.transposed[weight] { ([stacked, 1], width) } else { ([1, k_in], width * k_in) };
        let a_strides = [k_in, 1];
        // A slot has only `tokens` rows (5 in CALM): the shared-tile and vector GEMMs fold all
        // slots' rows into one sequence, in tiles within one expert's slots, so that each
        // loaded weight feeds a tile of rows, not 5 (MegaBlocks' dropless grouped GEMM; a slot's
        // own 64-row tile has 5 rows of work, and the H200 profile of 2026-12-04 had these GEMMs
        // at 1.66 TFLOP/s). The register GEMM (any layout, lavapipe) keeps a slot per batch entry.
        let mut gemm = choose_gemm(self.opts, tokens, width, k_in, a_strides, b_strides, 0);
        let rows_per_expert = rows / experts;
        let fold_experts = match &mut gemm {
            // Tiles of 32 (the dense GEMMs') when the average expert fills three of them, else
            // 16, which wastes less of each expert's last tile (measured on lavapipe at the
            // paper preset: see BENCHMARKS.md).
            Gemm::Vectors { rows: per_cube, .. } => {
                let tile = if rows_per_expert >= 96 { 32 } else { 16 };
                *per_cube = rows.clamp(1, tile) as u32;
                Some(experts as u32)
            }
            // The tile's 64 rows while the average expert fills three of them, else 32 (half
            // as many rows per thread, the same threads), halving the last tile's waste.
            Gemm::SharedTiles(tile) => {
                if rows_per_expert < 3 * tile.tile_m as u64 && tile.tile_m >= 64 && tile.thread_m >= 2 {
                    tile.tile_m /= 2;
                    tile.thread_m /= 2;
                }
                Some(experts as u32)
            }
            Gemm::TensorCores { .. } => Some(experts as u32),
            Gemm::Registers { .. } => None,
        };
        let folded = gemm.stages_tiles();
        let (a, a_norm, mut flops) = match a {
            ExpertRows::Normed { x, norm: [gamma, beta], gather: false, .. } if folded => {
                reads.extend([self.buf(gamma), self.buf(beta)]);
                (x, Some(s.eps), 8 * rows * k_in)
            }
            ExpertRows::Normed { x, norm, gather, what } => (self.grouped_norm(s, x, norm, gather, what), None, 0),
            ExpertRows::Plain(a) => (a, None, 0),
        };
        reads.insert(0, a);
        reads.push(s.index);
        flops += 2 * rows * k_in * width;
        let kernel = Kernel::MatMul {
            batch: vec![s.slots],
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
            a_norm,
            split_k: None,
        };
        self.emit_part(n, kernel, reads, vec![out], flops);
        out
    }
}
