//! One function per primitive op, on Burn tensor primitives.
//!
//! Composite ops are written from Burn's basic ops (exp, erf, sums, ...) rather than its fused
//! activations, so that autodiff differentiates exactly what the forward pass computes (Burn's
//! default `gelu_backward` uses the tanh approximation, and its `sigmoid` goes through f32).
//! The exception is GELU on Flex, whose own forward and backward are exact.

use burn::tensor::backend::Backend;
use burn::tensor::ops::{BoolTensor, FloatTensor, IntTensor};
use burn::tensor::{FloatDType, Shape, Slice, TensorMetadata};
use calm_ir::fused::FusedOp;
use calm_ir::program::{BinaryFn, Instr, Program, UnaryFn};
use calm_ir::{DType, Dim, Op};
use calm_kernels::philox;
use calm_passes::plan::Precision;

use super::value::{physical, Ctx, Data, DeviceError, Value};

/// Why an op could not run on these values.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Device(#[from] DeviceError),
}

pub(super) type OpResult<T> = Result<T, OpError>;

fn invalid<T>(msg: impl Into<String>) -> OpResult<T> {
    Err(OpError::Invalid(msg.into()))
}

fn float<B: Backend>(v: &Value<B>) -> OpResult<FloatTensor<B>> {
    match &v.data {
        Data::Float(t) => Ok(t.clone()),
        _ => invalid("expected a float tensor"),
    }
}

fn int<B: Backend>(v: &Value<B>) -> OpResult<IntTensor<B>> {
    match &v.data {
        Data::Int(t) => Ok(t.clone()),
        _ => invalid("expected an integer tensor"),
    }
}

fn boolean<B: Backend>(v: &Value<B>) -> OpResult<BoolTensor<B>> {
    match &v.data {
        Data::Bool(t) => Ok(t.clone()),
        _ => invalid("expected a bool tensor"),
    }
}

/// `shape` with ones prepended up to `rank` (numpy alignment).
fn aligned_shape(shape: &[usize], rank: usize) -> Vec<usize> {
    let mut s = vec![1; rank - shape.len()];
    s.extend_from_slice(shape);
    s
}

/// The value reshaped to `rank` dimensions (ones prepended), as a tensor of the same kind.
fn align<B: Backend>(v: &Value<B>, rank: usize) -> Data<B> {
    let target = physical(&aligned_shape(&v.shape, rank));
    match &v.data {
        Data::Float(t) => Data::Float(B::float_reshape(t.clone(), target)),
        Data::Int(t) => Data::Int(B::int_reshape(t.clone(), target)),
        Data::Bool(t) => Data::Bool(B::bool_reshape(t.clone(), target)),
    }
}

/// The value aligned to `shape`'s rank and expanded to it.
fn expand<B: Backend>(v: &Value<B>, shape: &[usize]) -> Data<B> {
    let target = physical(shape);
    match align(v, shape.len()) {
        Data::Float(t) => Data::Float(B::float_expand(t, target)),
        Data::Int(t) => Data::Int(B::int_expand(t, target)),
        Data::Bool(t) => Data::Bool(B::bool_expand(t, target)),
    }
}

/// Applies `op` to `args`; `out` gives each result's concrete shape.
pub fn apply<B: Backend>(ctx: &Ctx<B>, op: &Op, args: &[&Value<B>], out: &[Vec<usize>]) -> OpResult<Vec<Value<B>>> {
    let shape = out.first().cloned().unwrap_or_default();
    let rank = shape.len();
    let one = |data: Data<B>| Ok(vec![Value { shape: shape.clone(), data }]);
    let f = |i: usize| float(args[i]);
    match op {
        Op::Input { .. } | Op::Param { .. } => invalid("inputs and parameters are fed by the executor"),
        Op::Constant { value, dtype } => one(constant(ctx, value.0, *dtype)),
        Op::Iota { axis, .. } => {
            let (before, n, after) = split_at_axis(&shape, *axis);
            let mut values = Vec::with_capacity(before * n * after);
            for _ in 0..before {
                for i in 0..n {
                    values.extend(std::iter::repeat_n(i as i64, after));
                }
            }
            Ok(vec![Value::from_ints(ctx, shape.clone(), values)])
        }
        Op::RandomUniform { stream, .. } => {
            let (seed, offset) = key(args[0], args[1])?;
            let u = philox::uniform(seed, offset, *stream, shape.iter().product());
            Ok(vec![Value::from_f64(ctx, shape.clone(), u.into_iter().map(f64::from).collect())])
        }
        Op::Dropout { p, stream } => {
            let (seed, offset) = key(args[1], args[2])?;
            let u = philox::uniform(seed, offset, *stream, shape.iter().product());
            // Keep where u >= p (compared in f32, as kernels do), scaled by 1/(1-p); dropped
            // elements are 0 even where x is not finite.
            let p32 = *p as f32;
            let dropped = Value::<B>::from_bool(ctx, shape.clone(), u.into_iter().map(|u| u < p32).collect());
            let scaled = B::float_mul_scalar(f(0)?, (1.0 / (1.0 - p)).into());
            let zeros = B::float_zeros(physical(&shape), &ctx.device, ctx.float);
            one(Data::Float(B::float_mask_where(scaled, boolean(&dropped)?, zeros)))
        }
        Op::Unary(f) => one(unary(ctx, *f, args[0])?),
        Op::Cast { to } => one(cast(ctx, args[0], *to)),
        Op::Binary(f) => one(binary(ctx, *f, args, &shape)?),
        Op::Select => {
            let cond = match expand(args[0], &shape) {
                Data::Bool(c) => c,
                _ => return invalid("select needs a bool condition"),
            };
            one(match (expand(args[1], &shape), expand(args[2], &shape)) {
                (Data::Float(a), Data::Float(b)) => Data::Float(B::float_mask_where(b, cond, a)),
                (Data::Int(a), Data::Int(b)) => Data::Int(B::int_mask_where(b, cond, a)),
                (Data::Bool(a), Data::Bool(b)) => {
                    let (a, b) = (B::bool_into_int(a, ctx.int), B::bool_into_int(b, ctx.int));
                    let picked = B::int_mask_where(b, cond, a);
                    Data::Bool(B::int_not_equal_elem(picked, 0.into(), ctx.bool))
                }
                _ => return invalid("select branches of different kinds"),
            })
        }
        Op::MatMul { transpose_a, transpose_b } => {
            one(Data::Float(matmul::<B>(ctx, args, *transpose_a, *transpose_b, &shape)?))
        }
        Op::Softmax { axis } => {
            let x = f(0)?;
            let m = B::float_detach(B::float_max_dim(x.clone(), *axis));
            let e = B::float_exp(B::float_sub(x, m));
            let s = B::float_sum_dim(e.clone(), *axis);
            one(Data::Float(B::float_div(e, s)))
        }
        Op::LogSoftmax { axis } => {
            let x = f(0)?;
            let m = B::float_detach(B::float_max_dim(x.clone(), *axis));
            let shifted = B::float_sub(x, m);
            let s = B::float_sum_dim(B::float_exp(shifted.clone()), *axis);
            one(Data::Float(B::float_sub(shifted, B::float_log(s))))
        }
        Op::LayerNorm { eps } => {
            let last = rank - 1;
            let x = f(0)?;
            let mean = B::float_mean_dim(x.clone(), last);
            let centred = B::float_sub(x, mean);
            let var = B::float_mean_dim(B::float_mul(centred.clone(), centred.clone()), last);
            let inv = B::float_recip(B::float_sqrt(B::float_add_scalar(var, (*eps).into())));
            let y = B::float_mul(centred, inv);
            let gamma = B::float_reshape(f(1)?, physical(&aligned_shape(&args[1].shape, rank)));
            let beta = B::float_reshape(f(2)?, physical(&aligned_shape(&args[2].shape, rank)));
            one(Data::Float(B::float_add(B::float_mul(y, gamma), beta)))
        }
        Op::ReduceSum { axes, .. } | Op::ReduceMean { axes, .. } | Op::ReduceMax { axes, .. } => {
            one(reduce(op, args[0], axes, &shape)?)
        }
        Op::Reshape { .. } | Op::Permute { .. } | Op::Broadcast { .. } | Op::Concat { .. } | Op::Slice { .. } => {
            one(movement(op, args, &shape)?)
        }
        Op::Gather { axis } => {
            let rows = args[0].shape[*axis];
            let idx = flat_indices(ctx, args[1], rows)?;
            one(match &args[0].data {
                Data::Float(t) => {
                    Data::Float(B::float_reshape(B::float_select(t.clone(), *axis, idx), physical(&shape)))
                }
                Data::Int(t) => Data::Int(B::int_reshape(B::int_select(t.clone(), *axis, idx), physical(&shape))),
                Data::Bool(_) => return invalid("gather from a bool table"),
            })
        }
        Op::ScatterAdd { axis } => {
            let base = &args[0];
            let idx = flat_indices(ctx, args[1], base.shape[*axis])?;
            let n = args[1].shape.iter().product::<usize>();
            let mut upd_shape = base.shape.clone();
            upd_shape[*axis] = n;
            one(match (&base.data, &args[2].data) {
                (Data::Float(b), Data::Float(u)) => Data::Float(B::float_select_add(
                    b.clone(),
                    *axis,
                    idx,
                    B::float_reshape(u.clone(), physical(&upd_shape)),
                )),
                (Data::Int(b), Data::Int(u)) => {
                    Data::Int(B::int_select_add(b.clone(), *axis, idx, B::int_reshape(u.clone(), physical(&upd_shape))))
                }
                _ => return invalid("scatter-add of mismatched kinds"),
            })
        }
        Op::TopK { k } => top_k(ctx, args[0], *k as usize, &shape),
        Op::OneHot { depth, dtype } => {
            let depth = *depth as usize;
            let idx = args[0].host_ints()?;
            let mut values = vec![0.0; idx.len() * depth];
            for (row, &i) in idx.iter().enumerate() {
                if i < 0 || i as usize >= depth {
                    return invalid(format!("index {i} is out of range for one-hot depth {depth}"));
                }
                values[row * depth + i as usize] = 1.0;
            }
            let v = Value::<B>::from_f64(ctx, shape.clone(), values);
            Ok(vec![Value { shape: shape.clone(), data: cast(ctx, &v, *dtype) }])
        }
        Op::Fused(f) => apply_fused(ctx, f, args, &shape),
    }
}

/// Reshape, permute, broadcast, concat and slice: data moved, nothing computed.
fn movement<B: Backend>(op: &Op, args: &[&Value<B>], shape: &[usize]) -> OpResult<Data<B>> {
    match op {
        Op::Reshape { .. } => Ok(match &args[0].data {
            Data::Float(t) => Data::Float(B::float_reshape(t.clone(), physical(shape))),
            Data::Int(t) => Data::Int(B::int_reshape(t.clone(), physical(shape))),
            Data::Bool(t) => Data::Bool(B::bool_reshape(t.clone(), physical(shape))),
        }),
        // A permutation of at most one axis moves nothing (and Burn refuses rank-0 permutes).
        Op::Permute { .. } if args[0].rank() <= 1 => Ok(args[0].data.clone()),
        Op::Permute { perm } => Ok(match &args[0].data {
            Data::Float(t) => Data::Float(B::float_permute(t.clone(), perm)),
            Data::Int(t) => Data::Int(B::int_permute(t.clone(), perm)),
            Data::Bool(t) => Data::Bool(B::bool_permute(t.clone(), perm)),
        }),
        Op::Broadcast { .. } => Ok(expand(args[0], shape)),
        Op::Concat { axis } => Ok(match &args[0].data {
            Data::Float(_) => Data::Float(B::float_cat(args.iter().map(|a| float(a)).collect::<OpResult<_>>()?, *axis)),
            Data::Int(_) => Data::Int(B::int_cat(args.iter().map(|a| int(a)).collect::<OpResult<_>>()?, *axis)),
            Data::Bool(_) => Data::Bool(B::bool_cat(args.iter().map(|a| boolean(a)).collect::<OpResult<_>>()?, *axis)),
        }),
        Op::Slice { axis, start, end } => {
            let ranges: Vec<Slice> = args[0]
                .shape
                .iter()
                .enumerate()
                .map(|(i, &d)| if i == *axis { Slice::from(*start as usize..*end as usize) } else { Slice::from(0..d) })
                .collect();
            Ok(match &args[0].data {
                Data::Float(t) => Data::Float(B::float_slice(t.clone(), &ranges)),
                Data::Int(t) => Data::Int(B::int_slice(t.clone(), &ranges)),
                Data::Bool(t) => Data::Bool(B::bool_slice(t.clone(), &ranges)),
            })
        }
        other => invalid(format!("{} is not a movement op", other.name())),
    }
}

/// A fused op, as the primitives it replaced (the expert mixture: only its routed units).
fn apply_fused<B: Backend>(ctx: &Ctx<B>, f: &FusedOp, args: &[&Value<B>], shape: &[usize]) -> OpResult<Vec<Value<B>>> {
    match f {
        FusedOp::Elementwise { program, .. } => run_program(ctx, program, args, shape),
        FusedOp::Reduce { reduction, axes, keep_dims, program } => {
            let full = broadcast_result(args);
            let product = run_program(ctx, program, args, &full)?.remove(0);
            apply(ctx, &reduction.primitive(axes, *keep_dims), &[&product], &[shape.to_vec()])
        }
        FusedOp::MatMulEpilogue { transpose_a, transpose_b, program } => {
            let product = Value {
                shape: shape.to_vec(),
                data: Data::Float(matmul::<B>(ctx, args, *transpose_a, *transpose_b, shape)?),
            };
            let mut program_args = vec![&product];
            program_args.extend_from_slice(&args[2..]);
            run_program(ctx, program, &program_args, shape)
        }
        FusedOp::Attention { heads, scale, .. } => super::fused::attention(ctx, args, *heads, *scale),
        FusedOp::GumbelPool { transpose_w, temperature, noise_stream, eps } => {
            super::fused::gumbel_pool(ctx, args, *transpose_w, *temperature, *noise_stream, *eps)
        }
        FusedOp::Route { top_k, transpose_w } => super::fused::route(ctx, args, *top_k, *transpose_w),
        f @ FusedOp::ExpertMixture { groups, experts, heads, scale, eps, joined, .. } => {
            let (routes, stacked) = args.split_at(f.first_expert_param().expect("an expert mixture"));
            let routing = super::fused::routing(f, routes, |v| v, super::fused::Stacked::Whole);
            let stacked: Vec<_> = stacked.iter().map(|&v| super::fused::Stacked::Whole(v)).collect();
            super::fused::expert_mixture(
                ctx,
                routes[0],
                *groups as usize,
                *joined,
                &routing,
                &stacked,
                *experts,
                *heads,
                *scale,
                *eps,
            )
        }
    }
}

/// A binary arithmetic op on operands aligned to the result's rank (Burn broadcasts the ones).
fn arithmetic<B: Backend>(
    ctx: &Ctx<B>,
    args: &[&Value<B>],
    out: &[usize],
    on_ints: fn(IntTensor<B>, IntTensor<B>) -> IntTensor<B>,
    on_floats: fn(FloatTensor<B>, FloatTensor<B>) -> FloatTensor<B>,
) -> OpResult<Data<B>> {
    let rank = out.len();
    match (align(args[0], rank), align(args[1], rank)) {
        (Data::Int(a), Data::Int(b)) => Ok(Data::Int(on_ints(a, b))),
        (Data::Float(a), Data::Float(b)) if ctx.on_flex => {
            let simd = ctx.float == FloatDType::F32;
            let (a_shape, b_shape) = (aligned_shape(&args[0].shape, rank), aligned_shape(&args[1].shape, rank));
            let (a, b, collapsed) = broadcast_pair::<B>(a, &a_shape, b, &b_shape, out, simd);
            let y = on_floats(a, b);
            Ok(Data::Float(if collapsed { B::float_reshape(y, physical(out)) } else { y }))
        }
        (Data::Float(a), Data::Float(b)) => Ok(Data::Float(on_floats(a, b))),
        _ => invalid("arithmetic on mismatched kinds"),
    }
}

/// The operands of an elementwise float op, reshaped and repeated so that Burn Flex reaches its
/// dense or SIMD broadcast paths ([`Ctx::on_flex`]); the values are unchanged, and
/// autodiff sums a repeat's gradient back. Adjacent axes that broadcast alike are merged first
/// (`[B, T, M] + [M]` is `[B·T, M] + [1, M]`); what is left is either a pattern Flex's f32 SIMD
/// covers (`simd`: only the right operand broadcasts, as one row `[1, M]` or per-row scalars
/// `[R, 1]`), or the broadcast operand is repeated to the full shape. Returns the operands and
/// whether they were reshaped (the result then needs reshaping to `out`).
fn broadcast_pair<B: Backend>(
    a: FloatTensor<B>,
    a_shape: &[usize],
    b: FloatTensor<B>,
    b_shape: &[usize],
    out: &[usize],
    simd: bool,
) -> (FloatTensor<B>, FloatTensor<B>, bool) {
    // Nothing to gain on equal shapes, scalars or empty tensors.
    if (a_shape == out && b_shape == out) || out.iter().product::<usize>() <= 1 {
        return (a, b, false);
    }
    // Each axis of `out` classified by which operand broadcasts along it; axes of size 1 drop.
    let mut merged: Vec<(usize, bool, bool)> = Vec::new();
    for (i, &n) in out.iter().enumerate() {
        let class = (a_shape[i] != n, b_shape[i] != n);
        match merged.last_mut() {
            _ if n == 1 => {}
            Some((len, a_b, b_b)) if (*a_b, *b_b) == class => *len *= n,
            _ => merged.push((n, class.0, class.1)),
        }
    }
    let shape_of = |broadcast: fn(&(usize, bool, bool)) -> bool| -> Vec<usize> {
        merged.iter().map(|m| if broadcast(m) { 1 } else { m.0 }).collect()
    };
    let (a_dims, b_dims, full) = (shape_of(|m| m.1), shape_of(|m| m.2), shape_of(|_| false));
    let fast = simd
        && !merged.iter().any(|m| m.1)
        && match merged[..] {
            [_] => true,
            [(_, _, first), (_, _, second)] => first != second,
            _ => false,
        };
    let dense = |t: FloatTensor<B>, dims: &[usize]| -> FloatTensor<B> {
        let mut t = B::float_reshape(t, physical(dims));
        for (axis, (&d, &n)) in dims.iter().zip(&full).enumerate() {
            if d != n {
                t = B::float_repeat_dim(t, axis, n);
            }
        }
        t
    };
    let a = if fast { B::float_reshape(a, physical(&a_dims)) } else { dense(a, &a_dims) };
    let b = if fast { B::float_reshape(b, physical(&b_dims)) } else { dense(b, &b_dims) };
    (a, b, true)
}

/// Evaluates an elementwise program instruction by instruction, each as the primitive op it
/// stands for, so fused graphs compute exactly what their primitives compute.
fn run_program<B: Backend>(
    ctx: &Ctx<B>,
    program: &Program,
    args: &[&Value<B>],
    shape: &[usize],
) -> OpResult<Vec<Value<B>>> {
    let mut regs: Vec<Value<B>> = Vec::with_capacity(program.instrs.len());
    for instr in &program.instrs {
        let value = match *instr {
            Instr::Arg { index } => args[index as usize].clone(),
            Instr::Const { bits, dtype } => Value { shape: vec![], data: constant(ctx, f64::from_bits(bits), dtype) },
            Instr::Index { axis } => {
                let op = Op::Iota { shape: shape.iter().map(|&d| Dim::Fixed(d as u64)).collect(), axis: axis as usize };
                apply(ctx, &op, &[], &[shape.to_vec()])?.remove(0)
            }
            Instr::Uniform { stream, seed, offset } => {
                let op = Op::RandomUniform { shape: shape.iter().map(|&d| Dim::Fixed(d as u64)).collect(), stream };
                apply(ctx, &op, &[args[seed as usize], args[offset as usize]], &[shape.to_vec()])?.remove(0)
            }
            ref other => {
                let (op, operands) = program_primitive(other);
                let operands: Vec<&Value<B>> = operands.iter().map(|&r| &regs[r as usize]).collect();
                let out = broadcast_result(&operands);
                apply(ctx, &op, &operands, &[out])?.remove(0)
            }
        };
        regs.push(value);
    }
    // An output computed from broadcast arguments only is expanded to the program's shape.
    Ok(program
        .outputs
        .iter()
        .map(|&(r, _)| {
            let v = &regs[r as usize];
            if v.shape == shape {
                v.clone()
            } else {
                Value { shape: shape.to_vec(), data: expand(v, shape) }
            }
        })
        .collect())
}

/// A [`UnaryFn`] of one value.
fn unary<B: Backend>(ctx: &Ctx<B>, f: UnaryFn, arg: &Value<B>) -> OpResult<Data<B>> {
    let x = || float(arg);
    match f {
        UnaryFn::Neg => Ok(match &arg.data {
            Data::Float(t) => Data::Float(B::float_neg(t.clone())),
            Data::Int(t) => Data::Int(B::int_neg(t.clone())),
            Data::Bool(_) => return invalid("cannot negate bools"),
        }),
        UnaryFn::Exp => Ok(Data::Float(B::float_exp(x()?))),
        UnaryFn::Log => Ok(Data::Float(B::float_log(x()?))),
        UnaryFn::Sqrt => Ok(Data::Float(B::float_sqrt(x()?))),
        UnaryFn::Rsqrt => Ok(Data::Float(B::float_recip(B::float_sqrt(x()?)))),
        UnaryFn::Tanh => Ok(Data::Float(B::float_tanh(x()?))),
        UnaryFn::Sigmoid => {
            // ½ + ½ tanh(x/2): stable in value and gradient at both extremes (1/(1+e^-x) gives
            // a NaN gradient where e^-x overflows).
            let t = B::float_tanh(B::float_mul_scalar(x()?, 0.5.into()));
            Ok(Data::Float(B::float_add_scalar(B::float_mul_scalar(t, 0.5.into()), 0.5.into())))
        }
        UnaryFn::Relu => Ok(Data::Float(B::relu(x()?))),
        // Flex's GELU is this formula in one pass (same operations, same order) with the
        // exact derivative; Burn's default backward is the tanh form's.
        UnaryFn::Gelu if ctx.on_flex => Ok(Data::Float(B::gelu(x()?))),
        UnaryFn::Gelu => {
            // x/2 · (1 + erf(x/√2)), the exact GELU.
            let x = x()?;
            let e = B::float_erf(B::float_div_scalar(x.clone(), std::f64::consts::SQRT_2.into()));
            let e = B::float_add_scalar(e, 1.0.into());
            Ok(Data::Float(B::float_mul(B::float_mul_scalar(x, 0.5.into()), e)))
        }
    }
}

/// A [`BinaryFn`] of two values broadcast to `shape`.
fn binary<B: Backend>(ctx: &Ctx<B>, f: BinaryFn, args: &[&Value<B>], shape: &[usize]) -> OpResult<Data<B>> {
    match f {
        BinaryFn::Add => arithmetic(ctx, args, shape, B::int_add, B::float_add),
        BinaryFn::Sub => arithmetic(ctx, args, shape, B::int_sub, B::float_sub),
        BinaryFn::Mul => arithmetic(ctx, args, shape, B::int_mul, B::float_mul),
        BinaryFn::Div => {
            if matches!(args[1].data, Data::Int(_)) && args[1].host_ints()?.contains(&0) {
                return invalid("integer division by zero");
            }
            arithmetic(ctx, args, shape, B::int_div, B::float_div)
        }
        BinaryFn::Max => {
            // max(a, b) = where(a < b or b is NaN, b, a): NaN propagates from either side.
            let (a, b) = (expand(args[0], shape), expand(args[1], shape));
            Ok(match (a, b) {
                (Data::Float(a), Data::Float(b)) => {
                    let lower = B::float_lower(a.clone(), b.clone(), ctx.bool);
                    let b_nan = B::float_not_equal(b.clone(), b.clone(), ctx.bool);
                    Data::Float(B::float_mask_where(a, B::bool_or(lower, b_nan), b))
                }
                (Data::Int(a), Data::Int(b)) => {
                    let lower = B::int_lower(a.clone(), b.clone(), ctx.bool);
                    Data::Int(B::int_mask_where(a, lower, b))
                }
                _ => return invalid("max of bools"),
            })
        }
        BinaryFn::Equal | BinaryFn::Less => {
            let (a, b) = (expand(args[0], shape), expand(args[1], shape));
            let less = f == BinaryFn::Less;
            Ok(Data::Bool(match (a, b) {
                (Data::Float(a), Data::Float(b)) if less => B::float_lower(a, b, ctx.bool),
                (Data::Float(a), Data::Float(b)) => B::float_equal(a, b, ctx.bool),
                (Data::Int(a), Data::Int(b)) if less => B::int_lower(a, b, ctx.bool),
                (Data::Int(a), Data::Int(b)) => B::int_equal(a, b, ctx.bool),
                (Data::Bool(a), Data::Bool(b)) if !less => B::bool_equal(a, b),
                _ => return invalid("comparison of mismatched kinds"),
            }))
        }
    }
}

/// The primitive op of an arithmetic instruction, and its operand registers.
fn program_primitive(instr: &Instr) -> (Op, Vec<u32>) {
    match *instr {
        Instr::Unary { f, x } => (Op::Unary(f), vec![x]),
        Instr::Binary { f, a, b } => (Op::Binary(f), vec![a, b]),
        Instr::Select { cond, a, b } => (Op::Select, vec![cond, a, b]),
        Instr::Cast { to, x } => (Op::Cast { to }, vec![x]),
        Instr::Arg { .. } | Instr::Const { .. } | Instr::Index { .. } | Instr::Uniform { .. } => {
            unreachable!("handled by run_program")
        }
    }
}

/// The numpy broadcast of the operands' shapes.
fn broadcast_result<B: Backend>(operands: &[&Value<B>]) -> Vec<usize> {
    let rank = operands.iter().map(|v| v.rank()).max().unwrap_or(0);
    let mut out = vec![1; rank];
    for v in operands {
        for (d, &size) in aligned_shape(&v.shape, rank).iter().enumerate() {
            if size != 1 {
                out[d] = size;
            }
        }
    }
    out
}

fn constant<B: Backend>(ctx: &Ctx<B>, value: f64, dtype: DType) -> Data<B> {
    match dtype {
        DType::I32 | DType::U32 => Value::<B>::from_ints(ctx, vec![], vec![value as i64]).data,
        DType::Bool => Value::<B>::from_bool(ctx, vec![], vec![value != 0.0]).data,
        _ => Value::<B>::from_f64(ctx, vec![], vec![value]).data,
    }
}

fn cast<B: Backend>(ctx: &Ctx<B>, v: &Value<B>, to: DType) -> Data<B> {
    match (&v.data, to.is_float(), to.is_int()) {
        // Floats of every width compute in the executor's float type.
        (Data::Float(t), true, _) => Data::Float(t.clone()),
        (Data::Float(t), _, true) => Data::Int(B::float_into_int(t.clone(), ctx.int)),
        (Data::Float(t), _, _) => Data::Bool(B::float_not_equal_elem(t.clone(), 0.0.into(), ctx.bool)),
        (Data::Int(t), true, _) => Data::Float(B::int_into_float(t.clone(), ctx.float)),
        (Data::Int(t), _, true) => Data::Int(t.clone()),
        (Data::Int(t), _, _) => Data::Bool(B::int_not_equal_elem(t.clone(), 0.into(), ctx.bool)),
        (Data::Bool(t), true, _) => Data::Float(B::bool_into_float(t.clone(), ctx.float)),
        (Data::Bool(t), _, true) => Data::Int(B::bool_into_int(t.clone(), ctx.int)),
        (Data::Bool(t), _, _) => Data::Bool(t.clone()),
    }
}

/// The `(seed, offset)` scalars of a random op, as u32.
fn key<B: Backend>(seed: &Value<B>, offset: &Value<B>) -> OpResult<(u32, u32)> {
    let s = seed.host_ints()?;
    let o = offset.host_ints()?;
    Ok((s[0] as u32, o[0] as u32))
}

fn split_at_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (shape[..axis].iter().product(), shape[axis], shape[axis + 1..].iter().product())
}

/// Indices flattened to one dimension, checked to lie in `0..rows`.
fn flat_indices<B: Backend>(ctx: &Ctx<B>, idx: &Value<B>, rows: usize) -> OpResult<IntTensor<B>> {
    let values = idx.host_ints()?;
    if let Some(&bad) = values.iter().find(|&&i| i < 0 || i as usize >= rows) {
        return invalid(format!("index {bad} is out of range for {rows} rows"));
    }
    let n = values.len();
    int(&Value::<B>::from_ints(ctx, vec![n], values))
}

fn matmul<B: Backend>(ctx: &Ctx<B>, args: &[&Value<B>], ta: bool, tb: bool, out: &[usize]) -> OpResult<FloatTensor<B>> {
    let (a, b) = (args[0], args[1]);
    let (ra, rb) = (a.rank(), b.rank());
    let mut ta_t = product_operand(ctx, float(a)?);
    let mut tb_t = product_operand(ctx, float(b)?);
    if ta {
        ta_t = B::float_swap_dims(ta_t, ra - 2, ra - 1);
    }
    if tb {
        tb_t = B::float_swap_dims(tb_t, rb - 2, rb - 1);
    }
    let (m, k) = if ta { (a.shape[ra - 1], a.shape[ra - 2]) } else { (a.shape[ra - 2], a.shape[ra - 1]) };
    let n = out[out.len() - 1];
    if rb == 2 && ra > 2 {
        // [.., M, K] x [K, N]: one 2-D matmul over the flattened leading dimensions.
        let rows: usize = a.shape[..ra - 2].iter().product::<usize>() * m;
        let lhs = B::float_reshape(ta_t, Shape::new([rows, k]));
        return Ok(B::float_reshape(product_result(ctx, B::float_matmul(lhs, tb_t)), physical(out)));
    }
    // General case: both operands expanded to the broadcast batch shape.
    let rank = out.len();
    let batch = &out[..rank - 2];
    let lhs_shape: Vec<usize> = aligned_shape(&a.shape[..ra - 2], rank - 2).into_iter().chain([m, k]).collect();
    let rhs_shape: Vec<usize> = aligned_shape(&b.shape[..rb - 2], rank - 2).into_iter().chain([k, n]).collect();
    let lhs = broadcast_to::<B>(ta_t, &lhs_shape, &[batch, &[m, k]].concat());
    let rhs = broadcast_to::<B>(tb_t, &rhs_shape, &[batch, &[k, n]].concat());
    Ok(product_result(ctx, B::float_matmul(lhs, rhs)))
}

/// A product's operand as the executor's precision rounds it. On a backend with tensor-core
/// GEMMs (Burn's CUDA backend) the operand is cast to bf16 for `default`, and left in f32 for
/// `high` (Burn's GEMMs may then use TF32, as they may for `highest`: its autotuner picks).
/// Elsewhere the unit's rounding is emulated in the float type itself, to TF32's 11 or bf16's
/// 8 significant bits: the same products, without the native type. The rounding is
/// Veltkamp's split (`γ = σ·x` with `σ = 2^s + 1`, then `γ + (x − γ)` keeps the top bits, to
/// nearest), written in multiplies and adds: its derivative is exactly 1, so gradients pass
/// through unchanged.
fn product_operand<B: Backend>(ctx: &Ctx<B>, t: FloatTensor<B>) -> FloatTensor<B> {
    let significant = match ctx.products {
        Precision::Highest => return t,
        Precision::High if ctx.native_bf16 => return t,
        Precision::Default if ctx.native_bf16 => return B::float_cast(t, FloatDType::BF16),
        Precision::High => 11,
        Precision::Default => 8,
    };
    let float_bits = if ctx.float == FloatDType::F64 { 53 } else { 24 };
    let sigma = (1u64 << (float_bits - significant)) as f64 + 1.0;
    let gamma = B::float_mul_scalar(t.clone(), sigma.into());
    let delta = B::float_sub(t, gamma.clone());
    B::float_add(gamma, delta)
}

/// A product of operands cast by [`product_operand`], back in the executor's float type.
fn product_result<B: Backend>(ctx: &Ctx<B>, t: FloatTensor<B>) -> FloatTensor<B> {
    if ctx.products == Precision::Default && ctx.native_bf16 {
        B::float_cast(t, ctx.float)
    } else {
        t
    }
}

/// `t` reshaped to `aligned` (same elements, batch axes aligned to the result's rank) and
/// expanded to `full`, each only where it changes the shape: Burn's reshape copies a strided
/// operand (a transposed weight), and the batched matmul reads strides as they are.
fn broadcast_to<B: Backend>(t: FloatTensor<B>, aligned: &[usize], full: &[usize]) -> FloatTensor<B> {
    let t = if t.shape().as_slice() == aligned { t } else { B::float_reshape(t, physical(aligned)) };
    if aligned == full {
        t
    } else {
        B::float_expand(t, physical(full))
    }
}

fn reduce<B: Backend>(op: &Op, x: &Value<B>, axes: &[usize], out: &[usize]) -> OpResult<Data<B>> {
    let mut sorted = axes.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let data: Data<B> = match (&x.data, op) {
        (Data::Float(t), Op::ReduceSum { .. }) => {
            Data::Float(sorted.iter().fold(t.clone(), |t, &a| B::float_sum_dim(t, a)))
        }
        (Data::Float(t), Op::ReduceMean { .. }) => {
            Data::Float(sorted.iter().fold(t.clone(), |t, &a| B::float_mean_dim(t, a)))
        }
        (Data::Float(t), _) => Data::Float(sorted.iter().fold(t.clone(), |t, &a| B::float_max_dim(t, a))),
        (Data::Int(t), Op::ReduceSum { .. }) => Data::Int(sorted.iter().fold(t.clone(), |t, &a| B::int_sum_dim(t, a))),
        (Data::Int(t), Op::ReduceMax { .. }) => Data::Int(sorted.iter().fold(t.clone(), |t, &a| B::int_max_dim(t, a))),
        _ => return invalid("reduction of an unsupported kind"),
    };
    // Burn keeps reduced dimensions; the IR's result shape says whether they stay.
    Ok(match data {
        Data::Float(t) => Data::Float(B::float_reshape(t, physical(out))),
        Data::Int(t) => Data::Int(B::int_reshape(t, physical(out))),
        Data::Bool(_) => unreachable!("reductions of bools are refused above"),
    })
}

/// The `k` largest along the last axis, ties to the lower index (NaN counts as largest). The
/// indices are chosen on the host; the values are gathered on the device, so gradients flow.
fn top_k<B: Backend>(ctx: &Ctx<B>, x: &Value<B>, k: usize, out: &[usize]) -> OpResult<Vec<Value<B>>> {
    let n = *x.shape.last().expect("top-k of a scalar is refused by the verifier");
    if k > n {
        return invalid(format!("k = {k} exceeds the {n} entries of the last axis"));
    }
    let values = x.host_f64()?;
    let mut indices = Vec::with_capacity(values.len() / n * k);
    for row in values.chunks_exact(n) {
        let mut order: Vec<usize> = (0..n).collect();
        // Stable sort, descending, NaN first: equal values keep their index order.
        order.sort_by(|&i, &j| match (row[i].is_nan(), row[j].is_nan()) {
            (true, true) => std::cmp::Ordering::Equal,
            (true, false) => std::cmp::Ordering::Less,
            (false, true) => std::cmp::Ordering::Greater,
            _ => row[j].partial_cmp(&row[i]).expect("no NaN here"),
        });
        indices.extend(order[..k].iter().map(|&i| i as i64));
    }
    let idx = Value::<B>::from_ints(ctx, out.to_vec(), indices);
    let last = x.rank() - 1;
    let picked = match &x.data {
        Data::Float(t) => Data::Float(B::float_gather(last, t.clone(), int(&idx)?)),
        Data::Int(t) => Data::Int(B::int_gather(last, t.clone(), int(&idx)?)),
        Data::Bool(_) => return invalid("top-k of bools"),
    };
    Ok(vec![Value { shape: out.to_vec(), data: picked }, idx])
}
