//! Host work spread over every core with scoped threads: for the few loops over large host
//! buffers that sit on a training step's path (AdamW, reading gradients back).

/// `f` of every item, the items dealt out in turn to one thread per core (give them largest
/// first for an even split). Results come back grouped by thread, not in the items' order. A
/// panic in `f` is raised again here.
pub fn on_every_core<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, items.len().max(1));
    let mut lanes: Vec<Vec<T>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        lanes[i % threads].push(item);
    }
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> =
            lanes.into_iter().map(|lane| s.spawn(move || lane.into_iter().map(f).collect::<Vec<R>>())).collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_item_once() {
        let mut got = super::on_every_core((0..1000u64).collect(), |x| x * x);
        got.sort_unstable();
        assert_eq!(got, (0..1000u64).map(|x| x * x).collect::<Vec<_>>());
        assert!(super::on_every_core(Vec::<u8>::new(), |x| x).is_empty());
    }
}
