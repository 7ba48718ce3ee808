//! The memory planner and its checker.
//!
//! Each buffer lives from the launch that first writes it to the last launch that reads it
//! (inputs and parameters from the start, outputs to the end). Buffers whose lifetimes do not
//! overlap share a slot, one device allocation sized for the largest of them. An elementwise
//! launch may write its output into the slot of an argument it reads for the last time, at the
//! same index it reads (in place). [`check_memory`] proves a plan's assignment safe.

use calm_ir::entity::{EntityId, PrimaryMap, SecondaryMap};

use crate::layout::contiguous_strides;
use crate::plan::{BufferId, Kernel, KernelPlan, LaunchId, MemoryPlan, Role, Slot, SlotId};

/// The positions of the launches a buffer is live over: from the first that writes it to the
/// last that touches it. Inputs and parameters start at 0; outputs end at the launch count,
/// after the last launch.
pub type Live = (usize, usize);

/// Each buffer's [`Live`] span.
pub fn lifetimes(plan: &KernelPlan) -> PrimaryMap<BufferId, Live> {
    let end = plan.launches.len();
    let mut first: SecondaryMap<BufferId, Option<usize>> = SecondaryMap::with_default(None);
    let mut last: SecondaryMap<BufferId, usize> = SecondaryMap::new();
    for (id, l) in plan.launches.iter() {
        let i = id.index();
        for &w in &l.writes {
            first[w].get_or_insert(i);
            last[w] = last[w].max(i);
        }
        for &r in &l.reads {
            last[r] = last[r].max(i);
        }
    }
    for o in &plan.outputs {
        last[o.buffer] = end;
    }
    plan.buffers
        .iter()
        .map(|(b, buf)| {
            let start = if buf.role == Role::Temp { first[b].unwrap_or(0) } else { 0 };
            let stop = if buf.role == Role::Temp { last[b].max(start) } else { end };
            (start, stop)
        })
        .collect()
}

/// True if the launch at position `at` may write buffer `out` over buffer `arg`: an
/// elementwise launch that reads `arg` without broadcasting, element for element, and writes
/// `out` of the same size.
fn in_place(plan: &KernelPlan, at: usize, arg: BufferId, out: BufferId) -> bool {
    let l = &plan.launches[LaunchId::new(at)];
    let Kernel::Elementwise { shape, strides, offsets, .. } = &l.kernel else { return false };
    let (a, o) = (&plan.buffers[arg], &plan.buffers[out]);
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
fn compatible(plan: &KernelPlan, life: &PrimaryMap<BufferId, Live>, a: BufferId, b: BufferId) -> bool {
    let (la, lb) = (life[a], life[b]);
    let pinned = |x: BufferId| plan.buffers[x].role != Role::Temp;
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
    let mut slots: PrimaryMap<SlotId, Slot> = PrimaryMap::new();
    let mut occupants: SecondaryMap<SlotId, Vec<BufferId>> = SecondaryMap::new();
    let mut slot_of: SecondaryMap<BufferId, Option<SlotId>> = SecondaryMap::with_default(None);
    let mut order: Vec<BufferId> = plan.buffers.keys().collect();
    order.sort_by_key(|&b| (life[b].0, b));
    for b in order {
        let buf = &plan.buffers[b];
        let fits =
            |s: SlotId| slots[s].storage == buf.storage && occupants[s].iter().all(|&o| compatible(plan, &life, o, b));
        let candidates: Vec<SlotId> = slots.keys().filter(|&s| fits(s)).collect();
        // Best fit: the smallest slot already large enough, else the largest (which grows).
        let chosen = candidates
            .iter()
            .copied()
            .filter(|&s| slots[s].len >= buf.len)
            .min_by_key(|&s| slots[s].len)
            .or_else(|| candidates.iter().copied().max_by_key(|&s| slots[s].len));
        let s = match chosen {
            Some(s) => {
                slots[s].len = slots[s].len.max(buf.len);
                s
            }
            None => slots.push(Slot { storage: buf.storage, len: buf.len }),
        };
        occupants[s].push(b);
        slot_of[b] = Some(s);
    }
    let bytes = |slot: &Slot| slot.storage.bytes(slot.len, plan.float);
    MemoryPlan {
        peak_bytes: slots.values().map(bytes).fold(0, u64::saturating_add),
        naive_bytes: plan
            .buffers
            .values()
            .map(|b| bytes(&Slot { storage: b.storage, len: b.len }))
            .fold(0, u64::saturating_add),
        slot_of: plan.buffers.keys().map(|b| slot_of[b].expect("every buffer is placed")).collect(),
        slots,
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
    let mut by_slot: SecondaryMap<SlotId, Vec<BufferId>> = SecondaryMap::new();
    for (b, &s) in m.slot_of.iter() {
        let Some(&Slot { storage, len }) = m.slots.get(s) else {
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
        by_slot[s].push(b);
    }
    for s in m.slots.keys() {
        let bufs = &by_slot[s];
        for (i, &a) in bufs.iter().enumerate() {
            for &b in &bufs[i + 1..] {
                if !compatible(plan, &life, a, b) {
                    errors.push(format!(
                        "buffers {a} (live {:?}) and {b} (live {:?}) share slot {s} while both are live",
                        life[a], life[b]
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
