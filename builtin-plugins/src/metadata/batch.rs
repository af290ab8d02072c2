//! Creates that share a write transaction.
//!
//! Every image or container create is one record inserted under redb's writer lock, and a
//! transaction's commit costs far more than its insert: the table roots, the freed-page
//! tree and the allocator's pages are written again whatever the transaction changed, and
//! a durable commit waits for an `fdatasync` besides. Creates that arrive while another
//! create is being written therefore queue here, and one of their callers (the *leader*)
//! writes the whole queue, up to [`MOST`] at a time, in one transaction, in the order they
//! arrived: one commit and one sync for all of them.
//!
//! A caller alone finds no queue and no leader, and leads its own batch of one at once:
//! nothing waits, and nothing changes for one client.
//!
//! Each create still succeeds or fails on its own, as if it had a transaction of its own:
//! when one of them fails (its record exists already, say), the transaction is dropped with
//! whatever that create may have written, the failure goes to its caller alone, and the
//! others are written again in a new transaction. A failed commit fails every create of the
//! batch. Events are published after the commit, one per create, in the batch's order,
//! which is the commit order their event slots were taken in.
//!
//! Leading is done by a caller that is waiting anyway (its own create is queued or in the
//! batch), one batch at a time, so the queue never waits for a thread: after each batch
//! every caller still waiting may take the next, and a caller whose create is answered
//! leaves. A panic while a batch is written fails that batch's creates with an internal
//! error and hands over.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use prost::Message as _;
use redb::{ReadableTable as _, WriteTransaction};

use super::order::Slot;
use super::{Metadata, storage};
use crate::containers::Container;
use crate::error::Error;
use crate::images::Image;

/// The most creates one transaction writes.
pub(super) const MOST: usize = 64;

/// A create waiting for its transaction.
pub(super) enum Create {
    /// An image, in a namespace.
    Image(String, Image),
    /// A container, in a namespace.
    Container(String, Container),
}

/// The queue of creates and who is writing them.
#[derive(Default)]
pub(super) struct Batches {
    state: Mutex<Queue>,
    /// Told when a batch is answered or nobody leads any more.
    answered: Condvar,
}

#[derive(Default)]
struct Queue {
    /// The ticket of the next create queued.
    next: u64,
    /// Creates not yet taken into a batch, oldest first.
    queued: VecDeque<(u64, Create)>,
    /// A caller is writing a batch.
    leading: bool,
    /// Answers not yet collected by their callers, by ticket.
    answers: HashMap<u64, Result<(), Error>>,
    /// Batches written so far (for tests: how the creates were grouped).
    #[cfg(test)]
    sizes: Vec<usize>,
}

impl Batches {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The sizes of the batches written so far, first first.
    #[cfg(test)]
    pub(super) fn sizes(&self) -> Vec<usize> {
        self.lock().sizes.clone()
    }
}

impl Metadata {
    /// Writes `create` in a transaction it may share with other creates (see the module
    /// docs); returns once that transaction is durable and the create's event published, or
    /// with the create's own failure.
    ///
    /// # Errors
    /// The create's own failure (already exists, a namespace that is not valid), or the
    /// failure of the transaction it was written in.
    pub(super) fn create_in_batch(&self, create: Create) -> Result<(), Error> {
        let batches = &self.batches;
        let mut queue = batches.lock();
        let ticket = queue.next;
        queue.next += 1;
        queue.queued.push_back((ticket, create));
        loop {
            if let Some(answer) = queue.answers.remove(&ticket) {
                return answer;
            }
            if !queue.leading {
                // The own create is still queued: it was not answered, and nobody writes it.
                queue.leading = true;
                let take = queue.queued.len().min(MOST);
                let batch: Vec<(u64, Create)> = queue.queued.drain(..take).collect();
                #[cfg(test)]
                queue.sizes.push(batch.len());
                drop(queue);
                let tickets: Vec<u64> = batch.iter().map(|(ticket, _)| *ticket).collect();
                let answers = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.write_batch(batch)
                }))
                .unwrap_or_else(|_| {
                    let failed = Error::internal(
                        "writing a batch of creates panicked (see the log); the creates of \
                         that batch were not made: try them again",
                    );
                    tickets.iter().map(|t| (*t, Err(failed.clone()))).collect()
                });
                queue = batches.lock();
                queue.leading = false;
                queue.answers.extend(answers);
                batches.answered.notify_all();
                continue;
            }
            queue = batches
                .answered
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Writes `batch` in one transaction, dropping (and answering) each create that fails
    /// and writing the rest again without it. Answers every ticket of the batch.
    fn write_batch(&self, mut batch: Vec<(u64, Create)>) -> Vec<(u64, Result<(), Error>)> {
        let mut answers = Vec::with_capacity(batch.len());
        while !batch.is_empty() {
            let txn = match self.db.begin_write() {
                Ok(txn) => txn,
                Err(e) => {
                    answers.extend(batch.iter().map(|(ticket, _)| (*ticket, Err(e.clone()))));
                    break;
                }
            };
            let mut slots = Vec::with_capacity(batch.len());
            let mut failed = None;
            for (at, (_, create)) in batch.iter().enumerate() {
                match self.insert(&txn, create) {
                    Ok(slot) => slots.push(slot),
                    Err(e) => {
                        failed = Some((at, e));
                        break;
                    }
                }
            }
            if let Some((at, e)) = failed {
                // Dropped unfilled, the slots publish nothing; dropped uncommitted, the
                // transaction changes nothing.
                drop(slots);
                drop(txn);
                let (ticket, _) = batch.remove(at);
                answers.push((ticket, Err(e)));
                continue;
            }
            match txn.commit() {
                Ok(()) => {
                    for ((ticket, create), slot) in batch.drain(..).zip(slots) {
                        self.mutated(false);
                        slot.publish(self.created(create));
                        answers.push((ticket, Ok(())));
                    }
                }
                Err(e) => {
                    answers.extend(batch.drain(..).map(|(ticket, _)| (ticket, Err(e.clone()))));
                }
            }
        }
        answers
    }

    /// Inserts `create`'s record in `txn` (creating its namespace on first use) and takes
    /// its event slot.
    fn insert(&self, txn: &WriteTransaction, create: &Create) -> Result<Slot, Error> {
        let (namespace, table, key, bytes) = match create {
            Create::Image(namespace, image) => {
                super::objects::note_image(&self.gc.barrier, namespace, image);
                (
                    namespace,
                    super::schema::IMAGES,
                    image.name.as_str(),
                    super::objects::image_record(image).encode_to_vec(),
                )
            }
            Create::Container(namespace, container) => {
                super::objects::note_container(&self.gc.barrier, namespace, container);
                (
                    namespace,
                    super::schema::CONTAINERS,
                    container.id.as_str(),
                    super::objects::container_record(container).encode_to_vec(),
                )
            }
        };
        super::objects::ensure_namespace(txn, namespace)?;
        let mut table = txn.open_table(table).map_err(storage)?;
        if table
            .get((namespace.as_str(), key))
            .map_err(storage)?
            .is_some()
        {
            return Err(Error::already_exists(match create {
                Create::Image(..) => format!("image {key:?}: already exists"),
                Create::Container(..) => format!("container {key:?}: already exists"),
            }));
        }
        table
            .insert((namespace.as_str(), key), bytes.as_slice())
            .map_err(storage)?;
        Ok(self.slot_for(namespace, Some(key)))
    }
}

#[cfg(test)]
impl Batches {
    /// How many creates wait for a batch.
    fn queued(&self) -> usize {
        self.lock().queued.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use crate::images::{Descriptor, Image, ImageStore};
    use plinth_core::error::Category;

    use super::Metadata;

    fn image(name: &str, n: u64) -> Image {
        Image::new(
            name,
            Descriptor {
                media_type: "m".to_string(),
                digest: format!("sha256:{n:064x}"),
                size: 1,
                annotations: BTreeMap::new(),
            },
        )
    }

    /// A metadata store whose create of one image stops under the writer lock.
    struct Held {
        metadata: Arc<Metadata>,
        /// Hears when the create has stopped.
        stopped: mpsc::Receiver<()>,
        /// Dropped (or sent on), lets the create go on.
        release: mpsc::Sender<()>,
        /// Every slot taken: the key it was taken for.
        log: Arc<Mutex<Vec<String>>>,
    }

    /// A metadata store in `dir` whose create of `hold` stops until released.
    fn holding(dir: &tempfile::TempDir, hold: &'static str) -> Held {
        let (stopped, on_stop) = mpsc::channel();
        let (release, on_release) = mpsc::channel::<()>();
        let on_release = Mutex::new(on_release);
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let slots = Arc::clone(&log);
        let mut metadata = Metadata::open(&dir.path().join("meta.db")).unwrap();
        metadata.on_slot = Arc::new(move |_, key| {
            slots.lock().unwrap().push(key.unwrap_or("").to_string());
            if key == Some(hold) {
                stopped.send(()).unwrap();
                let _ = on_release.lock().unwrap().recv();
            }
        });
        Held {
            metadata: Arc::new(metadata),
            stopped: on_stop,
            release,
            log,
        }
    }

    /// Waits (bounded) until `n` creates are queued.
    fn until_queued(metadata: &Metadata, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while metadata.batches.queued() < n {
            assert!(Instant::now() < deadline, "{n} creates never queued");
            std::thread::yield_now();
        }
    }

    type Creating = std::thread::JoinHandle<Result<Image, crate::error::Error>>;

    impl Held {
        /// Starts a create of `image` in namespace `ns` on a thread of its own.
        fn create(&self, ns: &'static str, image: Image) -> Creating {
            let metadata = Arc::clone(&self.metadata);
            std::thread::spawn(move || ImageStore::create(metadata.as_ref(), ns, image))
        }

        /// Starts the create of `first` in `a`, which holds the writer lock until released.
        fn hold(&self) -> Creating {
            let first = self.create("a", image("first", 0));
            self.stopped.recv().unwrap();
            first
        }

        /// Starts `creates` one after the other, each once the one before it is queued.
        fn queue(&self, creates: impl IntoIterator<Item = (&'static str, Image)>) -> Vec<Creating> {
            let queued = self.metadata.batches.queued();
            creates
                .into_iter()
                .enumerate()
                .map(|(n, (ns, image))| {
                    let thread = self.create(ns, image);
                    until_queued(&self.metadata, queued + n + 1);
                    thread
                })
                .collect()
        }
    }

    #[test]
    fn creates_that_arrive_during_a_write_share_the_next_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let held = holding(&dir, "first");
        let first = held.hold();
        let commits = held.metadata.db.commits();
        let rest = held.queue((1..=5).map(|n| {
            let ns = if n % 2 == 0 { "a" } else { "b" };
            (ns, image(&format!("i{n}"), n))
        }));
        drop(held.release);
        assert_eq!(first.join().unwrap().unwrap().name, "first");
        for thread in rest {
            thread.join().unwrap().unwrap();
        }
        let metadata = held.metadata;
        assert_eq!(
            metadata.batches.sizes(),
            [1, 5],
            "one batch for the five that waited"
        );
        assert_eq!(
            metadata.db.commits() - commits,
            2,
            "the held transaction and one for the other five"
        );
        assert_eq!(
            *held.log.lock().unwrap(),
            ["first", "i1", "i2", "i3", "i4", "i5"]
        );
        for (ns, name) in [("a", "first"), ("b", "i1"), ("a", "i2"), ("b", "i5")] {
            assert_eq!(
                ImageStore::get(metadata.as_ref(), ns, name).unwrap().name,
                name
            );
        }
        assert!(
            metadata.batches.lock().answers.is_empty(),
            "every answer collected"
        );
    }

    #[test]
    fn a_batch_holds_at_most_64_creates() {
        let dir = tempfile::tempdir().unwrap();
        let held = holding(&dir, "first");
        let first = held.hold();
        let rest =
            held.queue((1..=super::MOST as u64 + 1).map(|n| ("a", image(&format!("i{n}"), n))));
        drop(held.release);
        first.join().unwrap().unwrap();
        for thread in rest {
            thread.join().unwrap().unwrap();
        }
        assert_eq!(held.metadata.batches.sizes(), [1, 64, 1]);
    }

    #[test]
    fn one_caller_at_a_time_writes_its_own_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let metadata = Metadata::open(&dir.path().join("meta.db")).unwrap();
        let commits = metadata.db.commits();
        for n in 0..3 {
            ImageStore::create(&metadata, "a", image(&format!("i{n}"), n)).unwrap();
        }
        assert_eq!(metadata.batches.sizes(), [1, 1, 1]);
        assert_eq!(metadata.db.commits() - commits, 3);
    }

    #[test]
    fn a_failing_create_fails_alone_and_the_rest_of_its_batch_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let held = holding(&dir, "first");
        ImageStore::create(held.metadata.as_ref(), "a", image("dup", 7)).unwrap();
        let first = held.hold();
        // Besides three that succeed, a duplicate of a record another create of the same
        // batch writes, and of one that exists already: both fail, each alone.
        let threads = held.queue([
            ("a", image("before", 1)),
            ("a", image("before", 2)),
            ("fresh", image("x", 3)),
            ("a", image("dup", 4)),
            ("b", image("after", 5)),
        ]);
        drop(held.release);
        first.join().unwrap().unwrap();
        let answers: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        for (at, answer) in answers.iter().enumerate() {
            match at {
                1 | 3 => assert_eq!(
                    answer.as_ref().unwrap_err().category,
                    Category::AlreadyExists,
                    "{answer:?}"
                ),
                _ => assert!(answer.is_ok(), "{answer:?}"),
            }
        }
        let metadata = held.metadata;
        assert_eq!(metadata.batches.sizes(), [1, 1, 5]);
        let stored = |ns, name| ImageStore::get(metadata.as_ref(), ns, name).unwrap();
        assert_eq!(
            stored("a", "before").target.digest,
            format!("sha256:{:064x}", 1)
        );
        assert_eq!(
            stored("a", "dup").target.digest,
            format!("sha256:{:064x}", 7)
        );
        assert_eq!(stored("fresh", "x").name, "x");
        assert_eq!(stored("b", "after").name, "after");
        // Each failure dropped the transaction and the slots taken in it; the rest were
        // written again. The last attempt's slots are the ones published.
        assert_eq!(
            *held.log.lock().unwrap(),
            [
                "dup", "first", "before", "before", "x", "before", "x", "after"
            ]
        );
    }

    #[test]
    fn a_panic_while_writing_fails_that_batch_and_hands_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut metadata = Metadata::open(&dir.path().join("meta.db")).unwrap();
        metadata.on_slot = Arc::new(|_, key| assert_ne!(key, Some("boom"), "injected"));
        let error = ImageStore::create(&metadata, "a", image("boom", 0)).unwrap_err();
        assert_eq!(error.category, Category::Internal, "{error}");
        assert!(error.message.contains("panicked"), "{error}");
        ImageStore::create(&metadata, "a", image("after", 1)).unwrap();
        let missing = ImageStore::get(&metadata, "a", "boom").unwrap_err();
        assert_eq!(missing.category, Category::NotFound);
    }
}
