//! `calm-kernels`: the CubeCL kernels of CALM, and the arithmetic they share with the reference
//! executor ([`philox`], the counter-based random generator).
//!
//! Every kernel has a path without plane (warp) operations, because CPU Vulkan drivers have none.

pub mod attention;
pub mod attention_tiles;
pub mod elementwise;
pub mod gumbel_pool;
pub mod index;
pub mod matmul;
pub mod matmul_tensor;
pub mod moe;
pub mod peak;
pub mod philox;
pub mod philox_cube;
pub mod route;
pub mod rows;
