//! cubek-matmul, the CubeCL team's GEMM library, on calm's own device client: the comparison
//! issue 25 asks for before calm keeps its own tensor-core GEMM ("cubek first, calm's own only
//! where it measures faster").
//!
//! Each candidate is one of the strategies Burn's matmul autotuner tries (unit tiles on the
//! FP32 pipelines; cyclic, double-buffered, ordered, specialised and TMA loaders with `cmma`
//! or `mma` tiles), launched directly with `cubek::matmul::launch::launch_ref`, so no Burn
//! tensor, fusion or autotune cache stands between the two. cubek runs a plain `x Wᵀ`: calm's
//! matching row is its plain matmul plan (no epilogue).
//!
//! cubek picks the operand type of its tensor-core tiles itself (TF32 for f32 buffers), so a
//! strategy is kept only where its tiles' type is one the run's `--precision` allows for f32
//! buffers, as calm's lowering does; under `default`, where calm may use bf16 tiles, cubek also
//! runs with bf16 operands (which also halves its operand bytes; the row says so). Every row
//! carries the largest error of sampled outputs against an f64 product of the f32 operands, so
//! a fast row that computes the wrong thing shows it.

use std::marker::PhantomData;
use std::time::Duration;

use calm_passes::plan::Precision;
use cubecl::ir::StorageType;
use cubecl::prelude::*;
use cubecl::server::Handle;
use cubecl_zspace::{Shape, Strides};
use cubek::matmul::components::tile::TileMatmulKind;
use cubek::matmul::definition::{MatmulElems, MatmulGlobalElems};
use cubek::matmul::launch::{launch_ref, Strategy};
use cubek::matmul::routines::double_buffering::DoubleBufferingArgs;
use cubek::matmul::routines::double_unit::DoubleUnitSelectionArgs;
use cubek::matmul::routines::ordered_double_buffering::OrderedSelectionArgs;
use cubek::matmul::routines::simple::SimpleArgs;
use cubek::matmul::routines::simple_unit::SimpleUnitSelectionArgs;
use cubek::matmul::routines::{BlueprintStrategy, TileSizeSelection};
use cubek::std::InputBinding;

use super::Measurement;
use crate::profile::peaks::{median, sync};

/// The strategies Burn 0.21's matmul autotuner tries for a GEMM (its `tune/base.rs`), less the
/// vector-matrix ones, which only apply to a single row.
pub fn candidates() -> Vec<Strategy> {
    use BlueprintStrategy::Inferred;
    use TileMatmulKind::{Cmma, Mma};
    let simple = |multi_rows, tile_matmul| Inferred(SimpleArgs { multi_rows, tile_matmul });
    let ordered = |tile_matmul| {
        Inferred(OrderedSelectionArgs {
            partition_k: Some(2),
            row_count: Some(4),
            rows_per_plane: Some(2),
            tile_matmul,
        })
    };
    let double = |specialized, tile_matmul| Inferred(DoubleBufferingArgs { specialized, tile_matmul });
    let mut out = Vec::new();
    for tile_size in [TileSizeSelection::MaxTileSize, TileSizeSelection::MinTileSize] {
        out.push(Strategy::SimpleUnit(Inferred(SimpleUnitSelectionArgs { tile_size })));
        out.push(Strategy::DoubleUnit(Inferred(DoubleUnitSelectionArgs { tile_size })));
    }
    for multi_rows in [false, true] {
        out.push(Strategy::SimpleCyclicCmma(simple(multi_rows, Cmma)));
        out.push(Strategy::SimpleCyclicMma(simple(multi_rows, Mma)));
    }
    out.push(Strategy::OrderedDoubleCmma(ordered(Cmma)));
    out.push(Strategy::OrderedDoubleMma(ordered(Mma)));
    for specialized in [false, true] {
        out.push(Strategy::DoubleCyclicCmma(double(specialized, Cmma)));
        out.push(Strategy::DoubleCyclicMma(double(specialized, Mma)));
    }
    out.push(Strategy::SpecializedCyclicCmma(Inferred(().into())));
    out.push(Strategy::SpecializedCyclicMma(Inferred(().into())));
    for multi_rows in [false, true] {
        // The TMA loaders' blueprint is another type, so no shared closure.
        out.push(Strategy::SimpleTmaCmma(Inferred(SimpleArgs { multi_rows, tile_matmul: Cmma })));
        out.push(Strategy::SimpleTmaMma(Inferred(SimpleArgs { multi_rows, tile_matmul: Mma })));
    }
    out.push(Strategy::SpecializedTmaCmma(Inferred(().into())));
    out.push(Strategy::SpecializedTmaMma(Inferred(().into())));
    out
}

/// What the cubek candidates did on one GEMM: the rows that ran, and for those that did not
/// (unavailable on this device, refused by the precision, or failed) one line per reason,
/// naming them.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CubekRows {
    pub rows: Vec<Measurement>,
    pub skipped: Vec<String>,
}

/// `(name, why)` pairs as one line per distinct reason, in first-seen order.
fn group_by_reason(skipped: Vec<(String, String)>) -> Vec<String> {
    let mut reasons: Vec<(String, Vec<String>)> = Vec::new();
    for (name, why) in skipped {
        match reasons.iter_mut().find(|(w, _)| *w == why) {
            Some((_, names)) => names.push(name),
            None => reasons.push((why, vec![name])),
        }
    }
    reasons.into_iter().map(|(why, names)| format!("cubek {}: {why}", names.join(", "))).collect()
}

/// Outputs sampled for the error check: enough to catch a wrong tile or edge, cheap on the host.
const SAMPLES: usize = 257;

/// Every cubek candidate on `x Wᵀ`, `x: m × k`, `W: n × k` (W read in place as a column-major
/// `k × n`, as calm's linear reads it), f32 output, on `client`: host-clock medians of `iters`
/// launches, each ended by a device synchronisation.
pub fn gemm<R: Runtime>(
    client: &ComputeClient<R>,
    (m, k, n): (usize, usize, usize),
    precision: Precision,
    iters: usize,
) -> CubekRows {
    let x = operand(m * k, 1);
    let w = operand(n * k, 2);
    let (mut rows, mut skipped) = (Vec::new(), Vec::new());
    let operands: &[StorageType] = match precision {
        Precision::Default => &[f32_type(), bf16_type()],
        _ => &[f32_type()],
    };
    for &global in operands {
        if !client.properties().supports_type(global) {
            skipped.push((format!("with {global} operands"), format!("the device has no {global}")));
            continue;
        }
        let (xh, wh) = (upload(client, &x, global), upload(client, &w, global));
        for strategy in candidates() {
            // Poisoned, so an output a strategy leaves unwritten fails the error check.
            let y = client.create_from_slice(bytemuck::cast_slice(&vec![f32::NAN; m * n]));
            let name = format!("cubek {strategy}, {global} operands");
            match run_one(client, &strategy, (&xh, &wh, &y), (m, k, n), global, precision, iters) {
                Ok((t, tiles)) => {
                    let bytes = (global.size() * (m * k + n * k) + 4 * m * n) as f64;
                    let error = sampled_error(&read_f32(client, &y), &x, &w, (m, k, n));
                    rows.push(Measurement {
                        name: format!("{name}, {tiles} tiles"),
                        seconds: t.as_secs_f64(),
                        flops: 2.0 * (m * k * n) as f64,
                        bytes,
                        max_error: Some(error),
                    });
                }
                Err(why) => skipped.push((strategy.to_string(), format!("{global} operands: {why}"))),
            }
        }
    }
    CubekRows { rows, skipped: group_by_reason(skipped) }
}

/// One strategy: a first launch (cubek chooses its tiles' types and may refuse), the precision
/// check on those types, then the timed launches. A panic inside cubek is caught as a failure.
fn run_one<R: Runtime>(
    client: &ComputeClient<R>,
    strategy: &Strategy,
    (x, w, y): (&Handle, &Handle, &Handle),
    (m, k, n): (usize, usize, usize),
    global: StorageType,
    precision: Precision,
    iters: usize,
) -> Result<(Duration, StorageType), String> {
    let launch = |dtypes: &mut MatmulElems| {
        let binding = |h: &Handle, shape: [usize; 2], strides: [usize; 2]| TensorBinding::<R> {
            handle: h.clone().binding(),
            strides: Strides::new(&strides),
            shape: Shape::new(shape),
            runtime: PhantomData,
        };
        let lhs = InputBinding::new(binding(x, [m, k], [k, 1]), global);
        let rhs = InputBinding::new(binding(w, [k, n], [1, k]), global);
        launch_ref(strategy, client, lhs, rhs, binding(y, [m, n], [n, 1]), dtypes)
    };
    let globals = MatmulGlobalElems { lhs: global, rhs: global, out: f32_type() };
    let mut dtypes = MatmulElems::from_globals(&globals);
    crate::device::select::catch_device(|| launch(&mut dtypes))
        .map_err(|panic| format!("failed: {panic}"))?
        .map_err(|e| format!("unavailable: {}", first_line(&format!("{e:?}"))))?;
    sync(client);
    let tiles = dtypes.lhs_register;
    if !allowed(tiles, precision) {
        return Err(format!("its {tiles} tiles are not allowed under precision {}", precision.name()));
    }
    let t = crate::device::select::catch_device(|| {
        median(iters, || {
            let mut dtypes = MatmulElems::from_globals(&globals);
            launch(&mut dtypes).expect("launched once already");
            sync(client);
        })
    })
    .map_err(|panic| format!("failed: {panic}"))?;
    Ok((t, tiles))
}

/// Whether products in `tiles` are allowed for f32 buffers under `precision`, as calm's
/// lowering allows them; bf16 operands (which the run chose under `default`) always are.
fn allowed(tiles: StorageType, precision: Precision) -> bool {
    let tf32_type = tf32::as_type_native_unchecked().storage_type();
    match precision {
        Precision::Highest => tiles == f32_type(),
        Precision::High => tiles == f32_type() || tiles == tf32_type,
        Precision::Default => tiles == f32_type() || tiles == tf32_type || tiles == bf16_type(),
    }
}

fn f32_type() -> StorageType {
    f32::as_type_native_unchecked().storage_type()
}

fn bf16_type() -> StorageType {
    half::bf16::as_type_native_unchecked().storage_type()
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// `len` values in [-1, 1) from calm's Philox stream `stream` (as weights are drawn).
fn operand(len: usize, stream: u32) -> Vec<f32> {
    calm_kernels::philox::uniform(1, 0, stream, len).into_iter().map(|u| 2.0 * u - 1.0).collect()
}

fn upload<R: Runtime>(client: &ComputeClient<R>, v: &[f32], global: StorageType) -> Handle {
    if global == bf16_type() {
        let h: Vec<half::bf16> = v.iter().map(|&x| half::bf16::from_f32(x)).collect();
        client.create_from_slice(bytemuck::cast_slice(&h))
    } else {
        client.create_from_slice(bytemuck::cast_slice(v))
    }
}

fn read_f32<R: Runtime>(client: &ComputeClient<R>, y: &Handle) -> Vec<f32> {
    let bytes = client.read_one(y.clone()).expect("reading the GEMM's output");
    bytemuck::pod_collect_to_vec(&bytes)
}

/// The largest error of [`SAMPLES`] outputs spread over `y` (the last row and column included,
/// where edge tiles end) against the f64 dot product of the f32 operands, relative to the sum
/// of the products' magnitudes (so cancellation does not inflate it).
pub fn sampled_error(y: &[f32], x: &[f32], w: &[f32], (m, k, n): (usize, usize, usize)) -> f64 {
    let mut worst = 0.0f64;
    for s in 0..SAMPLES {
        let (i, j) = if s == 0 { (m - 1, n - 1) } else { ((s * 7919) % m, (s * 104_729) % n) };
        let (row, col) = (&x[i * k..(i + 1) * k], &w[j * k..(j + 1) * k]);
        let exact: f64 = row.iter().zip(col).map(|(&a, &b)| a as f64 * b as f64).sum();
        let scale: f64 = row.iter().zip(col).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
        let err = (y[i * n + j] as f64 - exact).abs() / scale.max(f64::MIN_POSITIVE);
        worst = worst.max(if err.is_nan() { f64::INFINITY } else { err });
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_product(x: &[f32], w: &[f32], (m, k, n): (usize, usize, usize)) -> Vec<f32> {
        let mut y = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] = (0..k).map(|l| x[i * k + l] as f64 * w[j * k + l] as f64).sum::<f64>() as f32;
            }
        }
        y
    }

    #[test]
    fn the_sampled_error_sees_a_wrong_edge_and_an_unwritten_output() {
        let dims = (37, 70, 45);
        let (x, w) = (operand(37 * 70, 1), operand(45 * 70, 2));
        let mut y = host_product(&x, &w, dims);
        assert!(sampled_error(&y, &x, &w, dims) < 1e-6);
        y[37 * 45 - 1] += 0.5;
        assert!(sampled_error(&y, &x, &w, dims) > 1e-2, "the last tile's corner is sampled");
        y[37 * 45 - 1] = f32::NAN;
        assert_eq!(sampled_error(&y, &x, &w, dims), f64::INFINITY);
    }

    #[test]
    fn tensor_core_tiles_are_kept_only_where_the_precision_allows_them() {
        let tf32_type = tf32::as_type_native_unchecked().storage_type();
        assert!(allowed(f32_type(), Precision::Highest));
        assert!(!allowed(tf32_type, Precision::Highest));
        assert!(allowed(tf32_type, Precision::High));
        assert!(!allowed(bf16_type(), Precision::High));
        assert!(allowed(bf16_type(), Precision::Default));
    }

    #[test]
    fn strategies_skipped_for_one_reason_share_a_line() {
        let skipped = vec![
            ("a".to_string(), "no cmma".to_string()),
            ("b".to_string(), "failed".to_string()),
            ("c".to_string(), "no cmma".to_string()),
        ];
        assert_eq!(group_by_reason(skipped), ["cubek a, c: no cmma", "cubek b: failed"]);
    }
}
