//! Top-k routing: one `Route` launch, a thread per unit, writing the probabilities and the
//! one-hot choices only where something reads them.

use calm_ir::fused::FusedOp;
use calm_ir::{NodeId, Op};

use super::{LowerError, Lowering};
use crate::plan::Kernel;

impl Lowering<'_> {
    pub(super) fn lower_route(&mut self, n: NodeId) -> Result<(), LowerError> {
        let node = &self.g.nodes[n];
        let Op::Fused(FusedOp::Route { top_k, transpose_w }) = node.op else { unreachable!("a route") };
        let x = self.shape(node.args[0])?;
        let [_, prob, chosen] = node.results[..] else { unreachable!("route has three results") };
        let (write_prob, write_chosen) = (self.is_read(prob), self.is_read(chosen));
        let kernel = Kernel::Route {
            batch: x[0],
            width: x[1],
            experts: self.shape(node.args[2])?[0],
            top_k,
            transpose_w,
            write_prob,
            write_chosen,
        };
        self.emit_optional_results(n, kernel, &[true, write_prob, write_chosen])
    }
}
