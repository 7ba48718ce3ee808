//! CALM's Gumbel-softmax clustering and pooling: one `GumbelPool` launch, a cube per sample.

use calm_ir::fused::FusedOp;
use calm_ir::{NodeId, Op};

use super::{LowerError, Lowering};
use crate::plan::Kernel;

/// Threads per cube of the Gumbel pool kernel: tokens per tile, and the columns of the stream
/// are shared out among them.
const GUMBEL_POOL_THREADS: u32 = 128;

impl Lowering<'_> {
    pub(super) fn lower_gumbel_pool(&mut self, n: NodeId) -> Result<(), LowerError> {
        let node = &self.g.nodes[n];
        let Op::Fused(FusedOp::GumbelPool { transpose_w, temperature, noise_stream, eps }) = node.op else {
            unreachable!("a Gumbel pool")
        };
        let (hidden, x) = (self.shape(node.args[0])?, self.shape(node.args[3])?);
        let clusters = self.shape(node.args[2])?[0];
        // The assignment is written only if something reads it.
        let write_assign = self.is_read(node.results[1]);
        let kernel = Kernel::GumbelPool {
            batch: hidden[0],
            tokens: hidden[1],
            hidden: hidden[2],
            clusters,
            width: x[2],
            threads: GUMBEL_POOL_THREADS,
            transpose_w,
            temperature,
            noise_stream,
            eps,
            write_assign,
        };
        self.emit_optional_results(n, kernel, &[true, write_assign])
    }
}
