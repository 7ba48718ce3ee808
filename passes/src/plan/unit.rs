//! Where a launch's arithmetic runs, and what precision the user allowed it. A roofline is only
//! as true as its compute ceiling: a GEMM on the FP32 pipelines of an H200 tops out near
//! 67 TFLOP/s, the same GEMM on its tensor cores in bf16 near 790. The plan says which unit each
//! kernel uses ([`Kernel::compute_unit`](super::Kernel::compute_unit)), so the profiler and the
//! device model read each launch against the ceiling of that unit.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An execution unit with a ceiling of its own. Memory bandwidth bounds every launch besides.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ComputeUnit {
    /// Fused multiply-adds on the FP32 pipelines (CUDA cores; a CPU adapter's SIMD lanes).
    Fp32Cores,
    /// Tensor cores multiplying bf16, f16 or tf32 operands into f32 accumulators.
    TensorBf16,
    TensorF16,
    TensorTf32,
}

impl ComputeUnit {
    pub const ALL: [ComputeUnit; 4] =
        [ComputeUnit::Fp32Cores, ComputeUnit::TensorBf16, ComputeUnit::TensorF16, ComputeUnit::TensorTf32];

    /// The name reports and cache files use (`fp32-cores`, `tensor-bf16`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ComputeUnit::Fp32Cores => "fp32-cores",
            ComputeUnit::TensorBf16 => "tensor-bf16",
            ComputeUnit::TensorF16 => "tensor-f16",
            ComputeUnit::TensorTf32 => "tensor-tf32",
        }
    }

    pub fn is_tensor_core(self) -> bool {
        self != ComputeUnit::Fp32Cores
    }
}

impl fmt::Display for ComputeUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How exactly f32 matrix products must be computed, as JAX's `precision` and PyTorch's
/// `set_float32_matmul_precision` mean it.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Exact f32: FP32 pipelines only.
    #[default]
    Highest,
    /// TF32 tensor cores allowed for f32 buffers (10-bit mantissa products, f32 sums).
    High,
    /// bf16 tensor cores allowed for f32 buffers (8-bit mantissa products, f32 sums).
    Default,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Highest => "highest",
            Precision::High => "high",
            Precision::Default => "default",
        }
    }

    /// The fastest unit this precision allows for a matrix product of f32 buffers (what a
    /// tensor-core GEMM may use), or `None` for exact f32 on the FP32 pipelines.
    pub fn allowed_tensor_unit(self) -> Option<ComputeUnit> {
        match self {
            Precision::Highest => None,
            Precision::High => Some(ComputeUnit::TensorTf32),
            Precision::Default => Some(ComputeUnit::TensorBf16),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
