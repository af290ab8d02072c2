//! Namespaces: containerd's naming rules, the `containerd-namespace` request header, label
//! limits, and the [`NamespaceStore`] interface the metadata plugin implements.

use std::collections::BTreeMap;

use crate::error::Error;

/// The gRPC metadata key that carries the namespace of a request.
pub const NAMESPACE_HEADER: &str = "containerd-namespace";

/// Longest identifier containerd accepts (namespaces, keys, refs).
pub const MAX_IDENTIFIER_LENGTH: usize = 76;

/// Largest label, key and value together, in bytes.
pub const MAX_LABEL_SIZE: usize = 4096;

/// Checks a namespace name with containerd's rules: letters and digits, single `.`, `_` or
/// `-` between them, at most 76 characters.
///
/// # Errors
/// An invalid-argument error saying which rule is broken.
pub fn validate_identifier(what: &str, name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::invalid(format!("{what} must not be empty")));
    }
    if name.len() > MAX_IDENTIFIER_LENGTH {
        return Err(Error::invalid(format!(
            "{what} {name:?} is {} characters long: at most {MAX_IDENTIFIER_LENGTH} are allowed",
            name.len()
        )));
    }
    let mut previous_was_separator = true;
    for c in name.chars() {
        let separator = matches!(c, '.' | '_' | '-');
        let ok = if separator {
            !previous_was_separator
        } else {
            c.is_ascii_alphanumeric()
        };
        if !ok {
            return Err(Error::invalid(format!(
                "{what} {name:?} is invalid: use letters and digits, with single '.', '_' or '-' between them"
            )));
        }
        previous_was_separator = separator;
    }
    if previous_was_separator {
        return Err(Error::invalid(format!(
            "{what} {name:?} is invalid: it must not end with '.', '_' or '-'"
        )));
    }
    Ok(())
}

/// Checks one label against containerd's size limit.
///
/// # Errors
/// An invalid-argument error naming the label.
pub fn validate_label(key: &str, value: &str) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::invalid("label key must not be empty"));
    }
    if key.len() + value.len() > MAX_LABEL_SIZE {
        return Err(Error::invalid(format!(
            "label key and value length ({} bytes) greater than maximum size ({MAX_LABEL_SIZE} bytes), key: {}",
            key.len() + value.len(),
            key.chars().take(10).collect::<String>()
        )));
    }
    Ok(())
}

/// The namespace of a request, from its `containerd-namespace` header.
///
/// # Errors
/// Failed precondition when the header is missing (containerd's answer); invalid argument
/// when it is not text or not a valid name.
pub fn from_request<T>(request: &tonic::Request<T>) -> Result<String, Error> {
    let value = request.metadata().get(NAMESPACE_HEADER).ok_or_else(|| {
        Error::failed_precondition(format!(
            "namespace is required: set the {NAMESPACE_HEADER} header"
        ))
    })?;
    let name = value
        .to_str()
        .map_err(|_| Error::invalid(format!("{NAMESPACE_HEADER} header is not valid text")))?;
    validate_identifier("namespace", name)?;
    Ok(name.to_string())
}

/// Hands out a namespace's view of the content store and of each snapshotter. Implemented
/// by the metadata plugin; used by the gRPC services.
pub trait NamespacedStores: Send + Sync {
    /// The content store as `namespace` sees it.
    ///
    /// # Errors
    /// Invalid namespace; unavailable when no content store is loaded.
    fn content(
        self: std::sync::Arc<Self>,
        namespace: &str,
    ) -> Result<std::sync::Arc<dyn crate::content::ContentStore>, Error>;

    /// The snapshotter `name` as `namespace` sees it.
    ///
    /// # Errors
    /// Invalid namespace; invalid argument for a snapshotter that is not loaded.
    fn snapshotter(
        self: std::sync::Arc<Self>,
        namespace: &str,
        name: &str,
    ) -> Result<std::sync::Arc<dyn crate::snapshots::Snapshotter>, Error>;

    /// As [`NamespacedStores::content`], binding what the view ingests and commits to
    /// `lease` (the `containerd-lease` header) when there is one.
    ///
    /// # Errors
    /// As [`NamespacedStores::content`]; failed precondition for a lease when the stores
    /// keep no leases (the default).
    fn leased_content(
        self: std::sync::Arc<Self>,
        namespace: &str,
        lease: Option<&str>,
    ) -> Result<std::sync::Arc<dyn crate::content::ContentStore>, Error> {
        no_leases(lease)?;
        self.content(namespace)
    }

    /// As [`NamespacedStores::snapshotter`], binding the snapshots the view prepares, views
    /// and commits to `lease` when there is one.
    ///
    /// # Errors
    /// As [`NamespacedStores::snapshotter`]; failed precondition for a lease when the stores
    /// keep no leases (the default).
    fn leased_snapshotter(
        self: std::sync::Arc<Self>,
        namespace: &str,
        name: &str,
        lease: Option<&str>,
    ) -> Result<std::sync::Arc<dyn crate::snapshots::Snapshotter>, Error> {
        no_leases(lease)?;
        self.snapshotter(namespace, name)
    }
}

fn no_leases(lease: Option<&str>) -> Result<(), Error> {
    match lease {
        None => Ok(()),
        Some(lease) => Err(Error::failed_precondition(format!(
            "lease {lease:?}: these stores keep no leases: drop the containerd-lease header"
        ))),
    }
}

/// Labels of one object, sorted by key.
pub type Labels = BTreeMap<String, String>;

/// Stores namespaces and their labels. Implemented by the metadata plugin.
pub trait NamespaceStore: Send + Sync {
    /// Creates a namespace; already exists is an error.
    ///
    /// # Errors
    /// Invalid name or labels, already exists, storage failure.
    fn create(&self, name: &str, labels: &BTreeMap<String, String>) -> Result<(), Error>;

    /// Creates the namespace if it does not exist (as containerd does on first use).
    ///
    /// # Errors
    /// Invalid name, storage failure.
    fn ensure(&self, name: &str) -> Result<(), Error>;

    /// The labels of a namespace.
    ///
    /// # Errors
    /// Not found, storage failure.
    fn labels(&self, name: &str) -> Result<BTreeMap<String, String>, Error>;

    /// Sets (`Some`) or removes (`None`) labels of a namespace, in one transaction.
    ///
    /// # Errors
    /// Not found, invalid labels, storage failure.
    fn update_labels(&self, name: &str, changes: &[(String, Option<String>)]) -> Result<(), Error>;

    /// Every namespace with its labels, sorted by name.
    ///
    /// # Errors
    /// Storage failure.
    fn list(&self) -> Result<Vec<(String, Labels)>, Error>;

    /// Deletes an empty namespace.
    ///
    /// # Errors
    /// Not found; failed precondition when it still holds content or snapshots.
    fn delete(&self, name: &str) -> Result<(), Error>;

    /// As [`create`](Self::create), and publishes `/namespaces/create` in `events_in` once
    /// the change has committed, in commit order with that namespace's other events (the
    /// Namespaces service's call). A store without events only creates.
    ///
    /// # Errors
    /// As [`create`](Self::create).
    fn create_publishing(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        events_in: &str,
    ) -> Result<(), Error> {
        let _ = events_in;
        self.create(name, labels)
    }

    /// As [`update_labels`](Self::update_labels), publishing `/namespaces/update` as
    /// [`create_publishing`](Self::create_publishing) does.
    ///
    /// # Errors
    /// As [`update_labels`](Self::update_labels).
    fn update_labels_publishing(
        &self,
        name: &str,
        changes: &[(String, Option<String>)],
        events_in: &str,
    ) -> Result<(), Error> {
        let _ = events_in;
        self.update_labels(name, changes)
    }

    /// As [`delete`](Self::delete), publishing `/namespaces/delete` as
    /// [`create_publishing`](Self::create_publishing) does.
    ///
    /// # Errors
    /// As [`delete`](Self::delete).
    fn delete_publishing(&self, name: &str, events_in: &str) -> Result<(), Error> {
        let _ = events_in;
        self.delete(name)
    }
}

/// Applies containerd's label field paths to `labels`.
///
/// # Errors
/// Invalid argument for a path other than `labels` or `labels.<key>`.
pub fn apply_label_paths(
    current: &mut Labels,
    requested: &Labels,
    fieldpaths: &[String],
) -> Result<(), Error> {
    if fieldpaths.is_empty() {
        *current = requested.clone();
        return Ok(());
    }
    for path in fieldpaths {
        if path == "labels" {
            *current = requested.clone();
        } else if let Some(key) = path.strip_prefix("labels.") {
            match requested.get(key).filter(|v| !v.is_empty()) {
                Some(value) => {
                    current.insert(key.to_string(), value.clone());
                }
                None => {
                    current.remove(key);
                }
            }
        } else {
            return Err(Error::invalid(format!(
                "cannot update {path:?}: only \"labels\" and \"labels.<key>\" can be updated"
            )));
        }
    }
    for (key, value) in current.iter() {
        validate_label(key, value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifier_rules() {
        let long = "a".repeat(77);
        let cases: &[(&str, bool)] = &[
            ("default", true),
            ("k8s.io", true),
            ("a-b_c.d", true),
            ("A1", true),
            ("", false),
            ("-a", false),
            ("a-", false),
            ("a..b", false),
            ("a/b", false),
            ("../x", false),
            ("a b", false),
            ("ü", false),
            (&long, false),
            (&long[..76], true),
        ];
        for (name, ok) in cases {
            assert_eq!(
                validate_identifier("namespace", name).is_ok(),
                *ok,
                "{name:?}"
            );
        }
    }

    #[test]
    fn label_size_limit() {
        assert!(validate_label("k", &"v".repeat(4095)).is_ok());
        assert!(validate_label("k", &"v".repeat(4096)).is_err());
        assert!(validate_label("", "v").is_err());
    }
}
