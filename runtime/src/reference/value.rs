//! Values of the reference executor: Burn tensor primitives of any rank with their logical
//! shape, and the conversions to and from host tensors.
//!
//! Burn tensors have rank ≥ 1, so a scalar (logical shape `[]`) is stored with shape `[1]`.

use burn::tensor::backend::Backend;
use burn::tensor::ops::{BoolTensor, FloatTensor, IntTensor};
use burn::tensor::{get_device_settings, read_sync, BoolDType, DType, FloatDType, IntDType, Shape, TensorData};
use calm_passes::plan::Precision;

use crate::host::{HostData, HostTensor};

/// A device read that failed (device lost, out of memory).
#[derive(Debug, Clone, thiserror::Error)]
#[error("reading from the device failed: {0}")]
pub struct DeviceError(pub String);

fn read<F: std::future::Future<Output = Result<TensorData, E>>, E: std::fmt::Debug>(
    f: F,
) -> Result<TensorData, DeviceError> {
    read_sync(f).map_err(|e| DeviceError(format!("{e:?}")))
}

/// What an executor computes in: its float type, and how exactly its matrix products are
/// computed (mixed precision for training: `--precision`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Compute {
    /// F64 or F32 (anything else is taken as F32).
    pub float: FloatDType,
    /// `Highest`: products of the float type. `High`: operands rounded to TF32 (11 significant
    /// bits), `Default`: to bf16 (8), with products and sums in the float type, as tensor cores
    /// compute them; values outside products stay in the float type (f32 master weights).
    pub products: Precision,
}

impl From<FloatDType> for Compute {
    fn from(float: FloatDType) -> Compute {
        Compute { float, products: Precision::Highest }
    }
}

/// Device, and the element types the executor computes in.
pub struct Ctx<B: Backend> {
    pub device: B::Device,
    /// f64 on CPU backends (the oracle), f32 where the device has no f64.
    pub float: FloatDType,
    /// How matrix products round their operands ([`Compute::products`]).
    pub products: Precision,
    /// The backend computes bf16 products natively (Burn's CUDA backend, on tensor cores):
    /// operands are cast to bf16 there; elsewhere their rounding is emulated in f32.
    pub native_bf16: bool,
    pub int: IntDType,
    pub bool: BoolDType,
    /// On Burn Flex (or autodiff over it), whose kernels some ops use differently: broadcasts
    /// its SIMD paths do not take are made dense first (`ops::broadcast_pair`), and GELU is its
    /// one-pass exact GELU, whose backward is exact too (Burn's default is the tanh form).
    pub on_flex: bool,
}

impl<B: Backend> Ctx<B> {
    /// `float` is normalised to F64 or F32. Computing in f64 (the CPU oracle), integers are i64,
    /// so every u32 and i32 value is exact; otherwise they use the device's integer type.
    pub fn new(device: B::Device, compute: impl Into<Compute>) -> Self {
        let Compute { float, products } = compute.into();
        let settings = get_device_settings::<B>(&device);
        let (float, int) = match float {
            FloatDType::F64 => (FloatDType::F64, IntDType::I64),
            _ => (FloatDType::F32, settings.int_dtype),
        };
        // `autodiff<flex>` as well: the backward pass runs on Flex too.
        let name = B::name(&device);
        let (on_flex, native_bf16) = (name.contains("flex"), name.contains("cuda"));
        Ctx { device, float, products, native_bf16, int, bool: settings.bool_dtype, on_flex }
    }

    fn float_dtype(&self) -> DType {
        match self.float {
            FloatDType::F64 => DType::F64,
            _ => DType::F32,
        }
    }
}

/// A tensor primitive of one of the three kinds.
pub enum Data<B: Backend> {
    Float(FloatTensor<B>),
    Int(IntTensor<B>),
    Bool(BoolTensor<B>),
}

impl<B: Backend> Clone for Data<B> {
    fn clone(&self) -> Self {
        match self {
            Data::Float(t) => Data::Float(t.clone()),
            Data::Int(t) => Data::Int(t.clone()),
            Data::Bool(t) => Data::Bool(t.clone()),
        }
    }
}

/// A value: its logical shape and its data.
pub struct Value<B: Backend> {
    pub shape: Vec<usize>,
    pub data: Data<B>,
}

impl<B: Backend> Clone for Value<B> {
    fn clone(&self) -> Self {
        Value { shape: self.shape.clone(), data: self.data.clone() }
    }
}

/// The shape Burn stores a logical shape with (scalars as `[1]`).
pub fn physical(shape: &[usize]) -> Shape {
    if shape.is_empty() {
        Shape::new([1])
    } else {
        Shape::from(shape.to_vec())
    }
}

impl<B: Backend> Value<B> {
    pub fn float(shape: Vec<usize>, t: FloatTensor<B>) -> Self {
        Value { shape, data: Data::Float(t) }
    }

    pub fn int(shape: Vec<usize>, t: IntTensor<B>) -> Self {
        Value { shape, data: Data::Int(t) }
    }

    pub fn bool(shape: Vec<usize>, t: BoolTensor<B>) -> Self {
        Value { shape, data: Data::Bool(t) }
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Host f64 values → a float tensor in the executor's float type.
    pub fn from_f64(ctx: &Ctx<B>, shape: Vec<usize>, values: Vec<f64>) -> Self {
        let data = TensorData::new(values, physical(&shape)).convert_dtype(ctx.float_dtype());
        Value::float(shape, B::float_from_data(data, &ctx.device))
    }

    /// Integers in the executor's integer type (values beyond it wrap, so u32 seeds keep their bits).
    pub fn from_ints(ctx: &Ctx<B>, shape: Vec<usize>, values: Vec<i64>) -> Self {
        let data = TensorData::new(values, physical(&shape)).convert_dtype(DType::from(ctx.int));
        Value::int(shape, B::int_from_data(data, &ctx.device))
    }

    /// Bools go through integers, because devices store them differently (bytes, u32 words).
    pub fn from_bool(ctx: &Ctx<B>, shape: Vec<usize>, values: Vec<bool>) -> Self {
        let ints = Value::<B>::from_ints(ctx, shape.clone(), values.into_iter().map(i64::from).collect());
        let Data::Int(t) = ints.data else { unreachable!("from_ints makes ints") };
        Value::bool(shape, B::int_not_equal_elem(t, 0.into(), ctx.bool))
    }

    /// A host tensor as a value: floats in the executor's float type, integers as its ints
    /// (u32 bit-cast to i32, so seeds survive the round trip).
    pub fn from_host(ctx: &Ctx<B>, t: &HostTensor) -> Self {
        match &t.data {
            // Same width: one copy, no detour through f64 (the weights of a training step are
            // 100 M of these each step).
            HostData::F32(v) if ctx.float == FloatDType::F32 => Value::float(
                t.shape.clone(),
                B::float_from_data(TensorData::new(v.clone(), physical(&t.shape)), &ctx.device),
            ),
            HostData::F32(_) | HostData::F64(_) => Value::from_f64(ctx, t.shape.clone(), t.data.to_f64()),
            HostData::I32(v) => Value::from_ints(ctx, t.shape.clone(), v.iter().map(|&x| x as i64).collect()),
            HostData::U32(v) => Value::from_ints(ctx, t.shape.clone(), v.iter().map(|&x| x as i64).collect()),
            HostData::Bool(v) => Value::from_bool(ctx, t.shape.clone(), v.clone()),
        }
    }

    /// Reads the value back to the host as the IR type `dtype` says: floats as f64 (or f32 when
    /// computed in f32), u32 and i32 as such, bools as bools.
    pub fn to_host_as(&self, dtype: calm_ir::DType) -> Result<HostTensor, DeviceError> {
        let t = self.to_host()?;
        Ok(match (dtype, &t.data) {
            (calm_ir::DType::U32, HostData::I32(_)) => {
                let v = self.host_ints()?.into_iter().map(|x| x as u32).collect();
                HostTensor::new(t.shape, HostData::U32(v))
            }
            _ => t,
        })
    }

    /// Reads the value back to the host: floats as f64 (or f32 when computed in f32), ints as
    /// i32, bools as bools.
    pub fn to_host(&self) -> Result<HostTensor, DeviceError> {
        self.clone().into_host()
    }

    /// [`Value::to_host`], consuming the value: a tensor nothing else holds moves its memory to
    /// the host without a copy on CPU backends (gradients, a step's largest read).
    pub fn into_host(self) -> Result<HostTensor, DeviceError> {
        let host = match self.data {
            Data::Float(t) => {
                let data = read(B::float_into_data(t))?;
                let vec = |e| DeviceError(format!("{e:?}"));
                match data.dtype {
                    DType::F64 => HostData::F64(data.into_vec::<f64>().map_err(vec)?),
                    DType::F32 => HostData::F32(data.into_vec::<f32>().map_err(vec)?),
                    _ => HostData::F32(data.iter::<f32>().collect()),
                }
            }
            Data::Int(t) => HostData::I32(read(B::int_into_data(t))?.iter::<i64>().map(|x| x as i32).collect()),
            // Through integers, as for `from_bool`: devices store bools differently.
            Data::Bool(t) => {
                let ints = read(B::int_into_data(B::bool_into_int(t, IntDType::I32)))?;
                HostData::Bool(ints.iter::<i64>().map(|x| x != 0).collect())
            }
        };
        Ok(HostTensor::new(self.shape, host))
    }

    /// Integer values on the host (for indices the executor must check or transform).
    pub fn host_ints(&self) -> Result<Vec<i64>, DeviceError> {
        match &self.data {
            Data::Int(t) => Ok(read(B::int_into_data(t.clone()))?.iter::<i64>().collect()),
            Data::Float(_) | Data::Bool(_) => Ok(self.to_host()?.data.to_f64().into_iter().map(|x| x as i64).collect()),
        }
    }

    /// Float values on the host, as f64.
    pub fn host_f64(&self) -> Result<Vec<f64>, DeviceError> {
        Ok(self.to_host()?.data.to_f64())
    }
}
