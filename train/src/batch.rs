//! Batches: a dataset's samples with their texts' states, as the named inputs of a graph.

use std::collections::BTreeMap;

use calm_data::Dataset;
use calm_ir::Graph;
use calm_runtime::host::{HostData, HostTensor};

use crate::backbone::States;

/// A dataset and the backbone states of its texts.
pub struct Split {
    pub data: Dataset,
    pub states: States,
}

/// What a training step adds to the inputs: the Gumbel temperature and the random keys.
#[derive(Copy, Clone, Debug)]
pub struct StepKeys {
    pub temperature: f64,
    pub seed: u32,
    pub offset: u32,
}

/// The inputs of `g` for samples `idx` of `split`: `states` and `mask` padded to the longest
/// text of the batch (or to `tokens` when given), `culture`, `labels`, and for training graphs
/// `temperature`, `seed`, `offset`. Only inputs that `g` declares are given.
pub fn inputs(
    g: &Graph,
    split: &Split,
    idx: &[usize],
    tokens: Option<usize>,
    keys: Option<StepKeys>,
) -> BTreeMap<String, HostTensor> {
    let s = &split.states;
    let samples: Vec<_> = idx.iter().map(|&i| &split.data.samples[i]).collect();
    let t = tokens.unwrap_or_else(|| samples.iter().map(|x| s.lengths[x.text]).max().unwrap_or(1));
    let (b, d) = (samples.len(), s.width);
    let mut states = vec![0f32; b * t * d];
    let mut mask = vec![0f32; b * t];
    for (r, x) in samples.iter().enumerate() {
        let len = s.lengths[x.text].min(t);
        for j in 0..len {
            states[(r * t + j) * d..(r * t + j + 1) * d].copy_from_slice(s.token(x.text, j));
            mask[r * t + j] = 1.0;
        }
    }
    let mut all = BTreeMap::from([
        ("states".to_string(), HostTensor::f32(vec![b, t, d], states)),
        ("mask".to_string(), HostTensor::f32(vec![b, t], mask)),
        ("culture".to_string(), HostTensor::i32(vec![b], samples.iter().map(|x| x.culture as i32).collect())),
        ("labels".to_string(), HostTensor::i32(vec![b], samples.iter().map(|x| x.label as i32).collect())),
    ]);
    if let Some(k) = keys {
        all.insert("temperature".into(), HostTensor::f32(vec![], vec![k.temperature as f32]));
        all.insert("seed".into(), HostTensor::new(vec![], HostData::U32(vec![k.seed])));
        all.insert("offset".into(), HostTensor::new(vec![], HostData::U32(vec![k.offset])));
    }
    let wanted: Vec<&str> = g.inputs().map(|(_, n, _)| n).collect();
    all.retain(|name, _| wanted.contains(&name.as_str()));
    all
}

/// A permutation of `0..n` drawn from `seed` and `epoch` (SplitMix64 and Fisher–Yates): the
/// same every time, so a resumed run sees the same batches.
pub fn shuffled(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut state = seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffles_are_permutations_fixed_by_seed_and_epoch() {
        let a = shuffled(100, 3, 0);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, shuffled(100, 3, 0));
        assert_ne!(a, shuffled(100, 3, 1));
        assert_ne!(a, shuffled(100, 4, 0));
    }
}
