//! Containers: containerd's container records (metadata only: no tasks run here) and the
//! [`ContainerStore`] interface the metadata plugin implements for the Containers service.

use std::collections::BTreeMap;
use std::time::SystemTime;

use prost_types::Any;

use crate::error::Error;
use crate::namespaces::{Labels, validate_identifier, validate_label};

/// The runtime a container is meant for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Runtime {
    /// The runtime's name, e.g. `io.containerd.runc.v2`.
    pub name: String,
    /// Its options, opaque to the store.
    pub options: Option<Any>,
}

/// A container record.
#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    /// The id: containerd's identifier rules.
    pub id: String,
    /// The labels.
    pub labels: Labels,
    /// The image it was made from (a name; not checked).
    pub image: String,
    /// The runtime.
    pub runtime: Runtime,
    /// The runtime spec, opaque to the store; required.
    pub spec: Option<Any>,
    /// The snapshotter of its root filesystem.
    pub snapshotter: String,
    /// The key of its root filesystem snapshot in that snapshotter.
    pub snapshot_key: String,
    /// When it was created (set by the store).
    pub created: SystemTime,
    /// When it last changed (set by the store).
    pub updated: SystemTime,
    /// Extensions by name, opaque to the store.
    pub extensions: BTreeMap<String, Any>,
    /// The sandbox it belongs to, if any.
    pub sandbox: String,
}

impl Container {
    /// A container `id` for `runtime` with `spec`; everything else empty.
    pub fn new(id: impl Into<String>, runtime: impl Into<String>, spec: Any) -> Container {
        Container {
            id: id.into(),
            labels: Labels::new(),
            image: String::new(),
            runtime: Runtime {
                name: runtime.into(),
                options: None,
            },
            spec: Some(spec),
            snapshotter: String::new(),
            snapshot_key: String::new(),
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
            extensions: BTreeMap::new(),
            sandbox: String::new(),
        }
    }

    /// Checks what containerd checks before storing a container: the id, labels, extension
    /// names, a runtime name, a spec, and a snapshotter whenever there is a snapshot key.
    ///
    /// # Errors
    /// Invalid argument naming the field and the container.
    pub fn validate(&self) -> Result<(), Error> {
        validate_identifier("container id", &self.id)?;
        let id = &self.id;
        for (key, value) in &self.labels {
            validate_label(key, value)
                .map_err(|e| Error::invalid(format!("container {id:?}: {e}")))?;
        }
        if self.extensions.contains_key("") {
            return Err(Error::invalid(format!(
                "container {id:?}: extension names must not be empty"
            )));
        }
        if self.runtime.name.is_empty() {
            return Err(Error::invalid(format!(
                "container {id:?}: the runtime name must be set"
            )));
        }
        if self.spec.is_none() {
            return Err(Error::invalid(format!(
                "container {id:?}: the spec must be set"
            )));
        }
        if !self.snapshot_key.is_empty() && self.snapshotter.is_empty() {
            return Err(Error::invalid(format!(
                "container {id:?}: the snapshotter must be set with a snapshot key"
            )));
        }
        Ok(())
    }

    /// The value of a filter field path, as containerd's container filters see it: `id`,
    /// `image`, `runtime.name`, `snapshotter`, `labels.<key>`.
    pub fn field(&self, path: &[String]) -> Option<String> {
        let non_empty = |s: &String| Some(s.clone()).filter(|s| !s.is_empty());
        // Matched on the strings themselves: a list evaluates this once per container and
        // filter.
        match path {
            [field] => match field.as_str() {
                "id" => non_empty(&self.id),
                "image" => non_empty(&self.image),
                "snapshotter" => non_empty(&self.snapshotter),
                _ => None,
            },
            [runtime, name] if runtime == "runtime" && name == "name" => {
                non_empty(&self.runtime.name)
            }
            [labels, ..] if labels == "labels" => crate::filters::label_field(path, &self.labels),
            _ => None,
        }
    }
}

/// Stores containers per namespace. Implemented by the metadata plugin. Each change is one
/// transaction of its database.
pub trait ContainerStore: Send + Sync {
    /// One container.
    ///
    /// # Errors
    /// Not found; storage failure.
    fn get(&self, namespace: &str, id: &str) -> Result<Container, Error>;

    /// The containers of a namespace that match any of `filters` (all when empty), by id.
    ///
    /// # Errors
    /// A filter that does not parse; storage failure.
    fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Container>, Error>;

    /// Records a new container; the store sets its times and returns it as stored.
    ///
    /// # Errors
    /// Invalid container; already exists; storage failure.
    fn create(&self, namespace: &str, container: Container) -> Result<Container, Error>;

    /// Changes a container: `fieldpaths` as containerd's (`labels`, `labels.<key>`,
    /// `extensions`, `extensions.<name>`, `spec`, `image`, `snapshotkey`; none: all of
    /// those, and the snapshotter and runtime name must be unchanged).
    ///
    /// # Errors
    /// Not found; a field that cannot be updated; invalid result; storage failure.
    fn update(
        &self,
        namespace: &str,
        container: Container,
        fieldpaths: &[String],
    ) -> Result<Container, Error>;

    /// Removes a container record (its snapshot is left to the collector).
    ///
    /// # Errors
    /// Not found; storage failure.
    fn delete(&self, namespace: &str, id: &str) -> Result<(), Error>;
}
