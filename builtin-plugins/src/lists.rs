//! Lists on the serving thread within a budget of records, then on the read pool
//! (ARCHITECTURE.md, "Blocking work"): [`list`] runs a list, [`walk_record`] counts a
//! store's records against the budget of the thread it runs on.

use crate::Error;

thread_local! {
    /// The records the list running on this thread may still visit: `None` except during
    /// [`list`]'s first attempt on a serving thread; below zero once it went past.
    static WALK_BUDGET: std::cell::Cell<Option<isize>> = const { std::cell::Cell::new(None) };
}

/// Counts one record a list's walk visits, like tokio's cooperative budget: during
/// [`list`]'s first attempt, on the thread serving the call, one past the budget is an
/// error that ends the walk (and [`list`] runs it again on the read pool); anywhere else it
/// always succeeds. A store's list calls it for every record it reads, whether kept or not.
#[cfg_attr(
    not(feature = "metadata-redb"),
    allow(dead_code, reason = "the metadata's stores count their records")
)]
pub(crate) fn walk_record() -> Result<(), Error> {
    WALK_BUDGET.with(|budget| match budget.get() {
        None => Ok(()),
        Some(left) => {
            #[cfg(test)]
            COUNTED_HERE.set(COUNTED_HERE.get() + 1);
            budget.set(Some(left - 1));
            if left > 0 {
                Ok(())
            } else {
                Err(Error::internal(
                    "a list went past its budget on this thread; it runs again on the read pool",
                ))
            }
        }
    })
}

#[cfg(test)]
thread_local! {
    /// Test only: the records [`walk_record`] counted against a budget on this thread, so a
    /// test can see that a store's list counts its records.
    static COUNTED_HERE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Test only: the records lists counted against a budget on this thread since the last call.
#[cfg(all(test, feature = "metadata-redb"))]
pub(crate) fn records_counted_here() -> usize {
    COUNTED_HERE.replace(0)
}

/// Runs a list: first on the calling thread (a runtime thread serving the call), for at
/// most the records [`crate::set_inline_list_records`] allows, counted by [`walk_record`];
/// a list that would visit more is dropped there and run again from the start on the read
/// pool ([`crate::blocking_read`]), in a read transaction of its own. So `work` must be
/// read-only, and a store it calls must count its records (one that does not runs whole on
/// the calling thread). `what` names the work in the internal error a panic on the pool becomes.
pub(crate) async fn list<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T, Error> + Clone + Send + 'static,
) -> Result<T, Error> {
    let records = crate::INLINE_LIST_RECORDS.load(std::sync::atomic::Ordering::Relaxed);
    list_within(records, what, work).await
}

/// [`list`] with a budget of `records` (0: straight to the read pool).
pub(crate) async fn list_within<T: Send + 'static>(
    records: usize,
    what: &'static str,
    work: impl FnOnce() -> Result<T, Error> + Clone + Send + 'static,
) -> Result<T, Error> {
    if records > 0 {
        let outer = WALK_BUDGET.replace(Some(isize::try_from(records).unwrap_or(isize::MAX)));
        let result = (work.clone())();
        let left = WALK_BUDGET.replace(outer);
        if left.is_none_or(|left| left >= 0) {
            return result;
        }
    }
    crate::blocking_read(what, work).await
}
