//! A roofline chart: each kernel group as a point (arithmetic intensity, achieved FLOP/s)
//! under the device's ceilings, on log-log axes: memory's slope, and one roof per execution
//! unit the plotted kernels run on (FP32 pipelines solid, tensor cores dashed), so each point
//! sits under the roof it is read against.

use std::fmt::Write;

use calm_passes::plan::ComputeUnit;

use super::{Ceilings, KernelGroup};

const W: f64 = 860.0;
const H: f64 = 540.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 230.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLOURS: [&str; 12] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
    "#000080", "#808000",
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The chart as an SVG document. Groups without FLOPs (copies) have no place on it and are
/// counted in a note; a point's area grows with its share of the total time.
pub fn roofline_svg(title: &str, groups: &[KernelGroup], c: &Ceilings) -> String {
    let points: Vec<&KernelGroup> = groups.iter().filter(|g| g.flops > 0 && g.bytes > 0 && g.seconds > 0.0).collect();
    let intensity = |g: &KernelGroup| g.flops as f64 / g.bytes as f64;
    let achieved = |g: &KernelGroup| g.flops as f64 / g.seconds;
    let mut units: Vec<ComputeUnit> = points.iter().map(|g| g.unit).collect();
    units.push(ComputeUnit::Fp32Cores);
    units.sort();
    units.dedup();
    let top = units.iter().map(|&u| c.flops_of(u)).fold(0.0, f64::max);
    let ridge = c.ridge(ComputeUnit::Fp32Cores);
    let (mut x0, mut x1) = (ridge / 100.0, units.iter().map(|&u| c.ridge(u)).fold(ridge, f64::max) * 100.0);
    let (mut y0, y1) = (c.flops_of(ComputeUnit::Fp32Cores) / 1e4, top * 3.0);
    for g in &points {
        x0 = x0.min(intensity(g) / 2.0);
        x1 = x1.max(intensity(g) * 2.0);
        y0 = y0.min(achieved(g) / 2.0);
    }
    let (lx0, lx1, ly0, ly1) = (x0.log10().floor(), x1.log10().ceil(), y0.log10().floor(), y1.log10().ceil());
    let px = |x: f64| LEFT + (x.log10() - lx0) / (lx1 - lx0) * (W - LEFT - RIGHT);
    let py = |y: f64| H - BOTTOM - (y.log10() - ly0) / (ly1 - ly0) * (H - TOP - BOTTOM);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{LEFT}" y="24" font-size="15">{}</text>"#, escape(title));
    // Grid and axis labels at powers of ten.
    for e in lx0 as i32..=lx1 as i32 {
        let x = px(10f64.powi(e));
        let _ = writeln!(s, r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/>"##, H - BOTTOM);
        let _ = writeln!(s, r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">1e{e}</text>"#, H - BOTTOM + 18.0);
    }
    for e in ly0 as i32..=ly1 as i32 {
        let y = py(10f64.powi(e));
        let _ = writeln!(s, r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##, W - RIGHT);
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">1e{e}</text>"#, LEFT - 6.0, y + 4.0);
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">arithmetic intensity (FLOP/byte, modelled)</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 16.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">FLOP/s achieved</text>"#,
        (TOP + H - BOTTOM) / 2.0
    );
    // The ceilings: bandwidth × intensity up to each unit's ridge, then the unit's peak.
    for &unit in &units {
        let (peak, ridge) = (c.flops_of(unit), c.ridge(unit));
        let dash = if unit.is_tensor_core() { r#" stroke-dasharray="6 4""# } else { "" };
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="black" stroke-width="2"{dash} points="{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}"/>"#,
            px(x0.max(10f64.powf(lx0))),
            py(c.bytes_per_s * x0.max(10f64.powf(lx0))),
            px(ridge),
            py(peak),
            px(10f64.powf(lx1)),
            py(peak)
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{unit} {:.3e} FLOP/s, memory {:.3e} B/s</text>"#,
            px(ridge) + 6.0,
            py(peak) - 6.0,
            peak,
            c.bytes_per_s
        );
    }
    let total: f64 = groups.iter().map(|g| g.seconds).sum::<f64>().max(f64::MIN_POSITIVE);
    let mut kernels: Vec<&str> = Vec::new();
    for g in &points {
        if !kernels.contains(&g.kernel.as_str()) {
            kernels.push(&g.kernel);
        }
        let colour = COLOURS[kernels.iter().position(|k| *k == g.kernel).unwrap_or(0) % COLOURS.len()];
        let r = 3.0 + 14.0 * (g.seconds / total).sqrt();
        let _ = writeln!(
            s,
            r#"<circle cx="{:.1}" cy="{:.1}" r="{r:.1}" fill="{colour}" fill-opacity="0.6"><title>{} {} ({} launches, {}): {:.3} ms, {:.3e} FLOP/s, {:.0}% of its ceiling</title></circle>"#,
            px(intensity(g)),
            py(achieved(g)),
            escape(&g.kernel),
            escape(&g.scope),
            g.launches,
            g.unit,
            g.seconds * 1e3,
            achieved(g),
            100.0 * g.share_of_peak(c)
        );
    }
    for (i, k) in kernels.iter().enumerate() {
        let y = TOP + 10.0 + 18.0 * i as f64;
        let x = W - RIGHT + 16.0;
        let colour = COLOURS[i % COLOURS.len()];
        let _ = writeln!(s, r#"<circle cx="{x}" cy="{y}" r="5" fill="{colour}" fill-opacity="0.6"/>"#);
        let _ = writeln!(s, r#"<text x="{}" y="{}">{}</text>"#, x + 10.0, y + 4.0, escape(k));
    }
    let skipped = groups.len() - points.len();
    if skipped > 0 {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">{skipped} groups without FLOPs not shown</text>"#,
            W - RIGHT + 6.0,
            TOP + 30.0 + 18.0 * kernels.len() as f64
        );
    }
    s.push_str("</svg>\n");
    s
}
