//! Random inputs of the right shapes, for `calm run` without an inputs file.
//!
//! Values follow the input's role as the graph shows it: integer inputs that index something
//! (a gather's indices, a one-hot, a scatter) are drawn below the smallest size they index;
//! float inputs named `*mask` are prefix masks with at least one real position per row; float
//! scalars (temperatures) lie in [0.5, 1.5); other floats are standard normal; `seed` and
//! `offset` scalars take the given seed and 0.

use std::collections::BTreeMap;

use calm_ir::{Bindings, DType, Graph, Op, ValueId};
use calm_kernels::philox;

use crate::host::{HostData, HostTensor};

/// Unbound symbols, listed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot make random inputs: {}", .0)]
pub struct RandomInputError(pub String);

/// The largest index value `v` may hold: the smallest size it indexes, following it through
/// shape-only ops and casts. `None` if nothing indexes with it.
fn index_bound(g: &Graph, v: ValueId, bindings: &Bindings) -> Option<u64> {
    let users = g.users();
    let mut bound: Option<u64> = None;
    let mut stack = vec![v];
    let mut seen = Vec::new();
    while let Some(v) = stack.pop() {
        if seen.contains(&v) {
            continue;
        }
        seen.push(v);
        for &n in &users[v] {
            let node = &g.nodes[n];
            let size = match &node.op {
                Op::Gather { axis } | Op::ScatterAdd { axis } if node.args[1] == v => {
                    g.value_type(node.args[0]).shape[*axis].resolve(bindings).ok()
                }
                Op::OneHot { depth, .. } => Some(*depth),
                Op::Reshape { .. } | Op::Broadcast { .. } | Op::Permute { .. } | Op::Slice { .. } | Op::Cast { .. } => {
                    stack.push(node.results[0]);
                    None
                }
                _ => None,
            };
            if let Some(size) = size {
                bound = Some(bound.map_or(size, |b| b.min(size)));
            }
        }
    }
    bound
}

/// One random tensor per graph input, shaped by `bindings`, drawn from `seed`.
pub fn random_inputs(
    g: &Graph,
    bindings: &Bindings,
    seed: u64,
) -> Result<BTreeMap<String, HostTensor>, RandomInputError> {
    let unbound: Vec<String> = g.symbols().into_iter().filter(|s| bindings.get(s).is_none()).collect();
    if !unbound.is_empty() {
        let example: Vec<String> = g.symbols().into_iter().map(|s| format!("{s}=N")).collect();
        return Err(RandomInputError(format!("unbound {} (give --bind {})", unbound.join(", "), example.join(","))));
    }
    // Each input with the uniforms it is drawn from (two per value), f32: refused before any is
    // allocated if they do not fit.
    let mut needed = 0u64;
    for (_, name, ty) in g.inputs() {
        // Checked: sizes whose product overflows are an error, not a wrap.
        ty.size_bytes(bindings).map_err(|e| RandomInputError(format!("input `{name}`: {e}")))?;
        let n = ty.numel(bindings).map_err(|e| RandomInputError(format!("input `{name}`: {e}")))?;
        needed = needed.saturating_add(n.saturating_mul(12));
    }
    crate::limits::check_host(|| format!("drawing random inputs for {bindings}"), needed)
        .map_err(|e| RandomInputError(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (n, name, ty) in g.inputs() {
        let dims = ty.dims(bindings).map_err(|e| RandomInputError(e.to_string()))?;
        let shape: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
        let len: usize = shape.iter().product();
        let u = philox::uniform(seed as u32, (seed >> 32) as u32, philox::name_stream(name), 2 * len.max(1));
        let data = match ty.dtype {
            DType::U32 if shape.is_empty() => HostData::U32(vec![if name == "seed" { seed as u32 } else { 0 }]),
            DType::I32 | DType::U32 => {
                let bound = index_bound(g, g.result(n), bindings).unwrap_or(8).min(i32::MAX as u64);
                let values = u[..len].iter().map(|&x| ((x as f64 * bound as f64) as i64).min(bound as i64 - 1) as i32);
                if ty.dtype == DType::I32 {
                    HostData::I32(values.collect())
                } else {
                    HostData::U32(values.map(|x| x as u32).collect())
                }
            }
            DType::Bool => HostData::Bool(u[..len].iter().map(|&x| x < 0.5).collect()),
            _ if name.ends_with("mask") && !shape.is_empty() => {
                let last = *shape.last().expect("non-empty");
                let rows = len / last;
                let mut values = Vec::with_capacity(len);
                for &ur in &u[..rows] {
                    let real = 1 + ((ur as f64 * last as f64) as usize).min(last - 1);
                    values.extend((0..last).map(|t| if t < real { 1.0 } else { 0.0 }));
                }
                HostData::F32(values)
            }
            _ if shape.is_empty() => HostData::F32(vec![0.5 + u[0]]),
            _ => HostData::F32(
                u.chunks_exact(2)
                    .take(len)
                    .map(|p| ((-2.0 * (p[0] as f64).ln()).sqrt() * (std::f64::consts::TAU * p[1] as f64).cos()) as f32)
                    .collect(),
            ),
        };
        out.insert(name.to_string(), HostTensor::new(shape, data));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use calm_ir::sample::tiny_classifier;

    #[test]
    fn inputs_follow_their_roles() {
        let g = tiny_classifier();
        let bind = Bindings::new().with("batch", 6).with("tokens", 5);
        let inputs = random_inputs(&g, &bind, 11).unwrap();
        assert_eq!(inputs, random_inputs(&g, &bind, 11).unwrap(), "deterministic");
        assert_eq!(inputs["x"].shape, [6, 5, 16]);
        // Labels feed a one-hot of depth 3.
        let HostData::I32(labels) = &inputs["labels"].data else { panic!("labels are i32") };
        assert!(labels.iter().all(|&l| (0..3).contains(&l)));
        // Masks are prefixes with at least one real token.
        let HostData::F32(mask) = &inputs["mask"].data else { panic!("mask is f32") };
        for row in mask.chunks(5) {
            assert_eq!(row[0], 1.0);
            assert!(row.windows(2).all(|w| w[0] >= w[1]));
        }
        let e = random_inputs(&g, &Bindings::new().with("batch", 2), 0).unwrap_err();
        assert!(e.to_string().contains("unbound tokens"), "{e}");
    }
}
