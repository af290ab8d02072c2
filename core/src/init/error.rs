//! What a plugin's init returns when it has no instance: skipped or failed.

use std::error::Error as StdError;
use std::fmt;

/// A boxed error that can cross threads.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What a plugin's init returns when it does not produce an instance.
pub enum InitError {
    /// The plugin does not apply here (e.g. overlayfs on a kernel without overlay). Not an
    /// error: the plugin ends as skipped with this reason.
    Skip(String),
    /// The plugin failed.
    Failed(BoxError),
}

impl InitError {
    /// The plugin skips itself, with the reason.
    pub fn skip(reason: impl Into<String>) -> Self {
        InitError::Skip(reason.into())
    }

    /// The plugin failed with a message.
    pub fn msg(message: impl Into<String>) -> Self {
        InitError::Failed(message.into().into())
    }
}

impl<E: StdError + Send + Sync + 'static> From<E> for InitError {
    fn from(error: E) -> Self {
        InitError::Failed(Box::new(error))
    }
}

impl fmt::Debug for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitError::Skip(reason) => write!(f, "Skip({reason:?})"),
            InitError::Failed(error) => write!(f, "Failed({error:?})"),
        }
    }
}
