//! `calm stats FILE --bind ...`: parameters, FLOPs and bytes by scope.

use std::path::Path;

use calm_ir::cost::stats_by_scope;
use calm_ir::text::{group_digits, human_bytes, human_count};
use calm_ir::Bindings;

use super::error::{read_graph, CliError};

/// Every symbol of `g` must be bound; bindings it does not use get a note.
pub fn check_bound(g: &calm_ir::Graph, bindings: &Bindings, file: &Path) -> Result<(), CliError> {
    let symbols = g.symbols();
    let unbound: Vec<&str> = symbols.iter().map(String::as_str).filter(|s| bindings.get(s).is_none()).collect();
    if !unbound.is_empty() {
        return Err(CliError::Unbound {
            what: if unbound.len() == 1 { "symbol" } else { "symbols" },
            names: unbound.join(", "),
            example: symbols.iter().map(|s| format!("{s}=N")).collect::<Vec<_>>().join(","),
        });
    }
    for (name, _) in bindings.iter().filter(|(name, _)| !symbols.contains(*name)) {
        eprintln!("calm: note: --bind gives `{name}`, which {} does not use", file.display());
    }
    Ok(())
}

pub fn run(file: &Path, bind: &str, depth: usize, json: bool) -> Result<(), CliError> {
    let g = read_graph(file)?;
    let bindings: Bindings = bind.parse()?;
    check_bound(&g, &bindings, file)?;
    let rows = stats_by_scope(&g, &bindings, depth)?;
    if json {
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "scope": r.scope, "level": r.level, "nodes": r.nodes, "params": r.params, "flops": r.cost.flops,
                    "bytes_read": r.cost.bytes_read, "bytes_written": r.cost.bytes_written,
                })
            })
            .collect();
        let doc =
            serde_json::json!({ "graph": g.name, "bindings": bindings.to_string(), "depth": depth, "rows": rows });
        println!("{}", serde_json::to_string_pretty(&doc).expect("JSON values serialise"));
        return Ok(());
    }
    println!(
        "graph `{}` with {}",
        g.name,
        if bindings.is_empty() { "no symbols".to_string() } else { bindings.to_string() }
    );
    // Children are indented under their parent and named by their last segment.
    let label = |r: &calm_ir::cost::ScopeStats| {
        let leaf = r.scope.rsplit('/').next().unwrap_or(&r.scope);
        format!("{}{}", "  ".repeat(r.level - 1), if r.level == 1 { r.scope.as_str() } else { leaf })
    };
    let width = rows.iter().map(|r| label(r).len()).max().unwrap_or(5).max(5);
    println!(
        "{:<width$}  {:>6}  {:>12}  {:>11}  {:>11}  {:>11}",
        "scope", "nodes", "params", "FLOPs", "read", "written"
    );
    for r in &rows {
        println!(
            "{:<width$}  {:>6}  {:>12}  {:>11}  {:>11}  {:>11}",
            label(r),
            r.nodes,
            group_digits(r.params),
            human_count(r.cost.flops),
            human_bytes(r.cost.bytes_read),
            human_bytes(r.cost.bytes_written)
        );
    }
    Ok(())
}
