//! `calm-kernels`: the CubeCL kernels of CALM, and the arithmetic they share with the reference
//! executor ([`philox`], the counter-based random generator).

pub mod philox;
