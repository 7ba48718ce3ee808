//! Graphviz DOT output: one box per node, nested clusters per scope, edges labelled with the
//! value and its type. `dot -Tsvg graph.dot > graph.svg` renders it.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::graph::{Graph, NodeId};
use crate::op::{Op, OpClass};

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The scope tree: nodes that sit directly in a scope, and its child scopes.
#[derive(Default)]
struct ScopeTree {
    nodes: Vec<NodeId>,
    children: BTreeMap<String, ScopeTree>,
}

impl ScopeTree {
    fn insert(&mut self, path: &[&str], n: NodeId) {
        match path.split_first() {
            None => self.nodes.push(n),
            Some((head, rest)) => self.children.entry(head.to_string()).or_default().insert(rest, n),
        }
    }
}

fn node_line(g: &Graph, n: NodeId) -> String {
    let node = &g.nodes[n];
    let result_types: Vec<String> = node.results.iter().map(|&v| g.value_type(v).to_string()).collect();
    let label = format!("{n}: {}\\n{}", escape(&node.op.to_string()), escape(&result_types.join(", ")));
    let style = match (&node.op, node.op.class()) {
        (Op::Input { .. }, _) => "shape=ellipse, style=filled, fillcolor=\"#d8ecff\"",
        (Op::Param { .. }, _) => "shape=box, style=\"rounded,filled\", fillcolor=\"#f2f2f2\"",
        (_, OpClass::MatMul) => "shape=box, style=filled, fillcolor=\"#ffe3c4\"",
        (_, OpClass::Fused) => "shape=box, style=filled, fillcolor=\"#d9f5d0\"",
        _ => "shape=box",
    };
    format!("\"{n}\" [label=\"{label}\", {style}];")
}

fn write_tree(out: &mut String, g: &Graph, tree: &ScopeTree, path: &str, indent: usize) {
    let pad = "  ".repeat(indent);
    for &n in &tree.nodes {
        let _ = writeln!(out, "{pad}{}", node_line(g, n));
    }
    for (name, child) in &tree.children {
        let child_path = if path.is_empty() { name.clone() } else { format!("{path}/{name}") };
        let _ = writeln!(out, "{pad}subgraph \"cluster_{}\" {{", escape(&child_path));
        let _ = writeln!(out, "{pad}  label=\"{}\";", escape(name));
        write_tree(out, g, child, &child_path, indent + 1);
        let _ = writeln!(out, "{pad}}}");
    }
}

/// The DOT text of `g`.
pub fn to_dot(g: &Graph) -> String {
    let mut tree = ScopeTree::default();
    for (n, node) in g.nodes.iter() {
        let path: Vec<&str> = node.scope.split('/').collect();
        tree.insert(&path, n);
    }
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", escape(&g.name));
    let _ = writeln!(
        out,
        "  rankdir=TB;\n  node [fontname=\"monospace\", fontsize=10];\n  edge [fontname=\"monospace\", fontsize=8];"
    );
    write_tree(&mut out, g, &tree, "", 1);
    for (n, node) in g.nodes.iter() {
        for &a in &node.args {
            let Some(data) = g.values.get(a) else { continue };
            let _ =
                writeln!(out, "  \"{}\" -> \"{n}\" [label=\"{a}: {}\"];", data.def.node, escape(&data.ty.to_string()));
        }
    }
    for o in &g.outputs {
        let _ = writeln!(out, "  \"out:{}\" [label=\"{}\", shape=doubleoctagon];", escape(&o.name), escape(&o.name));
        if let Some(data) = g.values.get(o.value) {
            let _ = writeln!(out, "  \"{}\" -> \"out:{}\" [label=\"{}\"];", data.def.node, escape(&o.name), o.value);
        }
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_nests_clusters_by_scope_and_has_every_edge() {
        let g = crate::sample::tiny_classifier();
        let dot = to_dot(&g);
        assert!(dot.starts_with("digraph \"tiny\" {"));
        assert!(dot.contains("subgraph \"cluster_tiny/block/attn/query\""));
        let edges = dot.lines().filter(|l| l.contains("->")).count();
        let args: usize = g.nodes.values().map(|n| n.args.len()).sum();
        assert_eq!(edges, args + g.outputs.len());
        assert_eq!(dot.matches('{').count(), dot.matches('}').count());
        // Every node appears exactly once as a vertex.
        for n in g.nodes.keys() {
            let decl = format!("\"{n}\" [label=");
            assert_eq!(dot.lines().filter(|l| l.trim_start().starts_with(&decl)).count(), 1, "{n}");
        }
    }
}
