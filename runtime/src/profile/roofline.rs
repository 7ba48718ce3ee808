//! The roofline, per execution unit: a launch can go no faster than its FLOPs at the ceiling of
//! the unit its kernel runs on ([`ComputeUnit`]) or its bytes at the memory's, and on top of
//! that each launch costs the device's launch overhead. The same arithmetic reads a measured
//! launch as a share of its ceiling (`%peak`) and models a launch on a device we do not have
//! ([`DeviceModel`], whose constants are a table with the source of each).

use std::collections::BTreeMap;

use calm_passes::plan::{ComputeUnit, KernelPlan};
use serde::Serialize;

/// A device's ceilings: each unit's arithmetic throughput, memory bandwidth, and what a launch
/// costs beyond its work when launches run back to back.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ceilings {
    /// FLOP/s of each unit the device has; the FP32 pipelines at least.
    pub flops_per_s: BTreeMap<ComputeUnit, f64>,
    pub bytes_per_s: f64,
    pub launch_overhead_s: f64,
}

/// What limits a kernel under the roofline model.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bound {
    Compute,
    Memory,
}

impl Ceilings {
    /// Ceilings with the FP32 pipelines only (and no launch overhead): a device without tensor
    /// cores, or one whose tensor cores were not measured.
    pub fn fp32(flops_per_s: f64, bytes_per_s: f64) -> Ceilings {
        Ceilings {
            flops_per_s: BTreeMap::from([(ComputeUnit::Fp32Cores, flops_per_s)]),
            bytes_per_s,
            launch_overhead_s: 0.0,
        }
    }

    /// The ceiling of `unit`. A kernel cannot run on a unit the device lacks, so a unit without
    /// a figure reads against the FP32 pipelines (what its arithmetic would fall back to).
    pub fn flops_of(&self, unit: ComputeUnit) -> f64 {
        self.flops_per_s
            .get(&unit)
            .or_else(|| self.flops_per_s.get(&ComputeUnit::Fp32Cores))
            .copied()
            .unwrap_or(f64::INFINITY)
    }

    /// The shortest time the device could take for this work: the slower of doing its FLOPs at
    /// the unit's ceiling and moving its bytes at the memory's.
    pub fn floor_seconds(&self, unit: ComputeUnit, flops: u64, bytes: u64) -> f64 {
        (flops as f64 / self.flops_of(unit)).max(bytes as f64 / self.bytes_per_s)
    }

    pub fn bound(&self, unit: ComputeUnit, flops: u64, bytes: u64) -> Bound {
        if flops as f64 / self.flops_of(unit) >= bytes as f64 / self.bytes_per_s {
            Bound::Compute
        } else {
            Bound::Memory
        }
    }

    /// FLOPs per byte at which the unit's ceiling meets the memory's.
    pub fn ridge(&self, unit: ComputeUnit) -> f64 {
        self.flops_of(unit) / self.bytes_per_s
    }

    /// The modelled time of one launch: its roofline floor plus the launch overhead.
    pub fn modelled_seconds(&self, unit: ComputeUnit, flops: u64, bytes: u64) -> f64 {
        self.floor_seconds(unit, flops, bytes) + self.launch_overhead_s
    }

    /// The modelled time of each launch of `plan`, in plan order.
    pub fn modelled_plan(&self, plan: &KernelPlan) -> Vec<f64> {
        plan.launches
            .values()
            .map(|l| {
                self.modelled_seconds(l.kernel.compute_unit(), l.cost.flops, l.cost.bytes_read + l.cost.bytes_written)
            })
            .collect()
    }
}

/// What one constant of a device model stands for.
#[derive(Copy, Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Constant {
    /// FLOP/s of a unit.
    Flops(ComputeUnit),
    /// Bytes per second of a device-to-device copy, bytes read plus bytes written.
    Bandwidth,
    /// Seconds per launch, launched back to back.
    LaunchOverhead,
}

/// One row of a model's table: the value, where it comes from, and when it was taken.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelConstant {
    pub constant: Constant,
    pub value: f64,
    pub source: String,
    pub date: String,
}

/// A device we may not have, as a table of constants.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeviceModel {
    pub name: &'static str,
    pub constants: Vec<ModelConstant>,
}

impl DeviceModel {
    /// NVIDIA H200 SXM (141 GB HBM3e, 132 SMs). The tensor-core and memory figures were measured
    /// on an H200 with PyTorch on 2026-12-04 (`shared/gpu/README.md`); the rest come from the
    /// datasheet or are stated assumptions until `calm device-peak` runs on one.
    pub fn h200() -> DeviceModel {
        let row = |constant, value, source: &str, date: &str| ModelConstant {
            constant,
            value,
            source: source.into(),
            date: date.into(),
        };
        DeviceModel {
            name: "h200",
            constants: vec![
                row(
                    Constant::Flops(ComputeUnit::Fp32Cores),
                    67e12,
                    "NVIDIA H200 datasheet, FP32 (CUDA cores)",
                    "2026-12-04",
                ),
                row(
                    Constant::Flops(ComputeUnit::TensorBf16),
                    790e12,
                    "measured: PyTorch bf16 GEMMs on an H200, 769-798 TFLOP/s",
                    "2026-12-04",
                ),
                row(
                    Constant::Flops(ComputeUnit::TensorF16),
                    790e12,
                    "assumed equal to bf16 (the datasheet gives both 989 TFLOP/s dense)",
                    "2026-12-04",
                ),
                row(
                    Constant::Flops(ComputeUnit::TensorTf32),
                    395e12,
                    "assumed half of bf16 (the datasheet: 494 against 989 TFLOP/s dense)",
                    "2026-12-04",
                ),
                row(Constant::Bandwidth, 4.3e12, "measured: PyTorch device-to-device copy on an H200", "2026-12-04"),
                row(
                    Constant::LaunchOverhead,
                    3e-6,
                    "assumed: a CUDA launch queued behind others (unmeasured on an H200)",
                    "2026-12-04",
                ),
            ],
        }
    }

    /// The model's constants as ceilings.
    pub fn ceilings(&self) -> Ceilings {
        let mut c = Ceilings { flops_per_s: BTreeMap::new(), bytes_per_s: 0.0, launch_overhead_s: 0.0 };
        for row in &self.constants {
            match row.constant {
                Constant::Flops(unit) => {
                    c.flops_per_s.insert(unit, row.value);
                }
                Constant::Bandwidth => c.bytes_per_s = row.value,
                Constant::LaunchOverhead => c.launch_overhead_s = row.value,
            }
        }
        c
    }

    /// The model calibrated by measured ceilings of the device it models (from
    /// `calm device-peak` on one): every constant the measurement has replaces the table's.
    pub fn calibrated(&self, measured: &Ceilings, source: &str, date: &str) -> DeviceModel {
        let mut model = self.clone();
        for row in &mut model.constants {
            let value = match row.constant {
                Constant::Flops(unit) => measured.flops_per_s.get(&unit).copied(),
                Constant::Bandwidth => Some(measured.bytes_per_s),
                Constant::LaunchOverhead => Some(measured.launch_overhead_s),
            };
            if let Some(v) = value.filter(|v| v.is_finite() && *v > 0.0) {
                *row = ModelConstant { constant: row.constant, value: v, source: source.into(), date: date.into() };
            }
        }
        model
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_without_a_figure_reads_against_the_fp32_pipelines() {
        let c = Ceilings::fp32(10e12, 1e12);
        assert_eq!(c.flops_of(ComputeUnit::TensorBf16), 10e12);
        assert_eq!(c.ridge(ComputeUnit::Fp32Cores), 10.0);
    }

    #[test]
    fn calibration_replaces_the_measured_constants_only() {
        let table = DeviceModel::h200();
        let mut measured = Ceilings::fp32(60e12, 4.0e12);
        measured.launch_overhead_s = 5e-6;
        let c = table.calibrated(&measured, "measured here", "2027-01-01").ceilings();
        assert_eq!(c.flops_of(ComputeUnit::Fp32Cores), 60e12);
        assert_eq!(c.bytes_per_s, 4.0e12);
        assert_eq!(c.launch_overhead_s, 5e-6);
        // Not measured: the table's figure stays, with its source.
        assert_eq!(c.flops_of(ComputeUnit::TensorBf16), 790e12);
    }
}
