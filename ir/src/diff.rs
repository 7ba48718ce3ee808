//! Structural difference of two graphs, grouped by scope: what `calm diff` prints.
//!
//! Node ids mean nothing across graphs (passes renumber), so nodes are compared as a multiset
//! of signatures (op with attributes, result types) per scope; parameters are matched by name,
//! inputs and outputs by name.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use crate::cost::truncate_scope;
use crate::graph::Graph;
use crate::text::group_digits;
use crate::types::{fixed_numel, TensorType};

/// A named parameter, input or output present in one graph only, or in both with another type
/// (or, for a parameter, another initialiser).
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub name: String,
    /// `None` where it is absent.
    pub before: Option<TensorType>,
    pub after: Option<TensorType>,
}

impl Change {
    /// `+ name type`, `- name type`, `~ name before -> after`, after a `kind` word if given.
    fn line(&self, kind: &str) -> String {
        let name = if kind.is_empty() { self.name.clone() } else { format!("{kind} {}", self.name) };
        match (&self.before, &self.after) {
            (None, Some(t)) => format!("+ {name} {t}"),
            (Some(t), None) => format!("- {name} {t}"),
            (Some(x), Some(y)) if x != y => format!("~ {name} {x} -> {y}"),
            _ => format!("~ {name} (initialiser)"),
        }
    }
}

/// Changes inside one scope (rolled up to the diff's depth).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScopeDiff {
    pub scope: String,
    pub nodes_before: usize,
    pub nodes_after: usize,
    /// Nodes whose signature appears more often in the second graph, and less often.
    pub nodes_added: usize,
    pub nodes_removed: usize,
    pub params_before: u64,
    pub params_after: u64,
    pub params: Vec<Change>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct GraphDiff {
    pub scopes: Vec<ScopeDiff>,
    pub inputs: Vec<Change>,
    pub outputs: Vec<Change>,
    pub nodes: (usize, usize),
    pub params: (u64, u64),
}

impl GraphDiff {
    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty() && self.inputs.is_empty() && self.outputs.is_empty()
    }
}

/// Per scope (truncated to `depth` segments): signature counts, node count, params by name.
struct Side {
    signatures: BTreeMap<String, BTreeMap<String, usize>>,
    nodes: BTreeMap<String, usize>,
    params: BTreeMap<String, (String, TensorType, String)>,
}

fn side(g: &Graph, depth: usize) -> Side {
    let mut s = Side { signatures: BTreeMap::new(), nodes: BTreeMap::new(), params: BTreeMap::new() };
    for node in g.nodes.values() {
        let scope = truncate_scope(&node.scope, depth).to_string();
        let types: Vec<String> = node.results.iter().map(|&v| g.value_type(v).to_string()).collect();
        let signature = format!("{} : {}", node.op, types.join(", "));
        *s.signatures.entry(scope.clone()).or_default().entry(signature).or_default() += 1;
        *s.nodes.entry(scope.clone()).or_default() += 1;
        if let Some(name) = node.op.param_name() {
            s.params.insert(name.to_string(), (scope, g.value_type(node.results[0]).clone(), node.op.to_string()));
        }
    }
    s
}

fn ports<'a>(
    a: impl Iterator<Item = (&'a str, &'a TensorType)>,
    b: impl Iterator<Item = (&'a str, &'a TensorType)>,
) -> Vec<Change> {
    let a: BTreeMap<&str, &TensorType> = a.collect();
    let b: BTreeMap<&str, &TensorType> = b.collect();
    let names: BTreeSet<&str> = a.keys().chain(b.keys()).copied().collect();
    names
        .into_iter()
        .filter(|n| a.get(n) != b.get(n))
        .map(|n| Change {
            name: n.to_string(),
            before: a.get(n).map(|t| (*t).clone()),
            after: b.get(n).map(|t| (*t).clone()),
        })
        .collect()
}

/// What changed from `a` to `b`, with scopes rolled up to `depth` segments (0: full paths).
pub fn diff(a: &Graph, b: &Graph, depth: usize) -> GraphDiff {
    let (sa, sb) = (side(a, depth), side(b, depth));
    let mut scopes: BTreeMap<String, ScopeDiff> = BTreeMap::new();
    let all_scopes: BTreeSet<&String> = sa.nodes.keys().chain(sb.nodes.keys()).collect();
    let empty = BTreeMap::new();
    for scope in all_scopes {
        let (ca, cb) = (sa.signatures.get(scope).unwrap_or(&empty), sb.signatures.get(scope).unwrap_or(&empty));
        let sigs: BTreeSet<&String> = ca.keys().chain(cb.keys()).collect();
        let mut d = ScopeDiff { scope: scope.clone(), ..ScopeDiff::default() };
        for sig in sigs {
            let (na, nb) = (ca.get(sig).copied().unwrap_or(0), cb.get(sig).copied().unwrap_or(0));
            d.nodes_added += nb.saturating_sub(na);
            d.nodes_removed += na.saturating_sub(nb);
        }
        d.nodes_before = sa.nodes.get(scope).copied().unwrap_or(0);
        d.nodes_after = sb.nodes.get(scope).copied().unwrap_or(0);
        scopes.insert(scope.clone(), d);
    }
    for (scope, ty, _) in sa.params.values() {
        let d = scopes.get_mut(scope).expect("scope of a node");
        d.params_before = d.params_before.saturating_add(fixed_numel(ty));
    }
    for (scope, ty, _) in sb.params.values() {
        let d = scopes.get_mut(scope).expect("scope of a node");
        d.params_after = d.params_after.saturating_add(fixed_numel(ty));
    }
    let names: BTreeSet<&String> = sa.params.keys().chain(sb.params.keys()).collect();
    for name in names {
        let (pa, pb) = (sa.params.get(name), sb.params.get(name));
        // Same name, type and initialiser: unchanged.
        if let (Some(x), Some(y)) = (pa, pb) {
            if x.1 == y.1 && x.2 == y.2 {
                continue;
            }
        }
        let scope = pb.or(pa).map(|p| p.0.clone()).expect("in one of the graphs");
        scopes.get_mut(&scope).expect("scope of a node").params.push(Change {
            name: name.clone(),
            before: pa.map(|p| p.1.clone()),
            after: pb.map(|p| p.1.clone()),
        });
    }
    GraphDiff {
        scopes: scopes.into_values().filter(|d| d.nodes_added + d.nodes_removed > 0 || !d.params.is_empty()).collect(),
        inputs: ports(a.inputs().map(|(_, n, t)| (n, t)), b.inputs().map(|(_, n, t)| (n, t))),
        outputs: ports(
            a.outputs.iter().map(|o| (o.name.as_str(), a.value_type(o.value))),
            b.outputs.iter().map(|o| (o.name.as_str(), b.value_type(o.value))),
        ),
        nodes: (a.nodes.len(), b.nodes.len()),
        params: (a.param_count(), b.param_count()),
    }
}

fn signed(before: u64, after: u64) -> String {
    if after >= before {
        format!("+{}", group_digits(after - before))
    } else {
        format!("-{}", group_digits(before - after))
    }
}

/// The diff as text; `list_params` lists every changed parameter under its scope.
pub fn render(d: &GraphDiff, list_params: bool) -> String {
    let mut out = String::new();
    if d.is_empty() {
        out.push_str("no differences\n");
        return out;
    }
    let _ = writeln!(
        out,
        "parameters {} -> {} ({}); nodes {} -> {} ({})",
        group_digits(d.params.0),
        group_digits(d.params.1),
        signed(d.params.0, d.params.1),
        d.nodes.0,
        d.nodes.1,
        signed(d.nodes.0 as u64, d.nodes.1 as u64)
    );
    for c in &d.inputs {
        let _ = writeln!(out, "{}", c.line("input"));
    }
    for c in &d.outputs {
        let _ = writeln!(out, "{}", c.line("output"));
    }
    if d.scopes.is_empty() {
        return out;
    }
    let width = d.scopes.iter().map(|s| s.scope.len()).max().unwrap_or(5).max(5);
    let _ = writeln!(
        out,
        "{:<width$}  {:>13}  {:>13}  {:>16}  {:>15}",
        "scope", "nodes", "added/removed", "parameters", "tensors changed"
    );
    for s in &d.scopes {
        let _ = writeln!(
            out,
            "{:<width$}  {:>13}  {:>13}  {:>16}  {:>15}",
            s.scope,
            format!("{} -> {}", s.nodes_before, s.nodes_after),
            format!("+{} -{}", s.nodes_added, s.nodes_removed),
            signed(s.params_before, s.params_after),
            s.params.len(),
        );
        if list_params {
            for p in &s.params {
                let _ = writeln!(out, "    {}", p.line(""));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::tiny_classifier;

    #[test]
    fn identical_graphs_have_no_differences() {
        let g = tiny_classifier();
        let d = diff(&g, &g, 2);
        assert!(d.is_empty());
        assert_eq!(render(&d, true), "no differences\n");
    }

    #[test]
    fn removed_outputs_nodes_and_parameters_are_grouped_by_scope() {
        let a = tiny_classifier();
        let mut b = a.clone();
        // Drop the `loss` and `top2` outputs and every node of `tiny/loss` (only they read it).
        b.outputs.retain(|o| o.name != "loss" && o.name != "top2");
        let keep: Vec<bool> = b.nodes.values().map(|n| n.scope != "tiny/loss").collect();
        b.retain_nodes(|n| keep[crate::entity::EntityId::index(n)]).unwrap();
        let d = diff(&a, &b, 2);
        assert_eq!(d.outputs.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["loss", "top2"]);
        assert!(d.outputs.iter().all(|c| c.after.is_none()));
        let loss = d.scopes.iter().find(|s| s.scope == "tiny/loss").unwrap();
        assert_eq!((loss.nodes_before, loss.nodes_after, loss.nodes_removed, loss.nodes_added), (8, 0, 8, 0));
        assert_eq!(d.scopes.len(), 1, "{:?}", d.scopes);
        let text = render(&d, false);
        assert!(text.contains("- output loss f32[]"), "{text}");
        assert!(text.contains("tiny/loss"), "{text}");
    }

    #[test]
    fn parameter_type_changes_are_listed() {
        let a = tiny_classifier();
        let mut b = a.clone();
        let (n, _, _) = b.params().next().unwrap();
        if let crate::op::Op::Param { init, .. } = &mut b.nodes[n].op {
            *init = crate::op::Init::Zeros;
        }
        let d = diff(&a, &b, 0);
        assert_eq!(d.scopes.len(), 1);
        let p = &d.scopes[0].params[0];
        assert_eq!(p.name, "tiny/block/proj/weight");
        assert_eq!(p.before, p.after);
        assert!(render(&d, true).contains("~ tiny/block/proj/weight (initialiser)"));
    }
}
