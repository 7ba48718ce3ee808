//! Tensors in host memory: what goes into and comes out of an executor, and what weight and
//! input files hold.

use calm_ir::DType;

/// Element data of a host tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I32(Vec<i32>),
    U32(Vec<u32>),
    Bool(Vec<bool>),
}

impl HostData {
    pub fn len(&self) -> usize {
        match self {
            HostData::F32(v) => v.len(),
            HostData::F64(v) => v.len(),
            HostData::I32(v) => v.len(),
            HostData::U32(v) => v.len(),
            HostData::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether every element is finite (integers and bools always are); no copy.
    pub fn all_finite(&self) -> bool {
        match self {
            HostData::F32(v) => v.iter().all(|x| x.is_finite()),
            HostData::F64(v) => v.iter().all(|x| x.is_finite()),
            _ => true,
        }
    }

    /// The elements as f64, whatever their type (bools as 0 and 1).
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            HostData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            HostData::F64(v) => v.clone(),
            HostData::I32(v) => v.iter().map(|&x| x as f64).collect(),
            HostData::U32(v) => v.iter().map(|&x| x as f64).collect(),
            HostData::Bool(v) => v.iter().map(|&x| if x { 1.0 } else { 0.0 }).collect(),
        }
    }

    /// A short name of the element type.
    pub fn type_name(&self) -> &'static str {
        match self {
            HostData::F32(_) => "f32",
            HostData::F64(_) => "f64",
            HostData::I32(_) => "i32",
            HostData::U32(_) => "u32",
            HostData::Bool(_) => "bool",
        }
    }

    /// Whether values of this data can stand for an IR value of `dtype` (floats for floats,
    /// integers for integers).
    pub fn fits(&self, dtype: DType) -> bool {
        match self {
            HostData::F32(_) | HostData::F64(_) => dtype.is_float(),
            HostData::I32(_) | HostData::U32(_) => dtype.is_int(),
            HostData::Bool(_) => dtype == DType::Bool,
        }
    }
}

/// A dense, row-major tensor in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: HostData,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: HostData) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len(), "shape and data disagree");
        HostTensor { shape, data }
    }

    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        HostTensor::new(shape, HostData::F32(data))
    }

    pub fn i32(shape: Vec<usize>, data: Vec<i32>) -> Self {
        HostTensor::new(shape, HostData::I32(data))
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Float data as f32 (f64 rounded); `None` for integer or bool data.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        match &self.data {
            HostData::F32(v) => Some(v.clone()),
            HostData::F64(v) => Some(v.iter().map(|&x| x as f32).collect()),
            _ => None,
        }
    }
}

/// The largest error of `got` against `want` relative to `want`'s largest finite magnitude (at
/// least `floor`), and the flat index where it is. Equal values (infinities included) and NaN
/// against NaN count 0; a NaN against a number counts as an infinite error.
pub fn max_relative_error(want: &HostTensor, got: &HostTensor, floor: f64) -> (f64, Option<usize>) {
    let (w, g) = (want.data.to_f64(), got.data.to_f64());
    let scale = w.iter().filter(|x| x.is_finite()).fold(floor, |m, x| m.max(x.abs()));
    let mut worst = (0.0, None);
    for (i, (a, b)) in w.iter().zip(&g).enumerate() {
        let err = if a == b || (a.is_nan() && b.is_nan()) {
            0.0
        } else if a.is_nan() || b.is_nan() {
            f64::INFINITY
        } else {
            (a - b).abs() / scale
        };
        if err > worst.0 {
            worst = (err, Some(i));
        }
    }
    worst
}

/// Mean, standard deviation, extremes and non-finite counts of a tensor: `calm run`'s summary.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
    pub nan: usize,
    pub inf: usize,
}

impl Summary {
    /// Statistics over the finite elements (NaN and infinities are counted, not averaged).
    pub fn of(t: &HostTensor) -> Summary {
        let values = t.data.to_f64();
        let finite: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        let n = finite.len().max(1) as f64;
        let mean = finite.iter().sum::<f64>() / n;
        let var = finite.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
        Summary {
            mean,
            std: var.sqrt(),
            min: finite.iter().copied().fold(f64::INFINITY, f64::min),
            max: finite.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            nan: values.iter().filter(|x| x.is_nan()).count(),
            inf: values.iter().filter(|x| x.is_infinite()).count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_errors_count_a_nan_against_a_number_and_scale_by_the_largest_finite_value() {
        let want = HostTensor::f32(vec![4], vec![2.0, f32::NAN, f32::INFINITY, -4.0]);
        let same = HostTensor::f32(vec![4], vec![2.0, f32::NAN, f32::INFINITY, -4.0]);
        assert_eq!(max_relative_error(&want, &same, 0.0), (0.0, None));
        let off = HostTensor::f32(vec![4], vec![2.0, f32::NAN, f32::INFINITY, -3.0]);
        assert_eq!(max_relative_error(&want, &off, 0.0), (0.25, Some(3)));
        assert_eq!(max_relative_error(&want, &off, 10.0), (0.1, Some(3)));
        let nan = HostTensor::f32(vec![4], vec![f32::NAN, f32::NAN, f32::INFINITY, -4.0]);
        assert_eq!(max_relative_error(&want, &nan, 0.0), (f64::INFINITY, Some(0)));
    }

    #[test]
    fn summary_counts_non_finite_values_apart() {
        let t = HostTensor::f32(vec![5], vec![1.0, 3.0, f32::NAN, f32::INFINITY, 2.0]);
        let s = Summary::of(&t);
        assert_eq!((s.mean, s.min, s.max, s.nan, s.inf), (2.0, 1.0, 3.0, 1, 1));
        assert!((s.std - (2.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!(HostData::I32(vec![1]).fits(DType::U32));
        assert!(!HostData::F32(vec![1.0]).fits(DType::I32));
    }
}
