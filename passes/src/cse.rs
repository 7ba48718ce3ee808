//! Common-subexpression elimination: nodes that apply the same op to the same arguments compute
//! the same values (ops are pure; random numbers are a function of their key arguments), so all
//! but the first are replaced by it. Builders repeat small computations freely (CALM computes
//! the mask's token count once per masked mean); without this pass each copy is a launch.
//!
//! Inputs and parameters are never merged: they are the graph's interface. The merged copies
//! are removed with the merge (nothing reads them any more).

use std::collections::HashMap;

use calm_ir::entity::SecondaryMap;
use calm_ir::{Graph, NodeId, Op, ValueId};

use crate::pipeline::{PassError, PassLog};

const PASS: &str = "cse";

/// Merges duplicate nodes; returns whether anything changed.
pub fn cse(g: &mut Graph, log: &mut PassLog) -> Result<bool, PassError> {
    let failed = |message: String| PassError::Failed { pass: PASS, message };
    let order = g.topo_order().map_err(|_| failed("graph has a cycle".into()))?;
    // Candidates by op name and arguments (already rewritten to the kept nodes' results, since
    // producers come first); ops compare in full within a bucket.
    let mut seen: HashMap<(&'static str, Vec<ValueId>), Vec<NodeId>> = HashMap::new();
    let mut replaced: HashMap<ValueId, ValueId> = HashMap::new();
    let mut merged: SecondaryMap<NodeId, bool> = SecondaryMap::new();
    let mut count = 0usize;
    for n in order {
        let args: Vec<ValueId> = g.nodes[n].args.iter().map(|a| *replaced.get(a).unwrap_or(a)).collect();
        if matches!(g.nodes[n].op, Op::Input { .. } | Op::Param { .. }) {
            continue;
        }
        let bucket = seen.entry((g.nodes[n].op.name(), args)).or_default();
        let twin = bucket.iter().copied().find(|&m| {
            let (a, b) = (&g.nodes[m], &g.nodes[n]);
            a.op == b.op
                && a.results.len() == b.results.len()
                && a.results.iter().zip(&b.results).all(|(&x, &y)| g.value_type(x) == g.value_type(y))
        });
        match twin {
            Some(m) => {
                for (&old, &new) in g.nodes[n].results.iter().zip(&g.nodes[m].results) {
                    replaced.insert(old, new);
                }
                merged[n] = true;
                count += 1;
            }
            None => bucket.push(n),
        }
    }
    for (&old, &new) in &replaced {
        g.replace_all_uses(old, new).map_err(|e| failed(e.to_string()))?;
    }
    if count > 0 {
        log.fired(PASS, "", format!("merged {count} duplicate nodes"));
        // Every result of a merged copy now reads as its twin's: the copies are unread.
        g.retain_nodes(|n| !merged[n]).map_err(|e| failed(e.to_string()))?;
    }
    Ok(count > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use calm_ir::{shape, DType, GraphBuilder};

    #[test]
    fn duplicates_merge_and_distinct_ops_stay() {
        let mut b = GraphBuilder::new("t");
        let x = b.input("x", DType::F32, shape![3u64, 5u64]).unwrap();
        let y = b.input("y", DType::F32, shape![3u64, 5u64]).unwrap();
        let s1 = b.reduce_sum(x, &[1], false).unwrap();
        let s2 = b.reduce_sum(x, &[1], false).unwrap();
        let m = b.reduce_max(x, &[1], false).unwrap();
        let sy = b.reduce_sum(y, &[1], false).unwrap();
        // Readers of the duplicates become duplicates themselves once those merge.
        let e1 = b.exp(s1).unwrap();
        let e2 = b.exp(s2).unwrap();
        for (i, v) in [e1, e2, m, sy].into_iter().enumerate() {
            b.output(&format!("o{i}"), v);
        }
        let mut g = b.finish().unwrap();
        let before = g.nodes.len();
        let mut log = PassLog::default();
        assert!(cse(&mut g, &mut log).unwrap());
        calm_ir::verify(&g).unwrap();
        assert_eq!(g.nodes.len(), before - 2, "the second sum and its exp go");
        assert_eq!(g.outputs[0].value, g.outputs[1].value);
        let distinct: std::collections::HashSet<_> = g.outputs.iter().map(|o| o.value).collect();
        assert_eq!(distinct.len(), 3);
        assert!(!cse(&mut g, &mut log).unwrap(), "nothing left to merge");
    }
}
