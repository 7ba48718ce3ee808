//! Queries and rewrites over scopes, the vocabulary the ablations are written in.
//!
//! A module of the model is a scope (`calm/fusion`); its *result* is the value it defines that
//! a node outside reads; its *entries* are the computed values (not inputs, parameters or
//! constants) it reads from outside.

use calm_ir::{BinaryFn, BuildResult, Graph, GraphBuilder, NodeId, Op, OpClass, ValueId};

use super::AblateError;

/// True if `node_scope` is `scope` or below it.
pub fn in_scope(node_scope: &str, scope: &str) -> bool {
    node_scope.strip_prefix(scope).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

pub fn has_scope(g: &Graph, scope: &str) -> bool {
    g.nodes.values().any(|n| in_scope(&n.scope, scope))
}

pub fn nodes_in(g: &Graph, scope: &str) -> Vec<NodeId> {
    g.nodes.iter().filter(|(_, n)| in_scope(&n.scope, scope)).map(|(id, _)| id).collect()
}

/// Values defined in `scope` and read by a node outside it, in id order.
pub fn results(g: &Graph, scope: &str) -> Vec<ValueId> {
    let mut out: Vec<ValueId> = g
        .nodes
        .values()
        .filter(|n| !in_scope(&n.scope, scope))
        .flat_map(|n| n.args.iter().copied())
        .filter(|&a| in_scope(&g.nodes[g.producer(a)].scope, scope))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The one value `scope` hands to the rest of the model: its results, leaving out values the
/// graph also reports as named outputs (a module's loss terms and statistics).
pub fn single_result(g: &Graph, scope: &str, ablation: &'static str) -> Result<ValueId, AblateError> {
    let reported: Vec<ValueId> = g.outputs.iter().map(|o| o.value).collect();
    let handed: Vec<ValueId> = results(g, scope).into_iter().filter(|v| !reported.contains(v)).collect();
    match handed[..] {
        [v] => Ok(v),
        ref other => Err(AblateError::not_applicable(
            ablation,
            format!("expected `{scope}` to hand one value to the rest of the graph, found {}", other.len()),
        )),
    }
}

/// Computed values defined outside `scope` and read inside it, in id order.
pub fn entries(g: &Graph, scope: &str) -> Vec<ValueId> {
    let mut out: Vec<ValueId> = nodes_in(g, scope)
        .into_iter()
        .flat_map(|n| g.nodes[n].args.iter().copied())
        .filter(|&a| {
            let producer = &g.nodes[g.producer(a)];
            !in_scope(&producer.scope, scope) && producer.op.class() != OpClass::Source
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Adds nodes to `g` with a builder working in `scope` (new layers, replacement values).
pub fn build_in<T>(
    g: &mut Graph,
    scope: &str,
    f: impl FnOnce(&mut GraphBuilder) -> BuildResult<T>,
) -> Result<T, AblateError> {
    let mut b = GraphBuilder::edit(std::mem::take(g), scope);
    let built = f(&mut b);
    *g = b.into_graph();
    Ok(built?)
}

/// The one computed value `scope` reads from the rest of the model.
pub fn single_entry(g: &Graph, scope: &str, ablation: &'static str) -> Result<ValueId, AblateError> {
    match entries(g, scope)[..] {
        [v] => Ok(v),
        ref other => Err(AblateError::not_applicable(
            ablation,
            format!("expected `{scope}` to read one value from the rest of the graph, found {}", other.len()),
        )),
    }
}

/// Makes every reader of `old` read `new`.
pub fn rewire(g: &mut Graph, old: ValueId, new: ValueId, ablation: &'static str) -> Result<(), AblateError> {
    g.replace_all_uses(old, new).map(|_| ()).map_err(|e| AblateError::not_applicable(ablation, e.to_string()))
}

/// The value of the named output.
pub fn output(g: &Graph, name: &str, ablation: &'static str) -> Result<ValueId, AblateError> {
    g.output(name).ok_or_else(|| AblateError::not_applicable(ablation, format!("the graph has no `{name}` output")))
}

pub fn remove_output(g: &mut Graph, name: &str) {
    g.outputs.retain(|o| o.name != name);
}

/// The graph input called `name`.
pub fn input(g: &Graph, name: &str, ablation: &'static str) -> Result<ValueId, AblateError> {
    g.inputs()
        .find(|(_, n, _)| *n == name)
        .map(|(id, _, _)| g.result(id))
        .ok_or_else(|| AblateError::not_applicable(ablation, format!("the graph has no `{name}` input")))
}

/// Removes a term from the loss: the loss is a chain of `add`s over `mul(λ, term)` summands
/// (built in `calm/loss`); the `add` that takes this term's summand is bypassed, and the term's
/// named output removed.
pub fn drop_loss_term(g: &mut Graph, output_name: &str, ablation: &'static str) -> Result<(), AblateError> {
    let term = output(g, output_name, ablation)?;
    let users = g.users();
    let summand = users[term]
        .iter()
        .copied()
        .find(|&n| matches!(g.nodes[n].op, Op::Binary(BinaryFn::Mul)) && in_scope(&g.nodes[n].scope, "calm/loss"))
        .map(|n| g.result(n))
        .ok_or_else(|| {
            AblateError::not_applicable(ablation, format!("`{output_name}` is not a weighted term of the loss"))
        })?;
    let add = users[summand].iter().copied().find(|&n| matches!(g.nodes[n].op, Op::Binary(BinaryFn::Add))).ok_or_else(
        || AblateError::not_applicable(ablation, format!("`{output_name}` is the only term of the loss")),
    )?;
    let args = &g.nodes[add].args;
    let other = if args[0] == summand { args[1] } else { args[0] };
    let sum = g.result(add);
    rewire(g, sum, other, ablation)?;
    remove_output(g, output_name);
    Ok(())
}

/// True if `v` is computed, within `scope`, from a node whose op satisfies `want`.
pub fn computed_from(g: &Graph, v: ValueId, scope: &str, want: impl Fn(&Op) -> bool) -> bool {
    let mut stack = vec![g.producer(v)];
    let mut seen = Vec::new();
    while let Some(n) = stack.pop() {
        let node = &g.nodes[n];
        if seen.contains(&n) || !in_scope(&node.scope, scope) {
            continue;
        }
        seen.push(n);
        if want(&node.op) {
            return true;
        }
        stack.extend(node.args.iter().map(|&a| g.producer(a)));
    }
    false
}

/// The first node in `scope` whose op satisfies `want`.
pub fn find_node(g: &Graph, scope: &str, want: impl Fn(&Op) -> bool) -> Option<NodeId> {
    g.nodes.iter().find(|(_, n)| in_scope(&n.scope, scope) && want(&n.op)).map(|(id, _)| id)
}

/// Sub-scopes of `parent` whose last segment starts with `prefix` (`dim0`, `dim1`, ...), sorted.
pub fn child_scopes(g: &Graph, parent: &str, prefix: &str) -> Vec<String> {
    let mut out: Vec<String> = g
        .nodes
        .values()
        .filter_map(|n| {
            let rest = n.scope.strip_prefix(parent)?.strip_prefix('/')?;
            let child = rest.split('/').next()?;
            child.starts_with(prefix).then(|| format!("{parent}/{child}"))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_prefixes_respect_segments() {
        assert!(in_scope("calm/moe/dim0", "calm/moe"));
        assert!(in_scope("calm/moe", "calm/moe"));
        assert!(!in_scope("calm/moe_mlp", "calm/moe"));
        assert!(!in_scope("calm", "calm/moe"));
    }
}
