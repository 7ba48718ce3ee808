//! Fused attention: one `Attention` launch reading q, k and v where they lie (slices of a joint
//! projection in place) and the optional score bias at its broadcast strides.

use calm_ir::fused::FusedOp;
use calm_ir::{NodeId, Op};

use super::{LowerError, Lowering};
use crate::layout::broadcast_strides;
use crate::plan::{
    attention_tile_bytes, BufferId, ComputeUnit, Kernel, Role, ATTENTION_SHORT_KEYS, ATTENTION_TILE_MAX_HEAD,
};

impl Lowering<'_> {
    pub(super) fn lower_attention(&mut self, n: NodeId) -> Result<(), LowerError> {
        let node = &self.g.nodes[n];
        let Op::Fused(FusedOp::Attention { heads, scale, bias }) = node.op else { unreachable!("an attention") };
        let args = &node.args;
        let (q, kv) = (self.shape(args[0])?, self.shape(args[1])?);
        let (batch, q_len, kv_len) = (q[0], q[1], kv[1]);
        let bias_strides = if bias {
            let strides = broadcast_strides(&self.shape(args[3])?, &[batch, heads, q_len, kv_len]);
            Some([strides[0], strides[1], strides[2], strides[3]])
        } else {
            None
        };
        let width = q[2];
        let rows: Vec<(BufferId, u64, u64)> = args[..3].iter().map(|&a| self.rows_of(a, width)).collect();
        let kernel = Kernel::Attention {
            batch,
            q_len,
            kv_len,
            heads,
            head_dim: width / heads,
            scale,
            bias_strides,
            layout: [0, 1, 2].map(|i| [rows[i].1, rows[i].2]),
            rows_per_thread: self.opts.attention_rows,
            tiles: self.attention_tiles(kv_len, width / heads),
        };
        let mut reads: Vec<BufferId> = rows.iter().map(|r| r.0).collect();
        reads.extend(self.bufs(&args[3..]));
        let w = self.new_buffer(node.results[0], Role::Temp)?;
        self.emit(n, kernel, reads, vec![w])
    }
}

impl Lowering<'_> {
    /// Whether attention over `kv_len` keys in heads of `head_dim` runs in tiles, and on which
    /// unit (see `tiles` on [`Kernel::Attention`]): on GPUs, past the short path, for head
    /// widths the 16 × 16 fragments divide, up to [`ATTENTION_TILE_MAX_HEAD`], where the tiles
    /// fit the device's shared memory.
    pub(super) fn attention_tiles(&self, kv_len: u64, head_dim: u64) -> Option<ComputeUnit> {
        let unit = self.opts.tensor_unit().unwrap_or(ComputeUnit::Fp32Cores);
        let operand_bytes = match unit {
            ComputeUnit::TensorBf16 | ComputeUnit::TensorF16 => 2,
            ComputeUnit::TensorTf32 => 4,
            ComputeUnit::Fp32Cores => self.opts.float.size_bytes(),
        };
        let tiled = self.opts.attention_tiles
            && kv_len > ATTENTION_SHORT_KEYS
            && head_dim.is_multiple_of(16)
            && head_dim <= ATTENTION_TILE_MAX_HEAD
            && attention_tile_bytes(head_dim, operand_bytes) <= self.opts.shared_memory;
        tiled.then_some(unit)
    }
}
