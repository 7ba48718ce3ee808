//! The closed set of primitive ops, their attributes and their classes.
//!
//! Every op of `calm-spec.md` is a composition of these (the builder's helpers do the
//! composing). Passes ask an op for its [`OpClass`] instead of listing variants. The elementwise
//! functions come in two groups, [`UnaryFn`] and [`BinaryFn`] (as tinygrad's op groups), each
//! function named once, here: graphs hold them as [`Op::Unary`] / [`Op::Binary`], elementwise
//! programs as the same values, and the kernels and the reference executor match on them.
//! Fused ops live behind the single [`Op::Fused`] variant (see `fused.rs`).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::fused::FusedOp;
use crate::types::{DType, Shape};

/// A primitive op. Axes are non-negative (the builder normalises negative ones).
///
/// Serialised with an `"op"` tag holding the snake_case name, attributes beside it:
/// `{"op": "matmul", "transpose_a": false, "transpose_b": true}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    // --- sources: no tensor arguments (random ops take only their key scalars) ---
    /// A named graph input, bound by the caller.
    Input {
        name: String,
        dtype: DType,
        shape: Shape,
    },
    /// A named parameter; `name` is its key in weight files. A `frozen` parameter (a pretrained
    /// backbone's) is loaded but never trained.
    Param {
        name: String,
        dtype: DType,
        shape: Shape,
        init: Init,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        frozen: bool,
    },
    /// A scalar constant.
    Constant {
        value: ConstValue,
        dtype: DType,
    },
    /// `out[i_0, .., i_n] = i_axis`, as i32.
    Iota {
        shape: Shape,
        axis: usize,
    },
    /// Uniform numbers in (0, 1) from the counter-based generator, keyed by the `(seed, offset)`
    /// u32 scalars given as arguments, the op's `stream` and each element's linear index.
    RandomUniform {
        shape: Shape,
        stream: u32,
    },

    // --- elementwise ---
    /// A scalar function of one argument, applied to every element ([`UnaryFn`]).
    #[serde(skip)]
    Unary(UnaryFn),
    /// A scalar function of two arguments under numpy broadcasting ([`BinaryFn`]).
    #[serde(skip)]
    Binary(BinaryFn),
    Cast {
        to: DType,
    },
    /// `select(cond, a, b)`: `a` where `cond`, else `b`; all three broadcast.
    Select,
    /// Training-only dropout with drop probability `p`; arguments `(x, seed, offset)`. Its mask
    /// comes from the same generator as `RandomUniform`: keep where `u >= p` (compared in f32),
    /// scaled by `1/(1-p)`; dropped elements are 0 whatever `x` holds.
    Dropout {
        p: f64,
        stream: u32,
    },

    // --- contractions and normalisations ---
    /// Batched matmul `[.., M, K] x [.., K, N]`; batch dimensions broadcast.
    #[serde(rename = "matmul")]
    MatMul {
        transpose_a: bool,
        transpose_b: bool,
    },
    Softmax {
        axis: usize,
    },
    LogSoftmax {
        axis: usize,
    },
    /// Layer norm over the last axis; arguments `(x, gamma, beta)`.
    LayerNorm {
        eps: f64,
    },

    // --- reductions ---
    ReduceSum {
        axes: Vec<usize>,
        keep_dims: bool,
    },
    ReduceMean {
        axes: Vec<usize>,
        keep_dims: bool,
    },
    ReduceMax {
        axes: Vec<usize>,
        keep_dims: bool,
    },

    // --- movement ---
    Reshape {
        shape: Shape,
    },
    Permute {
        perm: Vec<usize>,
    },
    /// Numpy-style broadcast to `shape`.
    Broadcast {
        shape: Shape,
    },
    Concat {
        axis: usize,
    },
    Slice {
        axis: usize,
        start: u64,
        end: u64,
    },

    // --- indexing ---
    /// `take`: `out = table[.., indices[..], ..]` along `axis`; arguments `(table, indices)`;
    /// the table is numeric and an index outside the axis is an error.
    Gather {
        axis: usize,
    },
    /// The adjoint of `Gather`: `out = base; out[.., indices[i], ..] += updates[.., i, ..]`;
    /// arguments `(base, indices, updates)`.
    ScatterAdd {
        axis: usize,
    },
    /// The `k` largest along the last axis: results `(values, indices)`; ties go to the lower index.
    TopK {
        k: u64,
    },
    /// Integer indices to one-hot vectors of length `depth` on a new last axis; an index outside
    /// `0..depth` is an error.
    OneHot {
        depth: u64,
        dtype: DType,
    },

    /// An op made by a fusion pass.
    Fused(FusedOp),
}

/// Declares a closed list of scalar functions, each named once: the enum, its snake_case
/// name (the op's name in the JSON form and the program's), and the list of all of them.
macro_rules! scalar_fns {
    ($(#[$meta:meta])* $ty:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $ty {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)*
        }

        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant,)*];

            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $text,)*
                }
            }

            pub fn from_name(text: &str) -> Option<$ty> {
                Self::ALL.iter().copied().find(|f| f.name() == text)
            }
        }
    };
}

scalar_fns! {
    /// The elementwise functions of one argument: [`Op::Unary`] in graphs, `Instr::Unary` in
    /// elementwise programs; the kernels and the reference executor compute them from here.
    UnaryFn {
        /// Floats and i32.
        Neg = "neg",
        Exp = "exp",
        Log = "log",
        Sqrt = "sqrt",
        Rsqrt = "rsqrt",
        Tanh = "tanh",
        Sigmoid = "sigmoid",
        Relu = "relu",
        /// The exact (erf) GELU, as BERT uses.
        Gelu = "gelu",
    }
}

scalar_fns! {
    /// The elementwise functions of two arguments, broadcasting numpy-style: [`Op::Binary`] in
    /// graphs, `Instr::Binary` in elementwise programs.
    BinaryFn {
        Add = "add",
        Sub = "sub",
        Mul = "mul",
        /// Float division; integer division truncates toward zero and a zero divisor is an error.
        Div = "div",
        /// Elementwise maximum; NaN in either argument gives NaN.
        Max = "max",
        /// `a == b`, as bool.
        Equal = "equal",
        /// `a < b`, as bool.
        Less = "less",
    }
}

impl BinaryFn {
    /// True for comparisons (their result is a bool).
    pub fn is_comparison(self) -> bool {
        matches!(self, BinaryFn::Equal | BinaryFn::Less)
    }
}

/// The JSON form writes a unary or binary op as its function's name alone (`{"op": "gelu"}`),
/// like every other attribute-less op; the derived (remote) form handles the rest.
impl Serialize for Op {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let name = match self {
            Op::Unary(f) => f.name(),
            Op::Binary(f) => f.name(),
            other => return Op::serialize(other, s),
        };
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry("op", name)?;
        map.end()
    }
}

impl<'de> Deserialize<'de> for Op {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_json::Value::deserialize(d)?;
        let tag = value.get("op").and_then(serde_json::Value::as_str);
        let group =
            tag.and_then(|t| UnaryFn::from_name(t).map(Op::Unary).or_else(|| BinaryFn::from_name(t).map(Op::Binary)));
        // Like serde's attribute-less variants, these ignore other fields; the JSON reader
        // refuses attributes an op does not have, for every op alike.
        match group {
            Some(op) => Ok(op),
            None => Op::deserialize(value).map_err(D::Error::custom),
        }
    }
}

/// How a parameter is initialised (the reference executor draws it from a seed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Init {
    Zeros,
    Ones,
    Normal { mean: f64, std: f64 },
    Uniform { low: f64, high: f64 },
}

/// A scalar constant's value. JSON has no infinities or NaN, so those are written as the strings
/// `"inf"`, `"-inf"` and `"nan"`; finite values are plain numbers.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct ConstValue(pub f64);

impl Serialize for ConstValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = self.0;
        if v.is_nan() {
            s.serialize_str("nan")
        } else if v.is_infinite() {
            s.serialize_str(if v > 0.0 { "inf" } else { "-inf" })
        } else {
            s.serialize_f64(v)
        }
    }
}

impl<'de> Deserialize<'de> for ConstValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Num(f64),
            Text(String),
        }
        match Repr::deserialize(d)? {
            Repr::Num(v) => Ok(ConstValue(v)),
            Repr::Text(t) => match t.as_str() {
                "inf" => Ok(ConstValue(f64::INFINITY)),
                "-inf" => Ok(ConstValue(f64::NEG_INFINITY)),
                "nan" => Ok(ConstValue(f64::NAN)),
                other => Err(serde::de::Error::custom(format!(
                    "constant `{other}` is not a number, \"inf\", \"-inf\" or \"nan\""
                ))),
            },
        }
    }
}

/// The groups passes reason about (in the manner of tinygrad's op groups).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum OpClass {
    /// Inputs, parameters, constants, iota, random numbers: no tensor data flows in.
    Source,
    /// One output element from the same element of each (broadcast) argument.
    Elementwise,
    MatMul,
    /// Softmax, log-softmax, layer norm: a reduction and an elementwise map along one axis.
    Normalize,
    Reduce,
    /// Reshape, permute, broadcast, concat, slice: data moves, nothing is computed.
    Movement,
    /// Gather, scatter-add, top-k, one-hot: data-dependent addressing.
    Index,
    Fused,
}

/// How many arguments an op takes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Arity {
    Exact(usize),
    AtLeast(usize),
}

impl Arity {
    pub fn accepts(self, n: usize) -> bool {
        match self {
            Arity::Exact(k) => n == k,
            Arity::AtLeast(k) => n >= k,
        }
    }
}

impl fmt::Display for Arity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Arity::Exact(k) => write!(f, "{k}"),
            Arity::AtLeast(k) => write!(f, "at least {k}"),
        }
    }
}

impl Op {
    /// The op's name as written in the JSON form.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Param { .. } => "param",
            Op::Constant { .. } => "constant",
            Op::Iota { .. } => "iota",
            Op::RandomUniform { .. } => "random_uniform",
            Op::Unary(f) => f.name(),
            Op::Cast { .. } => "cast",
            Op::Binary(f) => f.name(),
            Op::Select => "select",
            Op::Dropout { .. } => "dropout",
            Op::MatMul { .. } => "matmul",
            Op::Softmax { .. } => "softmax",
            Op::LogSoftmax { .. } => "log_softmax",
            Op::LayerNorm { .. } => "layer_norm",
            Op::ReduceSum { .. } => "reduce_sum",
            Op::ReduceMean { .. } => "reduce_mean",
            Op::ReduceMax { .. } => "reduce_max",
            Op::Reshape { .. } => "reshape",
            Op::Permute { .. } => "permute",
            Op::Broadcast { .. } => "broadcast",
            Op::Concat { .. } => "concat",
            Op::Slice { .. } => "slice",
            Op::Gather { .. } => "gather",
            Op::ScatterAdd { .. } => "scatter_add",
            Op::TopK { .. } => "top_k",
            Op::OneHot { .. } => "one_hot",
            Op::Fused(f) => f.name(),
        }
    }

    pub fn class(&self) -> OpClass {
        match self {
            Op::Input { .. } | Op::Param { .. } | Op::Constant { .. } | Op::Iota { .. } | Op::RandomUniform { .. } => {
                OpClass::Source
            }
            Op::Unary(_) | Op::Binary(_) | Op::Cast { .. } | Op::Select | Op::Dropout { .. } => OpClass::Elementwise,
            Op::MatMul { .. } => OpClass::MatMul,
            Op::Softmax { .. } | Op::LogSoftmax { .. } | Op::LayerNorm { .. } => OpClass::Normalize,
            Op::ReduceSum { .. } | Op::ReduceMean { .. } | Op::ReduceMax { .. } => OpClass::Reduce,
            Op::Reshape { .. } | Op::Permute { .. } | Op::Broadcast { .. } | Op::Concat { .. } | Op::Slice { .. } => {
                OpClass::Movement
            }
            Op::Gather { .. } | Op::ScatterAdd { .. } | Op::TopK { .. } | Op::OneHot { .. } => OpClass::Index,
            Op::Fused(_) => OpClass::Fused,
        }
    }

    pub fn is_elementwise(&self) -> bool {
        self.class() == OpClass::Elementwise
    }

    /// Unary functions and binary ones other than comparisons: arithmetic, which has no device
    /// kernel for integers (comparisons, selects and casts of integers do).
    pub fn is_arithmetic(&self) -> bool {
        match self {
            Op::Unary(_) => true,
            Op::Binary(f) => !f.is_comparison(),
            _ => false,
        }
    }

    pub fn is_source(&self) -> bool {
        self.class() == OpClass::Source
    }

    /// True for ops whose output depends on the random generator.
    pub fn is_random(&self) -> bool {
        matches!(self, Op::RandomUniform { .. } | Op::Dropout { .. })
    }

    pub fn arity(&self) -> Arity {
        match self {
            Op::Input { .. } | Op::Param { .. } | Op::Constant { .. } | Op::Iota { .. } => Arity::Exact(0),
            Op::RandomUniform { .. } => Arity::Exact(2),
            Op::Binary(_) | Op::MatMul { .. } | Op::Gather { .. } => Arity::Exact(2),
            Op::Select | Op::Dropout { .. } | Op::LayerNorm { .. } | Op::ScatterAdd { .. } => Arity::Exact(3),
            Op::Concat { .. } => Arity::AtLeast(1),
            Op::Fused(f) => f.arity(),
            _ => Arity::Exact(1),
        }
    }

    /// Number of results the op defines.
    pub fn num_results(&self) -> usize {
        match self {
            Op::TopK { .. } => 2,
            Op::Fused(f) => f.num_results(),
            _ => 1,
        }
    }

    /// The parameter's name, for `Param` nodes.
    pub fn param_name(&self) -> Option<&str> {
        match self {
            Op::Param { name, .. } => Some(name),
            _ => None,
        }
    }

    /// The input's name, for `Input` nodes.
    pub fn input_name(&self) -> Option<&str> {
        match self {
            Op::Input { name, .. } => Some(name),
            _ => None,
        }
    }

    /// A short rendering of the attributes, for text and DOT forms (`axis=1`, `tA,tB`).
    pub fn attrs_text(&self) -> String {
        let axes = |a: &[usize], keep: bool| {
            let list: Vec<String> = a.iter().map(usize::to_string).collect();
            format!("axes=[{}]{}", list.join(","), if keep { " keep" } else { "" })
        };
        let dims = |s: &Shape| {
            let list: Vec<String> = s.iter().map(|d| d.to_string()).collect();
            format!("[{}]", list.join(","))
        };
        match self {
            Op::Input { name, .. } => format!("\"{name}\""),
            Op::Param { name, init, frozen, .. } => {
                format!("\"{name}\" {}{}", init_text(init), if *frozen { " frozen" } else { "" })
            }
            Op::Constant { value, dtype } => format!("{}:{dtype}", value.0),
            Op::Iota { shape, axis } => format!("{} axis={axis}", dims(shape)),
            Op::RandomUniform { shape, stream } => format!("{} stream={stream}", dims(shape)),
            Op::Cast { to } => format!("to={to}"),
            Op::Dropout { p, stream } => format!("p={p} stream={stream}"),
            Op::MatMul { transpose_a, transpose_b } => {
                let flags: Vec<&str> = [(*transpose_a, "tA"), (*transpose_b, "tB")]
                    .into_iter()
                    .filter_map(|(on, s)| on.then_some(s))
                    .collect();
                flags.join(",")
            }
            Op::Softmax { axis } | Op::LogSoftmax { axis } | Op::Concat { axis } => format!("axis={axis}"),
            Op::Gather { axis } | Op::ScatterAdd { axis } => format!("axis={axis}"),
            Op::LayerNorm { eps } => format!("eps={eps}"),
            Op::ReduceSum { axes: a, keep_dims }
            | Op::ReduceMean { axes: a, keep_dims }
            | Op::ReduceMax { axes: a, keep_dims } => axes(a, *keep_dims),
            Op::Reshape { shape } | Op::Broadcast { shape } => dims(shape),
            Op::Permute { perm } => format!("{perm:?}"),
            Op::Slice { axis, start, end } => format!("axis={axis} {start}..{end}"),
            Op::TopK { k } => format!("k={k}"),
            Op::OneHot { depth, dtype } => format!("depth={depth} {dtype}"),
            Op::Fused(f) => f.attrs_text(),
            _ => String::new(),
        }
    }
}

fn init_text(init: &Init) -> String {
    match init {
        Init::Zeros => "zeros".into(),
        Init::Ones => "ones".into(),
        Init::Normal { mean, std } => format!("normal({mean},{std})"),
        Init::Uniform { low, high } => format!("uniform({low},{high})"),
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let attrs = self.attrs_text();
        if attrs.is_empty() {
            f.write_str(self.name())
        } else {
            write!(f, "{} {attrs}", self.name())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_serialise_with_their_name_as_tag() {
        let ops = [
            Op::Binary(BinaryFn::Add),
            Op::Unary(UnaryFn::Gelu),
            Op::MatMul { transpose_a: false, transpose_b: true },
            Op::ReduceSum { axes: vec![1], keep_dims: true },
            Op::Constant { value: ConstValue(f64::NEG_INFINITY), dtype: DType::F32 },
            Op::Param {
                name: "a/w".into(),
                dtype: DType::F32,
                shape: vec![3u64.into()],
                init: Init::Zeros,
                frozen: true,
            },
        ];
        for op in ops {
            let json = serde_json::to_value(&op).unwrap();
            assert_eq!(json["op"], op.name(), "{json}");
            let back: Op = serde_json::from_value(json).unwrap();
            assert_eq!(back, op);
        }
    }

    #[test]
    fn non_finite_constants_survive_json() {
        for v in [f64::INFINITY, f64::NEG_INFINITY, -0.5, 1e-30] {
            let text = serde_json::to_string(&ConstValue(v)).unwrap();
            let back: ConstValue = serde_json::from_str(&text).unwrap();
            assert_eq!(back.0.to_bits(), v.to_bits());
        }
        let nan: ConstValue = serde_json::from_str(&serde_json::to_string(&ConstValue(f64::NAN)).unwrap()).unwrap();
        assert!(nan.0.is_nan());
        assert!(serde_json::from_str::<ConstValue>("\"lots\"").is_err());
    }

    #[test]
    fn classes_group_the_ops() {
        assert_eq!(Op::Unary(UnaryFn::Gelu).class(), OpClass::Elementwise);
        assert_eq!(Op::Permute { perm: vec![1, 0] }.class(), OpClass::Movement);
        assert_eq!(Op::TopK { k: 2 }.num_results(), 2);
        assert!(Op::Dropout { p: 0.1, stream: 0 }.is_random());
        assert!(Arity::AtLeast(1).accepts(3));
        assert!(!Arity::Exact(2).accepts(3));
    }
}
