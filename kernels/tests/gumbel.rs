//! The Gumbel noise the fused clustering kernel draws (`gumbel_pool::gumbel_at`) against the
//! host generator the reference executor uses: the uniform numbers equal bit for bit, the noise
//! `−log(−log u)` agrees with the reference's f64 arithmetic to f32 rounding, near `u = 1` too.

use calm_kernels::gumbel_pool::gumbel_at;
use calm_kernels::philox;
use calm_kernels::philox_cube::uniform_at;
use cubecl::prelude::*;
use cubecl::wgpu::{WgpuDevice, WgpuRuntime};

#[cube(launch)]
fn draw(u: &mut Array<f32>, g: &mut Array<f32>, seed: u32, offset: u32, #[comptime] stream: u32) {
    let i = ABSOLUTE_POS_X;
    if i < u.len() as u32 {
        u[i as usize] = uniform_at(seed, offset, stream, i);
        g[i as usize] = gumbel_at(seed, offset, stream, i);
    }
}

#[test]
fn gumbel_noise_is_the_reference_draw() {
    let c = WgpuRuntime::client(&WgpuDevice::default());
    let n = 1031usize;
    let (seed, offset, stream) = (0xDEAD_BEEF, 17, 6);
    let u_dev = c.create_from_slice(f32::as_bytes(&vec![f32::NAN; n]));
    let g_dev = c.create_from_slice(f32::as_bytes(&vec![f32::NAN; n]));
    unsafe {
        draw::launch::<WgpuRuntime>(
            &c,
            CubeCount::Static(n.div_ceil(64) as u32, 1, 1),
            CubeDim::new_1d(64),
            ArrayArg::from_raw_parts(u_dev.clone(), n),
            ArrayArg::from_raw_parts(g_dev.clone(), n),
            seed,
            offset,
            stream,
        );
    }
    let u = f32::from_bytes(&c.read_one(u_dev).unwrap()).to_vec();
    let g = f32::from_bytes(&c.read_one(g_dev).unwrap()).to_vec();
    let host = philox::uniform(seed, offset, stream, n);
    for i in 0..n {
        assert_eq!(u[i].to_bits(), host[i].to_bits(), "u[{i}]");
        // Against f64, as the reference executor computes it (from the same f32 u).
        let want = -(-(host[i] as f64).ln()).ln();
        let err = (g[i] as f64 - want).abs() / (1.0 + want.abs());
        assert!(err <= 2e-6, "g[{i}] = {} (u = {}), reference {want}: error {err:.1e}", g[i], host[i]);
    }
}
