//! Images: containerd's image records (a name pointing at a descriptor, with labels) and the
//! [`ImageStore`] interface the metadata plugin implements for the Images service.

use std::time::SystemTime;

use crate::error::Error;
use crate::namespaces::{Labels, validate_label};

/// What an image points at: the root of its content graph (an index or a manifest).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// The media type, e.g. `application/vnd.oci.image.index.v1+json`.
    pub media_type: String,
    /// The digest of the target blob, `<algorithm>:<hex>`.
    pub digest: String,
    /// The size of the target blob in bytes.
    pub size: i64,
    /// The descriptor's annotations.
    pub annotations: Labels,
}

/// An image record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The name, usually a reference such as `docker.io/library/busybox:latest`.
    pub name: String,
    /// The labels.
    pub labels: Labels,
    /// What the name points at.
    pub target: Descriptor,
    /// When it was created (set by the store).
    pub created: SystemTime,
    /// When it last changed (set by the store).
    pub updated: SystemTime,
}

impl Image {
    /// An image named `name` pointing at `target`, without labels; the store sets the times.
    pub fn new(name: impl Into<String>, target: Descriptor) -> Image {
        Image {
            name: name.into(),
            labels: Labels::new(),
            target,
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
        }
    }

    /// Checks what containerd checks before storing an image: a name, valid labels, and a
    /// target with a valid digest, a positive size and a media type.
    ///
    /// # Errors
    /// Invalid argument naming the field and the image.
    pub fn validate(&self) -> Result<(), Error> {
        if self.name.is_empty() {
            return Err(Error::invalid("image name must not be empty"));
        }
        for (key, value) in &self.labels {
            validate_label(key, value)
                .map_err(|e| Error::invalid(format!("image {:?}: {e}", self.name)))?;
        }
        crate::content::Digest::parse(&self.target.digest).map_err(|e| {
            Error::invalid(format!(
                "image {:?}: target digest {:?} is invalid: {e}",
                self.name, self.target.digest
            ))
        })?;
        if self.target.size <= 0 {
            return Err(Error::invalid(format!(
                "image {:?}: target size must be greater than zero, not {}",
                self.name, self.target.size
            )));
        }
        if self.target.media_type.is_empty() {
            return Err(Error::invalid(format!(
                "image {:?}: target media type must be set",
                self.name
            )));
        }
        Ok(())
    }

    /// The value of a filter field path, as containerd's image filters see it: `name`,
    /// `target.digest`, `target.mediatype`, `labels.<key>`, `annotations.<key>`.
    pub fn field(&self, path: &[String]) -> Option<String> {
        // Matched on the strings themselves: a list evaluates this once per image and filter.
        match path {
            [name] if name == "name" => Some(self.name.clone()).filter(|n| !n.is_empty()),
            [target, digest] if target == "target" && digest == "digest" => {
                Some(self.target.digest.clone())
            }
            [target, media_type] if target == "target" && media_type == "mediatype" => {
                Some(self.target.media_type.clone())
            }
            [labels, ..] if labels == "labels" => crate::filters::label_field(path, &self.labels),
            [annotations, ..] if annotations == "annotations" => {
                crate::filters::map_field(&path[1..], &self.target.annotations)
            }
            _ => None,
        }
    }
}

/// Stores images per namespace. Implemented by the metadata plugin. Each change is one
/// transaction of its database.
pub trait ImageStore: Send + Sync {
    /// One image.
    ///
    /// # Errors
    /// Not found; storage failure.
    fn get(&self, namespace: &str, name: &str) -> Result<Image, Error>;

    /// The images of a namespace that match any of `filters` (all when empty), by name.
    ///
    /// # Errors
    /// A filter that does not parse; storage failure.
    fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Image>, Error>;

    /// Records a new image; the store sets its times and returns it as stored.
    ///
    /// # Errors
    /// Invalid image; already exists; storage failure.
    fn create(&self, namespace: &str, image: Image) -> Result<Image, Error>;

    /// Changes an image: `fieldpaths` as containerd's (`labels`, `labels.<key>`, `target`,
    /// `annotations`, `annotations.<key>`; none: labels and target are replaced).
    ///
    /// # Errors
    /// Not found; a field that cannot be updated; invalid result; storage failure.
    fn update(&self, namespace: &str, image: Image, fieldpaths: &[String]) -> Result<Image, Error>;

    /// Removes an image record (the content it points at is left to the collector).
    ///
    /// # Errors
    /// Not found; storage failure.
    fn delete(&self, namespace: &str, name: &str) -> Result<(), Error>;
}
