//! Random valid graphs: small chains of the IR's ops on awkward shapes (sizes 1 to 40 that are
//! no multiple of any tile, a symbolic batch), which the compiler must either compile into a plan
//! whose device run matches the reference executor, or refuse with a typed error.

use std::collections::BTreeMap;

use burn::backend::flex::{Flex, FlexDevice};
use burn::tensor::FloatDType;
use calm_ir::{nn, Bindings, BuildResult, DType, Dim, Graph, GraphBuilder, Init, ValueId};
use calm_passes::compile::compile;
use calm_passes::lower::LowerOptions;
use calm_passes::memory::check_memory;
use calm_runtime::device::DeviceExecutor;
use calm_runtime::host::{max_relative_error, HostTensor};
use calm_runtime::inputs::random_inputs;
use calm_runtime::params::ParamStore;
use calm_runtime::reference::{bind_inputs, Reference};
use cubecl::wgpu::{WgpuDevice, WgpuRuntime};
use cubecl::Runtime;

use crate::mutate::Rng;

const SIZES: [u64; 8] = [1, 2, 3, 5, 7, 13, 33, 40];

struct Gen<'a> {
    b: GraphBuilder,
    rng: &'a mut Rng,
    /// Float values made so far, to draw arguments from.
    pool: Vec<ValueId>,
    params: usize,
}

impl Gen<'_> {
    fn size(&mut self) -> u64 {
        SIZES[self.rng.below(SIZES.len())]
    }

    fn pick(&mut self) -> ValueId {
        // Later values more often: chains grow deep, not only wide.
        let n = self.pool.len();
        let i = if self.rng.chance(2) { n - 1 } else { self.rng.below(n) };
        self.pool[i]
    }

    fn param(&mut self, shape: Vec<Dim>) -> BuildResult<ValueId> {
        self.params += 1;
        let name = format!("p{}", self.params);
        self.b.param(&name, shape, Init::Normal { mean: 0.0, std: 0.5 })
    }

    fn rank(&self, v: ValueId) -> usize {
        self.b.rank_of(v)
    }

    /// One random op on values of the pool; its result joins the pool.
    fn step(&mut self) -> BuildResult<()> {
        let x = self.pick();
        let rank = self.rank(x);
        let axis = self.rng.below(rank) as isize;
        let last = self.b.shape_of(x)[rank - 1].clone();
        let v = match self.rng.below(19) {
            0 => self.b.tanh(x)?,
            1 => self.b.sigmoid(x)?,
            2 => self.b.relu(x)?,
            3 => self.b.gelu(x)?,
            4 => {
                // exp and log kept finite: exp(tanh x), log(sigmoid x).
                let t = self.b.tanh(x)?;
                let e = self.b.exp(t)?;
                let s = self.b.sigmoid(e)?;
                self.b.log(s)?
            }
            5 => {
                let y = self.pick();
                if self.b.shape_of(y) == self.b.shape_of(x) {
                    match self.rng.below(4) {
                        0 => self.b.add(x, y)?,
                        1 => self.b.sub(x, y)?,
                        2 => self.b.mul(x, y)?,
                        _ => self.b.max(x, y)?,
                    }
                } else {
                    self.b.neg(x)?
                }
            }
            6 => {
                // A bias over the last axis, broadcast.
                let p = self.param(vec![last])?;
                let shape = self.b.shape_of(x).clone();
                let pb = self.b.broadcast(p, shape)?;
                self.b.add(x, pb)?
            }
            7 | 8 => {
                let Dim::Fixed(_) = last else { return Ok(()) };
                let n = self.size();
                let w = self.param(vec![last, Dim::Fixed(n)])?;
                let y = self.b.matmul(x, w, false, false)?;
                if self.rng.chance(2) {
                    self.b.relu(y)?
                } else {
                    y
                }
            }
            9 => {
                if self.rng.chance(2) {
                    self.b.softmax(x, axis)?
                } else {
                    self.b.log_softmax(x, axis)?
                }
            }
            10 => {
                let Dim::Fixed(_) = last else { return Ok(()) };
                let name = format!("ln{}", self.params);
                self.params += 1;
                nn::layer_norm(&mut self.b, &name, x, nn::LAYER_NORM_EPS)?
            }
            11 if rank > 1 => {
                let keep = self.rng.chance(2);
                match self.rng.below(3) {
                    0 => self.b.reduce_sum(x, &[axis], keep)?,
                    1 => self.b.reduce_mean(x, &[axis], keep)?,
                    _ => self.b.reduce_max(x, &[axis], keep)?,
                }
            }
            12 if rank > 1 => {
                let mut perm: Vec<usize> = (0..rank).collect();
                for i in (1..rank).rev() {
                    perm.swap(i, self.rng.below(i + 1));
                }
                self.b.permute(x, &perm)?
            }
            13 => {
                let size = match &self.b.shape_of(x)[axis as usize] {
                    Dim::Fixed(n) => *n,
                    Dim::Sym(_) => return Ok(()),
                };
                if self.rng.chance(2) || size < 2 {
                    self.b.concat(&[x, x], axis)?
                } else {
                    let start = self.rng.below(size as usize - 1) as u64;
                    let end = start + 1 + self.rng.below((size - start) as usize - 1) as u64;
                    self.b.slice(x, axis, start, end)?
                }
            }
            14 => {
                let Dim::Fixed(n) = last else { return Ok(()) };
                let k = 1 + self.rng.below(n.min(3) as usize) as u64;
                self.b.top_k(x, k)?.0
            }
            15 => {
                // A denominator in (1, 2): x / (1 + sigmoid(y)).
                let y = self.pick();
                let one = self.b.scalar(1.0)?;
                let y = if self.b.shape_of(y) == self.b.shape_of(x) { y } else { x };
                let s = self.b.sigmoid(y)?;
                let d = self.b.add(s, one)?;
                self.b.div(x, d)?
            }
            16 => {
                // |x| through a comparison and a select.
                let zero = self.b.scalar(0.0)?;
                let negative = self.b.less(x, zero)?;
                let minus = self.b.neg(x)?;
                self.b.select(negative, minus, x)?
            }
            17 if rank > 1 => {
                // The last two axes as one.
                let mut dims = self.b.shape_of(x).clone();
                let (a, b) = (dims[rank - 2].clone(), dims[rank - 1].clone());
                let (Dim::Fixed(a), Dim::Fixed(b)) = (a, b) else { return Ok(()) };
                dims.truncate(rank - 2);
                dims.push(Dim::Fixed(a * b));
                self.b.reshape(x, dims)?
            }
            _ => {
                // x - max(x) along an axis, broadcast back: softmax's first half.
                let m = self.b.reduce_max(x, &[axis], true)?;
                let shape = self.b.shape_of(x).clone();
                let mb = self.b.broadcast(m, shape)?;
                self.b.sub(x, mb)?
            }
        };
        self.pool.push(v);
        Ok(())
    }
}

/// The graph of `seed`: one or two inputs, 2 to 9 random ops, one to three outputs.
pub fn random_graph(seed: u64) -> Graph {
    let mut rng = Rng::new(seed);
    let mut gen = Gen { b: GraphBuilder::new(&format!("random{seed}")), rng: &mut rng, pool: Vec::new(), params: 0 };
    let rank = 2 + gen.rng.below(2);
    let mut dims: Vec<Dim> = (0..rank).map(|_| Dim::Fixed(SIZES[1 + gen.rng.below(SIZES.len() - 1)])).collect();
    if gen.rng.chance(2) {
        dims[0] = Dim::sym("batch");
    }
    let x = gen.b.input("x", DType::F32, dims.clone()).expect("a valid input");
    gen.pool.push(x);
    if gen.rng.chance(2) {
        let y = gen.b.input("y", DType::F32, dims).expect("a valid input");
        gen.pool.push(y);
    }
    let ops = 2 + gen.rng.below(8);
    for _ in 0..ops {
        // An op whose shapes do not fit is a generator limit, not a finding: the builder checks
        // every op as the verifier would, so a refusal here leaves the graph valid.
        let _ = gen.step();
    }
    let outputs = 1 + gen.rng.below(3).min(gen.pool.len() - 1);
    let mut chosen: Vec<ValueId> = vec![*gen.pool.last().expect("inputs")];
    for _ in 1..outputs {
        let v = gen.pick();
        if !chosen.contains(&v) {
            chosen.push(v);
        }
    }
    for (i, v) in chosen.into_iter().enumerate() {
        gen.b.output(&format!("out{i}"), v);
    }
    gen.b.finish().unwrap_or_else(|e| panic!("seed {seed}: the builder made a graph the verifier refuses: {e}"))
}

/// What the compiler did with a random graph.
#[derive(Debug)]
pub enum Verdict {
    /// Compiled; the device's outputs match the reference's. The plan's launch count.
    Matched { launches: usize },
    /// Refused with a typed error (the message).
    Refused(String),
}

/// Compiles `g` with every fusion pass, runs the plan on the Vulkan device with its temporaries
/// poisoned (NaN), and compares each output with the reference executor (f64): error relative to
/// the output's largest magnitude (at least 1) at most `tol`. A mismatch is an `Err` naming the element.
pub fn check_graph(g: &Graph, seed: u64, tol: f64) -> Result<Verdict, String> {
    let mut bindings = Bindings::new();
    for s in g.symbols() {
        bindings.insert(&s, SIZES[1 + (seed as usize % (SIZES.len() - 1))]);
    }
    let inputs = random_inputs(g, &bindings, seed).map_err(|e| e.to_string())?;
    let params = ParamStore::init(g, seed);
    let want =
        Reference::<Flex>::new(FlexDevice, FloatDType::F64).run(g, &params, &inputs).map_err(|e| e.to_string())?;
    let bindings = bind_inputs(g, &inputs).map_err(|e| e.to_string())?;
    let compiled = match compile(g, &bindings, true, &LowerOptions::default()) {
        Ok(c) => c,
        Err(e) => return Ok(Verdict::Refused(e.to_string())),
    };
    check_memory(&compiled.plan).map_err(|e| format!("the memory plan is unsafe: {e:?}"))?;
    let launches = compiled.plan.launches.len();
    let client = WgpuRuntime::client(&WgpuDevice::default());
    let mut exec = DeviceExecutor::<WgpuRuntime, f32>::new(client, compiled.plan);
    exec.poison();
    exec.load_params(&params).map_err(|e| e.to_string())?;
    let got = exec.run(&inputs).map_err(|e| e.to_string())?;
    compare(&want, &got, tol)?;
    Ok(Verdict::Matched { launches })
}

fn compare(want: &BTreeMap<String, HostTensor>, got: &BTreeMap<String, HostTensor>, tol: f64) -> Result<(), String> {
    for (name, w) in want {
        let g = got.get(name).ok_or_else(|| format!("output `{name}` missing from the device's"))?;
        if g.shape != w.shape {
            return Err(format!("`{name}`: device shape {:?}, reference {:?}", g.shape, w.shape));
        }
        // Scaled by at least 1: the graphs compute on values of order 1 (normal inputs and
        // weights, bounded activations), so an output that is zero in exact arithmetic (a sum of
        // layer-normed values) carries f32 rounding of that order, not of its own size.
        if let (err, Some(i)) = max_relative_error(w, g, 1.0) {
            if err > tol {
                let (a, b) = (w.data.to_f64()[i], g.data.to_f64()[i]);
                return Err(format!("`{name}`[{i}]: device {b}, reference {a} (relative error {err:.2e})"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graphs_are_deterministic_valid_and_varied() {
        let a = calm_ir::json::to_json(&random_graph(4));
        assert_eq!(a, calm_ir::json::to_json(&random_graph(4)));
        let sizes: std::collections::BTreeSet<usize> = (0..40).map(|s| random_graph(s).nodes.len()).collect();
        assert!(sizes.len() > 5, "node counts {sizes:?}");
    }
}
