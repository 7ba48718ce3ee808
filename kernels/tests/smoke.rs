use cubecl::prelude::*;
use cubecl::wgpu::{WgpuDevice, WgpuRuntime};

#[cube(launch)]
fn add_kernel<F: Float>(a: &Array<F>, b: &Array<F>, out: &mut Array<F>) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        out[i] = a[i] + b[i] * F::new(2.0);
    }
}

#[test]
fn smoke() {
    let t0 = std::time::Instant::now();
    let client = WgpuRuntime::client(&WgpuDevice::default());
    println!("client {:?}", t0.elapsed());
    let n = 1000usize;
    let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let b: Vec<f32> = (0..n).map(|i| 1.0 + i as f32).collect();
    let ha = client.create_from_slice(f32::as_bytes(&a));
    let hb = client.create_from_slice(f32::as_bytes(&b));
    let ho = client.empty(n * 4);
    let t1 = std::time::Instant::now();
    add_kernel::launch::<f32, WgpuRuntime>(
        &client,
        CubeCount::Static(((n + 255) / 256) as u32, 1, 1),
        CubeDim::new_1d(256),
        unsafe { ArrayArg::from_raw_parts(ha, n) },
        unsafe { ArrayArg::from_raw_parts(hb, n) },
        unsafe { ArrayArg::from_raw_parts(ho.clone(), n) },
    );
    let out = client.read_one(ho).unwrap();
    println!("first launch+read {:?}", t1.elapsed());
    let out = f32::from_bytes(&out);
    assert_eq!(out[10], 10.0 + 2.0 * 11.0);
    println!("props: {:?}", client.properties().features);
}
