//! Element types, dimensions (fixed or symbolic), shapes and symbol bindings.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Element type of a tensor.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F16,
    Bf16,
    I32,
    U32,
    Bool,
}

impl DType {
    pub const ALL: [DType; 6] = [DType::F32, DType::F16, DType::Bf16, DType::I32, DType::U32, DType::Bool];

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
            DType::I32 => "i32",
            DType::U32 => "u32",
            DType::Bool => "bool",
        }
    }

    /// Bytes per element as stored on a device (bool is one byte).
    pub fn size_bytes(self) -> u64 {
        match self {
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F16 | DType::Bf16 => 2,
            DType::Bool => 1,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::Bf16)
    }

    pub fn is_int(self) -> bool {
        matches!(self, DType::I32 | DType::U32)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        DType::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| format!("unknown dtype `{s}` (expected one of f32, f16, bf16, i32, u32, bool)"))
    }
}

/// A symbol's name: an identifier such as `batch` or `tokens`.
pub fn is_valid_symbol(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// One dimension: a fixed size, or a named symbol bound at compile or run time.
///
/// Written in JSON as a number (`384`) or a string (`"batch"`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(u64),
    Sym(String),
}

impl<'de> Deserialize<'de> for Dim {
    /// Accepts a positive integer or a symbol name; says which rule a bad dimension breaks.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct DimVisitor;
        impl serde::de::Visitor<'_> for DimVisitor {
            type Value = Dim;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a positive integer or a symbol name")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Dim, E> {
                if n == 0 {
                    return Err(E::custom("dimension 0 is not positive"));
                }
                Ok(Dim::Fixed(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Dim, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!("dimension {n} is not positive"))),
                }
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Dim, E> {
                Err(E::custom(format!("dimension {n} is not a positive integer")))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Dim, E> {
                if !is_valid_symbol(s) {
                    return Err(E::custom(format!("`{s}` is not a valid symbol name")));
                }
                Ok(Dim::Sym(s.to_string()))
            }
        }
        d.deserialize_any(DimVisitor)
    }
}

impl Dim {
    pub fn sym(name: &str) -> Dim {
        Dim::Sym(name.to_string())
    }

    pub fn fixed(&self) -> Option<u64> {
        match self {
            Dim::Fixed(n) => Some(*n),
            Dim::Sym(_) => None,
        }
    }

    pub fn is_one(&self) -> bool {
        *self == Dim::Fixed(1)
    }

    /// The concrete size under `bindings`.
    pub fn resolve(&self, bindings: &Bindings) -> Result<u64, ShapeError> {
        match self {
            Dim::Fixed(n) => Ok(*n),
            Dim::Sym(s) => bindings.get(s).ok_or_else(|| ShapeError::Unbound(s.clone())),
        }
    }
}

impl From<u64> for Dim {
    fn from(n: u64) -> Dim {
        Dim::Fixed(n)
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Dim {
        Dim::Fixed(n as u64)
    }
}

impl From<&str> for Dim {
    fn from(s: &str) -> Dim {
        Dim::Sym(s.to_string())
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
        }
    }
}

/// A list of dimensions, outermost first. The empty shape is a scalar.
pub type Shape = Vec<Dim>;

/// Builds a shape from anything convertible to [`Dim`]: `shape![ "batch", 384usize ]`.
#[macro_export]
macro_rules! shape {
    ($($d:expr),* $(,)?) => { vec![$($crate::types::Dim::from($d)),*] };
}

/// Errors about shapes and sizes that are independent of any node.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ShapeError {
    #[error("symbol `{0}` is not bound (bind it, e.g. --bind {0}=N)")]
    Unbound(String),
    #[error("size of {0} overflows 64 bits")]
    Overflow(String),
    #[error("bad binding `{0}`: expected NAME=N with N a positive integer")]
    BadBinding(String),
}

/// The type of a tensor value: element type and shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Shape,
}

impl TensorType {
    pub fn new(dtype: DType, shape: Shape) -> Self {
        TensorType { dtype, shape }
    }

    pub fn scalar(dtype: DType) -> Self {
        TensorType { dtype, shape: Vec::new() }
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// The symbols this type mentions, in order of first appearance.
    pub fn symbols(&self) -> impl Iterator<Item = &str> {
        self.shape.iter().filter_map(|d| match d {
            Dim::Sym(s) => Some(s.as_str()),
            Dim::Fixed(_) => None,
        })
    }

    pub fn is_fully_fixed(&self) -> bool {
        self.shape.iter().all(|d| d.fixed().is_some())
    }

    /// The concrete dimensions under `bindings`.
    pub fn dims(&self, bindings: &Bindings) -> Result<Vec<u64>, ShapeError> {
        self.shape.iter().map(|d| d.resolve(bindings)).collect()
    }

    /// Number of elements under `bindings`, checked for overflow.
    pub fn numel(&self, bindings: &Bindings) -> Result<u64, ShapeError> {
        self.dims(bindings)?
            .into_iter()
            .try_fold(1u64, |acc, d| acc.checked_mul(d))
            .ok_or_else(|| ShapeError::Overflow(self.to_string()))
    }

    /// Size in bytes under `bindings`, checked for overflow.
    pub fn size_bytes(&self, bindings: &Bindings) -> Result<u64, ShapeError> {
        self.numel(bindings)?.checked_mul(self.dtype.size_bytes()).ok_or_else(|| ShapeError::Overflow(self.to_string()))
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[", self.dtype)?;
        for (i, d) in self.shape.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// Elements of a type's fixed dimensions (symbols count as 1), saturating: for parameter counts,
/// whose shapes are fixed and verified to fit.
pub fn fixed_numel(t: &TensorType) -> u64 {
    t.shape.iter().map(|d| d.fixed().unwrap_or(1)).fold(1u64, u64::saturating_mul)
}

/// Values for the symbols of a graph, e.g. `batch=64,tokens=128`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bindings(BTreeMap<String, u64>);

impl Bindings {
    pub fn new() -> Self {
        Bindings::default()
    }

    pub fn with(mut self, symbol: &str, size: u64) -> Self {
        self.0.insert(symbol.to_string(), size);
        self
    }

    pub fn insert(&mut self, symbol: &str, size: u64) {
        self.0.insert(symbol.to_string(), size);
    }

    pub fn get(&self, symbol: &str) -> Option<u64> {
        self.0.get(symbol).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for Bindings {
    type Err = ShapeError;

    /// Parses `NAME=N[,NAME=N...]`; the empty string gives no bindings.
    fn from_str(s: &str) -> Result<Self, ShapeError> {
        let mut out = Bindings::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = || ShapeError::BadBinding(part.to_string());
            let (name, value) = part.split_once('=').ok_or_else(bad)?;
            let (name, value) = (name.trim(), value.trim());
            let size: u64 = value.parse().map_err(|_| bad())?;
            if !is_valid_symbol(name) || size == 0 {
                return Err(bad());
            }
            out.insert(name, size);
        }
        Ok(out)
    }
}

impl fmt::Display for Bindings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_type_prints_compactly() {
        let t = TensorType::new(DType::F32, shape!["batch", "tokens", 384u64]);
        assert_eq!(t.to_string(), "f32[batch,tokens,384]");
        assert_eq!(TensorType::scalar(DType::Bool).to_string(), "bool[]");
    }

    #[test]
    fn sizes_resolve_symbols_and_report_unbound_ones() {
        let t = TensorType::new(DType::F16, shape!["batch", 3u64]);
        let b: Bindings = "batch=5".parse().unwrap();
        assert_eq!(t.numel(&b).unwrap(), 15);
        assert_eq!(t.size_bytes(&b).unwrap(), 30);
        assert_eq!(t.numel(&Bindings::new()), Err(ShapeError::Unbound("batch".into())));
    }

    #[test]
    fn sizes_report_overflow_instead_of_wrapping() {
        let t = TensorType::new(DType::F32, shape![u64::MAX / 2, 3u64]);
        assert!(matches!(t.numel(&Bindings::new()), Err(ShapeError::Overflow(_))));
        let t = TensorType::new(DType::F32, shape![u64::MAX / 2]);
        assert!(matches!(t.size_bytes(&Bindings::new()), Err(ShapeError::Overflow(_))));
    }

    #[test]
    fn bindings_parse_and_reject_malformed_text() {
        let b: Bindings = " batch=64, tokens = 128 ".parse().unwrap();
        assert_eq!(b.get("batch"), Some(64));
        assert_eq!(b.get("tokens"), Some(128));
        assert_eq!(b.to_string(), "batch=64,tokens=128");
        for bad in ["batch", "batch=", "batch=-1", "batch=0", "1x=3", "batch=x"] {
            assert!(bad.parse::<Bindings>().is_err(), "{bad} should be rejected");
        }
        assert!("".parse::<Bindings>().unwrap().is_empty());
    }

    #[test]
    fn dtypes_round_trip_through_their_names() {
        for d in DType::ALL {
            assert_eq!(d.name().parse::<DType>().unwrap(), d);
        }
        assert!("f64".parse::<DType>().is_err());
    }
}
