//! The CUDA C++ of what calm runs on a CUDA device to measure it: the ceilings'
//! microbenchmarks (`calm_kernels::peak`: FP32 chains, tensor-core products in bf16, f16 and
//! tf32 through the benchmark's own launch, the copy, the empty launch) as CubeCL's CUDA
//! compiler writes them, and the device clock's stamp and hold ([`crate::device::stamps`]). A
//! test compiles them all for sm_90 with NVRTC, so a GPU session does not find a kernel that
//! does not compile.

use calm_kernels::peak;
use calm_passes::plan::ComputeUnit;
use cubecl::prelude::*;
use cubecl::server::KernelArguments;

use super::capture::{self, CaptureDevice, CaptureRuntime};
use super::CudaTargetError;
use crate::device::stamps::{hold_task, stamp_task};
use crate::profile::peaks::microbench::MmaBench;

/// `(entry point, CUDA C++)` of each measuring kernel.
pub fn measurement_sources() -> Result<Vec<(String, String)>, CudaTargetError> {
    let _only_us = capture::CAPTURE.lock().unwrap_or_else(|e| e.into_inner());
    capture::take_captured();
    let client = CaptureRuntime::client(&CaptureDevice);
    let buffer = || client.empty(1 << 16);
    // SAFETY: each array is a fresh 64 KiB buffer, longer than `len` elements of any type here.
    let array = |len| unsafe { ArrayArg::from_raw_parts(buffer(), len) };
    let one = CubeCount::Static(1, 1, 1);
    unsafe {
        peak::fma::launch_unchecked::<CaptureRuntime>(&client, one.clone(), CubeDim::new_1d(256), 4, array(256), 8);
        for unit in [ComputeUnit::TensorBf16, ComputeUnit::TensorF16, ComputeUnit::TensorTf32] {
            let mma = MmaBench::new(unit, 1, 8);
            mma.launch(&client, array(mma.operand_len()), array(mma.operand_len()), array(mma.out_len()));
        }
        peak::copy::launch_unchecked::<CaptureRuntime>(
            &client,
            one.clone(),
            CubeDim::new_1d(256),
            4,
            array(256),
            array(256),
        );
        peak::nothing::launch_unchecked::<CaptureRuntime>(&client, one.clone(), CubeDim::new_1d(32), array(1));
    }
    for task in [stamp_task(), hold_task()] {
        client.launch(task, one.clone(), KernelArguments::new().with_buffer(buffer().binding()));
    }
    cubecl::future::block_on(client.sync()).expect("the capture server syncs");
    let mut sources = Vec::new();
    for (i, captured) in capture::take_captured().into_iter().enumerate() {
        let k = captured.map_err(|message| CudaTargetError::Compile {
            launch: i,
            kernel: "a ceiling microbenchmark".into(),
            scope: "calm_kernels::peak".into(),
            message,
        })?;
        sources.push((k.entry, k.source));
    }
    Ok(sources)
}
