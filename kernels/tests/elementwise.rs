//! The generated elementwise kernel on the Vulkan device (lavapipe here), against values
//! computed on the host. Outputs start as NaN, so an element the kernel skips fails.

use calm_kernels::elementwise::{launch, meta, BinaryFn, Buf, CastTo, Kind, Op, Program, UnaryFn};

/// A step of one argument: one of the IR's functions or a cast.
#[derive(Copy, Clone, Debug)]
enum Unary {
    Fn(UnaryFn),
    Cast(CastTo),
}
use calm_kernels::philox;
use cubecl::prelude::*;
use cubecl::wgpu::{WgpuDevice, WgpuRuntime};

type R = WgpuRuntime;

fn client() -> ComputeClient<R> {
    R::client(&WgpuDevice::default())
}

fn upload_f32(c: &ComputeClient<R>, v: &[f32]) -> Buf {
    Buf { handle: c.create_from_slice(f32::as_bytes(v)), len: v.len() }
}

fn upload_u32(c: &ComputeClient<R>, v: &[u32]) -> Buf {
    Buf { handle: c.create_from_slice(u32::as_bytes(v)), len: v.len() }
}

fn poisoned(c: &ComputeClient<R>, n: usize) -> Buf {
    upload_f32(c, &vec![f32::NAN; n])
}

fn dims(len: usize) -> (CubeCount, CubeDim) {
    let cubes = len.div_ceil(256) as u32;
    let x = cubes.min(65_535);
    (CubeCount::Static(x, cubes.div_ceil(x), 1), CubeDim::new_1d(256))
}

fn read_f32(c: &ComputeClient<R>, b: &Buf) -> Vec<f32> {
    f32::from_bytes(&c.read_one(b.handle.clone()).unwrap()).to_vec()
}

#[test]
fn random_numbers_match_the_host_generator() {
    let c = client();
    let n = 1029;
    let seed = upload_u32(&c, &[0xDEAD_BEEF]);
    let offset = upload_u32(&c, &[7]);
    let out = poisoned(&c, n);
    let program = Program {
        rank: 1,
        args: vec![(Kind::UInt, 0), (Kind::UInt, 1)],
        ops: vec![Op::Uniform { stream: 5, seed: 0, offset: 1 }],
        outputs: vec![(0, Kind::Float, 0)],
    };
    let m = upload_u32(&c, &meta(&[n as u32], &[vec![0], vec![0]], &[]));
    let (cc, cd) = dims(n);
    launch::<R, f32>(
        &c,
        &program,
        &[(Kind::UInt, &seed), (Kind::UInt, &offset)],
        &[(Kind::Float, &out)],
        &m,
        n as u32,
        cc,
        cd,
    );
    assert_eq!(read_f32(&c, &out), philox::uniform(0xDEAD_BEEF, 7, 5, n), "bit for bit");
}

fn host_unary(f: Unary, x: f32) -> f32 {
    match f {
        Unary::Fn(UnaryFn::Neg) => -x,
        Unary::Fn(UnaryFn::Exp) => x.exp(),
        Unary::Fn(UnaryFn::Log) => x.ln(),
        Unary::Fn(UnaryFn::Sqrt) => x.sqrt(),
        Unary::Fn(UnaryFn::Rsqrt) => 1.0 / x.sqrt(),
        Unary::Fn(UnaryFn::Tanh) => x.tanh(),
        Unary::Fn(UnaryFn::Sigmoid) => 1.0 / (1.0 + (-x).exp()),
        Unary::Fn(UnaryFn::Relu) => x.max(0.0),
        // x Φ(x) from the erf of f64 via the complementary series is overkill here: the kernel's
        // erf approximation is good to 1.5e-7, so compare with a tight tolerance below.
        Unary::Fn(UnaryFn::Gelu) => 0.5 * x * (1.0 + erf(x as f64 / std::f64::consts::SQRT_2) as f32),
        Unary::Cast(CastTo::ToFloat) => x,
        Unary::Cast(CastTo::ToInt) => x.trunc(),
        Unary::Cast(CastTo::ToBool) => (x != 0.0) as u8 as f32,
    }
}

/// erf by its Taylor series (converges fast for the |x| < 3 used here).
fn erf(x: f64) -> f64 {
    let mut sum = 0.0;
    let mut term = x;
    for n in 0..60 {
        sum += term / (2 * n + 1) as f64;
        term *= -x * x / (n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

#[test]
fn unary_and_binary_functions_with_broadcasting() {
    let c = client();
    // out [7, 33] = f(a[7, 33]) op b[33] (b broadcast over rows).
    let (rows, cols) = (7usize, 33usize);
    let a: Vec<f32> = (0..rows * cols).map(|i| ((i as f32) * 0.37).sin() * 2.5 + 0.05).collect();
    let b: Vec<f32> = (0..cols).map(|j| 0.5 + (j as f32) * 0.1).collect();
    let (ab, bb) = (upload_f32(&c, &a), upload_f32(&c, &b));
    let m = upload_u32(&c, &meta(&[rows as u32, cols as u32], &[vec![cols as u32, 1], vec![0, 1]], &[]));
    let (cc, cd) = dims(rows * cols);
    let unaries = [
        Unary::Fn(UnaryFn::Neg),
        Unary::Fn(UnaryFn::Exp),
        Unary::Fn(UnaryFn::Tanh),
        Unary::Fn(UnaryFn::Sigmoid),
        Unary::Fn(UnaryFn::Relu),
        Unary::Fn(UnaryFn::Gelu),
        Unary::Cast(CastTo::ToFloat),
        Unary::Cast(CastTo::ToInt),
        Unary::Cast(CastTo::ToBool),
    ];
    let binaries = BinaryFn::ALL;
    for u in unaries {
        for &bf in binaries {
            let first = match u {
                Unary::Fn(f) => Op::Unary(f, 0),
                Unary::Cast(to) => Op::Cast(to, 0),
            };
            let program = Program {
                rank: 2,
                args: vec![(Kind::Float, 0), (Kind::Float, 1)],
                ops: vec![Op::Arg(0), Op::Arg(1), first, Op::Binary(bf, 2, 1)],
                outputs: vec![(3, Kind::Float, 0)],
            };
            let out = poisoned(&c, rows * cols);
            launch::<R, f32>(
                &c,
                &program,
                &[(Kind::Float, &ab), (Kind::Float, &bb)],
                &[(Kind::Float, &out)],
                &m,
                (rows * cols) as u32,
                cc.clone(),
                cd,
            );
            let got = read_f32(&c, &out);
            for i in 0..rows * cols {
                let x = host_unary(u, a[i]);
                let y = b[i % cols];
                let want = match bf {
                    BinaryFn::Add => x + y,
                    BinaryFn::Sub => x - y,
                    BinaryFn::Mul => x * y,
                    BinaryFn::Div => x / y,
                    BinaryFn::Max => x.max(y),
                    BinaryFn::Equal => (x == y) as u8 as f32,
                    BinaryFn::Less => (x < y) as u8 as f32,
                };
                let ok = (got[i] - want).abs() <= 2e-6 * (1.0 + want.abs());
                assert!(ok, "{u:?} then {bf:?} at {i}: got {}, want {want} (x = {})", got[i], a[i]);
            }
        }
    }
}

#[test]
fn selects_casts_constants_indices_and_several_outputs() {
    let c = client();
    let n = 130usize;
    let x: Vec<f32> = (0..n).map(|i| i as f32 - 60.5).collect();
    let labels: Vec<i32> = (0..n as i32).map(|i| i % 5).collect();
    let xb = upload_f32(&c, &x);
    let lb = Buf { handle: c.create_from_slice(i32::as_bytes(&labels)), len: n };
    let m = upload_u32(&c, &meta(&[2, 65], &[vec![65, 1], vec![65, 1]], &[]));
    // x < 0 ? -inf : x (float); label + column (int); label == 3 (bool as u32).
    let program = Program {
        rank: 2,
        args: vec![(Kind::Float, 0), (Kind::Int, 0)],
        ops: vec![
            Op::Arg(0),
            Op::Arg(1),
            Op::Const(f32::NEG_INFINITY.to_bits()),
            Op::Const(0.0f32.to_bits()),
            Op::Binary(BinaryFn::Less, 0, 3),
            Op::Select(4, 2, 0),
            Op::Index(1),
            Op::Const(3.0f32.to_bits()),
            Op::Binary(BinaryFn::Add, 1, 6),
            Op::Binary(BinaryFn::Equal, 1, 7),
        ],
        outputs: vec![(5, Kind::Float, 0), (8, Kind::Int, 0), (9, Kind::UInt, 0)],
    };
    let out_f = poisoned(&c, n);
    let out_i = Buf { handle: c.create_from_slice(i32::as_bytes(&vec![-999; n])), len: n };
    let out_u = upload_u32(&c, &vec![999; n]);
    let (cc, cd) = dims(n);
    launch::<R, f32>(
        &c,
        &program,
        &[(Kind::Float, &xb), (Kind::Int, &lb)],
        &[(Kind::Float, &out_f), (Kind::Int, &out_i), (Kind::UInt, &out_u)],
        &m,
        n as u32,
        cc,
        cd,
    );
    let f = read_f32(&c, &out_f);
    let i = i32::from_bytes(&c.read_one(out_i.handle.clone()).unwrap()).to_vec();
    let u = u32::from_bytes(&c.read_one(out_u.handle.clone()).unwrap()).to_vec();
    for k in 0..n {
        assert_eq!(f[k], if x[k] < 0.0 { f32::NEG_INFINITY } else { x[k] }, "{k}");
        assert_eq!(i[k], labels[k] + (k % 65) as i32, "{k}");
        assert_eq!(u[k], (labels[k] == 3) as u32, "{k}");
    }
}

#[test]
fn arguments_read_as_slices_of_wider_buffers() {
    // out [7, 13] = a[:, 5..18] · 2 + b[:, 30..43]: both arguments are column slices of
    // wider row-major results (a is 7 × 21, b 7 × 50), read where they lie, at their own
    // starts and row strides.
    let c = client();
    let (rows, cols) = (7usize, 13usize);
    let (a_width, a_start, b_width, b_start) = (21usize, 5usize, 50usize, 30usize);
    let a: Vec<f32> = (0..rows * a_width).map(|i| (i as f32 * 0.11).cos()).collect();
    let b: Vec<f32> = (0..rows * b_width).map(|i| (i as f32 * 0.07).sin()).collect();
    let (ab, bb) = (upload_f32(&c, &a), upload_f32(&c, &b));
    let strides = [vec![a_width as u32, 1], vec![b_width as u32, 1]];
    let m = upload_u32(&c, &meta(&[rows as u32, cols as u32], &strides, &[a_start as u32, b_start as u32]));
    let program = Program {
        rank: 2,
        args: vec![(Kind::Float, 0), (Kind::Float, 1)],
        ops: vec![
            Op::Arg(0),
            Op::Const(2.0f32.to_bits()),
            Op::Binary(BinaryFn::Mul, 0, 1),
            Op::Arg(1),
            Op::Binary(BinaryFn::Add, 2, 3),
        ],
        outputs: vec![(4, Kind::Float, 0)],
    };
    let out = poisoned(&c, rows * cols);
    let (cc, cd) = dims(rows * cols);
    launch::<R, f32>(
        &c,
        &program,
        &[(Kind::Float, &ab), (Kind::Float, &bb)],
        &[(Kind::Float, &out)],
        &m,
        (rows * cols) as u32,
        cc,
        cd,
    );
    let want: Vec<f32> = (0..rows * cols)
        .map(|i| {
            let (r, j) = (i / cols, i % cols);
            a[r * a_width + a_start + j] * 2.0 + b[r * b_width + b_start + j]
        })
        .collect();
    assert_eq!(read_f32(&c, &out), want);
}
