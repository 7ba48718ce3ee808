//! The memory planner and its checker.
//!
//! Each buffer lives from the launch that first writes it to the last launch that reads it
//! (inputs and parameters from the start, outputs to the end). Buffers whose lifetimes do not
//! overlap share a slot, one device allocation sized for the largest of them. An elementwise
//! launch may write its output into the slot of an argument it reads for the last time, at the
//! same index it reads (in place). [`check_memory`] proves a plan's assignment safe.

use crate::lower::contiguous_strides;
use crate::plan::{Kernel, KernelPlan, MemoryPlan, Role, Storage};

/// First launch writing and last launch touching each buffer (launch indices; inputs and
/// parameters start at 0, outputs end after the last launch).
pub fn lifetimes(plan: &KernelPlan) -> Vec<(usize, usize)> {
    let end = plan.launches.len();
    let mut first: Vec<Option<usize>> = vec![None; plan.buffers.len()];
    let mut last: Vec<usize> = vec![0; plan.buffers.len()];
    for (i, l) in plan.launches.iter().enumerate() {
        for &w in &l.writes {
            first[w as usize].get_or_insert(i);
            last[w as usize] = last[w as usize].max(i);
        }
        for &r in &l.reads {
            last[r as usize] = last[r as usize].max(i);
        }
    }
    for o in &plan.outputs {
        last[o.buffer as usize] = end;
    }
    plan.buffers
        .iter()
        .enumerate()
        .map(|(b, buf)| {
            let start = if buf.role == Role::Temp { first[b].unwrap_or(0) } else { 0 };
            let stop = if buf.role == Role::Temp { last[b].max(start) } else { end };
            (start, stop)
        })
        .collect()
}

/// True if launch `at` may write buffer `out` over buffer `arg`: an elementwise launch that
/// reads `arg` without broadcasting, element for element, and writes `out` of the same size.
fn in_place(plan: &KernelPlan, at: usize, arg: u32, out: u32) -> bool {
    let l = &plan.launches[at];
    let Kernel::Elementwise { shape, strides, offsets, .. } = &l.kernel else { return false };
    let (a, o) = (&plan.buffers[arg as usize], &plan.buffers[out as usize]);
    let identity = contiguous_strides(shape);
    // Every read of `arg` must be element for element from its start. A read from a start
    // inside the buffer (a slice read in place) would meet elements already overwritten; other
    // arguments' starts do not matter. `offsets` is empty when all starts are 0.
    let start = |i: usize| offsets.get(i).copied().unwrap_or(0);
    let mut reads = l.reads.iter().zip(strides).enumerate().filter(|(_, (&r, _))| r == arg).peekable();
    a.storage == o.storage
        && a.len == o.len
        && l.writes.contains(&out)
        && reads.peek().is_some()
        && reads.all(|(i, (_, s))| *s == identity && start(i) == 0)
}

/// Whether buffers `a` and `b` may share memory.
fn compatible(plan: &KernelPlan, life: &[(usize, usize)], a: u32, b: u32) -> bool {
    let (la, lb) = (life[a as usize], life[b as usize]);
    let pinned = |x: u32| plan.buffers[x as usize].role != Role::Temp;
    if pinned(a) || pinned(b) {
        return false;
    }
    la.1 < lb.0
        || lb.1 < la.0
        || (la.1 == lb.0 && in_place(plan, la.1, a, b))
        || (lb.1 == la.0 && in_place(plan, lb.1, b, a))
}

/// Assigns every buffer to a slot.
pub fn plan_memory(plan: &KernelPlan) -> MemoryPlan {
    let life = lifetimes(plan);
    let mut slots: Vec<(Storage, u64)> = Vec::new();
    let mut occupants: Vec<Vec<u32>> = Vec::new();
    let mut slot_of = vec![0u32; plan.buffers.len()];
    let mut order: Vec<u32> = (0..plan.buffers.len() as u32).collect();
    order.sort_by_key(|&b| (life[b as usize].0, b));
    for b in order {
        let buf = &plan.buffers[b as usize];
        let fits = |s: usize| slots[s].0 == buf.storage && occupants[s].iter().all(|&o| compatible(plan, &life, o, b));
        let candidates: Vec<usize> = (0..slots.len()).filter(|&s| fits(s)).collect();
        // Best fit: the smallest slot already large enough, else the largest (which grows).
        let chosen = candidates
            .iter()
            .copied()
            .filter(|&s| slots[s].1 >= buf.len)
            .min_by_key(|&s| slots[s].1)
            .or_else(|| candidates.iter().copied().max_by_key(|&s| slots[s].1));
        let s = match chosen {
            Some(s) => {
                slots[s].1 = slots[s].1.max(buf.len);
                s
            }
            None => {
                slots.push((buf.storage, buf.len));
                occupants.push(Vec::new());
                slots.len() - 1
            }
        };
        occupants[s].push(b);
        slot_of[b as usize] = s as u32;
    }
    let bytes = |&(storage, len): &(Storage, u64)| storage.bytes(len, plan.float);
    MemoryPlan {
        peak_bytes: slots.iter().map(bytes).fold(0, u64::saturating_add),
        naive_bytes: plan.buffers.iter().map(|b| bytes(&(b.storage, b.len))).fold(0, u64::saturating_add),
        slots,
        slot_of,
    }
}

/// Proves that no two buffers sharing a slot are live at once (but for elementwise in-place
/// writes), that every slot has the storage and size of its buffers. Returns every violation.
pub fn check_memory(plan: &KernelPlan) -> Result<(), Vec<String>> {
    let m = &plan.memory;
    let mut errors = Vec::new();
    if m.slot_of.len() != plan.buffers.len() {
        return Err(vec![format!("{} buffers but {} slot assignments", plan.buffers.len(), m.slot_of.len())]);
    }
    let life = lifetimes(plan);
    let mut by_slot: Vec<Vec<u32>> = vec![Vec::new(); m.slots.len()];
    for (b, &s) in m.slot_of.iter().enumerate() {
        let Some(&(storage, len)) = m.slots.get(s as usize) else {
            errors.push(format!("buffer {b} is in slot {s}, which does not exist"));
            continue;
        };
        let buf = &plan.buffers[b];
        if storage != buf.storage || len < buf.len {
            errors.push(format!(
                "buffer {b} ({:?}, {} elements) does not fit slot {s} ({storage:?}, {len})",
                buf.storage, buf.len
            ));
        }
        by_slot[s as usize].push(b as u32);
    }
    for (s, bufs) in by_slot.iter().enumerate() {
        for (i, &a) in bufs.iter().enumerate() {
            for &b in &bufs[i + 1..] {
                if !compatible(plan, &life, a, b) {
                    errors.push(format!(
                        "buffers {a} (live {:?}) and {b} (live {:?}) share slot {s} while both are live",
                        life[a as usize], life[b as usize]
                    ));
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}
