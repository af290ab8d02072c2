//! Events in commit order: a change takes a numbered [`Slot`] in its namespace while it holds
//! the database's writer lock (just before its commit), so slot numbers follow the commit
//! order; once committed it fills the slot with its publication (or leaves it empty, by
//! dropping it, when it failed or publishes nothing). A namespace's publications run in slot
//! order: one that finishes early waits, buffered, for the slots before it. No thread ever
//! waits for another: whoever fills the slot that closes a gap publishes what was waiting.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

type Publication = Box<dyn FnOnce() + Send>;

/// One namespace's slots.
#[derive(Default)]
struct Line {
    /// Slots handed out.
    taken: u64,
    /// Slots published (or left empty), in order.
    done: u64,
    /// Filled slots waiting for an earlier one.
    waiting: BTreeMap<u64, Option<Publication>>,
}

/// The slots of every namespace.
#[derive(Default)]
pub(crate) struct Order {
    lines: Mutex<HashMap<String, Line>>,
}

impl Order {
    /// The next slot of `namespace`. Take it while holding the writer lock of the
    /// transaction whose commit it stands for.
    pub(crate) fn take(self: &Arc<Self>, namespace: &str) -> Slot {
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        let line = lines.entry(namespace.to_string()).or_default();
        let number = line.taken;
        line.taken += 1;
        Slot {
            order: Arc::clone(self),
            namespace: namespace.to_string(),
            number,
            filled: false,
        }
    }

    fn fill(&self, namespace: &str, number: u64, publication: Option<Publication>) {
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(line) = lines.get_mut(namespace) else {
            return;
        };
        line.waiting.insert(number, publication);
        while let Some(next) = line.waiting.remove(&line.done) {
            if let Some(publish) = next {
                publish();
            }
            line.done += 1;
        }
        if line.done == line.taken {
            lines.remove(namespace);
        }
    }
}

/// A numbered place in a namespace's event order (see the module docs). Dropped unfilled,
/// it is left empty and the publications after it go on.
#[must_use = "a slot holds back the namespace's later events until it is filled or dropped"]
pub(crate) struct Slot {
    order: Arc<Order>,
    namespace: String,
    number: u64,
    filled: bool,
}

impl Slot {
    /// Publishes with `publish` once every earlier slot of the namespace is done.
    pub(crate) fn publish(mut self, publish: impl FnOnce() + Send + 'static) {
        self.filled = true;
        self.order
            .fill(&self.namespace, self.number, Some(Box::new(publish)));
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.filled {
            self.order.fill(&self.namespace, self.number, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Seen = Arc<Mutex<Vec<u32>>>;

    /// What ran, and a publication that records `n`.
    fn recorder() -> (Seen, impl Fn(u32) -> Box<dyn FnOnce() + Send>) {
        let seen: Seen = Arc::default();
        let sink = Arc::clone(&seen);
        (seen, move |n| {
            let sink = Arc::clone(&sink);
            Box::new(move || sink.lock().unwrap().push(n))
        })
    }

    #[test]
    fn publications_run_in_slot_order_per_namespace() {
        let order = Arc::new(Order::default());
        let (seen, event) = recorder();
        let a1 = order.take("a");
        let a2 = order.take("a");
        let b1 = order.take("b");
        let a3 = order.take("a");
        a3.publish(event(3));
        a2.publish(event(2));
        assert!(seen.lock().unwrap().is_empty(), "waits for slot 1 of a");
        b1.publish(event(10));
        assert_eq!(*seen.lock().unwrap(), [10], "b does not wait for a");
        drop(a1);
        assert_eq!(
            *seen.lock().unwrap(),
            [10, 2, 3],
            "an empty slot lets the rest go"
        );
        assert!(
            order.lines.lock().unwrap().is_empty(),
            "finished lines are forgotten"
        );
        let a4 = order.take("a");
        a4.publish(event(4));
        assert_eq!(*seen.lock().unwrap(), [10, 2, 3, 4]);
    }
}
