//! Intra-op parallelism: one layer's work split over the threads of the [`Pool`] its plan
//! runs under (`crate::backbone::Backbone` runs each frame inside [`with_pool`] when it has
//! more than one thread; otherwise everything runs on the caller's thread).
//!
//! Work is split where results cannot depend on the split: output pixels of a 1×1 layer,
//! output rows of a depthwise layer or of the stem. Each part computes exactly the integers
//! (or, for the float stem, the float operations in the order) one thread would, so outputs
//! are bit-identical whatever the thread count (tested).
//!
//! Must not: start threads (the pool is the backbone's, made once) or pick kernels.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::Arc;

use super::pool::Pool;

thread_local! {
    /// The pool the layers this thread runs may use.
    static CURRENT: RefCell<Option<Arc<Pool>>> = const { RefCell::new(None) };
}

/// Run `f` with `pool` as this thread's pool for the layers `f` runs (restored after).
pub fn with_pool<R>(pool: &Arc<Pool>, f: impl FnOnce() -> R) -> R {
    let before = CURRENT.with(|c| c.replace(Some(Arc::clone(pool))));
    struct Restore(Option<Option<Arc<Pool>>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let before = self.0.take().flatten();
            CURRENT.with(|c| *c.borrow_mut() = before);
        }
    }
    let _restore = Restore(Some(before));
    f()
}

fn current() -> Option<Arc<Pool>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Threads this thread's layers may use: its pool's, else 1.
pub fn threads() -> usize {
    current().map_or(1, |p| p.threads())
}

/// `0..n` cut into at most `parts` contiguous ranges of whole multiples of `align` (the last
/// takes the rest), none empty; fewer parts when `n` is small (each at least `min` items).
pub fn ranges(n: usize, parts: usize, align: usize, min: usize) -> Vec<Range<usize>> {
    let align = align.max(1);
    let parts = parts.clamp(1, (n / min.max(1)).max(1));
    let step = n.div_ceil(parts).div_ceil(align) * align;
    let mut out = Vec::with_capacity(parts);
    let mut start = 0;
    while start < n {
        let end = (start + step.max(1)).min(n);
        out.push(start..end);
        start = end;
    }
    out
}

/// One part's rows and their output, taken once by the task that runs them.
type Slot<'a, T> = std::sync::Mutex<Option<(Range<usize>, &'a mut [T])>>;

/// Run `f` on each of `parts` (disjoint ranges of rows of `out`, `row` values each, in order
/// and covering `out`), in parallel when this thread has a pool. `f` gets a range and its
/// rows of `out`.
pub fn for_rows<T: Send>(
    out: &mut [T],
    row: usize,
    parts: &[Range<usize>],
    f: impl Fn(Range<usize>, &mut [T]) + Sync,
) {
    let mut rest = out;
    // Each part's rows, handed to exactly one task (a task takes its slot once).
    let mut chunks: Vec<Slot<'_, T>> = Vec::with_capacity(parts.len());
    for r in parts {
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(r.len() * row);
        chunks.push(std::sync::Mutex::new(Some((r.clone(), head))));
        rest = tail;
    }
    let task = |i: usize| {
        let part = chunks[i].lock().ok().and_then(|mut c| c.take());
        if let Some((r, o)) = part {
            f(r, o);
        }
    };
    match current() {
        Some(pool) if chunks.len() > 1 => pool.run(chunks.len(), &task),
        _ => (0..chunks.len()).for_each(task),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_in_aligned_parts() {
        assert_eq!(ranges(10, 2, 4, 1), [0..8, 8..10]);
        assert_eq!(ranges(10, 3, 1, 1), [0..4, 4..8, 8..10]);
        let one = ranges(7, 4, 1, 4);
        assert_eq!(
            (one.len(), one[0].clone()),
            (1, 0..7),
            "too little work for two parts"
        );
        assert_eq!(ranges(0, 4, 1, 1), Vec::<Range<usize>>::new());
        for (n, p, a) in [(12544, 2, 8), (49, 3, 1), (196, 4, 4), (1, 8, 8)] {
            let r = ranges(n, p, a, 1);
            assert!(r.len() <= p && r.first().unwrap().start == 0 && r.last().unwrap().end == n);
            assert!(
                r.windows(2)
                    .all(|w| w[0].end == w[1].start && w[0].len() % a == 0)
            );
        }
    }

    #[test]
    fn rows_are_handed_out_whole_inside_a_pool_and_outside() {
        let fill = |out: &mut [u8]| {
            let parts = ranges(out.len() / 3, threads(), 1, 1);
            for_rows(out, 3, &parts, |r, o| {
                for (i, row) in r.zip(o.chunks_exact_mut(3)) {
                    row.fill(i as u8);
                }
            });
        };
        let mut alone = vec![0u8; 30];
        fill(&mut alone);
        let pool = Arc::new(Pool::new(3).unwrap());
        let mut pooled = vec![0u8; 30];
        assert_eq!(with_pool(&pool, threads), 3);
        assert_eq!(threads(), 1, "the pool is this call's only");
        with_pool(&pool, || fill(&mut pooled));
        assert_eq!(alone, pooled);
        assert_eq!(pooled[29], 9);
    }
}
