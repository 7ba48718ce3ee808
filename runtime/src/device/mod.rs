//! The device executor: runs a [`KernelPlan`] on a CubeCL runtime (Wgpu/Vulkan, or CUDA).
//!
//! An executor is built for one plan: it allocates the memory plan's slots, uploads every
//! launch's metadata once, and keeps the weights on the device between runs. Buffers of floats
//! hold `F` (f32 or f16, the plan's float type); integers i32; u32 and bools u32.

mod convert;
pub mod cuda_env;
mod launch;
pub mod select;
pub mod stamps;
pub mod vulkan_env;

use std::collections::BTreeMap;

use calm_ir::entity::EntityId;
use calm_ir::entity::SecondaryMap;
use calm_ir::DType;
use calm_kernels::elementwise::Buf;
use calm_passes::plan::{BufferId, Kernel, KernelPlan, LaunchId, Port, Role, SlotId, Storage};
use cubecl::prelude::*;
use cubecl::server::Handle;
use thiserror::Error;

use crate::host::{HostData, HostTensor};
use crate::params::ParamStore;

/// Readies the environment the device runtimes read, for a program that runs calm's devices
/// (the `calm` binary). Call first thing in `main`, before any thread starts: it may start the
/// process again and it sets environment variables, which is not safe once other threads read
/// the environment. CUDA: no compat `libcuda` on `LD_LIBRARY_PATH`, `CUDA_PATH` for CubeCL
/// ([`cuda_env`]); Vulkan: no Wayland probe on a headless machine ([`vulkan_env`]).
pub fn prepare_process() {
    cuda_env::prepare_process();
    vulkan_env::prepare_process();
}

#[derive(Debug, Error)]
pub enum DeviceError {
    #[error("missing {what} `{name}`")]
    Missing { what: &'static str, name: String },
    #[error("{what} `{name}` has shape {found:?}, the plan was compiled for {expected:?}")]
    Shape { what: &'static str, name: String, expected: Vec<u64>, found: Vec<usize> },
    #[error("{what} `{name}` holds {found} values, the plan stores {expected:?}")]
    DType { what: &'static str, name: String, found: &'static str, expected: Storage },
    #[error("reading from the device failed: {0}")]
    Read(String),
    #[error("profiling a launch failed: {0}")]
    Profile(String),
    #[error("{0}")]
    Memory(#[from] crate::limits::MemoryError),
    #[error("the device failed mid-run: {0}")]
    Fault(String),
    #[error("input `{input}`: index {index} is out of range for {bound} {what} ({kernel} at {scope})")]
    IndexOutOfRange { input: String, index: i64, bound: u64, what: &'static str, kernel: &'static str, scope: String },
    /// A panic in calm's own code during device work: calm's bug, not the device's.
    #[error("calm's own code failed during device work, {bug}: {0}", bug = select::CALM_BUG)]
    Bug(String),
}

/// Which clock timed a launch.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Timer {
    /// The device's timestamps around the kernel alone (wgpu's timestamp queries).
    Device,
    /// The GPU's global timer, stamped between launches run back to back ([`stamps`]).
    Stamps,
    /// The host clock around the launch and a synchronisation (includes launch overhead).
    Host,
}

/// Element types a plan's floats can be stored in.
pub trait DeviceFloat: Float + CubeElement {
    fn from_f64(v: f64) -> Self;
    fn to_f32(self) -> f32;
}

impl DeviceFloat for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl DeviceFloat for half::bf16 {
    fn from_f64(v: f64) -> Self {
        half::bf16::from_f64(v)
    }
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
}

impl DeviceFloat for half::f16 {
    fn from_f64(v: f64) -> Self {
        half::f16::from_f64(v)
    }
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
}

/// Host values to device bytes of `storage` (floats as `F`).
fn to_bytes<F: DeviceFloat>(data: &HostData, storage: Storage) -> Option<Vec<u8>> {
    Some(match (storage, data) {
        (Storage::Float, HostData::F32(_) | HostData::F64(_)) => {
            let values: Vec<F> = data.to_f64().into_iter().map(F::from_f64).collect();
            F::as_bytes(&values).to_vec()
        }
        (Storage::I32, HostData::I32(v)) => i32::as_bytes(v).to_vec(),
        (Storage::I32, HostData::U32(v)) => v.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect(),
        (Storage::U32, HostData::U32(v)) => u32::as_bytes(v).to_vec(),
        (Storage::U32, HostData::I32(v)) => v.iter().flat_map(|&x| (x as u32).to_le_bytes()).collect(),
        (Storage::Bool, HostData::Bool(v)) => v.iter().flat_map(|&b| (b as u32).to_le_bytes()).collect(),
        _ => return None,
    })
}

/// Device bytes of `storage` to host values of the IR type `dtype`.
fn from_bytes<F: DeviceFloat>(bytes: &[u8], storage: Storage, dtype: DType, len: usize) -> HostData {
    match storage {
        Storage::Float => HostData::F32(F::from_bytes(bytes)[..len].iter().map(|&x| x.to_f32()).collect()),
        Storage::I32 => HostData::I32(i32::from_bytes(bytes)[..len].to_vec()),
        Storage::U32 if dtype == DType::U32 => HostData::U32(u32::from_bytes(bytes)[..len].to_vec()),
        Storage::U32 | Storage::Bool => HostData::Bool(u32::from_bytes(bytes)[..len].iter().map(|&x| x != 0).collect()),
    }
}

/// One plan, ready to run on a device: the plan is all it needs (it never sees the graph).
pub struct DeviceExecutor<R: Runtime, F: DeviceFloat> {
    client: ComputeClient<R>,
    plan: KernelPlan,
    /// The device allocation of each temporary slot (`None` for input and parameter slots).
    slots: SecondaryMap<SlotId, Option<Handle>>,
    /// Uploaded inputs and parameters, by buffer.
    pinned: BTreeMap<BufferId, Handle>,
    /// Each launch's metadata on the device (built once), in launch order.
    metas: Vec<Option<Buf>>,
    /// Times [`load_params`](Self::load_params) uploaded the weights.
    weight_uploads: usize,
    _float: std::marker::PhantomData<F>,
}

impl<R: Runtime, F: DeviceFloat> DeviceExecutor<R, F> {
    /// Allocates the plan's slots and metadata on `client`'s device.
    pub fn new(client: ComputeClient<R>, plan: KernelPlan) -> Self {
        let pinned_slots: Vec<SlotId> = plan
            .buffers
            .iter()
            .filter(|(_, buf)| buf.role != Role::Temp)
            .map(|(b, _)| plan.memory.slot_of[b])
            .collect();
        let mut slots = SecondaryMap::with_default(None);
        for s in plan.memory.slots.keys() {
            // Input and parameter slots are uploaded, not allocated.
            if !pinned_slots.contains(&s) {
                slots[s] = Some(client.empty(plan.slot_bytes(s) as usize));
            }
        }
        let metas = plan.launches.values().map(|l| launch::meta(&l.kernel).map(|m| upload_u32(&client, &m))).collect();
        DeviceExecutor {
            client,
            plan,
            slots,
            pinned: BTreeMap::new(),
            metas,
            weight_uploads: 0,
            _float: std::marker::PhantomData,
        }
    }

    /// Fills every temporary slot with NaN (floats) or all-ones bits (integers), so that an
    /// element a kernel fails to write shows up in the outputs. For tests.
    pub fn poison(&mut self) {
        for (s, slot) in self.plan.memory.slots.iter() {
            if self.slots[s].is_none() {
                continue;
            }
            let len = slot.len as usize;
            let bytes: Vec<u8> = match slot.storage {
                Storage::Float => F::as_bytes(&vec![F::from_f64(f64::NAN); len]).to_vec(),
                _ => vec![0xFF; len * 4],
            };
            self.slots[s] = Some(self.client.create_from_slice(&bytes));
        }
    }

    pub fn plan(&self) -> &KernelPlan {
        &self.plan
    }

    pub fn client(&self) -> &ComputeClient<R> {
        &self.client
    }

    /// Times the weights were uploaded (each [`load_params`](Self::load_params)).
    pub fn weight_uploads(&self) -> usize {
        self.weight_uploads
    }

    fn upload(&mut self, what: &'static str, port: &Port, t: &HostTensor) -> Result<(), DeviceError> {
        let (name, buffer) = (&port.name, port.buffer);
        let expected: Vec<u64> = port.shape.clone();
        if t.shape.iter().map(|&d| d as u64).collect::<Vec<_>>() != expected || t.data.len() != t.numel() {
            return Err(DeviceError::Shape { what, name: name.to_string(), expected, found: t.shape.clone() });
        }
        let transposed;
        let t = if port.transposed {
            transposed = transpose(t);
            &transposed
        } else {
            t
        };
        let storage = self.plan.buffers[buffer].storage;
        let bytes = to_bytes::<F>(&t.data, storage).ok_or(DeviceError::DType {
            what,
            name: name.to_string(),
            found: t.data.type_name(),
            expected: storage,
        })?;
        // A scalar still takes one element.
        let bytes = if bytes.is_empty() { vec![0; storage.size_bytes(self.plan.float) as usize] } else { bytes };
        self.pinned.insert(buffer, self.client.create_from_slice(&bytes));
        Ok(())
    }

    /// Uploads the weights (kept on the device until replaced).
    pub fn load_params(&mut self, params: &ParamStore) -> Result<(), DeviceError> {
        let get =
            |name: &str| params.get(name).ok_or_else(|| DeviceError::Missing { what: "parameter", name: name.into() });
        for p in self.plan.params.clone() {
            match &p.concat {
                None => self.upload("parameter", &p, get(&p.name)?)?,
                Some(c) => {
                    let parts = c.parts.iter().map(|name| get(name)).collect::<Result<Vec<_>, _>>()?;
                    let joined = concat(&parts, c.axis).ok_or_else(|| DeviceError::Shape {
                        what: "parameter",
                        name: p.name.clone(),
                        expected: p.shape.clone(),
                        found: parts.iter().flat_map(|t| t.shape.clone()).collect(),
                    })?;
                    self.upload("parameter", &p, &joined)?;
                }
            }
        }
        self.weight_uploads += 1;
        Ok(())
    }

    /// Gives every input and parameter buffer that holds no upload uninitialised device
    /// memory, so that the plan can be launched without values: for runtimes that compile
    /// instead of running ([`crate::cuda_target`]).
    pub fn allocate_unloaded(&mut self) {
        for (b, buf) in self.plan.buffers.iter() {
            if buf.role != Role::Temp && !self.pinned.contains_key(&b) {
                let bytes = buf.len.max(1) * buf.storage.size_bytes(self.plan.float);
                self.pinned.insert(b, self.client.empty(bytes as usize));
            }
        }
    }

    /// The device handle and length of a buffer.
    fn buf(&self, b: BufferId) -> Buf {
        let len = self.plan.buffers[b].len as usize;
        let handle = match self.pinned.get(&b) {
            Some(h) => h.clone(),
            None => self.slots[self.plan.memory.slot_of[b]].clone().expect("temporary slots are allocated"),
        };
        Buf { handle, len }
    }

    /// Enqueues every launch (after [`load_params`](Self::load_params) and the inputs).
    pub fn launch_all(&self) {
        for i in 0..self.plan.launches.len() {
            self.launch_at(i);
        }
    }

    /// Enqueues the plan's launch `i` alone.
    pub fn launch_at(&self, i: usize) {
        let (l, meta) = (&self.plan.launches[LaunchId::new(i)], &self.metas[i]);
        let (reads, writes) = (self.args(&l.reads), self.args(&l.writes));
        launch::launch::<R, F>(&self.client, l, &reads, &writes, meta.as_ref());
    }

    /// Buffers as a launch takes them: storage and device handle.
    fn args(&self, buffers: &[BufferId]) -> Vec<(Storage, Buf)> {
        buffers.iter().map(|&b| (self.plan.buffers[b].storage, self.buf(b))).collect()
    }

    /// Runs each launch alone under the runtime's profiler and returns its time and whether
    /// the device's own timer measured it (timestamp queries) or the host clock around a
    /// synchronisation (runtimes without them). Inputs must be uploaded by a previous
    /// [`run`](Self::run).
    pub fn profile_launches(&self) -> Result<(Vec<std::time::Duration>, Timer), DeviceError> {
        let mut timer = Timer::Device;
        let times = (0..self.plan.launches.len())
            .map(|i| {
                let (t, clock) = self.profile_range(i..i + 1)?;
                if clock == Timer::Host {
                    timer = Timer::Host;
                }
                Ok(t)
            })
            .collect::<Result<Vec<_>, DeviceError>>()?;
        Ok((times, timer))
    }

    /// Runs the whole plan once under the runtime's profiler: the forward's time, and which
    /// clock measured it.
    pub fn profile_forward(&self) -> Result<(std::time::Duration, Timer), DeviceError> {
        self.profile_range(0..self.plan.launches.len())
    }

    /// Launches `range` of the plan, back to back, in one scope of the runtime's profiler.
    fn profile_range(&self, range: std::ops::Range<usize>) -> Result<(std::time::Duration, Timer), DeviceError> {
        // The profiler takes an owned closure: each launch with its buffers and metadata.
        let calls: Vec<_> = range
            .map(|i| {
                let (l, meta) = (&self.plan.launches[LaunchId::new(i)], &self.metas[i]);
                (l.clone(), self.args(&l.reads), self.args(&l.writes), meta.clone())
            })
            .collect();
        let client = self.client.clone();
        let launch_all = move || {
            for (l, reads, writes, meta) in &calls {
                launch::launch::<R, F>(&client, l, reads, writes, meta.as_ref());
            }
        };
        let ((), duration) =
            self.client.profile(launch_all, "launches").map_err(|e| DeviceError::Profile(format!("{e:?}")))?;
        let timer = match duration.timing_method() {
            cubecl::profile::TimingMethod::System => Timer::Host,
            _ => Timer::Device,
        };
        Ok((cubecl::future::block_on(duration.resolve()).duration(), timer))
    }

    /// Runs the plan on `inputs` and reads every output back.
    pub fn run(&mut self, inputs: &BTreeMap<String, HostTensor>) -> Result<BTreeMap<String, HostTensor>, DeviceError> {
        for p in self.plan.inputs.clone() {
            let t = inputs.get(&p.name).ok_or_else(|| DeviceError::Missing { what: "input", name: p.name.clone() })?;
            self.upload("input", &p, t)?;
        }
        self.check_input_indices(inputs)?;
        self.launch_all();
        let mut out = BTreeMap::new();
        for p in &self.plan.outputs {
            let b = self.buf(p.buffer);
            let bytes = self.client.read_one(b.handle).map_err(|e| DeviceError::Read(format!("{e:?}")))?;
            let len = p.shape.iter().product::<u64>() as usize;
            let storage = self.plan.buffers[p.buffer].storage;
            let data = from_bytes::<F>(&bytes, storage, p.dtype, len);
            out.insert(p.name.clone(), HostTensor::new(p.shape.iter().map(|&d| d as usize).collect(), data));
        }
        Ok(out)
    }

    /// Refuses an input whose values index a gather, scatter-add or one-hot out of range, as
    /// the reference executor does: the kernels themselves read an index out of range as 0
    /// (never out of bounds), so without this check the two executors would disagree. Indices
    /// computed on the device (top-k's) are in range by construction.
    fn check_input_indices(&self, inputs: &BTreeMap<String, HostTensor>) -> Result<(), DeviceError> {
        for l in self.plan.launches.values() {
            let (index_read, bound, what) = match l.kernel {
                Kernel::Gather { rows, .. } | Kernel::ScatterAdd { rows, .. } => (1, rows, "rows"),
                Kernel::OneHot { depth, .. } => (0, depth, "classes"),
                _ => continue,
            };
            let Some(port) = l.reads.get(index_read).and_then(|&b| self.plan.inputs.iter().find(|p| p.buffer == b))
            else {
                continue;
            };
            let Some(t) = inputs.get(&port.name) else { continue };
            if let Some(&bad) = t.data.to_f64().iter().find(|&&i| i < 0.0 || i >= bound as f64) {
                return Err(DeviceError::IndexOutOfRange {
                    input: port.name.clone(),
                    index: bad as i64,
                    bound,
                    what,
                    kernel: l.kernel.name(),
                    scope: l.scope.clone(),
                });
            }
        }
        Ok(())
    }
}

/// `parts` joined along `axis`, or `None` if their shapes disagree elsewhere.
fn concat(parts: &[&HostTensor], axis: usize) -> Option<HostTensor> {
    let first = &parts.first()?.shape;
    let same_rest = |s: &Vec<usize>| {
        s.len() == first.len() && axis < s.len() && (0..s.len()).all(|d| d == axis || s[d] == first[d])
    };
    if !parts.iter().all(|t| same_rest(&t.shape)) {
        return None;
    }
    let (outer, inner): (usize, usize) = (first[..axis].iter().product(), first[axis + 1..].iter().product());
    let data: Vec<Vec<f64>> = parts.iter().map(|t| t.data.to_f64()).collect();
    let mut out = Vec::with_capacity(data.iter().map(Vec::len).sum());
    for o in 0..outer {
        for (t, d) in parts.iter().zip(&data) {
            let chunk = t.shape[axis] * inner;
            out.extend_from_slice(&d[o * chunk..(o + 1) * chunk]);
        }
    }
    let mut shape = first.clone();
    shape[axis] = parts.iter().map(|t| t.shape[axis]).sum();
    Some(HostTensor::new(shape, HostData::F64(out)))
}

/// A rank-2 host tensor transposed (float data; others are never stored transposed).
fn transpose(t: &HostTensor) -> HostTensor {
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let v = t.data.to_f64();
    let out: Vec<f64> = (0..rows * cols).map(|i| v[(i % rows) * cols + i / rows]).collect();
    HostTensor::new(vec![cols, rows], HostData::F64(out))
}

fn upload_u32<R: Runtime>(client: &ComputeClient<R>, v: &[u32]) -> Buf {
    Buf { handle: client.create_from_slice(u32::as_bytes(v)), len: v.len() }
}
