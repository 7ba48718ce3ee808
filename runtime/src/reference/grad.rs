//! Gradients of a scalar output with respect to every parameter, by running the graph on
//! `Autodiff<B>`: read back to the host ([`gradients`]), or kept on the backend for an
//! optimizer that runs there too ([`gradients_loaded`]).

use std::collections::BTreeMap;

use burn::backend::Autodiff;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::FloatDType;
use calm_ir::{Graph, Op};

use super::value::{Compute, Ctx, Data, Value};
use super::{bind_inputs, evaluate, feed, to_host, Evaluation, Feed, LoadedParams, RunError};
use crate::host::{HostData, HostTensor};
use crate::params::ParamStore;

type Ad<B> = Autodiff<B>;

/// A trainable parameter's shape and gradient (`None`: the loss does not depend on it).
pub type ShapedGradient<B> = (Vec<usize>, Option<FloatTensor<B>>);

/// A loss value, its gradients by parameter name, and every output of the same forward pass.
pub struct Gradients {
    pub loss: f64,
    pub grads: BTreeMap<String, HostTensor>,
    pub outputs: BTreeMap<String, HostTensor>,
}

/// [`Gradients`] left on the backend: each trainable parameter's shape and gradient (`None`
/// where the loss does not depend on it).
pub struct DeviceGradients<B: Backend> {
    pub loss: f64,
    pub grads: BTreeMap<String, ShapedGradient<B>>,
    pub outputs: BTreeMap<String, HostTensor>,
}

/// Runs `g` on `Autodiff<B>` and differentiates the scalar output `loss` with respect to every
/// trainable (not frozen) parameter. Parameters the loss does not depend on get zero gradients.
/// Products round their operands as `compute` says (mixed precision); the gradients come back
/// in its float type. `check_numerics` checks the forward pass node by node (see
/// [`super::Reference::checking_numerics`]).
pub fn gradients<B: Backend>(
    device: B::Device,
    compute: impl Into<Compute>,
    g: &Graph,
    params: &ParamStore,
    inputs: &BTreeMap<String, HostTensor>,
    loss: &str,
    check_numerics: bool,
) -> Result<Gradients, RunError> {
    let ctx: Ctx<Ad<B>> = Ctx::new(device, compute);
    let float = ctx.float;
    let on_device = differentiate(&ctx, g, inputs, loss, check_numerics, &mut |op| feed(&ctx, op, params, inputs))?;
    // Read back on every core, largest first: a weight used transposed
    // (`x·wᵀ`) has a transposed gradient, made contiguous on the way (100 M values a step at
    // the paper preset).
    let mut pending: Vec<(String, ShapedGradient<B>)> = on_device.grads.into_iter().collect();
    pending.sort_by_key(|(_, (shape, _))| std::cmp::Reverse(shape.iter().product::<usize>()));
    let read = |(name, (shape, grad)): (String, ShapedGradient<B>)| {
        let host = match grad {
            Some(grad) => Value::<B>::float(shape, grad).into_host()?,
            // The loss does not depend on this parameter.
            None => {
                let n = shape.iter().product();
                match float {
                    FloatDType::F64 => HostTensor::new(shape, HostData::F64(vec![0.0; n])),
                    _ => HostTensor::f32(shape, vec![0.0; n]),
                }
            }
        };
        Ok::<_, RunError>((name, host))
    };
    let grads = crate::parallel::on_every_core(pending, read).into_iter().collect::<Result<BTreeMap<_, _>, _>>()?;
    Ok(Gradients { loss: on_device.loss, grads, outputs: on_device.outputs })
}

/// [`gradients`] with the weights already on the backend (`weights`, loaded by a
/// [`super::Reference`] of the same backend and float type) and the gradients left there: a
/// training step that moves no weight between host and device (only the inputs, the loss
/// terms and the outputs).
pub fn gradients_loaded<B: Backend>(
    device: B::Device,
    compute: impl Into<Compute>,
    g: &Graph,
    weights: &LoadedParams<B>,
    inputs: &BTreeMap<String, HostTensor>,
    loss: &str,
    check_numerics: bool,
) -> Result<DeviceGradients<B>, RunError> {
    let ctx: Ctx<Ad<B>> = Ctx::new(device, compute);
    if weights.float != ctx.float {
        return Err(RunError::LoadedFloat { loaded: weights.float, computes: ctx.float });
    }
    let no_params = ParamStore::default();
    differentiate(&ctx, g, inputs, loss, check_numerics, &mut |op| match op {
        Op::Param { .. } => {
            let value = weights.get(op)?;
            let Data::Float(t) = &value.data else { unreachable!("parameters are floats") };
            Ok(Value::float(value.shape.clone(), Ad::<B>::from_inner(t.clone())))
        }
        op => feed(&ctx, op, &no_params, inputs),
    })
}

/// The forward pass with every trainable parameter (as `leaf` supplies it) tracked, then the
/// backward pass from `loss`.
fn differentiate<B: Backend>(
    ctx: &Ctx<Ad<B>>,
    g: &Graph,
    inputs: &BTreeMap<String, HostTensor>,
    loss: &str,
    check_numerics: bool,
    leaf: &mut Feed<'_, Ad<B>>,
) -> Result<DeviceGradients<B>, RunError> {
    let bindings = bind_inputs(g, inputs)?;
    let loss_value = g.output(loss).ok_or_else(|| RunError::UnknownOutput(loss.to_string()))?;
    let loss_type = g.value_type(loss_value);
    if !loss_type.shape.is_empty() || !loss_type.dtype.is_float() {
        return Err(RunError::Loss { name: loss.to_string(), found: loss_type.to_string() });
    }
    let mut tracked: BTreeMap<String, (Vec<usize>, FloatTensor<Ad<B>>)> = BTreeMap::new();
    let how = Evaluation { check_numerics, autodiff: true };
    let outputs = evaluate(ctx, g, &bindings, how, &mut |op| {
        let value = leaf(op)?;
        // Frozen parameters (a pretrained backbone) are constants here.
        let Op::Param { name, frozen: false, .. } = op else { return Ok(value) };
        let Data::Float(t) = value.data else { unreachable!("parameters are floats") };
        let t = Ad::<B>::float_set_require_grad(t, true);
        tracked.insert(name.clone(), (value.shape.clone(), t.clone()));
        Ok(Value::float(value.shape, t))
    })?;
    let loss_tensor = outputs
        .iter()
        .find_map(|(name, v)| match &v.data {
            Data::Float(t) if name == loss => Some(t.clone()),
            _ => None,
        })
        .expect("the loss is a float output, checked above");
    let host_outputs = to_host(g, outputs)?;
    let loss_f64 = host_outputs[loss].data.to_f64()[0];
    let mut grads = Ad::<B>::backward(loss_tensor);
    // Removed, not cloned, so that reading a gradient to the host can take its memory.
    let grads = tracked
        .into_iter()
        .map(|(name, (shape, t))| {
            let grad = Ad::<B>::grad_remove(&t, &mut grads);
            (name, (shape, grad))
        })
        .collect();
    Ok(DeviceGradients { loss: loss_f64, grads, outputs: host_outputs })
}
