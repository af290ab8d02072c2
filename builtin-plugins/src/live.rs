//! Live status: what a plugin that initialised ok can say about itself later, while it runs;
//! and [`AfterStart`], the work it leaves until the daemon serves.
//!
//! A plugin's [`Meta`](plinth_core::Meta) and [`Status`](plinth_core::Status) are fixed when
//! its init returns. Some plugins depend on things that come and go after that: a proxy
//! plugin's remote process may be down at start-up and come up later. Such a plugin adds an
//! `Arc<dyn LiveStatus>` view to its instance; introspection merges [`LiveStatus::exports`]
//! over the plugin's fixed exports and, while [`LiveStatus::unavailable`] says why it cannot
//! serve, reports that reason as the plugin's error (so `ctr plugins ls` shows `error`, and
//! `ok` again once it recovers). The core's statuses stay as they are: the plugin is ok, and
//! the plugins built on it (the metadata plugin) keep their reference to it.

use std::collections::BTreeMap;

/// The run-time view of a plugin whose health can change after init.
pub trait LiveStatus: Send + Sync {
    /// Facts that change at run time (e.g. the last connection error), shown by
    /// introspection over the plugin's fixed exports.
    fn exports(&self) -> BTreeMap<String, String>;

    /// Why the plugin cannot serve right now, or `None` when it can.
    fn unavailable(&self) -> Option<String>;
}

/// Work a plugin leaves until the daemon serves, so that it is off the start-up path: the
/// daemon calls [`AfterStart::after_start`] on every ok plugin with this view once it
/// listens. It must not block (start a thread or a task); without a daemon to call it (an
/// embedder, a test), the work happens when it is first needed instead.
pub trait AfterStart: Send + Sync {
    /// Starts the deferred work.
    fn after_start(&self);
}
