//! containerd's event payloads (`plinth_api::containerd::events`) as [`Event`]s: their full
//! proto names and the fields filters read, as containerd 1.6's generated `Field` accessors
//! read them.

use std::collections::HashMap;

use plinth_api::containerd::events::{
    ContainerCreate, ContainerDelete, ContainerUpdate, ContentDelete, ImageCreate, ImageDelete,
    ImageUpdate, NamespaceCreate, NamespaceDelete, NamespaceUpdate, SnapshotCommit,
    SnapshotPrepare, SnapshotRemove, container_create,
};

use super::{Event, FieldReader, FieldReaders};

/// A string field: present when not empty; what follows it in the path is ignored.
fn text(value: &str, _rest: &[String]) -> Option<String> {
    (!value.is_empty()).then(|| value.to_string())
}

/// `labels.<key>`: the rest of the path joined with `.` names the label.
fn labels(labels: &HashMap<String, String>, rest: &[String]) -> Option<String> {
    labels.get(&rest.join(".")).cloned()
}

/// A message field: the rest of the path is read in it.
fn message<M: Event>(value: &Option<M>, rest: &[String]) -> Option<String> {
    value.as_ref()?.field(rest)
}

/// An `Any` field (a runtime's options): containerd reads it only when its type is known to
/// the daemon; no runtime options type is known here, so it is always absent.
fn any(_value: &Option<prost_types::Any>, _rest: &[String]) -> Option<String> {
    None
}

/// `impl Event` for each payload: its full proto name and its fields, each with how it is
/// read.
macro_rules! events {
    ($($type:ty = $full_name:literal { $($field:ident: $read:ident),* $(,)? })*) => {
        $(
            impl Event for $type {
                const FULL_NAME: &'static str = $full_name;

                fn field(&self, path: &[String]) -> Option<String> {
                    let (first, rest) = path.split_first()?;
                    match first.as_str() {
                        $(stringify!($field) => $read(&self.$field, rest),)*
                        _ => None,
                    }
                }
            }
        )*
    };
}

events! {
    NamespaceCreate = "containerd.events.NamespaceCreate" { name: text, labels: labels }
    NamespaceUpdate = "containerd.events.NamespaceUpdate" { name: text, labels: labels }
    NamespaceDelete = "containerd.events.NamespaceDelete" { name: text }
    // containerd declares the image events in the images service's package.
    ImageCreate = "containerd.services.images.v1.ImageCreate" { name: text, labels: labels }
    ImageUpdate = "containerd.services.images.v1.ImageUpdate" { name: text, labels: labels }
    ImageDelete = "containerd.services.images.v1.ImageDelete" { name: text }
    ContainerCreate = "containerd.events.ContainerCreate" {
        id: text, image: text, runtime: message
    }
    container_create::Runtime = "containerd.events.ContainerCreate.Runtime" {
        name: text, options: any
    }
    ContainerUpdate = "containerd.events.ContainerUpdate" {
        id: text, image: text, labels: labels, snapshot_key: text
    }
    ContainerDelete = "containerd.events.ContainerDelete" { id: text }
    ContentDelete = "containerd.events.ContentDelete" { digest: text }
    SnapshotPrepare = "containerd.events.SnapshotPrepare" { key: text, parent: text }
    SnapshotCommit = "containerd.events.SnapshotCommit" { key: text, name: text }
    SnapshotRemove = "containerd.events.SnapshotRemove" { key: text }
}

/// A reader for each payload that is published on its own (not `ContainerCreate.Runtime`).
pub(super) fn readers() -> FieldReaders {
    [
        FieldReader::of::<NamespaceCreate>(),
        FieldReader::of::<NamespaceUpdate>(),
        FieldReader::of::<NamespaceDelete>(),
        FieldReader::of::<ImageCreate>(),
        FieldReader::of::<ImageUpdate>(),
        FieldReader::of::<ImageDelete>(),
        FieldReader::of::<ContainerCreate>(),
        FieldReader::of::<ContainerUpdate>(),
        FieldReader::of::<ContainerDelete>(),
        FieldReader::of::<ContentDelete>(),
        FieldReader::of::<SnapshotPrepare>(),
        FieldReader::of::<SnapshotCommit>(),
        FieldReader::of::<SnapshotRemove>(),
    ]
    .into_iter()
    .map(|reader| (reader.type_url(), reader))
    .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use prost::Message as _;

    use super::*;

    /// Every message name in plinth-api's descriptors, nested ones included.
    fn proto_names() -> BTreeSet<String> {
        fn walk(
            prefix: &str,
            messages: &[prost_types::DescriptorProto],
            out: &mut BTreeSet<String>,
        ) {
            for message in messages {
                let name = format!("{prefix}.{}", message.name());
                walk(&name, &message.nested_type, out);
                out.insert(name);
            }
        }
        let set = prost_types::FileDescriptorSet::decode(plinth_api::FILE_DESCRIPTOR_SET).unwrap();
        let mut names = BTreeSet::new();
        for file in &set.file {
            walk(file.package(), &file.message_type, &mut names);
        }
        names
    }

    /// The names written here are the protos' own (a typo would give events a type URL that
    /// `ctr events` cannot decode), and every payload in `containerd.events` has a reader.
    #[test]
    fn names_are_the_protos_and_every_payload_has_a_reader() {
        let names = proto_names();
        let readers = readers();
        for type_url in readers.keys() {
            assert!(names.contains(type_url), "{type_url} is not in plinth-api");
        }
        assert!(names.contains(container_create::Runtime::FULL_NAME));
        // Top-level messages only: nested ones (a runtime, map entries) are no payloads.
        let payloads = names
            .iter()
            .filter_map(|n| n.strip_prefix("containerd.events."))
            .filter(|n| !n.contains('.'));
        for name in payloads {
            let name = format!("containerd.events.{name}");
            assert!(readers.contains_key(&name), "no reader for {name}");
        }
        assert_eq!(readers.len(), 13);
    }

    #[test]
    fn field_table() {
        let path = |text: &str| -> Vec<String> { text.split('.').map(str::to_string).collect() };
        let labels: HashMap<String, String> =
            [("a.b".to_string(), "x".to_string())].into_iter().collect();
        let container = ContainerCreate {
            id: "c1".into(),
            image: String::new(),
            runtime: Some(container_create::Runtime {
                name: "io.containerd.runc.v2".into(),
                options: Some(prost_types::Any::default()),
            }),
        };
        let update = ContainerUpdate {
            id: "c1".into(),
            labels,
            ..ContainerUpdate::default()
        };
        // (payload, path, value)
        let cases: &[(&dyn super::super::DecodedEvent, &str, Option<&str>)] = &[
            (&container, "id", Some("c1")),
            (&container, "id.more", Some("c1")),
            (&container, "image", None),
            (&container, "runtime.name", Some("io.containerd.runc.v2")),
            (&container, "runtime", None),
            (&container, "runtime.options.x", None),
            (&container, "nope", None),
            (&update, "labels.a.b", Some("x")),
            (&update, "labels.a", None),
            (&update, "snapshot_key", None),
            (&ContainerCreate::default(), "runtime.name", None),
            (
                &SnapshotPrepare {
                    key: "k".into(),
                    parent: "p".into(),
                },
                "parent",
                Some("p"),
            ),
            (
                &ContentDelete {
                    digest: "sha256:ab".into(),
                },
                "digest",
                Some("sha256:ab"),
            ),
        ];
        for (payload, text, expected) in cases {
            assert_eq!(payload.field(&path(text)).as_deref(), *expected, "{text}");
        }
    }
}
