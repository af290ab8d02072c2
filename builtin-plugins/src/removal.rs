//! Removing many files or trees at once, on several threads.
//!
//! What a removal waits for is the disk, not a core: on a filesystem mounted with `discard`
//! (the usual choice on SSDs and cloud disks) every freed block is a synchronous discard
//! request, and most of an `unlink` is that wait. A removal's directory lock is held only for
//! the name; freeing the inode happens after it is released, so removals in one directory
//! overlap there. Measured on the benchmark machine (2 cores, ext4 with `discard`), 20 000
//! blob removals took 1.07 s on 4 threads, 0.67 s on 16 and 0.55 s on 32: hence
//! [`THREADS`], whatever the number of cores.

/// Threads one call removes on, at most.
pub(crate) const THREADS: usize = 16;

/// Fewer items than this are removed on the calling thread (a thread costs more than a few
/// removals).
const ALONE: usize = 32;

/// `remove` applied to every item, on up to [`THREADS`] scoped threads, results in the
/// order of `items`. A thread that panics answers with `panicked` for each of its items.
pub(crate) fn on_threads<T: Sync, R: Send>(
    items: &[T],
    remove: impl Fn(&T) -> R + Sync,
    panicked: impl Fn() -> R,
) -> Vec<R> {
    if items.len() < ALONE {
        return items.iter().map(&remove).collect();
    }
    let per_thread = items.len().div_ceil(THREADS);
    let remove = &remove;
    std::thread::scope(|scope| {
        let workers: Vec<_> = items
            .chunks(per_thread)
            .map(|chunk| {
                (
                    chunk.len(),
                    scope.spawn(move || chunk.iter().map(remove).collect::<Vec<R>>()),
                )
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|(len, worker)| {
                worker
                    .join()
                    .unwrap_or_else(|_| (0..len).map(|_| panicked()).collect())
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_once_in_order_and_a_panic_answers_for_its_chunk() {
        for n in [0, 1, ALONE - 1, ALONE, 100, 1000] {
            let items: Vec<usize> = (0..n).collect();
            let out = on_threads(&items, |i| i * 2, || usize::MAX);
            assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>(), "{n}");
        }
        let items: Vec<usize> = (0..200).collect();
        let out = on_threads(
            &items,
            |&i| {
                assert!(i != 0, "first chunk panics");
                i
            },
            || usize::MAX,
        );
        assert_eq!(
            out.len(),
            200,
            "one answer per item even when a thread panicked"
        );
        let per_thread = 200usize.div_ceil(THREADS);
        assert!(out[..per_thread].iter().all(|&r| r == usize::MAX));
        assert_eq!(out[per_thread..], items[per_thread..]);
    }
}
