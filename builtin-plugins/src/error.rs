//! The error type shared by the built-in plugins, with containerd's categories and their
//! gRPC status codes.

use plinth_core::Category;

/// An error with a category; it becomes a gRPC status with the matching code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// The category: decides the gRPC code.
    pub category: Category,
    /// What went wrong and, where it helps, what to do.
    pub message: String,
}

impl Error {
    /// An error of `category`.
    pub fn new(category: Category, message: impl Into<String>) -> Self {
        Error {
            category,
            message: message.into(),
        }
    }

    /// Bad input.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::new(Category::InvalidArgument, message)
    }

    /// Does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Error::new(Category::NotFound, message)
    }

    /// Exists already.
    pub fn already_exists(message: impl Into<String>) -> Self {
        Error::new(Category::AlreadyExists, message)
    }

    /// Not in the state the operation needs.
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Error::new(Category::FailedPrecondition, message)
    }

    /// A dependency is down or busy.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Error::new(Category::Unavailable, message)
    }

    /// A resource ran out (the disk is full).
    pub fn resource_exhausted(message: impl Into<String>) -> Self {
        Error::new(Category::ResourceExhausted, message)
    }

    /// A failed I/O call, `what` naming the call and its path: ResourceExhausted when the
    /// filesystem or the quota is full (with what to do), internal otherwise.
    pub fn io(what: impl std::fmt::Display, error: &std::io::Error) -> Self {
        if out_of_space(error) {
            return Error::resource_exhausted(format!(
                "{what}: {error}: free space on that filesystem and try again"
            ));
        }
        Error::internal(format!("{what}: {error}"))
    }

    /// Stored data is lost or corrupt.
    pub fn data_loss(message: impl Into<String>) -> Self {
        Error::new(Category::DataLoss, message)
    }

    /// Unimplemented: a request this build cannot serve (a media type, a mount type).
    pub fn unimplemented(message: impl Into<String>) -> Self {
        Error::new(Category::Unimplemented, message)
    }

    /// Anything else.
    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(Category::Internal, message)
    }
}

/// The gRPC code of a category, as containerd's errdefs maps them.
pub fn code_of(category: Category) -> tonic::Code {
    match category {
        Category::InvalidArgument => tonic::Code::InvalidArgument,
        Category::NotFound => tonic::Code::NotFound,
        Category::AlreadyExists => tonic::Code::AlreadyExists,
        Category::FailedPrecondition => tonic::Code::FailedPrecondition,
        Category::Unavailable => tonic::Code::Unavailable,
        Category::DataLoss => tonic::Code::DataLoss,
        Category::ResourceExhausted => tonic::Code::ResourceExhausted,
        Category::Unimplemented => tonic::Code::Unimplemented,
        _ => tonic::Code::Internal,
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        tonic::Status::new(code_of(error.category), error.message)
    }
}

/// Whether `error` says the filesystem (ENOSPC) or the quota (EDQUOT) is full.
pub(crate) fn out_of_space(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}
