//! The parameter store: a graph's weights by parameter name, in host memory as f32.
//!
//! Initialised deterministically from each parameter's initialiser and a seed (each parameter
//! draws from its own stream of the shared generator, keyed by a hash of its name, so adding a
//! module does not change the others' weights), loaded from and saved to safetensors. Loading
//! checks the file against the graph and reports every mismatch at once.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use calm_ir::{Bindings, Graph, Init, Op, TensorType};
use calm_kernels::philox;
use thiserror::Error;

use crate::host::{HostData, HostTensor};
use crate::safetensors::{self, SafetensorsError};

/// One way a weight file disagrees with a graph.
#[derive(Clone, Debug, PartialEq)]
pub enum Mismatch {
    Missing { name: String, expected: TensorType },
    Unexpected { name: String },
    Shape { name: String, expected: Vec<usize>, found: Vec<usize> },
    DType { name: String, found: &'static str },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Missing { name, expected } => write!(f, "missing `{name}` ({expected})"),
            Mismatch::Unexpected { name } => write!(f, "`{name}` is not a parameter of the graph"),
            Mismatch::Shape { name, expected, found } => {
                write!(f, "`{name}` has shape {found:?}, the graph wants {expected:?}")
            }
            Mismatch::DType { name, found } => write!(f, "`{name}` holds {found} values, the graph wants floats"),
        }
    }
}

#[derive(Debug, Error)]
pub enum LoadError {
    #[error(transparent)]
    File(#[from] SafetensorsError),
    #[error("{path}: {} mismatch{} with the graph: {}", .mismatches.len(), if .mismatches.len() == 1 { "" } else { "es" }, list(.mismatches))]
    Mismatches { path: PathBuf, mismatches: Vec<Mismatch> },
}

fn list(m: &[Mismatch]) -> String {
    m.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

fn fixed_shape(t: &TensorType) -> Vec<usize> {
    t.shape.iter().map(|d| d.fixed().expect("the verifier requires fixed parameter shapes") as usize).collect()
}

/// Values of `init` for a parameter of `len` elements, drawn from the shared generator.
fn draw(init: &Init, len: usize, seed: u64, name: &str) -> Vec<f32> {
    let (key, offset, stream) = (seed as u32, (seed >> 32) as u32, philox::name_stream(name));
    match init {
        Init::Zeros => vec![0.0; len],
        Init::Ones => vec![1.0; len],
        Init::Uniform { low, high } => philox::uniform(key, offset, stream, len)
            .into_iter()
            .map(|u| (low + (high - low) * u as f64) as f32)
            .collect(),
        Init::Normal { mean, std } => {
            // Box–Muller on pairs of uniforms.
            let u = philox::uniform(key, offset, stream, 2 * len);
            u.chunks_exact(2)
                .map(|p| {
                    let r = (-2.0 * (p[0] as f64).ln()).sqrt();
                    (mean + std * r * (std::f64::consts::TAU * p[1] as f64).cos()) as f32
                })
                .collect()
        }
    }
}

/// The most host memory [`ParamStore::init`] holds at once: every parameter's f32 values, and
/// while the largest is drawn its uniforms (two per value for a normal initialiser, Box–Muller's
/// pairs; one for a uniform one). Sizes past u64 saturate, as refused as sizes past memory.
fn init_peak_bytes(g: &Graph) -> u64 {
    let (mut stored, mut drawing) = (0u64, 0u64);
    for n in g.nodes.values() {
        let Op::Param { init, .. } = &n.op else { continue };
        let len = g.value_type(n.results[0]).numel(&Bindings::new()).unwrap_or(u64::MAX);
        let uniforms_per_value = match init {
            Init::Normal { .. } => 2,
            Init::Uniform { .. } => 1,
            Init::Zeros | Init::Ones => 0,
        };
        stored = stored.saturating_add(len.saturating_mul(4));
        drawing = drawing.max(len.saturating_mul(4 * uniforms_per_value));
    }
    stored.saturating_add(drawing)
}

/// Weights by parameter name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParamStore {
    tensors: BTreeMap<String, HostTensor>,
}

impl ParamStore {
    /// Every parameter of `g`, initialised from its initialiser with `seed`.
    pub fn init(g: &Graph, seed: u64) -> Self {
        let tensors = g
            .nodes
            .values()
            .filter_map(|n| match &n.op {
                Op::Param { name, init, .. } => {
                    let shape = fixed_shape(g.value_type(n.results[0]));
                    let len = shape.iter().product();
                    Some((name.clone(), HostTensor::f32(shape, draw(init, len, seed, name))))
                }
                _ => None,
            })
            .collect();
        ParamStore { tensors }
    }

    /// [`ParamStore::init`], refused before allocating when the parameters (f32) would not fit
    /// in the host's memory: a hand-edited graph can declare any size.
    pub fn try_init(g: &Graph, seed: u64) -> Result<Self, crate::limits::MemoryError> {
        let needed = init_peak_bytes(g);
        crate::limits::check_host(|| format!("initialising the weights of `{}`", g.name), needed)?;
        Ok(ParamStore::init(g, seed))
    }

    pub fn get(&self, name: &str) -> Option<&HostTensor> {
        self.tensors.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &HostTensor)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Every parameter's values, mutable in place (optimisers); values stored wider than f32
    /// (a weight file in f64) are narrowed to f32 first, as [`ParamStore::set`] stores them.
    pub fn values_mut(&mut self) -> impl Iterator<Item = (&str, &mut [f32])> {
        self.tensors.iter_mut().map(|(name, t)| {
            if !matches!(t.data, HostData::F32(_)) {
                t.data = HostData::F32(t.to_f32().expect("parameters are floats"));
            }
            let HostData::F32(v) = &mut t.data else { unreachable!("narrowed above") };
            (name.as_str(), v.as_mut_slice())
        })
    }

    /// Replaces a parameter's values (same shape); used by optimisers and tests.
    pub fn set(&mut self, name: &str, values: Vec<f32>) {
        let t = self.tensors.get_mut(name).unwrap_or_else(|| panic!("no parameter `{name}`"));
        assert_eq!(t.numel(), values.len(), "`{name}` keeps its shape");
        t.data = HostData::F32(values);
    }

    /// The tensors of a weight file checked against `g`'s parameters: every parameter present,
    /// nothing else, shapes equal, values floats. All mismatches are reported together.
    pub fn from_tensors(g: &Graph, path: &Path, mut tensors: BTreeMap<String, HostTensor>) -> Result<Self, LoadError> {
        let mut mismatches = Vec::new();
        let mut out = BTreeMap::new();
        for (_, name, ty) in g.params() {
            let Some(t) = tensors.remove(name) else {
                mismatches.push(Mismatch::Missing { name: name.to_string(), expected: ty.clone() });
                continue;
            };
            let expected = fixed_shape(ty);
            if t.data.len() != t.shape.iter().product::<usize>() {
                mismatches.push(Mismatch::Shape { name: name.to_string(), expected, found: vec![t.data.len()] });
                continue;
            }
            if t.shape != expected {
                mismatches.push(Mismatch::Shape { name: name.to_string(), expected, found: t.shape });
                continue;
            }
            match t.to_f32() {
                Some(values) => {
                    out.insert(name.to_string(), HostTensor::f32(t.shape, values));
                }
                None => mismatches.push(Mismatch::DType { name: name.to_string(), found: t.data.type_name() }),
            }
        }
        mismatches.extend(tensors.into_keys().map(|name| Mismatch::Unexpected { name }));
        if mismatches.is_empty() {
            Ok(ParamStore { tensors: out })
        } else {
            Err(LoadError::Mismatches { path: path.to_path_buf(), mismatches })
        }
    }

    /// Loads a safetensors file for `g`.
    pub fn load(g: &Graph, path: &Path) -> Result<Self, LoadError> {
        let tensors = safetensors::read(path)?;
        Self::from_tensors(g, path, tensors)
    }

    /// Saves every parameter as f32, atomically.
    pub fn save(&self, path: &Path) -> Result<(), SafetensorsError> {
        safetensors::write(path, &self.tensors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use calm_ir::sample::tiny_classifier;

    #[test]
    fn init_is_deterministic_per_seed_and_follows_the_initialisers() {
        let g = tiny_classifier();
        let a = ParamStore::init(&g, 7);
        assert_eq!(a, ParamStore::init(&g, 7));
        assert_ne!(a, ParamStore::init(&g, 8));
        assert_eq!(a.len(), g.params().count());
        let w = a.get("tiny/block/proj/weight").unwrap().to_f32().unwrap();
        assert_eq!(w.len(), 32 * 16);
        assert!(w.iter().all(|&x| x.abs() <= 0.25), "uniform(-1/4, 1/4)");
        let spread = w.iter().map(|&x| x as f64 * x as f64).sum::<f64>() / w.len() as f64;
        assert!((spread - 0.25 * 0.25 / 3.0).abs() < 0.004, "variance of U(-a, a) is a²/3: {spread}");
        let gamma = a.get("tiny/block/ln/weight").unwrap();
        assert_eq!(gamma.data, HostData::F32(vec![1.0; 32]));
        // Each parameter has its own stream: weight and bias of a layer differ.
        let bias = a.get("tiny/block/proj/bias").unwrap().to_f32().unwrap();
        assert_ne!(bias[..4], w[..4]);
    }

    #[test]
    fn normal_init_has_its_moments() {
        let v = draw(&Init::Normal { mean: 1.0, std: 0.5 }, 20_000, 3, "x");
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!((mean - 1.0).abs() < 0.02 && (var.sqrt() - 0.5).abs() < 0.02, "{mean} {var}");
    }

    /// The budget counts what initialising really holds: a normal initialiser's 1,000 values
    /// need 4 KB stored and 8 KB of uniforms while they are drawn (12 B an element).
    #[test]
    fn the_init_budget_counts_the_uniforms_being_drawn() {
        let mut b = calm_ir::GraphBuilder::new("g");
        let x = b.input("x", calm_ir::DType::F32, calm_ir::shape![2u64]).unwrap();
        b.scoped("a", |b| b.param("w", calm_ir::shape![1000u64], Init::Normal { mean: 0.0, std: 1.0 })).unwrap();
        b.scoped("b", |b| b.param("w", calm_ir::shape![300u64], Init::Uniform { low: 0.0, high: 1.0 })).unwrap();
        b.scoped("c", |b| b.param("w", calm_ir::shape![5000u64], Init::Zeros)).unwrap();
        b.output("x", x);
        assert_eq!(init_peak_bytes(b.graph()), 4 * (1000 + 300 + 5000) + 8 * 1000);
    }
}
