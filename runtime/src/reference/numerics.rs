//! `--check-numerics`: finds the first node of a run whose result holds a NaN, or an infinity
//! that its arguments did not already hold.
//!
//! Infinities are allowed to flow: CALM masks attention scores with a `-inf` bias and the
//! contrastive loss puts `-inf` on its diagonal, on purpose. What is reported is where a fault
//! starts: a NaN anywhere, an infinity made from finite arguments (an overflow), or either in an
//! input or a weight.

use std::fmt;

use burn::tensor::backend::Backend;
use calm_ir::{Graph, NodeId, Op};

use super::value::{Data, DeviceError, Value};
use crate::host::HostTensor;

/// What a value holds that is not finite.
#[derive(Debug, Clone, PartialEq)]
pub struct NonFinite {
    pub nan: usize,
    pub inf: usize,
    pub numel: usize,
    /// Index (one per axis) and value of the first non-finite element.
    pub first: (Vec<usize>, f64),
}

impl NonFinite {
    /// Scans `t`; `None` when every value is finite (and for integer and bool tensors).
    pub fn scan(t: &HostTensor) -> Option<NonFinite> {
        let values = match &t.data {
            crate::host::HostData::F32(_) | crate::host::HostData::F64(_) => t.data.to_f64(),
            _ => return None,
        };
        let (nan, inf) =
            values.iter().fold((0, 0), |(n, i), v| (n + v.is_nan() as usize, i + v.is_infinite() as usize));
        let at = values.iter().position(|v| !v.is_finite())?;
        Some(NonFinite { nan, inf, numel: values.len(), first: (unravel(at, &t.shape), values[at]) })
    }
}

impl fmt::Display for NonFinite {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "{} NaN and {} infinite of {} values, the first ({}) at {:?}",
            self.nan, self.inf, self.numel, self.first.1, self.first.0
        )
    }
}

/// Row-major flat index → one index per axis.
fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (i, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            idx[i] = flat % d;
            flat /= d;
        }
    }
    idx
}

/// Names a node for a user: inputs and weights by name, other nodes by id, op and scope.
pub fn describe(g: &Graph, n: NodeId) -> String {
    let node = &g.nodes[n];
    match &node.op {
        Op::Input { name, .. } => format!("input `{name}`"),
        Op::Param { name, .. } => format!("weight `{name}`"),
        op => format!("{n} ({} @ {})", op.name(), node.scope),
    }
}

/// The state of the check through one run: which values hold infinities already.
pub(crate) struct Checker {
    has_inf: calm_ir::entity::SecondaryMap<calm_ir::ValueId, bool>,
}

/// The first fault: which node, which of its results, and what it holds.
#[derive(Debug, Clone)]
pub struct Fault {
    pub node: NodeId,
    /// The node for a user ([`describe`]).
    pub at: String,
    /// Whether the value came in (an input or a weight) rather than being computed.
    pub given: bool,
    pub result: usize,
    pub found: NonFinite,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let verb = if self.given { "holds" } else { "made" };
        let result = if self.result > 0 { format!(" in result {}", self.result) } else { String::new() };
        write!(f, "{} {verb} {}{result}", self.at, self.found)
    }
}

impl Checker {
    pub(crate) fn new() -> Self {
        Checker { has_inf: calm_ir::entity::SecondaryMap::with_default(false) }
    }

    /// Checks the results of node `n`; the first fault of the run, if this is it.
    pub(crate) fn check<B: Backend>(
        &mut self,
        g: &Graph,
        n: NodeId,
        results: &[Value<B>],
    ) -> Result<Option<Fault>, DeviceError> {
        let node = &g.nodes[n];
        let fed = matches!(node.op, Op::Input { .. } | Op::Param { .. });
        // Infinities flow from constants (`-inf` masks) and from arguments that hold them.
        let inf_allowed = matches!(node.op, Op::Constant { .. }) || node.args.iter().any(|&a| self.has_inf[a]);
        for (i, (&v, value)) in node.results.iter().zip(results).enumerate() {
            if !matches!(value.data, Data::Float(_)) {
                continue;
            }
            let Some(found) = NonFinite::scan(&value.to_host()?) else { continue };
            if fed || found.nan > 0 || !inf_allowed {
                return Ok(Some(Fault { node: n, at: describe(g, n), given: fed, result: i, found }));
            }
            self.has_inf[v] = true;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_name_the_first_element_by_axis() {
        let t = HostTensor::f32(vec![2, 3], vec![0.0, 1.0, 2.0, 3.0, f32::INFINITY, f32::NAN]);
        let f = NonFinite::scan(&t).unwrap();
        assert_eq!((f.nan, f.inf, f.numel), (1, 1, 6));
        assert_eq!(f.first.0, vec![1, 1]);
        assert!(f.first.1.is_infinite());
        assert!(NonFinite::scan(&HostTensor::f32(vec![2], vec![1.0, -2.0])).is_none());
        assert!(NonFinite::scan(&HostTensor::i32(vec![1], vec![7])).is_none());
        assert_eq!(unravel(0, &[]), Vec::<usize>::new());
    }
}
