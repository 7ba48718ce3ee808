//! Human-readable forms: a one-screen summary and a full listing, one node per line
//! (`n5  v5 = matmul tB v0, v4 : f32[batch,tokens,32]  @ tiny/block/proj`).

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::cost::truncate_scope;
use crate::graph::{Graph, ValueId};
use crate::json::FORMAT;

/// Formats an integer with thousands separators: `1234567` → `1,234,567`.
pub fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `n` scaled by powers of `base` with the matching prefix: `1.23 M`, `1.50 KiB`; below `base`,
/// the plain number and `unit`.
fn scaled(n: u64, base: f64, prefixes: [&str; 7], unit: &str) -> String {
    let mut v = n as f64;
    let mut i = 0;
    while v >= base && i + 1 < prefixes.len() {
        v /= base;
        i += 1;
    }
    if i == 0 {
        format!("{n}{unit}")
    } else {
        format!("{v:.2} {}", prefixes[i])
    }
}

/// A count with a decimal prefix: `1234567` → `1.23 M`.
pub fn human_count(n: u64) -> String {
    scaled(n, 1000.0, ["", "k", "M", "G", "T", "P", "E"], "")
}

/// A byte count with a binary prefix: `1536` → `1.50 KiB`.
pub fn human_bytes(n: u64) -> String {
    scaled(n, 1024.0, ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"], " B")
}

/// A scope with each run of digits as `*`: `calm/moe/dim0/expert3` → `calm/moe/dim*/expert*`,
/// so that reports can group the launches or notes of repeated blocks.
pub fn numbers_as_stars(scope: &str) -> String {
    let mut out = String::with_capacity(scope.len());
    let mut in_number = false;
    for c in scope.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                out.push('*');
            }
            in_number = true;
        } else {
            out.push(c);
            in_number = false;
        }
    }
    out
}

/// Inputs, outputs, parameter totals, op histogram and node counts per scope.
pub fn summary(g: &Graph, scope_depth: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "graph {} ({FORMAT}): {} nodes, {} values, {} outputs",
        g.name,
        g.nodes.len(),
        g.values.len(),
        g.outputs.len()
    );
    let symbols: Vec<String> = g.symbols().into_iter().collect();
    let _ = writeln!(out, "symbols: {}", if symbols.is_empty() { "none".to_string() } else { symbols.join(", ") });
    let _ = writeln!(out, "inputs:");
    for (_, name, ty) in g.inputs() {
        let _ = writeln!(out, "  {name:<24} {ty}");
    }
    let _ = writeln!(out, "outputs:");
    for o in &g.outputs {
        let _ = writeln!(out, "  {:<24} {} ({})", o.name, g.value_type(o.value), o.value);
    }
    let _ = writeln!(out, "parameters: {} tensors, {} elements", g.params().count(), group_digits(g.param_count()));
    let mut ops: BTreeMap<&str, usize> = BTreeMap::new();
    for node in g.nodes.values() {
        *ops.entry(node.op.name()).or_default() += 1;
    }
    let ops: Vec<String> = ops.into_iter().map(|(name, count)| format!("{name} {count}")).collect();
    let _ = writeln!(out, "ops: {}", ops.join(", "));
    let mut scopes: Vec<(&str, usize)> = Vec::new();
    for node in g.nodes.values() {
        let s = truncate_scope(&node.scope, scope_depth);
        match scopes.iter_mut().find(|(name, _)| *name == s) {
            Some((_, count)) => *count += 1,
            None => scopes.push((s, 1)),
        }
    }
    let _ = writeln!(out, "scopes (depth {scope_depth}):");
    for (s, count) in scopes {
        let _ = writeln!(out, "  {s:<40} {count} nodes");
    }
    out
}

fn ids(vs: &[ValueId]) -> String {
    vs.iter().map(ValueId::to_string).collect::<Vec<_>>().join(", ")
}

/// Every node, one per line, then the outputs.
pub fn listing(g: &Graph) -> String {
    let mut out = String::new();
    for (n, node) in g.nodes.iter() {
        let types: Vec<String> = node.results.iter().map(|&v| g.value_type(v).to_string()).collect();
        let mut line = format!("{n:<6} {} = {}", ids(&node.results), node.op);
        if !node.args.is_empty() {
            let _ = write!(line, " {}", ids(&node.args));
        }
        let _ = writeln!(out, "{line} : {}  @ {}", types.join(", "), node.scope);
    }
    for o in &g.outputs {
        let _ = writeln!(out, "output {} = {}", o.name, o.value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_grouped() {
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1000), "1,000");
        assert_eq!(group_digits(1234567), "1,234,567");
        assert_eq!(human_count(999), "999");
        assert_eq!(human_count(1_234_567), "1.23 M");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(3 << 30), "3.00 GiB");
    }

    #[test]
    fn summary_and_listing_mention_every_input_and_node() {
        let g = crate::sample::tiny_classifier();
        let s = summary(&g, 2);
        assert!(s.contains("symbols: batch, tokens"), "{s}");
        assert!(s.contains("labels"), "{s}");
        assert!(s.contains("top_k 1"), "{s}");
        let l = listing(&g);
        assert_eq!(l.lines().count(), g.nodes.len() + g.outputs.len());
        assert!(l.contains("= matmul tB"), "{l}");
    }
}
