//! A profile as a Chrome trace (the JSON that Perfetto and chrome://tracing open).

use serde_json::{json, Value};

use super::{Ceilings, LaunchProfile};
use crate::device::Timer;

/// One complete event per launch, laid back to back in plan order at its median time (the gaps
/// of the profiling runs, which synchronise after every launch, are not the plan's), with the
/// launch's cost, throughput and grid in its arguments.
pub fn chrome_trace(device: &str, timer: Timer, launches: &[LaunchProfile], ceilings: &Ceilings) -> Value {
    let mut events = vec![
        json!({"ph": "M", "pid": 1, "name": "process_name", "args": {"name": format!("calm profile on {device}")}}),
        json!({"ph": "M", "pid": 1, "tid": 1, "name": "thread_name",
               "args": {"name": "launches (median times, back to back)"}}),
    ];
    let mut ts = 0.0;
    for l in launches {
        let dur = l.seconds * 1e6;
        events.push(json!({
            "ph": "X",
            "pid": 1,
            "tid": 1,
            "name": format!("{} {}", l.kernel, l.scope),
            "cat": l.kernel,
            "ts": ts,
            "dur": dur,
            "args": {
                "launch": l.index,
                "scope": l.scope,
                "nodes": l.nodes,
                "flops": l.flops,
                "bytes": l.bytes,
                "gflop_per_s": l.flops_per_s() / 1e9,
                "gb_per_s": l.bytes_per_s() / 1e9,
                "share_of_peak": l.share_of_peak(ceilings),
                "unit": l.unit,
                "bound": ceilings.bound(l.unit, l.flops, l.bytes),
                "modelled_us": l.modelled_seconds(ceilings) * 1e6,
                "cube_count": l.cube_count,
                "cube_dim": l.cube_dim,
                "min_us": l.min_seconds * 1e6,
            }
        }));
        ts += dur;
    }
    json!({
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {"device": device, "timer": timer, "layout": "median launch times, back to back"},
    })
}
