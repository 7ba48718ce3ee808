//! Shape and dtype inference: one rule per op, used by both the builder and the verifier.

use thiserror::Error;

use crate::op::{BinaryFn, Init, Op, UnaryFn};
use crate::types::{DType, Dim, Shape, TensorType};

/// Why an op cannot take the given arguments. The verifier and builder add the node, op and scope.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TypeError {
    #[error("takes {expected} arguments, got {found}")]
    Arity { expected: String, found: usize },
    #[error("dtype mismatch: {0}")]
    DType(String),
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("bad attribute: {0}")]
    Attribute(String),
}

fn shape_text(s: &[Dim]) -> String {
    let dims: Vec<String> = s.iter().map(Dim::to_string).collect();
    format!("[{}]", dims.join(","))
}

fn shape_err(msg: impl Into<String>) -> TypeError {
    TypeError::Shape(msg.into())
}

fn attr_err(msg: impl Into<String>) -> TypeError {
    TypeError::Attribute(msg.into())
}

/// Numpy broadcasting of two dimensions: equal, or one of them is 1.
fn broadcast_dim(a: &Dim, b: &Dim) -> Option<Dim> {
    if a == b || b.is_one() {
        Some(a.clone())
    } else if a.is_one() {
        Some(b.clone())
    } else {
        None
    }
}

/// The numpy broadcast of several shapes (aligned on the right).
pub fn broadcast_shapes(shapes: &[&[Dim]]) -> Result<Shape, TypeError> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out: Shape = vec![Dim::Fixed(1); rank];
    for s in shapes {
        let offset = rank - s.len();
        for (i, d) in s.iter().enumerate() {
            out[offset + i] = broadcast_dim(&out[offset + i], d).ok_or_else(|| {
                let all: Vec<String> = shapes.iter().map(|s| shape_text(s)).collect();
                shape_err(format!("shapes {} do not broadcast", all.join(" and ")))
            })?;
        }
    }
    Ok(out)
}

/// Whether two shapes hold the same number of elements for every binding of their symbols:
/// equal products of fixed dimensions and the same multiset of symbols.
pub fn same_element_count(a: &[Dim], b: &[Dim]) -> bool {
    /// Product of the fixed dimensions (`None` on overflow) and the sorted symbols.
    fn split(s: &[Dim]) -> (Option<u128>, Vec<&str>) {
        let mut syms: Vec<&str> = Vec::new();
        let mut prod: Option<u128> = Some(1);
        for d in s {
            match d {
                Dim::Fixed(n) => prod = prod.and_then(|p| p.checked_mul(*n as u128)),
                Dim::Sym(name) => syms.push(name),
            }
        }
        syms.sort_unstable();
        (prod, syms)
    }
    let (a, b) = (split(a), split(b));
    // Shapes too large to count are never the same size.
    a.0.is_some() && a == b
}

fn check_axis(axis: usize, rank: usize, what: &str) -> Result<(), TypeError> {
    if axis >= rank {
        return Err(attr_err(format!("{what} {axis} is out of range for rank {rank}")));
    }
    Ok(())
}

fn want_dtype(t: &TensorType, ok: bool, role: &str, expected: &str) -> Result<(), TypeError> {
    if ok {
        Ok(())
    } else {
        Err(TypeError::DType(format!("{role} is {}, expected {expected}", t.dtype)))
    }
}

fn want_float(t: &TensorType, role: &str) -> Result<(), TypeError> {
    want_dtype(t, t.dtype.is_float(), role, "a float type")
}

fn want_int(t: &TensorType, role: &str) -> Result<(), TypeError> {
    want_dtype(t, t.dtype.is_int(), role, "i32 or u32")
}

fn want_key_scalar(t: &TensorType, role: &str) -> Result<(), TypeError> {
    want_dtype(t, t.dtype == DType::U32, role, "u32")?;
    if t.rank() != 0 {
        return Err(shape_err(format!("{role} must be a scalar, got {}", shape_text(&t.shape))));
    }
    Ok(())
}

fn same_dtype(a: &TensorType, b: &TensorType) -> Result<(), TypeError> {
    if a.dtype != b.dtype {
        return Err(TypeError::DType(format!("{} and {} differ", a.dtype, b.dtype)));
    }
    Ok(())
}

fn check_reduce_axes(axes: &[usize], rank: usize) -> Result<(), TypeError> {
    if axes.is_empty() {
        return Err(attr_err("reduction needs at least one axis"));
    }
    for (i, &a) in axes.iter().enumerate() {
        check_axis(a, rank, "axis")?;
        if axes[..i].contains(&a) {
            return Err(attr_err(format!("axis {a} is listed twice")));
        }
    }
    Ok(())
}

/// The result types of `op` applied to arguments of types `args`.
pub fn infer(op: &Op, args: &[&TensorType]) -> Result<Vec<TensorType>, TypeError> {
    if !op.arity().accepts(args.len()) {
        return Err(TypeError::Arity { expected: op.arity().to_string(), found: args.len() });
    }
    let one = |t: TensorType| Ok(vec![t]);
    match op {
        Op::Input { dtype, shape, .. } => one(TensorType::new(*dtype, shape.clone())),
        Op::Param { dtype, shape, init, .. } => {
            let sane = match init {
                Init::Zeros | Init::Ones => true,
                Init::Normal { mean, std } => mean.is_finite() && std.is_finite() && *std >= 0.0,
                Init::Uniform { low, high } => low.is_finite() && high.is_finite() && low <= high,
            };
            if !sane {
                return Err(attr_err(format!("initialiser {init:?} needs finite bounds (std >= 0, low <= high)")));
            }
            if !dtype.is_float() {
                return Err(TypeError::DType(format!("parameters must be float, not {dtype}")));
            }
            if let Some(sym) = shape.iter().find_map(|d| if let Dim::Sym(s) = d { Some(s) } else { None }) {
                return Err(attr_err(format!("parameter shape uses symbol `{sym}`; parameters need fixed sizes")));
            }
            one(TensorType::new(*dtype, shape.clone()))
        }
        Op::Constant { value, dtype } => {
            let v = value.0;
            let representable = match dtype {
                DType::Bool => v == 0.0 || v == 1.0,
                DType::I32 => v.fract() == 0.0 && v >= i32::MIN as f64 && v <= i32::MAX as f64,
                DType::U32 => v.fract() == 0.0 && v >= 0.0 && v <= u32::MAX as f64,
                _ => true,
            };
            if !representable {
                return Err(attr_err(format!("constant {v} is not a {dtype}")));
            }
            one(TensorType::scalar(*dtype))
        }
        Op::Iota { shape, axis } => {
            check_axis(*axis, shape.len(), "axis")?;
            one(TensorType::new(DType::I32, shape.clone()))
        }
        Op::RandomUniform { shape, .. } => {
            want_key_scalar(args[0], "seed")?;
            want_key_scalar(args[1], "offset")?;
            one(TensorType::new(DType::F32, shape.clone()))
        }
        Op::Unary(UnaryFn::Neg) => {
            let t = args[0];
            want_dtype(t, t.dtype.is_float() || t.dtype == DType::I32, "argument", "a float type or i32")?;
            one(t.clone())
        }
        Op::Unary(_) => {
            want_float(args[0], "argument")?;
            one(args[0].clone())
        }
        Op::Cast { to } => one(TensorType::new(*to, args[0].shape.clone())),
        Op::Binary(f) if !f.is_comparison() => {
            let (a, b) = (args[0], args[1]);
            same_dtype(a, b)?;
            want_dtype(a, a.dtype != DType::Bool, "arithmetic argument", "a numeric type")?;
            one(TensorType::new(a.dtype, broadcast_shapes(&[&a.shape, &b.shape])?))
        }
        Op::Binary(f) => {
            let (a, b) = (args[0], args[1]);
            same_dtype(a, b)?;
            if *f == BinaryFn::Less {
                want_dtype(a, a.dtype != DType::Bool, "comparison argument", "a numeric type")?;
            }
            one(TensorType::new(DType::Bool, broadcast_shapes(&[&a.shape, &b.shape])?))
        }
        Op::Select => {
            let (c, a, b) = (args[0], args[1], args[2]);
            want_dtype(c, c.dtype == DType::Bool, "condition", "bool")?;
            same_dtype(a, b)?;
            one(TensorType::new(a.dtype, broadcast_shapes(&[&c.shape, &a.shape, &b.shape])?))
        }
        Op::Dropout { p, .. } => {
            if !(0.0..1.0).contains(p) {
                return Err(attr_err(format!("dropout probability {p} is not in [0, 1)")));
            }
            want_float(args[0], "argument")?;
            want_key_scalar(args[1], "seed")?;
            want_key_scalar(args[2], "offset")?;
            one(args[0].clone())
        }
        Op::MatMul { transpose_a, transpose_b } => {
            let (a, b) = (args[0], args[1]);
            want_float(a, "lhs")?;
            same_dtype(a, b)?;
            if a.rank() < 2 || b.rank() < 2 {
                return Err(shape_err(format!(
                    "matmul needs rank >= 2, got {} and {}",
                    shape_text(&a.shape),
                    shape_text(&b.shape)
                )));
            }
            let (ra, rb) = (a.rank(), b.rank());
            let (m, ka) =
                if *transpose_a { (&a.shape[ra - 1], &a.shape[ra - 2]) } else { (&a.shape[ra - 2], &a.shape[ra - 1]) };
            let (kb, n) =
                if *transpose_b { (&b.shape[rb - 1], &b.shape[rb - 2]) } else { (&b.shape[rb - 2], &b.shape[rb - 1]) };
            if ka != kb {
                return Err(shape_err(format!(
                    "contracted dimensions differ: {} x {} (transpose_a={transpose_a}, transpose_b={transpose_b})",
                    shape_text(&a.shape),
                    shape_text(&b.shape)
                )));
            }
            let mut shape = broadcast_shapes(&[&a.shape[..ra - 2], &b.shape[..rb - 2]])?;
            shape.push(m.clone());
            shape.push(n.clone());
            one(TensorType::new(a.dtype, shape))
        }
        Op::Softmax { axis } | Op::LogSoftmax { axis } => {
            want_float(args[0], "argument")?;
            check_axis(*axis, args[0].rank(), "axis")?;
            one(args[0].clone())
        }
        Op::LayerNorm { eps } => {
            let (x, gamma, beta) = (args[0], args[1], args[2]);
            if !(eps.is_finite() && *eps > 0.0) {
                return Err(attr_err(format!("eps {eps} must be positive and finite")));
            }
            want_float(x, "input")?;
            same_dtype(x, gamma)?;
            same_dtype(x, beta)?;
            let last = x.shape.last().ok_or_else(|| shape_err("layer norm of a scalar"))?;
            for (role, t) in [("gamma", gamma), ("beta", beta)] {
                if t.shape.as_slice() != std::slice::from_ref(last) {
                    return Err(shape_err(format!(
                        "{role} is {}, expected [{last}] to match input {}",
                        shape_text(&t.shape),
                        shape_text(&x.shape)
                    )));
                }
            }
            one(x.clone())
        }
        Op::ReduceSum { axes, keep_dims } | Op::ReduceMean { axes, keep_dims } | Op::ReduceMax { axes, keep_dims } => {
            let x = args[0];
            match op {
                Op::ReduceMean { .. } => want_float(x, "argument")?,
                _ => want_dtype(x, x.dtype != DType::Bool, "argument", "a numeric type")?,
            }
            check_reduce_axes(axes, x.rank())?;
            let shape = x
                .shape
                .iter()
                .enumerate()
                .filter_map(|(i, d)| match (axes.contains(&i), keep_dims) {
                    (false, _) => Some(d.clone()),
                    (true, true) => Some(Dim::Fixed(1)),
                    (true, false) => None,
                })
                .collect();
            one(TensorType::new(x.dtype, shape))
        }
        Op::Reshape { shape } => {
            let x = args[0];
            if !same_element_count(&x.shape, shape) {
                return Err(shape_err(format!(
                    "cannot reshape {} to {}: element counts differ",
                    shape_text(&x.shape),
                    shape_text(shape)
                )));
            }
            one(TensorType::new(x.dtype, shape.clone()))
        }
        Op::Permute { perm } => {
            let x = args[0];
            let mut seen = vec![false; x.rank()];
            let ok = perm.len() == x.rank()
                && perm.iter().all(|&p| p < seen.len() && !std::mem::replace(&mut seen[p], true));
            if !ok {
                return Err(attr_err(format!("{perm:?} is not a permutation of the {} axes", x.rank())));
            }
            one(TensorType::new(x.dtype, perm.iter().map(|&p| x.shape[p].clone()).collect()))
        }
        Op::Broadcast { shape } => {
            let x = args[0];
            let fits = x.rank() <= shape.len()
                && x.shape.iter().zip(&shape[shape.len() - x.rank()..]).all(|(d, t)| d == t || d.is_one());
            if !fits {
                return Err(shape_err(format!("cannot broadcast {} to {}", shape_text(&x.shape), shape_text(shape))));
            }
            one(TensorType::new(x.dtype, shape.clone()))
        }
        Op::Concat { axis } => {
            let first = args[0];
            check_axis(*axis, first.rank(), "axis")?;
            let mut total = 0u64;
            for (i, t) in args.iter().enumerate() {
                same_dtype(first, t)?;
                let compatible = t.rank() == first.rank()
                    && t.shape.iter().zip(&first.shape).enumerate().all(|(j, (a, b))| j == *axis || a == b);
                if !compatible {
                    return Err(shape_err(format!(
                        "argument {i} is {}, which does not concatenate with {} on axis {axis}",
                        shape_text(&t.shape),
                        shape_text(&first.shape)
                    )));
                }
                let n = t.shape[*axis].fixed().ok_or_else(|| {
                    shape_err(format!("concat axis {axis} of argument {i} is symbolic ({})", t.shape[*axis]))
                })?;
                total = total.checked_add(n).ok_or_else(|| shape_err("concatenated size overflows"))?;
            }
            let mut shape = first.shape.clone();
            shape[*axis] = Dim::Fixed(total);
            one(TensorType::new(first.dtype, shape))
        }
        Op::Slice { axis, start, end } => {
            let x = args[0];
            check_axis(*axis, x.rank(), "axis")?;
            let n = x.shape[*axis]
                .fixed()
                .ok_or_else(|| shape_err(format!("slice axis {axis} is symbolic ({})", x.shape[*axis])))?;
            if !(start < end && *end <= n) {
                return Err(attr_err(format!("slice {start}..{end} is empty or exceeds dimension {n}")));
            }
            let mut shape = x.shape.clone();
            shape[*axis] = Dim::Fixed(end - start);
            one(TensorType::new(x.dtype, shape))
        }
        Op::Gather { axis } => {
            let (table, idx) = (args[0], args[1]);
            check_axis(*axis, table.rank(), "axis")?;
            want_int(idx, "indices")?;
            want_dtype(table, table.dtype != DType::Bool, "table", "a numeric type")?;
            let shape = [&table.shape[..*axis], &idx.shape[..], &table.shape[axis + 1..]].concat();
            one(TensorType::new(table.dtype, shape))
        }
        Op::ScatterAdd { axis } => {
            let (base, idx, upd) = (args[0], args[1], args[2]);
            check_axis(*axis, base.rank(), "axis")?;
            want_int(idx, "indices")?;
            same_dtype(base, upd)?;
            want_dtype(base, base.dtype != DType::Bool, "base", "a numeric type")?;
            let expected = [&base.shape[..*axis], &idx.shape[..], &base.shape[axis + 1..]].concat();
            if upd.shape != expected {
                return Err(shape_err(format!(
                    "updates are {}, expected {} for base {} and indices {}",
                    shape_text(&upd.shape),
                    shape_text(&expected),
                    shape_text(&base.shape),
                    shape_text(&idx.shape)
                )));
            }
            one(base.clone())
        }
        Op::TopK { k } => {
            let x = args[0];
            want_dtype(x, x.dtype != DType::Bool, "argument", "a numeric type")?;
            let last = x.shape.last().ok_or_else(|| shape_err("top-k of a scalar"))?;
            if *k == 0 || last.fixed().is_some_and(|n| *k > n) {
                return Err(attr_err(format!("k = {k} is not in 1..={last}")));
            }
            let mut shape = x.shape.clone();
            *shape.last_mut().expect("rank checked above") = Dim::Fixed(*k);
            Ok(vec![TensorType::new(x.dtype, shape.clone()), TensorType::new(DType::I32, shape)])
        }
        Op::OneHot { depth, dtype } => {
            want_int(args[0], "indices")?;
            if *depth == 0 {
                return Err(attr_err("one-hot depth must be positive"));
            }
            let mut shape = args[0].shape.clone();
            shape.push(Dim::Fixed(*depth));
            one(TensorType::new(*dtype, shape))
        }
        Op::Fused(f) => f.infer(args),
    }
}

#[cfg(test)]
#[allow(clippy::cloned_ref_to_slice_refs, clippy::useless_vec)] // explicit clones and shapes read better here
mod tests {
    use super::*;
    use crate::op::{ConstValue, Init};
    use crate::shape;

    fn f32t(shape: Shape) -> TensorType {
        TensorType::new(DType::F32, shape)
    }

    fn t(dtype: DType, shape: Shape) -> TensorType {
        TensorType::new(dtype, shape)
    }

    fn ok(op: Op, args: &[TensorType]) -> Vec<TensorType> {
        let refs: Vec<&TensorType> = args.iter().collect();
        infer(&op, &refs).unwrap_or_else(|e| panic!("{op}: {e}"))
    }

    fn err(op: Op, args: &[TensorType]) -> TypeError {
        let refs: Vec<&TensorType> = args.iter().collect();
        infer(&op, &refs).expect_err("should be refused")
    }

    fn u32s() -> TensorType {
        TensorType::scalar(DType::U32)
    }

    #[test]
    fn sources_declare_their_type() {
        let s = shape!["batch", 4u64];
        assert_eq!(
            ok(Op::Input { name: "x".into(), dtype: DType::I32, shape: s.clone() }, &[]),
            [t(DType::I32, s.clone())]
        );
        let p = Op::Param {
            name: "w".into(),
            dtype: DType::F32,
            shape: shape![3u64, 4u64],
            init: Init::Zeros,
            frozen: false,
        };
        assert_eq!(ok(p, &[]), [f32t(shape![3u64, 4u64])]);
        let p =
            Op::Param { name: "w".into(), dtype: DType::F32, shape: shape!["batch"], init: Init::Zeros, frozen: false };
        assert!(matches!(err(p, &[]), TypeError::Attribute(_)));
        let p =
            Op::Param { name: "w".into(), dtype: DType::I32, shape: shape![2u64], init: Init::Zeros, frozen: false };
        assert!(matches!(err(p, &[]), TypeError::DType(_)));
        assert_eq!(
            ok(Op::Constant { value: ConstValue(2.0), dtype: DType::I32 }, &[]),
            [TensorType::scalar(DType::I32)]
        );
        assert!(matches!(
            err(Op::Constant { value: ConstValue(0.5), dtype: DType::I32 }, &[]),
            TypeError::Attribute(_)
        ));
        assert!(matches!(
            err(Op::Constant { value: ConstValue(2.0), dtype: DType::Bool }, &[]),
            TypeError::Attribute(_)
        ));
        assert!(matches!(
            err(Op::Constant { value: ConstValue(-1.0), dtype: DType::U32 }, &[]),
            TypeError::Attribute(_)
        ));
        assert_eq!(ok(Op::Iota { shape: s.clone(), axis: 1 }, &[]), [t(DType::I32, s.clone())]);
        assert!(matches!(err(Op::Iota { shape: s.clone(), axis: 2 }, &[]), TypeError::Attribute(_)));
    }

    #[test]
    fn random_ops_take_u32_scalar_keys() {
        let op = Op::RandomUniform { shape: shape!["batch", 5u64], stream: 1 };
        assert_eq!(ok(op.clone(), &[u32s(), u32s()]), [f32t(shape!["batch", 5u64])]);
        assert!(matches!(err(op.clone(), &[TensorType::scalar(DType::I32), u32s()]), TypeError::DType(_)));
        assert!(matches!(err(op.clone(), &[u32s(), t(DType::U32, shape![2u64])]), TypeError::Shape(_)));
        assert!(matches!(err(op, &[u32s()]), TypeError::Arity { .. }));
        let x = f32t(shape![3u64]);
        assert_eq!(ok(Op::Dropout { p: 0.1, stream: 0 }, &[x.clone(), u32s(), u32s()]), [x.clone()]);
        assert!(matches!(
            err(Op::Dropout { p: 1.0, stream: 0 }, &[x.clone(), u32s(), u32s()]),
            TypeError::Attribute(_)
        ));
        assert!(matches!(
            err(Op::Dropout { p: 0.1, stream: 0 }, &[t(DType::I32, shape![3u64]), u32s(), u32s()]),
            TypeError::DType(_)
        ));
    }

    #[test]
    fn unary_ops_keep_type_and_want_floats() {
        let x = f32t(shape!["batch", 7u64]);
        for op in UnaryFn::ALL.iter().map(|&f| Op::Unary(f)) {
            assert_eq!(ok(op.clone(), &[x.clone()]), [x.clone()]);
        }
        assert!(matches!(err(Op::Unary(UnaryFn::Exp), &[t(DType::I32, shape![2u64])]), TypeError::DType(_)));
        assert_eq!(ok(Op::Unary(UnaryFn::Neg), &[t(DType::I32, shape![2u64])]), [t(DType::I32, shape![2u64])]);
        assert!(matches!(err(Op::Unary(UnaryFn::Neg), &[t(DType::Bool, shape![2u64])]), TypeError::DType(_)));
        assert_eq!(ok(Op::Cast { to: DType::Bool }, &[x.clone()]), [t(DType::Bool, x.shape.clone())]);
    }

    #[test]
    fn binary_ops_broadcast_numpy_style_with_symbols() {
        let a = f32t(shape!["batch", "tokens", 512u64]);
        let b = f32t(shape!["batch", 1u64, 512u64]);
        let c = f32t(shape![512u64]);
        for op in [BinaryFn::Add, BinaryFn::Sub, BinaryFn::Mul, BinaryFn::Div, BinaryFn::Max].map(Op::Binary) {
            assert_eq!(ok(op.clone(), &[a.clone(), b.clone()]), [a.clone()]);
            assert_eq!(ok(op, &[c.clone(), a.clone()]), [a.clone()]);
        }
        assert_eq!(ok(Op::Binary(BinaryFn::Add), &[f32t(shape![]), a.clone()]), [a.clone()]);
        assert!(matches!(err(Op::Binary(BinaryFn::Add), &[a.clone(), f32t(shape![256u64])]), TypeError::Shape(_)));
        assert!(matches!(
            err(Op::Binary(BinaryFn::Add), &[a.clone(), f32t(shape!["tokens", 1u64, 512u64])]),
            TypeError::Shape(_)
        ));
        assert!(matches!(
            err(Op::Binary(BinaryFn::Add), &[a.clone(), t(DType::F16, shape![512u64])]),
            TypeError::DType(_)
        ));
        assert!(matches!(
            err(Op::Binary(BinaryFn::Add), &[t(DType::Bool, shape![1u64]), t(DType::Bool, shape![1u64])]),
            TypeError::DType(_)
        ));
        assert!(matches!(err(Op::Binary(BinaryFn::Add), &[a.clone()]), TypeError::Arity { .. }));
    }

    #[test]
    fn comparisons_broadcast_to_bool() {
        let a = t(DType::I32, shape!["batch", 1u64]);
        let b = t(DType::I32, shape![1u64, "batch"]);
        assert_eq!(
            ok(Op::Binary(BinaryFn::Equal), &[a.clone(), b.clone()]),
            [t(DType::Bool, shape!["batch", "batch"])]
        );
        assert_eq!(
            ok(Op::Binary(BinaryFn::Less), &[f32t(shape![3u64]), f32t(shape![])]),
            [t(DType::Bool, shape![3u64])]
        );
        assert!(matches!(err(Op::Binary(BinaryFn::Less), &[a.clone(), f32t(shape![])]), TypeError::DType(_)));
        let flags = t(DType::Bool, shape![2u64]);
        assert_eq!(ok(Op::Binary(BinaryFn::Equal), &[flags.clone(), flags.clone()]), [flags.clone()]);
        assert!(matches!(err(Op::Binary(BinaryFn::Less), &[flags.clone(), flags]), TypeError::DType(_)));
    }

    #[test]
    fn select_broadcasts_condition_and_branches() {
        let c = t(DType::Bool, shape!["batch", 1u64]);
        let a = f32t(shape!["batch", 4u64]);
        let b = f32t(shape![]);
        assert_eq!(ok(Op::Select, &[c.clone(), a.clone(), b.clone()]), [a.clone()]);
        assert!(matches!(err(Op::Select, &[a.clone(), a.clone(), b.clone()]), TypeError::DType(_)));
        assert!(matches!(err(Op::Select, &[c.clone(), a.clone(), t(DType::I32, shape![])]), TypeError::DType(_)));
        assert!(matches!(err(Op::Select, &[c, a, f32t(shape![3u64])]), TypeError::Shape(_)));
    }

    #[test]
    fn matmul_contracts_and_broadcasts_batch_dims() {
        let mm = |ta, tb| Op::MatMul { transpose_a: ta, transpose_b: tb };
        let x = f32t(shape!["batch", "tokens", 384u64]);
        let w = f32t(shape![512u64, 384u64]);
        assert_eq!(ok(mm(false, true), &[x.clone(), w.clone()]), [f32t(shape!["batch", "tokens", 512u64])]);
        assert!(matches!(err(mm(false, false), &[x.clone(), w.clone()]), TypeError::Shape(_)));
        let a = f32t(shape!["batch", "tokens", 5u64]);
        assert_eq!(ok(mm(true, false), &[a, x.clone()]), [f32t(shape!["batch", 5u64, 384u64])]);
        let q = f32t(shape![2u64, 8u64, 5u64, 64u64]);
        assert_eq!(ok(mm(false, true), &[q.clone(), q.clone()]), [f32t(shape![2u64, 8u64, 5u64, 5u64])]);
        let bad_batch = f32t(shape![3u64, 8u64, 64u64, 5u64]);
        assert!(matches!(err(mm(false, false), &[q.clone(), bad_batch]), TypeError::Shape(_)));
        assert!(matches!(err(mm(false, false), &[f32t(shape![4u64]), w.clone()]), TypeError::Shape(_)));
        assert!(matches!(err(mm(false, true), &[t(DType::I32, shape![2u64, 384u64]), w]), TypeError::DType(_)));
    }

    #[test]
    fn normalisations_check_axis_and_affine_shapes() {
        let x = f32t(shape!["batch", 5u64, 512u64]);
        assert_eq!(ok(Op::Softmax { axis: 2 }, &[x.clone()]), [x.clone()]);
        assert_eq!(ok(Op::LogSoftmax { axis: 0 }, &[x.clone()]), [x.clone()]);
        assert!(matches!(err(Op::Softmax { axis: 3 }, &[x.clone()]), TypeError::Attribute(_)));
        let g = f32t(shape![512u64]);
        assert_eq!(ok(Op::LayerNorm { eps: 1e-5 }, &[x.clone(), g.clone(), g.clone()]), [x.clone()]);
        assert!(matches!(
            err(Op::LayerNorm { eps: 1e-5 }, &[x.clone(), f32t(shape![5u64]), g.clone()]),
            TypeError::Shape(_)
        ));
        assert!(matches!(err(Op::LayerNorm { eps: 0.0 }, &[x.clone(), g.clone(), g]), TypeError::Attribute(_)));
    }

    #[test]
    fn reductions_drop_or_keep_axes() {
        let x = f32t(shape!["batch", "tokens", 512u64]);
        let r = |axes: Vec<usize>, keep_dims| Op::ReduceSum { axes, keep_dims };
        assert_eq!(ok(r(vec![1], false), &[x.clone()]), [f32t(shape!["batch", 512u64])]);
        assert_eq!(
            ok(Op::ReduceMean { axes: vec![1, 2], keep_dims: true }, &[x.clone()]),
            [f32t(shape!["batch", 1u64, 1u64])]
        );
        assert_eq!(ok(Op::ReduceMax { axes: vec![0, 1, 2], keep_dims: false }, &[x.clone()]), [f32t(shape![])]);
        assert!(matches!(err(r(vec![], false), &[x.clone()]), TypeError::Attribute(_)));
        assert!(matches!(err(r(vec![1, 1], false), &[x.clone()]), TypeError::Attribute(_)));
        assert!(matches!(err(r(vec![3], false), &[x.clone()]), TypeError::Attribute(_)));
        assert!(matches!(
            err(Op::ReduceMean { axes: vec![0], keep_dims: false }, &[t(DType::I32, shape![2u64])]),
            TypeError::DType(_)
        ));
    }

    #[test]
    fn movement_ops() {
        let x = f32t(shape!["batch", 5u64, 512u64]);
        let split = shape!["batch", 5u64, 8u64, 64u64];
        assert_eq!(ok(Op::Reshape { shape: split.clone() }, &[x.clone()]), [f32t(split.clone())]);
        assert!(matches!(
            err(Op::Reshape { shape: shape!["batch", 5u64, 8u64, 65u64] }, &[x.clone()]),
            TypeError::Shape(_)
        ));
        assert!(matches!(
            err(Op::Reshape { shape: shape!["tokens", 5u64, 512u64] }, &[x.clone()]),
            TypeError::Shape(_)
        ));
        assert_eq!(
            ok(Op::Permute { perm: vec![0, 2, 1, 3] }, &[f32t(split.clone())]),
            [f32t(shape!["batch", 8u64, 5u64, 64u64])]
        );
        for bad in [vec![0, 1, 2], vec![0, 1, 1, 2], vec![0, 1, 2, 4]] {
            assert!(matches!(err(Op::Permute { perm: bad }, &[f32t(split.clone())]), TypeError::Attribute(_)));
        }
        let b = f32t(shape!["batch", 1u64, 512u64]);
        assert_eq!(ok(Op::Broadcast { shape: x.shape.clone() }, &[b.clone()]), [x.clone()]);
        assert_eq!(ok(Op::Broadcast { shape: x.shape.clone() }, &[f32t(shape![512u64])]), [x.clone()]);
        assert!(matches!(err(Op::Broadcast { shape: shape![512u64] }, &[b.clone()]), TypeError::Shape(_)));
        assert!(matches!(
            err(Op::Broadcast { shape: x.shape.clone() }, &[f32t(shape![2u64, 512u64])]),
            TypeError::Shape(_)
        ));
        let y = f32t(shape!["batch", 5u64, 128u64]);
        assert_eq!(ok(Op::Concat { axis: 2 }, &[x.clone(), y.clone()]), [f32t(shape!["batch", 5u64, 640u64])]);
        assert!(matches!(err(Op::Concat { axis: 1 }, &[x.clone(), y.clone()]), TypeError::Shape(_)));
        assert!(matches!(err(Op::Concat { axis: 0 }, &[x.clone(), x.clone()]), TypeError::Shape(_)));
        assert!(matches!(err(Op::Concat { axis: 2 }, &[]), TypeError::Arity { .. }));
        assert_eq!(ok(Op::Slice { axis: 2, start: 3, end: 10 }, &[x.clone()]), [f32t(shape!["batch", 5u64, 7u64])]);
        assert!(matches!(err(Op::Slice { axis: 2, start: 3, end: 3 }, &[x.clone()]), TypeError::Attribute(_)));
        assert!(matches!(err(Op::Slice { axis: 2, start: 0, end: 513 }, &[x.clone()]), TypeError::Attribute(_)));
        assert!(matches!(err(Op::Slice { axis: 0, start: 0, end: 1 }, &[x]), TypeError::Shape(_)));
    }

    #[test]
    fn indexing_ops() {
        let table = f32t(shape![30522u64, 384u64]);
        let ids = t(DType::I32, shape!["batch", "tokens"]);
        assert_eq!(
            ok(Op::Gather { axis: 0 }, &[table.clone(), ids.clone()]),
            [f32t(shape!["batch", "tokens", 384u64])]
        );
        assert!(matches!(err(Op::Gather { axis: 0 }, &[table.clone(), table.clone()]), TypeError::DType(_)));
        assert!(matches!(err(Op::Gather { axis: 2 }, &[table.clone(), ids.clone()]), TypeError::Attribute(_)));
        let upd = f32t(shape!["batch", "tokens", 384u64]);
        assert_eq!(ok(Op::ScatterAdd { axis: 0 }, &[table.clone(), ids.clone(), upd.clone()]), [table.clone()]);
        assert!(matches!(
            err(Op::ScatterAdd { axis: 0 }, &[table.clone(), ids.clone(), table.clone()]),
            TypeError::Shape(_)
        ));
        let x = f32t(shape!["batch", 4u64]);
        assert_eq!(
            ok(Op::TopK { k: 2 }, &[x.clone()]),
            [f32t(shape!["batch", 2u64]), t(DType::I32, shape!["batch", 2u64])]
        );
        assert!(matches!(err(Op::TopK { k: 5 }, &[x.clone()]), TypeError::Attribute(_)));
        assert!(matches!(err(Op::TopK { k: 0 }, &[x.clone()]), TypeError::Attribute(_)));
        let labels = t(DType::I32, shape!["batch"]);
        assert_eq!(ok(Op::OneHot { depth: 5, dtype: DType::F32 }, &[labels.clone()]), [f32t(shape!["batch", 5u64])]);
        assert!(matches!(err(Op::OneHot { depth: 5, dtype: DType::F32 }, &[x]), TypeError::DType(_)));
        assert!(matches!(err(Op::OneHot { depth: 0, dtype: DType::F32 }, &[labels]), TypeError::Attribute(_)));
    }

    #[test]
    fn element_count_compares_symbols_as_multisets() {
        assert!(same_element_count(&shape!["a", "b", 6u64], &shape!["b", 2u64, "a", 3u64]));
        assert!(!same_element_count(&shape!["a", 6u64], &shape!["b", 6u64]));
        assert!(!same_element_count(&shape!["a", "a"], &shape!["a"]));
    }
}
