//! Every op of the reference executor against values computed by hand or in f64 here.

use std::collections::BTreeMap;

use burn::backend::flex::{Flex, FlexDevice};
use burn::tensor::FloatDType;
use calm_ir::{nn, shape, BuildResult, DType, GraphBuilder, Op, ValueId};
use calm_kernels::philox;
use calm_runtime::host::{HostData, HostTensor};
use calm_runtime::params::ParamStore;
use calm_runtime::reference::{Reference, RunError};

fn exec() -> Reference<Flex> {
    Reference::new(FlexDevice, FloatDType::F64)
}

/// Builds a graph whose inputs are `inputs` (f32 unless integer data), runs it, and returns
/// the outputs in the order `build` returned them.
fn eval(
    inputs: &[(&str, HostTensor)],
    build: impl FnOnce(&mut GraphBuilder, &[ValueId]) -> BuildResult<Vec<ValueId>>,
) -> Result<Vec<HostTensor>, RunError> {
    let mut b = GraphBuilder::new("t");
    let mut ids = Vec::new();
    for (name, t) in inputs {
        let dtype = match t.data {
            HostData::I32(_) => DType::I32,
            HostData::U32(_) => DType::U32,
            HostData::Bool(_) => DType::Bool,
            _ => DType::F32,
        };
        ids.push(b.input(name, dtype, t.shape.iter().map(|&d| calm_ir::Dim::Fixed(d as u64)).collect()).unwrap());
    }
    let outs = build(&mut b, &ids).unwrap();
    for (i, &o) in outs.iter().enumerate() {
        b.output(&format!("out{i}"), o);
    }
    let g = b.finish().unwrap();
    let params = ParamStore::init(&g, 0);
    let feeds: BTreeMap<String, HostTensor> = inputs.iter().map(|(n, t)| (n.to_string(), t.clone())).collect();
    let mut out = exec().run(&g, &params, &feeds)?;
    Ok((0..outs.len()).map(|i| out.remove(&format!("out{i}")).unwrap()).collect())
}

fn one(
    inputs: &[(&str, HostTensor)],
    build: impl FnOnce(&mut GraphBuilder, &[ValueId]) -> BuildResult<ValueId>,
) -> HostTensor {
    eval(inputs, |b, ids| Ok(vec![build(b, ids)?])).unwrap().remove(0)
}

fn f(shape: &[usize], v: &[f64]) -> HostTensor {
    HostTensor::f32(shape.to_vec(), v.iter().map(|&x| x as f32).collect())
}

fn i(shape: &[usize], v: &[i32]) -> HostTensor {
    HostTensor::i32(shape.to_vec(), v.to_vec())
}

fn close(t: &HostTensor, shape: &[usize], want: &[f64]) {
    assert_eq!(t.shape, shape, "shape");
    let got = t.data.to_f64();
    assert_eq!(got.len(), want.len());
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= 1e-6 * (1.0 + w.abs());
        assert!(ok, "element {k}: got {g}, want {w} (all: {got:?})");
    }
}

#[test]
fn binary_ops_broadcast_across_ranks() {
    let a = f(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let row = f(&[3], &[10.0, 20.0, 30.0]);
    let outs = eval(&[("a", a), ("row", row)], |b, x| {
        let two = b.scalar(2.0)?;
        Ok(vec![b.add(x[0], x[1])?, b.sub(x[1], x[0])?, b.mul(x[0], two)?, b.div(x[0], x[1])?, b.max(x[0], two)?])
    })
    .unwrap();
    close(&outs[0], &[2, 3], &[11.0, 22.0, 33.0, 14.0, 25.0, 36.0]);
    close(&outs[1], &[2, 3], &[9.0, 18.0, 27.0, 6.0, 15.0, 24.0]);
    close(&outs[2], &[2, 3], &[2.0, 4.0, 6.0, 8.0, 10.0, 12.0]);
    close(&outs[3], &[2, 3], &[0.1, 0.1, 0.1, 0.4, 0.25, 0.2]);
    close(&outs[4], &[2, 3], &[2.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let ints = eval(&[("p", i(&[2, 1], &[1, 2])), ("q", i(&[3], &[10, 20, 30]))], |b, x| {
        Ok(vec![b.add(x[0], x[1])?, b.max(x[0], x[1])?, b.neg(x[0])?])
    })
    .unwrap();
    assert_eq!(ints[0].data, HostData::I32(vec![11, 21, 31, 12, 22, 32]));
    assert_eq!(ints[1].data, HostData::I32(vec![10, 20, 30, 10, 20, 30]));
    assert_eq!(ints[2].data, HostData::I32(vec![-1, -2]));
}

#[test]
fn unary_ops() {
    let x = [-1.0, 0.5, 1.0, 2.0];
    let t = f(&[4], &x);
    let outs = eval(&[("x", t)], |b, v| {
        let x = v[0];
        Ok(vec![b.neg(x)?, b.exp(x)?, b.tanh(x)?, b.sigmoid(x)?, b.relu(x)?, b.gelu(x)?])
    })
    .unwrap();
    close(&outs[0], &[4], &x.map(|v| -v));
    close(&outs[1], &[4], &x.map(f64::exp));
    close(&outs[2], &[4], &x.map(f64::tanh));
    close(&outs[3], &[4], &x.map(|v| 1.0 / (1.0 + (-v).exp())));
    close(&outs[4], &[4], &[0.0, 0.5, 1.0, 2.0]);
    // GELU(x) = x Φ(x) with the standard normal CDF Φ(-1), Φ(0.5), Φ(1), Φ(2).
    let phi = [0.15865525393145707, 0.6914624612740131, 0.8413447460685429, 0.9772498680518208];
    close(&outs[5], &[4], &[-phi[0], 0.5 * phi[1], phi[2], 2.0 * phi[3]]);
    let pos = f(&[3], &[0.25, 1.0, 4.0]);
    let outs = eval(&[("x", pos)], |b, v| Ok(vec![b.log(v[0])?, b.sqrt(v[0])?, b.rsqrt(v[0])?])).unwrap();
    close(&outs[0], &[3], &[0.25f64.ln(), 0.0, 4.0f64.ln()]);
    close(&outs[1], &[3], &[0.5, 1.0, 2.0]);
    close(&outs[2], &[3], &[2.0, 1.0, 0.5]);
    // Sigmoid stays finite and exact at the extremes.
    let big = eval(&[("x", f(&[2], &[-800.0, 800.0]))], |b, v| Ok(vec![b.sigmoid(v[0])?])).unwrap();
    close(&big[0], &[2], &[0.0, 1.0]);
}

#[test]
fn casts_comparisons_and_select() {
    let x = f(&[4], &[-1.5, 0.0, 2.7, 3.0]);
    let outs = eval(&[("x", x)], |b, v| {
        let three = b.scalar(3.0)?;
        let lt = b.less(v[0], three)?;
        let eq = b.equal(v[0], three)?;
        let zero = b.scalar(0.0)?;
        let picked = b.select(lt, v[0], zero)?;
        Ok(vec![b.cast(v[0], DType::I32)?, b.cast(v[0], DType::Bool)?, lt, eq, picked, b.cast(lt, DType::F32)?])
    })
    .unwrap();
    assert_eq!(outs[0].data, HostData::I32(vec![-1, 0, 2, 3]), "float to int truncates");
    assert_eq!(outs[1].data, HostData::Bool(vec![true, false, true, true]));
    assert_eq!(outs[2].data, HostData::Bool(vec![true, true, true, false]));
    assert_eq!(outs[3].data, HostData::Bool(vec![false, false, false, true]));
    close(&outs[4], &[4], &[-1.5, 0.0, 2.7, 0.0]);
    close(&outs[5], &[4], &[1.0, 1.0, 1.0, 0.0]);
    // Select broadcasts the condition over rows and a scalar branch.
    let c = HostTensor::new(vec![2, 1], HostData::Bool(vec![true, false]));
    let a = f(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let out = one(&[("c", c), ("a", a)], |b, v| {
        let m = b.scalar(-9.0)?;
        b.select(v[0], v[1], m)
    });
    close(&out, &[2, 3], &[1.0, 2.0, 3.0, -9.0, -9.0, -9.0]);
}

#[test]
fn random_numbers_are_the_shared_generator() {
    let seed = HostTensor::new(vec![], HostData::U32(vec![0xDEAD_BEEF]));
    let offset = HostTensor::new(vec![], HostData::U32(vec![3]));
    let x = f(&[2, 5], &[1.0; 10]);
    let outs = eval(&[("seed", seed), ("offset", offset), ("x", x)], |b, v| {
        let u = b.op(Op::RandomUniform { shape: shape![2u64, 5u64], stream: 4 }, &[v[0], v[1]])?;
        let d = b.op(Op::Dropout { p: 0.5, stream: 9 }, &[v[2], v[0], v[1]])?;
        Ok(vec![u, d])
    })
    .unwrap();
    let want = philox::uniform(0xDEAD_BEEF, 3, 4, 10);
    close(&outs[0], &[2, 5], &want.iter().map(|&u| u as f64).collect::<Vec<_>>());
    let keep = philox::uniform(0xDEAD_BEEF, 3, 9, 10);
    close(&outs[1], &[2, 5], &keep.iter().map(|&u| if u >= 0.5 { 2.0 } else { 0.0 }).collect::<Vec<_>>());
}

fn matmul_ref(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for r in 0..m {
        for c in 0..n {
            out[r * n + c] = (0..k).map(|j| a[r * k + j] * b[j * n + c]).sum();
        }
    }
    out
}

fn transpose(a: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    (0..cols * rows).map(|i| a[(i % rows) * cols + i / rows]).collect()
}

#[test]
fn matmul_with_transposes_and_batch_broadcast() {
    let seq = |n: usize, s: f64| (0..n).map(|i| (i as f64 * 0.37 + s).sin()).collect::<Vec<f64>>();
    let (a, w) = (seq(2 * 3 * 4, 0.1), seq(5 * 4, 0.7));
    // [2,3,4] x [5,4]ᵀ: the linear layer's form.
    let out = one(&[("a", f(&[2, 3, 4], &a)), ("w", f(&[5, 4], &w))], |b, v| b.matmul(v[0], v[1], false, true));
    let a32: Vec<f64> = a.iter().map(|&x| x as f32 as f64).collect();
    let w32: Vec<f64> = w.iter().map(|&x| x as f32 as f64).collect();
    let wt = transpose(&w32, 5, 4);
    let want: Vec<f64> = (0..2).flat_map(|bi| matmul_ref(&a32[bi * 12..bi * 12 + 12], &wt, 3, 4, 5)).collect();
    close(&out, &[2, 3, 5], &want);
    // [2,1,4,3]ᵀ x [3,4,2]: transposed lhs, batch dims broadcast to [2,3].
    let (p, q) = (seq(2 * 4 * 3, 0.3), seq(3 * 4 * 2, 0.9));
    let out = one(&[("p", f(&[2, 1, 4, 3], &p)), ("q", f(&[3, 4, 2], &q))], |b, v| b.matmul(v[0], v[1], true, false));
    assert_eq!(out.shape, [2, 3, 3, 2]);
    let p32: Vec<f64> = p.iter().map(|&x| x as f32 as f64).collect();
    let q32: Vec<f64> = q.iter().map(|&x| x as f32 as f64).collect();
    let mut want = Vec::new();
    for bi in 0..2 {
        for bj in 0..3 {
            let pt = transpose(&p32[bi * 12..bi * 12 + 12], 4, 3);
            want.extend(matmul_ref(&pt, &q32[bj * 8..bj * 8 + 8], 3, 4, 2));
        }
    }
    close(&out, &[2, 3, 3, 2], &want);
}

/// `x` rounded to `significant` bits as mixed precision rounds an operand (Veltkamp's split in
/// f32), checked here to be the nearest such number.
fn rounded(x: f32, significant: u32) -> f32 {
    let sigma = ((1u32 << (24 - significant)) + 1) as f32;
    let gamma = x * sigma;
    let hi = gamma + (x - gamma);
    let dropped = 24 - significant;
    assert_eq!(hi.to_bits() & ((1 << dropped) - 1), 0, "{x} kept more than {significant} bits: {hi}");
    // x's power of two (sign and exponent bits alone), over 2^significant.
    let half_step = f32::from_bits(x.to_bits() & 0x7F80_0000) * 2f32.powi(-(significant as i32));
    assert!((hi - x).abs() <= half_step, "{x} rounded to {hi}, not the nearest {significant}-bit number");
    hi
}

#[test]
fn mixed_precision_products_round_their_operands_to_tf32_or_bf16() {
    use calm_passes::plan::Precision;
    use calm_runtime::reference::Compute;
    let (m, k, n) = (37, 70, 45);
    let a: Vec<f32> = philox::uniform(11, 0, 1, m * k).iter().map(|u| u * 4.0 - 2.0).collect();
    let b: Vec<f32> = philox::uniform(11, 0, 2, k * n).iter().map(|u| u * 4.0 - 2.0).collect();
    let mut builder = GraphBuilder::new("t");
    let x = builder.input("a", DType::F32, shape![m as u64, k as u64]).unwrap();
    let y = builder.input("b", DType::F32, shape![k as u64, n as u64]).unwrap();
    let c = builder.matmul(x, y, false, false).unwrap();
    builder.output("c", c);
    let g = builder.finish().unwrap();
    let inputs = BTreeMap::from([
        ("a".to_string(), HostTensor::f32(vec![m, k], a.clone())),
        ("b".to_string(), HostTensor::f32(vec![k, n], b.clone())),
    ]);
    let wide = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let exact = matmul_ref(&wide(&a), &wide(&b), m, k, n);
    let scale: Vec<f64> = matmul_ref(
        &wide(&a).iter().map(|x| x.abs()).collect::<Vec<_>>(),
        &wide(&b).iter().map(|x| x.abs()).collect::<Vec<_>>(),
        m,
        k,
        n,
    );
    for (products, significant) in [(Precision::High, 11), (Precision::Default, 8)] {
        let exec = Reference::<Flex>::new(FlexDevice, Compute { float: FloatDType::F32, products });
        let out = exec.run(&g, &ParamStore::default(), &inputs).unwrap().remove("c").unwrap().data.to_f64();
        let round = |v: &[f32]| v.iter().map(|&x| rounded(x, significant) as f64).collect::<Vec<f64>>();
        let want = matmul_ref(&round(&a), &round(&b), m, k, n);
        let (mut off_rounded, mut off_exact) = (0f64, 0f64);
        for i in 0..m * n {
            off_rounded = off_rounded.max((out[i] - want[i]).abs() / scale[i]);
            off_exact = off_exact.max((out[i] - exact[i]).abs() / scale[i]);
        }
        // f32 sums of rounded operands' products; far from the exact products.
        assert!(off_rounded < 1e-6, "{products:?}: {off_rounded} from the rounded operands' product");
        assert!(off_exact > 2f64.powi(-(significant as i32) - 4), "{products:?}: {off_exact} from the exact product");
    }
}

#[test]
fn softmax_log_softmax_and_masking() {
    let x = f(&[2, 3], &[1.0, 2.0, 3.0, 0.0, f64::NEG_INFINITY, 0.0]);
    let outs = eval(&[("x", x)], |b, v| Ok(vec![b.softmax(v[0], -1)?, b.log_softmax(v[0], -1)?, b.softmax(v[0], 0)?]))
        .unwrap();
    let e: Vec<f64> = [1.0f64, 2.0, 3.0].iter().map(|v| v.exp()).collect();
    let s: f64 = e.iter().sum();
    close(&outs[0], &[2, 3], &[e[0] / s, e[1] / s, e[2] / s, 0.5, 0.0, 0.5]);
    close(
        &outs[1],
        &[2, 3],
        &[e[0].ln() - s.ln(), e[1].ln() - s.ln(), e[2].ln() - s.ln(), -2f64.ln(), f64::NEG_INFINITY, -2f64.ln()],
    );
    let c0 = 1.0f64.exp() + 1.0;
    close(
        &outs[2],
        &[2, 3],
        &[1.0f64.exp() / c0, 1.0, 3.0f64.exp() / (3.0f64.exp() + 1.0), 1.0 / c0, 0.0, 1.0 / (3.0f64.exp() + 1.0)],
    );
}

#[test]
fn layer_norm_matches_f64() {
    let x = [1.0, 2.0, 4.0, -1.0, 0.0, 3.0];
    let out =
        one(&[("x", f(&[2, 3], &x)), ("g", f(&[3], &[1.0, 2.0, 0.5])), ("bt", f(&[3], &[0.0, 1.0, -1.0]))], |b, v| {
            b.layer_norm_op(v[0], v[1], v[2], 1e-5)
        });
    let mut want = Vec::new();
    for row in x.chunks(3) {
        let mean = row.iter().sum::<f64>() / 3.0;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 3.0;
        for (j, v) in row.iter().enumerate() {
            let y = (v - mean) / (var + 1e-5).sqrt();
            want.push(y * [1.0, 2.0, 0.5][j] + [0.0, 1.0, -1.0][j]);
        }
    }
    close(&out, &[2, 3], &want);
}

#[test]
fn reductions_over_several_axes() {
    let x: Vec<f64> = (0..24).map(|v| v as f64).collect();
    let outs = eval(&[("x", f(&[2, 3, 4], &x))], |b, v| {
        Ok(vec![
            b.reduce_sum(v[0], &[0, 2], false)?,
            b.reduce_mean(v[0], &[1], true)?,
            b.reduce_max(v[0], &[2], false)?,
            b.reduce_sum(v[0], &[0, 1, 2], false)?,
        ])
    })
    .unwrap();
    // sum over axes 0 and 2 for each middle index j: Σ_{i,k} (12 i + 4 j + k).
    close(&outs[0], &[3], &[60.0, 92.0, 124.0]);
    close(&outs[1], &[2, 1, 4], &[4.0, 5.0, 6.0, 7.0, 16.0, 17.0, 18.0, 19.0]);
    close(&outs[2], &[2, 3], &[3.0, 7.0, 11.0, 15.0, 19.0, 23.0]);
    close(&outs[3], &[], &[276.0]);
}

#[test]
fn movement_ops() {
    let x: Vec<f64> = (0..6).map(|v| v as f64).collect();
    let outs = eval(&[("x", f(&[2, 3], &x)), ("y", f(&[2, 1], &[7.0, 8.0]))], |b, v| {
        Ok(vec![
            b.reshape(v[0], shape![3u64, 2u64])?,
            b.permute(v[0], &[1, 0])?,
            b.broadcast(v[1], shape![2u64, 2u64, 3u64])?,
            b.concat(&[v[0], v[1]], 1)?,
            b.slice(v[0], 1, 1, 3)?,
        ])
    })
    .unwrap();
    close(&outs[0], &[3, 2], &x);
    close(&outs[1], &[3, 2], &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    close(&outs[2], &[2, 2, 3], &[7.0, 7.0, 7.0, 8.0, 8.0, 8.0, 7.0, 7.0, 7.0, 8.0, 8.0, 8.0]);
    close(&outs[3], &[2, 4], &[0.0, 1.0, 2.0, 7.0, 3.0, 4.0, 5.0, 8.0]);
    close(&outs[4], &[2, 2], &[1.0, 2.0, 4.0, 5.0]);
}

#[test]
fn gather_scatter_and_their_errors() {
    let table = f(&[4, 2], &[0.0, 1.0, 10.0, 11.0, 20.0, 21.0, 30.0, 31.0]);
    let idx = i(&[2, 2], &[3, 0, 0, 2]);
    let outs = eval(&[("t", table.clone()), ("i", idx)], |b, v| {
        let zero = b.constant(1.0, DType::I32)?;
        Ok(vec![b.gather(v[0], v[1], 0)?, b.gather(v[0], zero, 0)?, b.gather(v[0], v[1], 1)?])
    });
    // Axis 1 has only 2 entries: index 3 is out of range, a clear error, not a panic.
    let e = outs.unwrap_err();
    assert!(e.to_string().contains("index 3 is out of range for 2 rows") && e.to_string().contains("gather"), "{e}");
    let outs = eval(&[("t", table.clone()), ("i", i(&[2, 2], &[3, 0, 0, 2]))], |b, v| {
        let one = b.constant(1.0, DType::I32)?;
        Ok(vec![b.gather(v[0], v[1], 0)?, b.gather(v[0], one, 0)?])
    })
    .unwrap();
    close(&outs[0], &[2, 2, 2], &[30.0, 31.0, 0.0, 1.0, 0.0, 1.0, 20.0, 21.0]);
    close(&outs[1], &[2], &[10.0, 11.0]);
    // Scatter-add: repeated indices accumulate; rows nobody selects keep their value.
    let base = f(&[4, 2], &[1.0; 8]);
    let upd = f(&[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let out = one(&[("base", base), ("i", i(&[3], &[2, 0, 2])), ("u", upd)], |b, v| b.scatter_add(v[0], v[1], v[2], 0));
    close(&out, &[4, 2], &[4.0, 5.0, 1.0, 1.0, 7.0, 9.0, 1.0, 1.0]);
}

#[test]
fn top_k_breaks_ties_towards_the_lower_index() {
    let x = f(&[2, 5], &[1.0, 3.0, 3.0, 0.0, 3.0, 5.0, 5.0, 5.0, 5.0, 5.0]);
    let outs = eval(&[("x", x)], |b, v| {
        let (values, indices) = b.top_k(v[0], 3)?;
        Ok(vec![values, indices])
    })
    .unwrap();
    close(&outs[0], &[2, 3], &[3.0, 3.0, 3.0, 5.0, 5.0, 5.0]);
    assert_eq!(outs[1].data, HostData::I32(vec![1, 2, 4, 0, 1, 2]));
}

#[test]
fn one_hot_iota_and_constants() {
    let outs = eval(&[("l", i(&[3], &[2, 0, 1]))], |b, v| {
        Ok(vec![
            b.one_hot(v[0], 3, DType::F32)?,
            b.iota(shape![2u64, 3u64], 1)?,
            b.constant(f64::NEG_INFINITY, DType::F32)?,
        ])
    })
    .unwrap();
    close(&outs[0], &[3, 3], &[0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
    assert_eq!(outs[1].data, HostData::I32(vec![0, 1, 2, 0, 1, 2]));
    close(&outs[2], &[], &[f64::NEG_INFINITY]);
    let e = eval(&[("l", i(&[2], &[0, 3]))], |b, v| Ok(vec![b.one_hot(v[0], 3, DType::F32)?])).unwrap_err();
    assert!(e.to_string().contains("out of range for one-hot depth 3"), "{e}");
}

#[test]
fn masked_mean_of_an_empty_selection_is_zero() {
    let x = f(&[2, 3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]);
    let mask = f(&[2, 3], &[1.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
    let out = one(&[("x", x), ("m", mask)], |b, v| nn::masked_mean(b, v[0], v[1]));
    close(&out, &[2, 2], &[3.0, 4.0, 0.0, 0.0]);
}

#[test]
fn inputs_are_checked_against_the_graph() {
    let mut b = GraphBuilder::new("t");
    let x = b.input("x", DType::F32, shape!["batch", 3u64]).unwrap();
    let m = b.input("m", DType::F32, shape!["batch"]).unwrap();
    let y = b.reduce_sum(x, &[1], false).unwrap();
    let y = b.add(y, m).unwrap();
    b.output("y", y);
    let g = b.finish().unwrap();
    let p = ParamStore::init(&g, 0);
    let run = |inputs: Vec<(&str, HostTensor)>| {
        exec()
            .run(&g, &p, &inputs.into_iter().map(|(n, t)| (n.to_string(), t)).collect())
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    assert!(run(vec![("x", f(&[2, 3], &[0.0; 6]))]).contains("missing input: m"));
    assert!(run(vec![("x", f(&[2, 3], &[0.0; 6])), ("m", f(&[2], &[0.0; 2])), ("z", f(&[1], &[0.0]))])
        .contains("unknown input: z"));
    assert!(run(vec![("x", f(&[2, 4], &[0.0; 8])), ("m", f(&[2], &[0.0; 2]))]).contains("the graph wants f32[batch,3]"));
    let conflict = run(vec![("x", f(&[2, 3], &[0.0; 6])), ("m", f(&[5], &[0.0; 5]))]);
    assert!(conflict.contains("symbol `batch` is 2 from input `x` but 5 from input `m`"), "{conflict}");
    assert!(run(vec![("x", i(&[2, 3], &[0; 6])), ("m", f(&[2], &[0.0; 2]))]).contains("holds i32 values"));
}

#[test]
fn integer_division_truncates_and_refuses_zero() {
    let out = one(&[("a", i(&[4], &[7, -7, 6, 0])), ("b", i(&[4], &[2, 2, -4, 5]))], |b, v| b.div(v[0], v[1]));
    assert_eq!(out.data, HostData::I32(vec![3, -3, -1, 0]));
    let e = eval(&[("a", i(&[2], &[1, 2])), ("b", i(&[2], &[1, 0]))], |b, v| Ok(vec![b.div(v[0], v[1])?])).unwrap_err();
    assert!(e.to_string().contains("integer division by zero") && e.to_string().contains("div @ t"), "{e}");
}

#[test]
fn unsigned_values_above_two_to_the_31_stay_exact() {
    let big = HostTensor::new(vec![2], HostData::U32(vec![3_000_000_000, 5]));
    let outs = eval(&[("u", big)], |b, v| {
        let c = b.constant(4_000_000_000.0, DType::U32)?;
        Ok(vec![b.less(v[0], c)?, b.max(v[0], c)?, b.cast(v[0], DType::F32)?])
    })
    .unwrap();
    assert_eq!(outs[0].data, HostData::Bool(vec![true, true]));
    assert_eq!(outs[1].data, HostData::U32(vec![4_000_000_000, 4_000_000_000]));
    close(&outs[2], &[2], &[3e9, 5.0]);
}

#[test]
fn non_finite_values_follow_the_ir_rules() {
    // max propagates NaN from either side; dropout writes 0 for dropped elements, even inf.
    let x = f(&[3], &[f64::NAN, 1.0, 2.0]);
    let y = f(&[3], &[1.0, f64::NAN, 1.0]);
    let out = one(&[("x", x), ("y", y)], |b, v| b.max(v[0], v[1]));
    close(&out, &[3], &[f64::NAN, f64::NAN, 2.0]);
    let seed = HostTensor::new(vec![], HostData::U32(vec![1]));
    let offset = HostTensor::new(vec![], HostData::U32(vec![0]));
    let inf = f(&[64], &[f64::INFINITY; 64]);
    let out = one(&[("x", inf), ("s", seed), ("o", offset)], |b, v| {
        b.op(Op::Dropout { p: 0.5, stream: 0 }, &[v[0], v[1], v[2]])
    });
    let values = out.data.to_f64();
    assert!(values.iter().all(|&v| v == 0.0 || v == f64::INFINITY), "{values:?}");
    assert!(values.contains(&0.0) && values.contains(&f64::INFINITY));
    // Permuting a scalar or a vector moves nothing.
    let out = one(&[("x", f(&[], &[3.0]))], |b, v| b.permute(v[0], &[]));
    close(&out, &[], &[3.0]);
}

#[test]
fn sigmoid_has_finite_gradients_at_the_extremes() {
    use calm_runtime::reference::gradients;
    let mut b = GraphBuilder::new("t");
    let x = b.input("x", DType::F32, shape![3u64]).unwrap();
    let w = b.scoped("w", |b| b.param("w", shape![3u64], calm_ir::Init::Ones)).unwrap();
    let z = b.mul(x, w).unwrap();
    let s = b.sigmoid(z).unwrap();
    let loss = b.reduce_sum(s, &[0], false).unwrap();
    b.output("loss", loss);
    let g = b.finish().unwrap();
    let inputs: BTreeMap<String, HostTensor> = [("x".to_string(), f(&[3], &[-1000.0, 0.0, 1000.0]))].into();
    let grads =
        gradients::<Flex>(FlexDevice, FloatDType::F64, &g, &ParamStore::init(&g, 0), &inputs, "loss", false).unwrap();
    // d/dw σ(w x) = x σ'(w x): 0 at both extremes, 0 at x = 0.
    close(&grads.grads["t/w/w"], &[3], &[0.0, 0.0, 0.0]);
    assert!((grads.loss - 1.5).abs() < 1e-12);
}

/// The row-major index into an operand of `shape` (aligned to `out`'s rank, broadcast axes of
/// size 1) of the element at `out` position `flat`.
fn broadcast_index(flat: usize, out: &[usize], shape: &[usize]) -> usize {
    let shape: Vec<usize> = std::iter::repeat_n(1, out.len() - shape.len()).chain(shape.iter().copied()).collect();
    let (mut rest, mut index, mut stride) = (flat, 0, 1);
    for axis in (0..out.len()).rev() {
        let i = rest % out[axis];
        rest /= out[axis];
        if shape[axis] != 1 {
            index += i * stride;
        }
        stride *= shape[axis];
    }
    index
}

/// Flex's f32 SIMD paths take only some broadcasts; the executor reshapes or repeats the others
/// (`Ctx::on_flex`). Every layout must give the same values as numpy's rules, computed
/// here one element at a time in the executor's precision, and gradients summed back over the
/// broadcast axes.
#[test]
fn float_arithmetic_broadcasts_every_layout() {
    use calm_runtime::reference::gradients;
    let cases: &[(&[usize], &[usize])] = &[
        (&[2, 3, 4], &[2, 1, 4]), // a per-sample row (the culture embedding)
        (&[2, 3, 4], &[4]),       // a shared row (a bias)
        (&[2, 3, 4], &[2, 3, 1]), // per-row scalars
        (&[2, 3, 4], &[1, 3, 1]), // the middle axis only
        (&[2, 1, 4], &[2, 3, 4]), // the left operand broadcasts
        (&[3, 1], &[1, 4]),       // both do
        (&[2, 3, 4, 5], &[2, 1, 4, 1]),
        (&[2, 1, 1, 5], &[1, 3, 4, 1]),
        (&[], &[2, 3]), // a scalar on the left
        (&[5, 7], &[1]),
        (&[1, 3, 1], &[1, 3, 1]), // equal shapes with unit axes
        (&[1, 3, 4], &[4]),
        (&[1, 1], &[]), // one element
    ];
    let value = |n: usize, salt: f64| -> Vec<f64> {
        // Away from zero, for the division.
        (0..n).map(|i| ((i as f64 + salt) * 0.73).sin() + if i % 2 == 0 { 1.5 } else { -1.5 }).collect()
    };
    for &(a_shape, b_shape) in cases {
        let rank = a_shape.len().max(b_shape.len());
        let pad =
            |s: &[usize]| -> Vec<usize> { std::iter::repeat_n(1, rank - s.len()).chain(s.iter().copied()).collect() };
        let out: Vec<usize> = pad(a_shape).iter().zip(pad(b_shape)).map(|(&x, y)| x.max(y)).collect();
        let (na, nb, n) = (a_shape.iter().product(), b_shape.iter().product(), out.iter().product::<usize>());
        let dims = |s: &[usize]| -> calm_ir::Shape { s.iter().map(|&d| calm_ir::Dim::Fixed(d as u64)).collect() };
        let mut b = GraphBuilder::new("t");
        let pa = b.param("a", dims(a_shape), calm_ir::Init::Zeros).unwrap();
        let pb = b.param("b", dims(b_shape), calm_ir::Init::Zeros).unwrap();
        let mut loss = None;
        for (k, op) in ["add", "sub", "mul", "div"].into_iter().enumerate() {
            let y = match op {
                "add" => b.add(pa, pb),
                "sub" => b.sub(pa, pb),
                "mul" => b.mul(pa, pb),
                _ => b.div(pa, pb),
            }
            .unwrap();
            b.output(op, y);
            let w = b.input(&format!("w{k}"), DType::F32, dims(&out)).unwrap();
            let wy = b.mul(w, y).unwrap();
            let axes: Vec<isize> = (0..rank as isize).collect();
            let s = b.reduce_sum(wy, &axes, false).unwrap();
            loss = Some(match loss {
                None => s,
                Some(l) => b.add(l, s).unwrap(),
            });
        }
        b.output("loss", loss.unwrap());
        let g = b.finish().unwrap();
        let (av, bv) = (value(na, 0.3), value(nb, 1.9));
        let ws: Vec<Vec<f64>> = (0..4).map(|k| value(n, 4.1 + k as f64)).collect();
        let mut params = ParamStore::init(&g, 0);
        params.set("t/a", av.iter().map(|&x| x as f32).collect());
        params.set("t/b", bv.iter().map(|&x| x as f32).collect());
        let inputs: BTreeMap<String, HostTensor> = (0..4).map(|k| (format!("w{k}"), f(&out, &ws[k]))).collect();
        let at = |flat: usize| (broadcast_index(flat, &out, a_shape), broadcast_index(flat, &out, b_shape));
        for float in [FloatDType::F32, FloatDType::F64] {
            let what = format!("{a_shape:?} with {b_shape:?} in {float:?}");
            // Inputs are f32 values; each result is one rounding of the exact value.
            let round = |x: f64| if float == FloatDType::F32 { x as f32 as f64 } else { x };
            let (a32, b32): (Vec<f64>, Vec<f64>) =
                (av.iter().map(|&x| x as f32 as f64).collect(), bv.iter().map(|&x| x as f32 as f64).collect());
            let w32: Vec<Vec<f64>> = ws.iter().map(|w| w.iter().map(|&x| x as f32 as f64).collect()).collect();
            let outs = Reference::<Flex>::new(FlexDevice, float).run(&g, &params, &inputs).unwrap();
            for op in ["add", "sub", "mul", "div"] {
                let want: Vec<f64> = (0..n)
                    .map(|flat| {
                        let (x, y) = (a32[at(flat).0], b32[at(flat).1]);
                        round(match op {
                            "add" => x + y,
                            "sub" => x - y,
                            "mul" => x * y,
                            _ => x / y,
                        })
                    })
                    .collect();
                assert_eq!(outs[op].shape, out, "{op} of {what}");
                assert_eq!(outs[op].data.to_f64(), want, "{op} of {what}");
            }
            let grads = gradients::<Flex>(FlexDevice, float, &g, &params, &inputs, "loss", false).unwrap();
            let (mut ga, mut gb) = (vec![0.0; na], vec![0.0; nb]);
            // The four ops' weights at each output element.
            let weights = w32[0].iter().zip(&w32[1]).zip(&w32[2]).zip(&w32[3]);
            for (flat, (((w0, w1), w2), w3)) in weights.enumerate() {
                let (i, j) = at(flat);
                let (x, y) = (a32[i], b32[j]);
                ga[i] += w0 + w1 + w2 * y + w3 / y;
                gb[j] += w0 - w1 + w2 * x - w3 * x / (y * y);
            }
            let tolerance = if float == FloatDType::F32 { 1e-5 } else { 1e-12 };
            for (name, got, want) in [("a", &grads.grads["t/a"], &ga), ("b", &grads.grads["t/b"], &gb)] {
                assert_eq!(got.shape, if name == "a" { a_shape } else { b_shape }, "∂loss/∂{name} of {what}");
                for (k, (g, w)) in got.data.to_f64().iter().zip(want).enumerate() {
                    assert!((g - w).abs() <= tolerance * (1.0 + w.abs()), "∂loss/∂{name}[{k}] of {what}: {g} vs {w}");
                }
            }
        }
    }
}

/// Operands that are views (a transposed value) or that nothing else holds (Flex then writes in
/// place) take the same broadcast paths and give numpy's values.
#[test]
fn broadcasts_of_strided_and_unshared_operands() {
    let mut b = GraphBuilder::new("t");
    let x = b.input("x", DType::F32, shape![4u64, 3u64]).unwrap();
    let row = b.input("row", DType::F32, shape![4u64]).unwrap();
    let col = b.input("col", DType::F32, shape![4u64, 1u64]).unwrap();
    let xt = b.permute(x, &[1, 0]).unwrap(); // [3, 4], strided
    let strided_row = b.add(xt, row).unwrap();
    let two = b.scalar(2.0).unwrap();
    let fresh = b.mul(x, two).unwrap(); // read once below: Flex may write into it
    let fresh_col = b.sub(fresh, col).unwrap();
    let col_t = b.permute(col, &[1, 0]).unwrap(); // [1, 4]
    let strided_both = b.div(xt, col_t).unwrap();
    for (name, v) in [("strided_row", strided_row), ("fresh_col", fresh_col), ("strided_both", strided_both)] {
        b.output(name, v);
    }
    let g = b.finish().unwrap();
    let xs: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 2.25).collect();
    let (rows, cols) = ([1.5f32, -2.0, 0.25, 8.0], [3.0f32, -0.5, 1.25, 2.0]);
    let inputs: BTreeMap<String, HostTensor> = [
        ("x".to_string(), HostTensor::f32(vec![4, 3], xs.clone())),
        ("row".to_string(), HostTensor::f32(vec![4], rows.to_vec())),
        ("col".to_string(), HostTensor::f32(vec![4, 1], cols.to_vec())),
    ]
    .into();
    let out = Reference::<Flex>::new(FlexDevice, FloatDType::F32).run(&g, &ParamStore::default(), &inputs).unwrap();
    let at = |r: usize, c: usize| xs[r * 3 + c];
    let want_t = |f: &dyn Fn(f32, usize) -> f32| -> Vec<f32> {
        (0..3).flat_map(|c| (0..4).map(move |r| (c, r))).map(|(c, r)| f(at(r, c), r)).collect()
    };
    assert_eq!(out["strided_row"].data, HostData::F32(want_t(&|x, r| x + rows[r])));
    assert_eq!(out["strided_both"].data, HostData::F32(want_t(&|x, r| x / cols[r])));
    let fresh_want: Vec<f32> = (0..12).map(|i| xs[i] * 2.0 - cols[i / 3]).collect();
    assert_eq!(out["fresh_col"].data, HostData::F32(fresh_want));
}

/// Flex's own GELU (used on Flex) has the exact derivative Φ(x) + x φ(x), in f32 and f64.
#[test]
fn gelu_gradient_is_exact_on_flex() {
    use calm_runtime::reference::gradients;
    let xs = [-3.0, -1.0, -0.2, 0.0, 0.5, 1.0, 2.5];
    let mut b = GraphBuilder::new("t");
    let x = b.param("x", shape![7u64], calm_ir::Init::Zeros).unwrap();
    let y = b.gelu(x).unwrap();
    let loss = b.reduce_sum(y, &[0], false).unwrap();
    b.output("loss", loss);
    let g = b.finish().unwrap();
    let mut params = ParamStore::init(&g, 0);
    params.set("t/x", xs.iter().map(|&v| v as f32).collect());
    // Φ by its series erf(z) = 2/√π Σ (-1)^n z^(2n+1) / (n! (2n+1)), converged in f64 here.
    let erf = |z: f64| -> f64 {
        let (mut term, mut sum) = (z, z);
        for n in 1..200 {
            term *= -z * z / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    };
    let want: Vec<f64> = xs
        .iter()
        .map(|&v: &f64| {
            let v = v as f32 as f64;
            0.5 * (1.0 + erf(v / std::f64::consts::SQRT_2))
                + v * (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt()
        })
        .collect();
    for (float, tolerance) in [(FloatDType::F32, 1e-6), (FloatDType::F64, 1e-13)] {
        let grads = gradients::<Flex>(FlexDevice, float, &g, &params, &BTreeMap::new(), "loss", false).unwrap();
        for (k, (got, w)) in grads.grads["t/x"].data.to_f64().iter().zip(&want).enumerate() {
            assert!((got - w).abs() <= tolerance, "{float:?}: d gelu/dx at {} is {got}, want {w}", xs[k]);
        }
    }
}
