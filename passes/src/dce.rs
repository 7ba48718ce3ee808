//! Dead-code elimination: removes every node that no output depends on.
//!
//! Inputs are kept even when unused: they are the graph's interface, and a caller binding them
//! should not break because a pass made one dead. Parameters that no output reads go, so an
//! ablated module's weights leave the graph with it.

use calm_ir::entity::SecondaryMap;
use calm_ir::{Graph, NodeId, Op};

use crate::pipeline::PassError;

/// Removes dead nodes; returns whether anything was removed.
pub fn dce(g: &mut Graph) -> Result<bool, PassError> {
    let mut live: SecondaryMap<NodeId, bool> = SecondaryMap::new();
    let mut stack: Vec<NodeId> = g.outputs.iter().map(|o| g.producer(o.value)).collect();
    stack.extend(g.nodes.iter().filter(|(_, n)| matches!(n.op, Op::Input { .. })).map(|(id, _)| id));
    while let Some(n) = stack.pop() {
        if std::mem::replace(&mut live[n], true) {
            continue;
        }
        stack.extend(g.nodes[n].args.iter().map(|&a| g.producer(a)));
    }
    let before = g.nodes.len();
    g.retain_nodes(|n| live[n]).map_err(|e| PassError::Failed { pass: "dce", message: e.to_string() })?;
    Ok(g.nodes.len() != before)
}

#[cfg(test)]
mod tests {
    use super::*;
    use calm_ir::sample::tiny_classifier;
    use calm_ir::verify;

    #[test]
    fn removes_what_no_output_reads_and_keeps_inputs() {
        let mut g = tiny_classifier();
        assert!(!dce(&mut g).unwrap(), "the sample has no dead code");
        // Without the loss output, the loss scope keeps only what `top2` needs; the labels input
        // stays although nothing reads it any more.
        g.outputs.retain(|o| o.name != "loss");
        assert!(dce(&mut g).unwrap());
        verify(&g).unwrap();
        let loss_ops: Vec<&str> = g.nodes.values().filter(|n| n.scope == "tiny/loss").map(|n| n.op.name()).collect();
        assert_eq!(loss_ops, ["softmax", "top_k"]);
        assert!(g.inputs().any(|(_, name, _)| name == "labels"));
        assert_eq!(g.param_count(), tiny_classifier().param_count());
        assert!(!dce(&mut g).unwrap(), "a second run changes nothing");
    }

    #[test]
    fn dead_parameters_leave_the_graph() {
        let mut g = tiny_classifier();
        g.outputs.clear();
        assert!(dce(&mut g).unwrap());
        assert_eq!(g.nodes.len(), 3, "only the three inputs survive");
        assert_eq!(g.param_count(), 0);
    }
}
