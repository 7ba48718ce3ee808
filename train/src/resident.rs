//! A training run's weights and AdamW's moments kept on the backend between steps: a step
//! sends the batch and reads back the loss terms, nothing else. The host's [`ParamStore`] and
//! [`AdamW`] are brought up to date only when a checkpoint or a validation needs them
//! ([`Resident::download`]). On a GPU this is what keeps 430 MB of weights and as many of
//! gradients (the paper preset) off the bus every step.
//!
//! The update is [`AdamW::step`]'s, written in tensor ops in the same order, so that on Flex
//! it gives the host's values bit for bit (`train/tests/train.rs`). Flex runs keep their
//! weights on the host all the same ([`Resident::Host`]): there the host's one-pass update is
//! faster than Burn's op by op.

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{FloatDType, TensorData};
use calm_ir::Graph;
use calm_passes::plan::Precision;
use calm_runtime::host::HostTensor;
use calm_runtime::params::ParamStore;
use calm_runtime::reference::{gradients, gradients_loaded, Compute, Gradients, LoadedParams, Reference, RunError};

use crate::backend::Backend as Which;
use crate::optim::AdamW;
use crate::TrainError;

/// What a step did.
pub enum Step {
    /// The weights were updated; the step's loss and every output of its forward pass.
    Done { loss: f64, outputs: BTreeMap<String, HostTensor> },
    /// The loss or a gradient is not finite: nothing was updated.
    NotFinite { loss: f64 },
}

/// The weights, moments and AdamW's step count on backend `B`.
pub struct OnBackend<B: Backend> {
    device: B::Device,
    compute: Compute,
    weights: LoadedParams<B>,
    m: BTreeMap<String, FloatTensor<B>>,
    v: BTreeMap<String, FloatTensor<B>>,
    /// Hyperparameters and step count (its moments live in `m` and `v` meanwhile).
    adam: AdamW,
}

/// Where a run's weights and AdamW's moments live between steps.
pub enum Resident {
    /// In the host's `ParamStore` and `AdamW`, updated by [`AdamW::step`]: for Flex, whose
    /// tensors are host memory anyway, and where the host's one-pass update beats Burn's
    /// op-by-op one (a paper-preset step took 2.75 s this way, 6.1 s on the backend;
    /// BENCHMARKS.md).
    Host {
        products: Precision,
    },
    Flex(OnBackend<burn::backend::flex::Flex>),
    Wgpu(OnBackend<burn::backend::wgpu::Wgpu>),
    Cuda(OnBackend<burn::backend::Cuda>),
}

impl Resident {
    /// Where `backend` keeps a run's weights: on the host for Flex, else on the device
    /// ([`Resident::on_device`]).
    pub fn upload(
        backend: Which,
        products: Precision,
        g: &Graph,
        params: &ParamStore,
        adam: &mut AdamW,
    ) -> Result<Resident, TrainError> {
        match backend {
            Which::Flex => Ok(Resident::Host { products }),
            _ => Resident::on_device(backend, products, g, params, adam),
        }
    }

    /// `params` and `adam`'s moments (zeros where it has none yet) uploaded to `backend`, for
    /// training graph `g` (as the reference executor runs it); `adam`'s host moments are
    /// dropped meanwhile ([`Resident::download`] brings them back).
    pub fn on_device(
        backend: Which,
        products: Precision,
        g: &Graph,
        params: &ParamStore,
        adam: &mut AdamW,
    ) -> Result<Resident, TrainError> {
        let compute = Compute { float: FloatDType::F32, products };
        let resident = crate::on_backend!(backend, |B, device| {
            let state = OnBackend::<B>::upload(device, compute, g, params, adam)?;
            Resident::from(state)
        });
        (adam.m, adam.v) = Default::default();
        Ok(resident)
    }

    /// One step on `inputs`: the gradients of `g`'s `loss`, then AdamW at rate `lr` when the
    /// loss and every gradient are finite. `params` and `adam` are the host's (updated here
    /// when the weights live there).
    pub fn step(
        &mut self,
        g: &Graph,
        inputs: &BTreeMap<String, HostTensor>,
        (lr, check_numerics): (f64, bool),
        params: &mut ParamStore,
        adam: &mut AdamW,
    ) -> Result<Step, RunError> {
        // Fault injection for the test of the fault path: the device failing mid-step, as a
        // lost GPU makes the runtime panic.
        if std::env::var_os("CALM_INJECT_FAULT").is_some_and(|v| v == "train-step") {
            let lost = "device lost (injected by CALM_INJECT_FAULT=train-step)";
            std::panic::panic_any(calm_runtime::device::select::DeviceFailure(lost.into()));
        }
        match self {
            Resident::Host { products } => {
                let grads = gradients_on(Which::Flex, *products, g, params, inputs, check_numerics)?;
                if !grads.loss.is_finite() || grads.grads.values().any(|t| !t.data.all_finite()) {
                    return Ok(Step::NotFinite { loss: grads.loss });
                }
                adam.step(params, &grads.grads, lr);
                Ok(Step::Done { loss: grads.loss, outputs: grads.outputs })
            }
            Resident::Flex(state) => state.step(g, inputs, lr, check_numerics),
            Resident::Wgpu(state) => state.step(g, inputs, lr, check_numerics),
            Resident::Cuda(state) => state.step(g, inputs, lr, check_numerics),
        }
    }

    /// Brings `params` and `adam` up to date with the backend's (every trained weight, both
    /// moments, the step count); nothing to do when they live on the host.
    pub fn download(&self, params: &mut ParamStore, adam: &mut AdamW) -> Result<(), TrainError> {
        match self {
            Resident::Host { .. } => Ok(()),
            Resident::Flex(state) => state.download(params, adam),
            Resident::Wgpu(state) => state.download(params, adam),
            Resident::Cuda(state) => state.download(params, adam),
        }
    }
}

/// One step's loss and gradients of `g`'s `loss` on `backend`, in f32 with `products`
/// precision, read back to the host (whose `params` they are of).
pub(crate) fn gradients_on(
    backend: Which,
    products: Precision,
    g: &Graph,
    params: &ParamStore,
    inputs: &BTreeMap<String, HostTensor>,
    check_numerics: bool,
) -> Result<Gradients, RunError> {
    let compute = Compute { float: FloatDType::F32, products };
    crate::on_backend!(backend, |B, device| gradients::<B>(device, compute, g, params, inputs, "loss", check_numerics))
}

macro_rules! from_state {
    ($($variant:ident: $backend:ty),*) => {$(
        impl From<OnBackend<$backend>> for Resident {
            fn from(state: OnBackend<$backend>) -> Resident {
                Resident::$variant(state)
            }
        }
    )*};
}
from_state!(Flex: burn::backend::flex::Flex, Wgpu: burn::backend::wgpu::Wgpu, Cuda: burn::backend::Cuda);

impl<B: Backend> OnBackend<B> {
    fn upload(
        device: B::Device,
        compute: Compute,
        g: &Graph,
        params: &ParamStore,
        adam: &AdamW,
    ) -> Result<Self, TrainError> {
        let weights = Reference::<B>::new(device.clone(), compute.float).load(g, params)?;
        let (mut m, mut v) = (BTreeMap::new(), BTreeMap::new());
        // The parameters autodiff tracks (frozen ones are constants), with their shapes.
        let trainable: Vec<(String, Vec<usize>)> = g
            .nodes
            .iter()
            .filter_map(|(_, node)| match &node.op {
                calm_ir::Op::Param { name, frozen: false, .. } => Some(name.as_str()),
                _ => None,
            })
            .filter_map(|name| weights.float(name).map(|(shape, _)| (name.to_string(), shape.to_vec())))
            .collect();
        for (name, shape) in trainable {
            let n: usize = shape.iter().product();
            for (moments, host) in [(&mut m, &adam.m), (&mut v, &adam.v)] {
                let values = host.get(&name).cloned().unwrap_or_else(|| vec![0.0; n]);
                let data = TensorData::new(values, shape.clone());
                moments.insert(name.clone(), B::float_from_data(data, &device));
            }
        }
        let adam = AdamW { m: BTreeMap::new(), v: BTreeMap::new(), ..adam.clone() };
        Ok(OnBackend { device, compute, weights, m, v, adam })
    }

    fn step(
        &mut self,
        g: &Graph,
        inputs: &BTreeMap<String, HostTensor>,
        lr: f64,
        check_numerics: bool,
    ) -> Result<Step, RunError> {
        let d = gradients_loaded(self.device.clone(), self.compute, g, &self.weights, inputs, "loss", check_numerics)?;
        // One scalar read for all gradients: `Σ sum(g·0)` is NaN exactly when some gradient
        // holds a NaN or an infinity.
        let mut probe: Option<FloatTensor<B>> = None;
        for (_, grad) in d.grads.values() {
            if let Some(grad) = grad {
                let zeroed = B::float_sum(B::float_mul_scalar(grad.clone(), 0.0.into()));
                probe = Some(match probe {
                    Some(p) => B::float_add(p, zeroed),
                    None => zeroed,
                });
            }
        }
        let probe_finite = match probe {
            Some(p) => read::<B>(p)?.as_slice::<f32>().is_ok_and(|v| v[0].is_finite()),
            None => true,
        };
        if !d.loss.is_finite() || !probe_finite {
            return Ok(Step::NotFinite { loss: d.loss });
        }
        self.adam.steps += 1;
        let t = self.adam.steps as i32;
        let (b1, b2, eps) = (self.adam.beta1 as f32, self.adam.beta2 as f32, self.adam.eps as f32);
        // As `AdamW::step`: bias corrections folded into the rate and the second moment's scale.
        let rate = (lr / (1.0 - self.adam.beta1.powi(t))) as f32;
        let v_scale = (1.0 / (1.0 - self.adam.beta2.powi(t))) as f32;
        for (name, (shape, grad)) in d.grads {
            let Some((_, w)) = self.weights.float(&name) else { continue };
            let w = w.clone();
            // The loss does not depend on it: a zero gradient, as the host's AdamW gets.
            let g = grad.unwrap_or_else(|| B::float_zeros(shape.clone().into(), &self.device, FloatDType::F32));
            let decay = if shape.len() >= 2 { (lr * self.adam.weight_decay) as f32 } else { 0.0 };
            let m = self.m.remove(&name).expect("a moment per trainable parameter");
            let v = self.v.remove(&name).expect("a moment per trainable parameter");
            let scalar = |x: f32| -> burn::tensor::Scalar { (x as f64).into() };
            let m = B::float_add(B::float_mul_scalar(m, scalar(b1)), B::float_mul_scalar(g.clone(), scalar(1.0 - b1)));
            // `(1 − β₂)·g·g`, multiplied in the host's order.
            let g2 = B::float_mul(B::float_mul_scalar(g.clone(), scalar(1.0 - b2)), g);
            let v = B::float_add(B::float_mul_scalar(v, scalar(b2)), g2);
            let denominator =
                B::float_add_scalar(B::float_sqrt(B::float_mul_scalar(v.clone(), scalar(v_scale))), scalar(eps));
            let mut update = B::float_div(B::float_mul_scalar(m.clone(), scalar(rate)), denominator);
            if decay != 0.0 {
                update = B::float_add(update, B::float_mul_scalar(w.clone(), scalar(decay)));
            }
            self.weights.set(&name, B::float_sub(w, update));
            self.m.insert(name.clone(), m);
            self.v.insert(name, v);
        }
        Ok(Step::Done { loss: d.loss, outputs: d.outputs })
    }

    fn download(&self, params: &mut ParamStore, adam: &mut AdamW) -> Result<(), TrainError> {
        // The trained weights: those with moments.
        for name in self.m.keys() {
            let t = self.weights.to_host(name)?;
            params.set(name, t.to_f32().expect("weights are floats"));
        }
        for (moments, host) in [(&self.m, &mut adam.m), (&self.v, &mut adam.v)] {
            for (name, t) in moments {
                host.insert(name.clone(), read::<B>(t.clone())?.to_vec::<f32>().expect("f32 moments"));
            }
        }
        adam.steps = self.adam.steps;
        Ok(())
    }
}

/// A tensor read back to the host, as f32.
fn read<B: Backend>(t: FloatTensor<B>) -> Result<TensorData, RunError> {
    let data = burn::tensor::read_sync(B::float_into_data(t))
        .map_err(|e| RunError::Device(calm_runtime::reference::DeviceError(format!("{e:?}"))))?;
    Ok(data.convert::<f32>())
}
