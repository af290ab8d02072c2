//! The Images, Containers, Leases and Snapshots services as containerd's clients meet them:
//! each test serves the real services on a unix socket, over a real metadata database (redb
//! in a temporary directory) with the local content store and the native snapshotter, and
//! calls them with the generated tonic clients. The answers expected, error codes included,
//! are containerd 1.6's.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::SystemTime;

use hyper_util::rt::TokioIo;
use plinth_api::containerd::services::containers::v1::container::Runtime as RuntimeMessage;
use plinth_api::containerd::services::containers::v1::containers_client::ContainersClient;
use plinth_api::containerd::services::containers::v1::{
    Container as ContainerMessage, CreateContainerRequest, DeleteContainerRequest,
    GetContainerRequest, ListContainersRequest, UpdateContainerRequest,
};
#[cfg(all(feature = "diff-service", feature = "differ-walking"))]
use plinth_api::containerd::services::diff::v1::diff_client::DiffClient;
use plinth_api::containerd::services::images::v1::images_client::ImagesClient;
use plinth_api::containerd::services::images::v1::{
    CreateImageRequest, DeleteImageRequest, GetImageRequest, Image as ImageMessage,
    ListImagesRequest, UpdateImageRequest,
};
use plinth_api::containerd::services::leases::v1::leases_client::LeasesClient;
use plinth_api::containerd::services::leases::v1::{
    AddResourceRequest, CreateRequest, DeleteRequest, DeleteResourceRequest, Lease as LeaseMessage,
    ListRequest, ListResourcesRequest, Resource as ResourceMessage,
};
use plinth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use plinth_api::containerd::services::snapshots::v1::{
    CommitSnapshotRequest, Kind, ListSnapshotsRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest, StatSnapshotRequest, ViewSnapshotRequest,
};
use plinth_api::containerd::types::Descriptor as DescriptorMessage;
use prost_types::{Any, FieldMask, Timestamp};
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Request, Response, Status};

use crate::content::ContentStore;
use crate::content::local::LocalStore;
use crate::error::Error;
use crate::gc::{Run, Scheduler, Stats};
use crate::leases::LEASE_HEADER;
use crate::metadata::{Metadata, SharingPolicy};
use crate::namespaces::{NAMESPACE_HEADER, validate_identifier};
use crate::snapshots::Snapshotter;
use crate::snapshots::native::NativeSnapshotter;

/// The four services on a socket in a temporary directory, and a client of each; the server
/// stops when this is dropped.
struct Served {
    #[cfg(all(feature = "diff-service", feature = "differ-walking"))]
    diff: DiffClient<Channel>,
    /// The metadata plugin behind the services, for writing layers into its content store.
    #[cfg(all(feature = "diff-service", feature = "differ-walking"))]
    content: Arc<Metadata>,
    images: ImagesClient<Channel>,
    containers: ContainersClient<Channel>,
    leases: LeasesClient<Channel>,
    snapshots: SnapshotsClient<Channel>,
    stop: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve() -> Served {
    serve_with(None).await
}

/// The services, their synchronous deletes waiting for `gc`.
async fn serve_with(gc: Option<Arc<dyn Scheduler>>) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let content: Arc<dyn ContentStore> =
        Arc::new(LocalStore::open(&dir.path().join("content")).unwrap());
    let native: Arc<dyn Snapshotter> =
        Arc::new(NativeSnapshotter::open(&dir.path().join("native")).unwrap());
    let metadata = Arc::new(
        Metadata::open_with(
            &dir.path().join("meta.db"),
            Some(content),
            BTreeMap::from([("native".to_string(), native)]),
            SharingPolicy::Shared,
        )
        .unwrap(),
    );
    #[cfg(all(feature = "diff-service", feature = "differ-walking"))]
    let metadata_for_tests = metadata.clone();
    let socket = dir.path().join("plinthd.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let router = tonic::transport::Server::builder()
        .add_service(crate::images_service::server(metadata.clone(), gc.clone()))
        .add_service(crate::containers_service::server(metadata.clone()))
        .add_service(crate::leases_service::server(metadata.clone(), gc));
    #[cfg(all(feature = "diff-service", feature = "differ-walking"))]
    let router = {
        let differ = crate::differ::plugin::WalkingDiffer::new(
            metadata.clone(),
            crate::differ::apply::Limits::default(),
            dir.path().join("mounts"),
        );
        router.add_service(crate::diff_service::server(Arc::new(differ)))
    };
    let router = router.add_service(crate::snapshots_service::server(metadata));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        router
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await
            .expect("serving the services");
    });
    let channel = connect(&socket).await;
    Served {
        #[cfg(all(feature = "diff-service", feature = "differ-walking"))]
        diff: DiffClient::new(channel.clone()),
        #[cfg(all(feature = "diff-service", feature = "differ-walking"))]
        content: metadata_for_tests.clone(),
        images: ImagesClient::new(channel.clone()),
        containers: ContainersClient::new(channel.clone()),
        leases: LeasesClient::new(channel.clone()),
        snapshots: SnapshotsClient::new(channel),
        stop: Some(stop),
        _dir: dir,
    }
}

/// A channel to the unix socket at `socket` (the URI is required by HTTP/2 but not dialled).
async fn connect(socket: &Path) -> Channel {
    let socket = socket.to_path_buf();
    Endpoint::from_static("http://plinthd")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                tokio::net::UnixStream::connect(socket)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .unwrap()
}

/// `message` with the given headers.
fn with_headers<T>(headers: &[(&'static str, &str)], message: T) -> Request<T> {
    let mut request = Request::new(message);
    for (key, value) in headers {
        request
            .metadata_mut()
            .insert(*key, value.parse().expect("a header value"));
    }
    request
}

/// `message` in `namespace`.
fn ns<T>(namespace: &str, message: T) -> Request<T> {
    with_headers(&[(NAMESPACE_HEADER, namespace)], message)
}

/// `message` in `namespace`, binding what it creates to `lease` when there is one.
fn leased<T>(namespace: &str, lease: Option<&str>, message: T) -> Request<T> {
    match lease {
        Some(lease) => with_headers(
            &[(NAMESPACE_HEADER, namespace), (LEASE_HEADER, lease)],
            message,
        ),
        None => ns(namespace, message),
    }
}

/// `message` in the namespace `header` names, or without the header.
fn in_namespace<T>(header: Option<&str>, message: T) -> Request<T> {
    match header {
        Some(namespace) => ns(namespace, message),
        None => Request::new(message),
    }
}

/// An answer's message, turned by `f`, or its code.
fn answer<T, U>(result: Result<Response<T>, Status>, f: impl FnOnce(T) -> U) -> Result<U, Code> {
    result.map(|r| f(r.into_inner())).map_err(|s| s.code())
}

/// The code of an answer: `Ok` for a success.
fn code<T>(result: &Result<Response<T>, Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// The code of an answered call: `Ok` for a success.
fn outcome<T>(result: &Result<T, Code>) -> Code {
    *result.as_ref().err().unwrap_or(&Code::Ok)
}

/// A map from `key=value,key=value` (empty: no entry).
fn kv(text: &str) -> HashMap<String, String> {
    text.split(',')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').expect("key=value");
            (key.to_string(), value.to_string())
        })
        .collect()
}

/// An update mask from comma-separated paths: `None` sends no mask, `Some("")` an empty one.
fn mask(paths: Option<&str>) -> Option<FieldMask> {
    paths.map(|paths| FieldMask {
        paths: paths
            .split(',')
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect(),
    })
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn time(timestamp: &Option<Timestamp>) -> SystemTime {
    assert!(timestamp.is_some(), "a time is set");
    crate::convert::time(timestamp.as_ref())
}

/// A change to a valid message that makes it what a table row says.
type Change<T> = fn(&mut T);

/// What a lease holds, as ListResources answers it: (type, id).
type Resources = Vec<(String, String)>;

/// A label value too large for containerd (key and value over 4096 bytes).
static OVERSIZED: LazyLock<String> = LazyLock::new(|| "x".repeat(5000));

/// Waits until the clock has passed `timestamp`, so that a change made next is stamped later.
async fn clock_passes(timestamp: &Option<Timestamp>) {
    let time = time(timestamp);
    while SystemTime::now() <= time {
        tokio::task::yield_now().await;
    }
}

// ---------------------------------------------------------------------------------------
// Images

const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A valid sha256 digest: one byte repeated.
fn digest(byte: u8) -> String {
    format!("sha256:{}", format!("{byte:02x}").repeat(32))
}

fn target(media_type: &str, byte: u8, size: i64, annotations: &str) -> DescriptorMessage {
    DescriptorMessage {
        media_type: media_type.to_string(),
        digest: digest(byte),
        size,
        annotations: kv(annotations),
    }
}

fn image(name: &str, labels: &str, target: DescriptorMessage) -> ImageMessage {
    ImageMessage {
        name: name.to_string(),
        labels: kv(labels),
        target: Some(target),
        created_at: None,
        updated_at: None,
    }
}

impl Served {
    async fn create_image(
        &mut self,
        namespace: &str,
        image: Option<ImageMessage>,
    ) -> Result<ImageMessage, Code> {
        let request = ns(namespace, CreateImageRequest { image });
        answer(self.images.create(request).await, |r| r.image.unwrap())
    }

    async fn get_image(&mut self, namespace: &str, name: &str) -> Result<ImageMessage, Code> {
        let request = ns(namespace, GetImageRequest { name: name.into() });
        answer(self.images.get(request).await, |r| r.image.unwrap())
    }

    async fn image_names(
        &mut self,
        namespace: &str,
        filters: &[&str],
    ) -> Result<Vec<String>, Code> {
        let filters = strings(filters);
        let request = ns(namespace, ListImagesRequest { filters });
        answer(self.images.list(request).await, |r| {
            r.images.into_iter().map(|i| i.name).collect()
        })
    }

    async fn update_image(
        &mut self,
        namespace: &str,
        image: Option<ImageMessage>,
        paths: Option<&str>,
    ) -> Result<ImageMessage, Code> {
        let update_mask = mask(paths);
        let request = ns(namespace, UpdateImageRequest { image, update_mask });
        answer(self.images.update(request).await, |r| r.image.unwrap())
    }

    async fn delete_image(&mut self, namespace: &str, name: &str, sync: bool) -> Result<(), Code> {
        let name = name.to_string();
        let request = ns(namespace, DeleteImageRequest { name, sync });
        answer(self.images.delete(request).await, |()| ())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_create_stores_the_image_with_its_times() {
    let mut served = serve().await;
    let annotations = "org.opencontainers.image.ref.name=3";
    let wanted = image("alpine:3", "env=prod", target(INDEX, 1, 512, annotations));
    let before = SystemTime::now();
    let created = served
        .create_image("a", Some(wanted.clone()))
        .await
        .unwrap();
    let after = SystemTime::now();
    let without_times = ImageMessage {
        created_at: None,
        updated_at: None,
        ..created.clone()
    };
    assert_eq!(without_times, wanted, "everything sent is stored");
    let created_at = time(&created.created_at);
    assert!(
        before <= created_at && created_at <= after,
        "{created_at:?}"
    );
    assert_eq!(created.updated_at, created.created_at);
    assert_eq!(served.get_image("a", "alpine:3").await, Ok(created.clone()));

    let again = ImageMessage {
        labels: kv("env=dev"),
        ..wanted
    };
    let duplicate = served.create_image("a", Some(again.clone())).await;
    assert_eq!(duplicate, Err(Code::AlreadyExists));
    let kept = served.get_image("a", "alpine:3").await;
    assert_eq!(kept, Ok(created), "the first one is kept");
    let other = served.create_image("b", Some(again.clone())).await;
    assert_eq!(other.unwrap().labels, again.labels, "another namespace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_create_refuses_invalid_images() {
    let mut served = serve().await;
    // (what is wrong, the change to a valid image)
    let table: &[(&str, Change<ImageMessage>)] = &[
        ("an empty name", |i| i.name.clear()),
        ("no target", |i| i.target = None),
        ("a bad digest", |i| {
            i.target.as_mut().unwrap().digest = "sha256:abc".into()
        }),
        ("a size of zero", |i| i.target.as_mut().unwrap().size = 0),
        ("no media type", |i| {
            i.target.as_mut().unwrap().media_type.clear()
        }),
        ("an oversized label", |i| {
            i.labels.insert("big".into(), OVERSIZED.clone());
        }),
    ];
    let none = served.create_image("a", None).await;
    assert_eq!(none, Err(Code::InvalidArgument), "no image");
    for (what, change) in table {
        let mut invalid = image("ok", "", target(MANIFEST, 1, 10, ""));
        change(&mut invalid);
        let result = served.create_image("a", Some(invalid)).await;
        assert_eq!(result, Err(Code::InvalidArgument), "{what}");
    }
    let stored = served.image_names("a", &[]).await;
    assert_eq!(stored, Ok(vec![]), "nothing was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_get_finds_an_image_only_by_its_name_in_its_namespace() {
    let mut served = serve().await;
    let alpine = image("alpine", "", target(INDEX, 1, 5, ""));
    let created = served.create_image("a", Some(alpine)).await.unwrap();
    // (namespace, name, found)
    let table: &[(&str, &str, bool)] = &[
        ("a", "alpine", true),
        ("a", "alpine:3", false),
        ("a", "", false),
        ("b", "alpine", false),
    ];
    for (namespace, name, found) in table {
        let expected = if *found {
            Ok(created.clone())
        } else {
            Err(Code::NotFound)
        };
        let got = served.get_image(namespace, name).await;
        assert_eq!(got, expected, "{namespace}/{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_list_filters_like_containerd() {
    let mut served = serve().await;
    let alpine = "docker.io/library/alpine:3";
    let busybox = "docker.io/library/busybox:latest";
    let tool = "ghcr.io/example/tool:1";
    let ref_name = "org.opencontainers.image.ref.name=3";
    let images = [
        (
            "a",
            image(
                alpine,
                "env=prod,com.example.tier=web",
                target(INDEX, 1, 10, ref_name),
            ),
        ),
        ("a", image(busybox, "env=dev", target(MANIFEST, 2, 10, ""))),
        ("a", image(tool, "", target(MANIFEST, 3, 10, "signed=yes"))),
        (
            "b",
            image("elsewhere", "env=prod", target(INDEX, 1, 10, "")),
        ),
    ];
    for (namespace, image) in images {
        served.create_image(namespace, Some(image)).await.unwrap();
    }
    let digest_1 = format!("target.digest=={}", digest(1));
    let digest_3 = format!("target.digest=={}", digest(3));
    let media_type = format!("target.mediatype=={MANIFEST}");
    let name = format!("name=={busybox}");
    // (filters, names listed)
    let table: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec![], vec![alpine, busybox, tool]),
        (vec![""], vec![alpine, busybox, tool]),
        (vec![name.as_str()], vec![busybox]),
        (vec![r"name~=^docker\.io/"], vec![alpine, busybox]),
        (vec![digest_1.as_str()], vec![alpine]),
        (vec![media_type.as_str()], vec![busybox, tool]),
        (vec!["labels.env==prod"], vec![alpine]),
        (vec!["labels.env"], vec![alpine, busybox]),
        (vec![r#"labels."com.example.tier"==web"#], vec![alpine]),
        (
            vec![r#"annotations."org.opencontainers.image.ref.name"==3"#],
            vec![alpine],
        ),
        (vec!["annotations.signed"], vec![tool]),
        (
            vec!["labels.env==dev", digest_3.as_str()],
            vec![busybox, tool],
        ),
        (vec!["labels.env==prod,target.mediatype==nothing"], vec![]),
        (vec!["name==nothing"], vec![]),
    ];
    for (filters, expected) in table {
        let listed = served.image_names("a", &filters).await;
        assert_eq!(listed, Ok(strings(&expected)), "{filters:?}");
    }
    let bad = served.image_names("a", &["name=x"]).await;
    assert_eq!(bad, Err(Code::InvalidArgument));
}

/// Where an updated image's target (media type, digest, size) comes from.
#[derive(Debug, Clone, Copy)]
enum Source {
    Stored,
    Sent,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_update_applies_field_paths_like_containerd() {
    let mut served = serve().await;
    // Stored: labels a=1,b=2 and an index annotated x=1,y=2. Sent: labels a=10,c=3 and a
    // manifest annotated x=10,z=3.
    // (update mask: None sends none, "" an empty one; labels after, target after,
    // annotations after)
    let table: &[(Option<&str>, &str, Source, &str)] = &[
        (Some("labels.a"), "a=10,b=2", Source::Stored, "x=1,y=2"),
        (Some("labels.b"), "a=1", Source::Stored, "x=1,y=2"),
        (Some("labels.c"), "a=1,b=2,c=3", Source::Stored, "x=1,y=2"),
        (Some("labels"), "a=10,c=3", Source::Stored, "x=1,y=2"),
        (Some("target"), "a=1,b=2", Source::Sent, "x=10,z=3"),
        (Some("annotations.x"), "a=1,b=2", Source::Stored, "x=10,y=2"),
        (Some("annotations.y"), "a=1,b=2", Source::Stored, "x=1"),
        (Some("annotations"), "a=1,b=2", Source::Stored, "x=10,z=3"),
        (
            Some("labels.a,annotations.z"),
            "a=10,b=2",
            Source::Stored,
            "x=1,y=2,z=3",
        ),
        // No mask, or an empty one: labels and target are replaced.
        (None, "a=10,c=3", Source::Sent, "x=10,z=3"),
        (Some(""), "a=10,c=3", Source::Sent, "x=10,z=3"),
    ];
    for (case, (paths, labels, source, annotations)) in table.iter().enumerate() {
        let name = format!("image-{case}");
        let stored = image(&name, "a=1,b=2", target(INDEX, 1, 10, "x=1,y=2"));
        let sent = image(&name, "a=10,c=3", target(MANIFEST, 2, 20, "x=10,z=3"));
        let created = served
            .create_image("a", Some(stored.clone()))
            .await
            .unwrap();
        clock_passes(&created.updated_at).await;
        let updated = served
            .update_image("a", Some(sent.clone()), *paths)
            .await
            .unwrap();
        let target = match source {
            Source::Stored => stored.target.clone(),
            Source::Sent => sent.target,
        };
        let expected = ImageMessage {
            labels: kv(labels),
            target: target.map(|t| DescriptorMessage {
                annotations: kv(annotations),
                ..t
            }),
            created_at: created.created_at,
            updated_at: updated.updated_at,
            ..stored
        };
        assert_eq!(updated, expected, "{paths:?}");
        let (before, after) = (time(&created.updated_at), time(&updated.updated_at));
        assert!(after > before, "{paths:?}: updated_at moves");
        let got = served.get_image("a", &name).await;
        assert_eq!(got, Ok(updated), "{paths:?}: as stored");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_update_refuses_bad_paths_missing_images_and_invalid_results() {
    let mut served = serve().await;
    let alpine = || image("alpine", "a=1", target(INDEX, 1, 10, ""));
    let stored = served.create_image("a", Some(alpine())).await.unwrap();
    // (what, the change to a valid update of "alpine", update mask, expected)
    type Case = (
        &'static str,
        Change<ImageMessage>,
        Option<&'static str>,
        Code,
    );
    let table: &[Case] = &[
        (
            "an empty name",
            |i| i.name.clear(),
            None,
            Code::InvalidArgument,
        ),
        (
            "a missing image",
            |i| i.name = "busybox".into(),
            None,
            Code::NotFound,
        ),
        ("the name path", |_| {}, Some("name"), Code::InvalidArgument),
        (
            "the created_at path",
            |_| {},
            Some("created_at"),
            Code::InvalidArgument,
        ),
        (
            "an unknown path",
            |_| {},
            Some("labels.a,size"),
            Code::InvalidArgument,
        ),
        (
            "a target of size zero",
            |i| i.target.as_mut().unwrap().size = 0,
            Some("target"),
            Code::InvalidArgument,
        ),
        (
            "a replacement without target",
            |i| i.target = None,
            None,
            Code::InvalidArgument,
        ),
        (
            "an oversized label",
            |i| {
                i.labels.insert("big".into(), OVERSIZED.clone());
            },
            Some("labels.big"),
            Code::InvalidArgument,
        ),
    ];
    let none = served.update_image("a", None, None).await;
    assert_eq!(none, Err(Code::InvalidArgument), "no image");
    for (what, change, paths, expected) in table {
        let mut sent = ImageMessage {
            labels: kv("a=2"),
            ..alpine()
        };
        change(&mut sent);
        let result = served.update_image("a", Some(sent), *paths).await;
        assert_eq!(outcome(&result), *expected, "{what}: {result:?}");
        let got = served.get_image("a", "alpine").await;
        assert_eq!(got, Ok(stored.clone()), "{what}: unchanged");
    }
    let elsewhere = served.update_image("b", Some(alpine()), None).await;
    assert_eq!(elsewhere, Err(Code::NotFound), "another namespace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_delete_removes_the_record_and_refuses_sync_without_a_gc_scheduler() {
    let mut served = serve().await;
    for name in ["alpine", "busybox"] {
        let image = image(name, "", target(INDEX, 1, 10, ""));
        served.create_image("a", Some(image)).await.unwrap();
    }
    // (namespace, name, sync, expected, images left in "a")
    let table: &[(&str, &str, bool, Code, &[&str])] = &[
        ("b", "alpine", false, Code::NotFound, &["alpine", "busybox"]),
        ("a", "alpine", false, Code::Ok, &["busybox"]),
        ("a", "alpine", false, Code::NotFound, &["busybox"]),
        // Nothing to wait for: refused, and nothing deleted.
        ("a", "busybox", true, Code::FailedPrecondition, &["busybox"]),
        ("a", "busybox", false, Code::Ok, &[]),
        ("a", "", false, Code::NotFound, &[]),
    ];
    for (namespace, name, sync, expected, left) in table {
        let result = served.delete_image(namespace, name, *sync).await;
        assert_eq!(outcome(&result), *expected, "{namespace}/{name}");
        let listed = served.image_names("a", &[]).await;
        assert_eq!(listed, Ok(strings(left)), "{namespace}/{name}");
    }
    let gone = served.get_image("a", "alpine").await;
    assert_eq!(gone, Err(Code::NotFound));
}

// ---------------------------------------------------------------------------------------
// Containers

const RUNC: &str = "io.containerd.runc.v2";

fn any(value: &str) -> Any {
    Any {
        type_url: "types.containerd.io/example".to_string(),
        value: value.as_bytes().to_vec(),
    }
}

fn container(id: &str) -> ContainerMessage {
    ContainerMessage {
        id: id.to_string(),
        runtime: Some(RuntimeMessage {
            name: RUNC.to_string(),
            options: None,
        }),
        spec: Some(any("{}")),
        ..ContainerMessage::default()
    }
}

impl Served {
    async fn create_container(
        &mut self,
        namespace: &str,
        container: Option<ContainerMessage>,
    ) -> Result<ContainerMessage, Code> {
        let request = ns(namespace, CreateContainerRequest { container });
        answer(self.containers.create(request).await, |r| {
            r.container.unwrap()
        })
    }

    async fn get_container(&mut self, namespace: &str, id: &str) -> Result<ContainerMessage, Code> {
        let request = ns(namespace, GetContainerRequest { id: id.into() });
        answer(self.containers.get(request).await, |r| r.container.unwrap())
    }

    async fn container_ids(
        &mut self,
        namespace: &str,
        filters: &[&str],
    ) -> Result<Vec<String>, Code> {
        let filters = strings(filters);
        let request = ns(namespace, ListContainersRequest { filters });
        answer(self.containers.list(request).await, |r| {
            r.containers.into_iter().map(|c| c.id).collect()
        })
    }

    /// The containers ListStream sends, checking that each message carries one.
    async fn list_stream(
        &mut self,
        namespace: &str,
        filters: &[&str],
    ) -> Result<Vec<ContainerMessage>, Code> {
        let filters = strings(filters);
        let request = ns(namespace, ListContainersRequest { filters });
        let mut stream = answer(self.containers.list_stream(request).await, |s| s)?;
        let mut containers = Vec::new();
        while let Some(message) = stream.message().await.map_err(|s| s.code())? {
            containers.push(message.container.expect("each message carries a container"));
        }
        Ok(containers)
    }

    async fn update_container(
        &mut self,
        namespace: &str,
        container: Option<ContainerMessage>,
        paths: Option<&str>,
    ) -> Result<ContainerMessage, Code> {
        let update_mask = mask(paths);
        let request = ns(
            namespace,
            UpdateContainerRequest {
                container,
                update_mask,
            },
        );
        answer(self.containers.update(request).await, |r| {
            r.container.unwrap()
        })
    }

    async fn delete_container(&mut self, namespace: &str, id: &str) -> Result<(), Code> {
        let request = ns(namespace, DeleteContainerRequest { id: id.into() });
        answer(self.containers.delete(request).await, |()| ())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_create_stores_the_container_with_its_times() {
    let mut served = serve().await;
    let wanted = ContainerMessage {
        labels: kv("app=web"),
        image: "docker.io/library/nginx:1".into(),
        runtime: Some(RuntimeMessage {
            name: RUNC.into(),
            options: Some(any("runc-options")),
        }),
        spec: Some(any("spec")),
        snapshotter: "native".into(),
        snapshot_key: "web-rootfs".into(),
        extensions: HashMap::from([("ext".to_string(), any("extension"))]),
        ..container("web")
    };
    let before = SystemTime::now();
    let created = served
        .create_container("a", Some(wanted.clone()))
        .await
        .unwrap();
    let after = SystemTime::now();
    let without_times = ContainerMessage {
        created_at: None,
        updated_at: None,
        ..created.clone()
    };
    assert_eq!(without_times, wanted, "everything sent is stored");
    let created_at = time(&created.created_at);
    assert!(
        before <= created_at && created_at <= after,
        "{created_at:?}"
    );
    assert_eq!(created.updated_at, created.created_at);
    assert_eq!(served.get_container("a", "web").await, Ok(created.clone()));

    let duplicate = served.create_container("a", Some(container("web"))).await;
    assert_eq!(duplicate, Err(Code::AlreadyExists));
    let kept = served.get_container("a", "web").await;
    assert_eq!(kept, Ok(created), "the first one is kept");
    let other = served.create_container("b", Some(container("web"))).await;
    assert_eq!(outcome(&other), Code::Ok, "another namespace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_create_refuses_invalid_containers() {
    let mut served = serve().await;
    // (what is wrong, the change to a valid container)
    let table: &[(&str, Change<ContainerMessage>)] = &[
        ("an empty id", |c| c.id.clear()),
        ("an id with a slash", |c| c.id = "bad/id".into()),
        ("no runtime", |c| c.runtime = None),
        ("an empty runtime name", |c| {
            c.runtime.as_mut().unwrap().name.clear()
        }),
        ("no spec", |c| c.spec = None),
        ("a snapshot key without snapshotter", |c| {
            c.snapshot_key = "rootfs".into()
        }),
        ("an unnamed extension", |c| {
            c.extensions.insert(String::new(), any("x"));
        }),
        ("an oversized label", |c| {
            c.labels.insert("big".into(), OVERSIZED.clone());
        }),
    ];
    let none = served.create_container("a", None).await;
    assert_eq!(none, Err(Code::InvalidArgument), "no container");
    for (what, change) in table {
        let mut invalid = container("c");
        change(&mut invalid);
        let result = served.create_container("a", Some(invalid)).await;
        assert_eq!(result, Err(Code::InvalidArgument), "{what}");
    }
    let stored = served.container_ids("a", &[]).await;
    assert_eq!(stored, Ok(vec![]), "nothing was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_get_finds_a_container_only_by_its_id_in_its_namespace() {
    let mut served = serve().await;
    let created = served
        .create_container("a", Some(container("web")))
        .await
        .unwrap();
    // (namespace, id, found): an id no container can have is not found, as in containerd.
    let table: &[(&str, &str, bool)] = &[
        ("a", "web", true),
        ("a", "db", false),
        ("a", "", false),
        ("a", "bad/id", false),
        ("b", "web", false),
    ];
    for (namespace, id, found) in table {
        let expected = if *found {
            Ok(created.clone())
        } else {
            Err(Code::NotFound)
        };
        let got = served.get_container(namespace, id).await;
        assert_eq!(got, expected, "{namespace}/{id}");
    }
}

/// Three containers in "a" (and one in "b") to filter.
async fn filterable_containers(served: &mut Served) {
    let hcs = RuntimeMessage {
        name: "io.containerd.runhcs.v1".into(),
        options: None,
    };
    let containers = [
        ContainerMessage {
            labels: kv("app=web"),
            image: "docker.io/library/nginx:1".into(),
            ..container("web")
        },
        ContainerMessage {
            labels: kv("app=db,tier=backend"),
            image: "docker.io/library/postgres:16".into(),
            ..container("db")
        },
        ContainerMessage {
            runtime: Some(hcs),
            ..container("tool")
        },
    ];
    for c in containers {
        served.create_container("a", Some(c)).await.unwrap();
    }
    let other = ContainerMessage {
        labels: kv("app=web"),
        ..container("other")
    };
    served.create_container("b", Some(other)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_list_filters_like_containerd() {
    let mut served = serve().await;
    filterable_containers(&mut served).await;
    let runc = format!("runtime.name=={RUNC}");
    let runc_db = format!("labels.app==db,runtime.name=={RUNC}");
    // (filters, ids listed)
    let table: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec![], vec!["db", "tool", "web"]),
        (vec!["id==web"], vec!["web"]),
        (vec!["id~=^(db|web)$"], vec!["db", "web"]),
        (vec!["image==docker.io/library/postgres:16"], vec!["db"]),
        (vec!["image"], vec!["db", "web"]),
        (vec!["runtime.name==io.containerd.runhcs.v1"], vec!["tool"]),
        (vec![runc.as_str()], vec!["db", "web"]),
        (vec!["labels.app==web"], vec!["web"]),
        (vec!["labels.tier"], vec!["db"]),
        (vec![runc_db.as_str()], vec!["db"]),
        (vec!["id==tool", "labels.app==web"], vec!["tool", "web"]),
        (vec!["labels.app==nothing"], vec![]),
    ];
    for (filters, expected) in table {
        let listed = served.container_ids("a", &filters).await;
        assert_eq!(listed, Ok(strings(&expected)), "{filters:?}");
    }
    let bad = served.container_ids("a", &["id=web"]).await;
    assert_eq!(bad, Err(Code::InvalidArgument));
    let unknown = served.container_ids("c", &[]).await;
    assert_eq!(unknown, Ok(vec![]), "an unknown namespace is empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_list_stream_sends_one_message_per_container() {
    let mut served = serve().await;
    filterable_containers(&mut served).await;
    let ids = |containers: Vec<ContainerMessage>| -> Vec<String> {
        containers.into_iter().map(|c| c.id).collect()
    };
    // Filters apply as they do to List.
    let filtered = served.list_stream("a", &["labels.app"]).await.map(ids);
    assert_eq!(filtered, Ok(strings(&["db", "web"])));
    let bad = served.list_stream("a", &["id=web"]).await.map(ids);
    assert_eq!(bad, Err(Code::InvalidArgument));

    // Containers whose records together pass what one message may carry (a client decodes
    // at most 4 MiB per message by default): List cannot answer, ListStream can.
    let mut served = serve().await;
    let spec = "s".repeat(48 << 10);
    let n_containers = 100;
    let expected: Vec<String> = (0..n_containers).map(|i| format!("c-{i:03}")).collect();
    for id in &expected {
        let c = ContainerMessage {
            spec: Some(any(&spec)),
            ..container(id)
        };
        served.create_container("many", Some(c)).await.unwrap();
    }
    let whole = served.container_ids("many", &[]).await;
    assert!(
        whole.is_err(),
        "List answered: the test needs more containers"
    );
    let streamed = served.list_stream("many", &[]).await.unwrap();
    assert!(streamed.iter().all(|c| c.spec == Some(any(&spec))));
    assert_eq!(ids(streamed), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_update_applies_field_paths_like_containerd() {
    let mut served = serve().await;
    // A container from its labels, image, spec, snapshot key, extensions and runtime options.
    let fields = |id: &str, values: [&str; 6]| {
        let [labels, image, spec, snapshot_key, extensions, options] = values;
        ContainerMessage {
            labels: kv(labels),
            image: image.into(),
            runtime: Some(RuntimeMessage {
                name: RUNC.into(),
                options: Some(any(options)),
            }),
            spec: Some(any(spec)),
            snapshotter: "native".into(),
            snapshot_key: snapshot_key.into(),
            extensions: kv(extensions)
                .iter()
                .map(|(k, v)| (k.clone(), any(v)))
                .collect(),
            ..container(id)
        }
    };
    let stored = [
        "a=1,b=2",
        "image-1",
        "spec-1",
        "key-1",
        "e1=1,e2=2",
        "options-1",
    ];
    let sent = [
        "a=10,c=3",
        "image-2",
        "spec-2",
        "key-2",
        "e1=10,e3=3",
        "options-2",
    ];
    // (update mask: None sends none, "" an empty one; then labels, image, spec, snapshot
    // key and extensions after)
    let table: &[(Option<&str>, [&str; 5])] = &[
        (
            Some("labels.a"),
            ["a=10,b=2", "image-1", "spec-1", "key-1", "e1=1,e2=2"],
        ),
        (
            Some("labels.b"),
            ["a=1", "image-1", "spec-1", "key-1", "e1=1,e2=2"],
        ),
        (
            Some("labels"),
            ["a=10,c=3", "image-1", "spec-1", "key-1", "e1=1,e2=2"],
        ),
        (
            Some("image"),
            ["a=1,b=2", "image-2", "spec-1", "key-1", "e1=1,e2=2"],
        ),
        (
            Some("spec"),
            ["a=1,b=2", "image-1", "spec-2", "key-1", "e1=1,e2=2"],
        ),
        (
            Some("snapshotkey"),
            ["a=1,b=2", "image-1", "spec-1", "key-2", "e1=1,e2=2"],
        ),
        (
            Some("extensions"),
            ["a=1,b=2", "image-1", "spec-1", "key-1", "e1=10,e3=3"],
        ),
        (
            Some("extensions.e1"),
            ["a=1,b=2", "image-1", "spec-1", "key-1", "e1=10,e2=2"],
        ),
        (
            Some("extensions.e3"),
            ["a=1,b=2", "image-1", "spec-1", "key-1", "e1=1,e2=2,e3=3"],
        ),
        (
            Some("labels.c,image"),
            ["a=1,b=2,c=3", "image-2", "spec-1", "key-1", "e1=1,e2=2"],
        ),
        // No mask, or an empty one: labels, spec, extensions, image and snapshot key are
        // replaced; the runtime's options are not among them.
        (
            None,
            ["a=10,c=3", "image-2", "spec-2", "key-2", "e1=10,e3=3"],
        ),
        (
            Some(""),
            ["a=10,c=3", "image-2", "spec-2", "key-2", "e1=10,e3=3"],
        ),
    ];
    for (case, (paths, after)) in table.iter().enumerate() {
        let id = format!("c-{case}");
        let created = served
            .create_container("a", Some(fields(&id, stored)))
            .await
            .unwrap();
        clock_passes(&created.updated_at).await;
        let updated = served
            .update_container("a", Some(fields(&id, sent)), *paths)
            .await
            .unwrap();
        // The runtime's options stay as stored whatever the mask.
        let [labels, image_name, spec, snapshot_key, extensions] = *after;
        let wanted = [
            labels,
            image_name,
            spec,
            snapshot_key,
            extensions,
            "options-1",
        ];
        let expected = ContainerMessage {
            created_at: created.created_at,
            updated_at: updated.updated_at,
            ..fields(&id, wanted)
        };
        assert_eq!(updated, expected, "{paths:?}");
        let (before, after) = (time(&created.updated_at), time(&updated.updated_at));
        assert!(after > before, "{paths:?}: updated_at moves");
        let got = served.get_container("a", &id).await;
        assert_eq!(got, Ok(updated), "{paths:?}: as stored");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_update_refuses_immutable_fields_bad_paths_and_missing_containers() {
    let mut served = serve().await;
    let web = || ContainerMessage {
        snapshotter: "native".into(),
        snapshot_key: "rootfs".into(),
        ..container("web")
    };
    let stored = served.create_container("a", Some(web())).await.unwrap();
    // (what, the change to the stored container, update mask, expected)
    type Case = (
        &'static str,
        Change<ContainerMessage>,
        Option<&'static str>,
        Code,
    );
    let table: &[Case] = &[
        ("an empty id", |c| c.id.clear(), None, Code::InvalidArgument),
        (
            "a missing container",
            |c| c.id = "db".into(),
            None,
            Code::NotFound,
        ),
        (
            "a replacement changing the snapshotter",
            |c| c.snapshotter = "overlayfs".into(),
            None,
            Code::InvalidArgument,
        ),
        (
            "a replacement changing the runtime",
            |c| c.runtime.as_mut().unwrap().name = "io.containerd.other.v1".into(),
            None,
            Code::InvalidArgument,
        ),
        (
            "a replacement without runtime",
            |c| c.runtime = None,
            None,
            Code::InvalidArgument,
        ),
        (
            "the runtime path",
            |_| {},
            Some("runtime"),
            Code::InvalidArgument,
        ),
        (
            "the snapshotter path",
            |_| {},
            Some("snapshotter"),
            Code::InvalidArgument,
        ),
        ("the id path", |_| {}, Some("id"), Code::InvalidArgument),
        (
            "a spec removed",
            |c| c.spec = None,
            Some("spec"),
            Code::InvalidArgument,
        ),
        (
            "an oversized label",
            |c| {
                c.labels.insert("big".into(), OVERSIZED.clone());
            },
            Some("labels.big"),
            Code::InvalidArgument,
        ),
    ];
    let none = served.update_container("a", None, None).await;
    assert_eq!(none, Err(Code::InvalidArgument), "no container");
    for (what, change, paths, expected) in table {
        let mut sent = web();
        change(&mut sent);
        let result = served.update_container("a", Some(sent), *paths).await;
        assert_eq!(outcome(&result), *expected, "{what}: {result:?}");
        let got = served.get_container("a", "web").await;
        assert_eq!(got, Ok(stored.clone()), "{what}: unchanged");
    }
    // With a mask, only the fields it names are looked at: the snapshotter is not.
    let masked = ContainerMessage {
        snapshotter: "overlayfs".into(),
        image: "new".into(),
        ..web()
    };
    let updated = served
        .update_container("a", Some(masked), Some("image"))
        .await
        .unwrap();
    assert_eq!(
        (updated.image.as_str(), updated.snapshotter.as_str()),
        ("new", "native")
    );
    let elsewhere = served.update_container("b", Some(web()), None).await;
    assert_eq!(elsewhere, Err(Code::NotFound), "another namespace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_delete_removes_the_record() {
    let mut served = serve().await;
    for id in ["web", "db"] {
        served
            .create_container("a", Some(container(id)))
            .await
            .unwrap();
    }
    // (namespace, id, expected, containers left in "a")
    let table: &[(&str, &str, Code, &[&str])] = &[
        ("b", "web", Code::NotFound, &["db", "web"]),
        ("a", "web", Code::Ok, &["db"]),
        ("a", "web", Code::NotFound, &["db"]),
        ("a", "bad/id", Code::NotFound, &["db"]),
        ("a", "", Code::NotFound, &["db"]),
        ("a", "db", Code::Ok, &[]),
    ];
    for (namespace, id, expected, left) in table {
        let result = served.delete_container(namespace, id).await;
        assert_eq!(outcome(&result), *expected, "{namespace}/{id}");
        let listed = served.container_ids("a", &[]).await;
        assert_eq!(listed, Ok(strings(left)), "{namespace}/{id}");
    }
}

// ---------------------------------------------------------------------------------------
// Leases

fn resource(kind: &str, id: &str) -> Option<ResourceMessage> {
    Some(ResourceMessage {
        id: id.to_string(),
        r#type: kind.to_string(),
    })
}

/// Resources as ListResources answers them, (type, id), from `type id` words.
fn held(items: &[&str]) -> Resources {
    items
        .iter()
        .map(|item| {
            let (kind, id) = item.split_once(' ').expect("type id");
            (kind.to_string(), id.to_string())
        })
        .collect()
}

impl Served {
    async fn create_lease(
        &mut self,
        namespace: &str,
        id: &str,
        labels: HashMap<String, String>,
    ) -> Result<LeaseMessage, Code> {
        let request = ns(
            namespace,
            CreateRequest {
                id: id.into(),
                labels,
            },
        );
        answer(self.leases.create(request).await, |r| r.lease.unwrap())
    }

    async fn delete_lease(&mut self, namespace: &str, id: &str, sync: bool) -> Result<(), Code> {
        let request = ns(
            namespace,
            DeleteRequest {
                id: id.into(),
                sync,
            },
        );
        answer(self.leases.delete(request).await, |()| ())
    }

    async fn list_leases(
        &mut self,
        namespace: &str,
        filters: &[&str],
    ) -> Result<Vec<LeaseMessage>, Code> {
        let filters = strings(filters);
        let request = ns(namespace, ListRequest { filters });
        answer(self.leases.list(request).await, |r| r.leases)
    }

    async fn lease_ids(&mut self, namespace: &str, filters: &[&str]) -> Result<Vec<String>, Code> {
        let leases = self.list_leases(namespace, filters).await?;
        Ok(leases.into_iter().map(|l| l.id).collect())
    }

    async fn add_resource(
        &mut self,
        namespace: &str,
        lease: &str,
        resource: Option<ResourceMessage>,
    ) -> Result<(), Code> {
        let id = lease.to_string();
        let request = ns(namespace, AddResourceRequest { id, resource });
        answer(self.leases.add_resource(request).await, |()| ())
    }

    async fn delete_resource(
        &mut self,
        namespace: &str,
        lease: &str,
        resource: Option<ResourceMessage>,
    ) -> Result<(), Code> {
        let id = lease.to_string();
        let request = ns(namespace, DeleteResourceRequest { id, resource });
        answer(self.leases.delete_resource(request).await, |()| ())
    }

    /// The resources a lease holds, as (type, id).
    async fn resources(&mut self, namespace: &str, lease: &str) -> Result<Resources, Code> {
        let request = ns(namespace, ListResourcesRequest { id: lease.into() });
        answer(self.leases.list_resources(request).await, |r| {
            r.resources.into_iter().map(|r| (r.r#type, r.id)).collect()
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_create_keeps_the_id_labels_and_creation_time() {
    let mut served = serve().await;
    let labels = kv("containerd.io/gc.expire=2030-01-01T00:00:00Z,containerd.io/gc.flat=yes");
    let before = SystemTime::now();
    let lease = served
        .create_lease("a", "pull-1", labels.clone())
        .await
        .unwrap();
    let after = SystemTime::now();
    assert_eq!((lease.id.as_str(), &lease.labels), ("pull-1", &labels));
    let created_at = time(&lease.created_at);
    assert!(
        before <= created_at && created_at <= after,
        "{created_at:?}"
    );
    assert_eq!(served.list_leases("a", &[]).await, Ok(vec![lease.clone()]));
    let duplicate = served.create_lease("a", "pull-1", kv("")).await;
    assert_eq!(duplicate, Err(Code::AlreadyExists));
    let kept = served.list_leases("a", &[]).await;
    assert_eq!(kept, Ok(vec![lease]), "the first one is kept");
    let other = served.create_lease("b", "pull-1", kv("")).await;
    assert_eq!(outcome(&other), Code::Ok, "another namespace");

    // No id: a random one, valid, different each time.
    let first = served.create_lease("c", "", kv("k=v")).await.unwrap();
    let second = served.create_lease("c", "", kv("")).await.unwrap();
    for random in [&first.id, &second.id] {
        validate_identifier("lease id", random).unwrap();
    }
    assert_ne!(first.id, second.id);
    assert_eq!(first.labels, kv("k=v"));
    let mut expected = vec![first.id, second.id];
    expected.sort();
    assert_eq!(served.lease_ids("c", &[]).await, Ok(expected));

    // containerd 1.6 takes any non-empty id (ctr images mount names its lease by a path);
    // plinthd bounds its length, and labels by the size limit.
    let long = "l".repeat(crate::leases::MAX_LEASE_ID + 1);
    let big = HashMap::from([("big".to_string(), OVERSIZED.clone())]);
    let invalid = [(long.as_str(), kv("")), ("fine", big)];
    for (id, labels) in invalid {
        let result = served.create_lease("d", id, labels).await;
        assert_eq!(result, Err(Code::InvalidArgument), "{id}");
    }
    let stored = served.lease_ids("d", &[]).await;
    assert_eq!(stored, Ok(vec![]), "nothing was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_delete_removes_the_lease_and_its_resources() {
    let mut served = serve().await;
    for id in ["l", "m"] {
        served.create_lease("a", id, kv("")).await.unwrap();
    }
    let blob = resource("content", &digest(1));
    served.add_resource("a", "l", blob).await.unwrap();
    // (namespace, id, sync, expected, leases left in "a")
    let table: &[(&str, &str, bool, Code, &[&str])] = &[
        ("b", "l", false, Code::NotFound, &["l", "m"]),
        ("a", "l", false, Code::Ok, &["m"]),
        ("a", "l", false, Code::NotFound, &["m"]),
        // Nothing to wait for: refused, and nothing deleted.
        ("a", "m", true, Code::FailedPrecondition, &["m"]),
        ("a", "m", false, Code::Ok, &[]),
    ];
    for (namespace, id, sync, expected, left) in table {
        let result = served.delete_lease(namespace, id, *sync).await;
        assert_eq!(outcome(&result), *expected, "{namespace}/{id}");
        let listed = served.lease_ids("a", &[]).await;
        assert_eq!(listed, Ok(strings(left)), "{namespace}/{id}");
    }
    assert_eq!(served.resources("a", "l").await, Err(Code::NotFound));
    // Made again, it holds nothing: the resources went with the lease.
    served.create_lease("a", "l", kv("")).await.unwrap();
    assert_eq!(served.resources("a", "l").await, Ok(vec![]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_list_filters_by_id_and_labels() {
    let mut served = serve().await;
    let leases = [
        (
            "a",
            "a-1",
            "purpose=pull,containerd.io/gc.expire=2030-01-01T00:00:00Z",
        ),
        ("a", "a-2", "purpose=build"),
        ("a", "b", ""),
        ("other", "a-3", "purpose=pull"),
    ];
    for (namespace, id, labels) in leases {
        served
            .create_lease(namespace, id, kv(labels))
            .await
            .unwrap();
    }
    // (filters, ids listed)
    let table: &[(&[&str], &[&str])] = &[
        (&[], &["a-1", "a-2", "b"]),
        (&["id==a-2"], &["a-2"]),
        (&["id~=^a-"], &["a-1", "a-2"]),
        (&["labels.purpose==pull"], &["a-1"]),
        (&["labels.purpose"], &["a-1", "a-2"]),
        (&[r#"labels."containerd.io/gc.expire""#], &["a-1"]),
        (&["id==b", "labels.purpose==build"], &["a-2", "b"]),
        (&["labels.purpose==pull,id==a-2"], &[]),
        (&["id==a-3"], &[]),
    ];
    for (filters, expected) in table {
        let listed = served.lease_ids("a", filters).await;
        assert_eq!(listed, Ok(strings(expected)), "{filters:?}");
    }
    let bad = served.lease_ids("a", &["id=x"]).await;
    assert_eq!(bad, Err(Code::InvalidArgument));
    assert_eq!(served.lease_ids("empty", &[]).await, Ok(vec![]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_add_resource_takes_content_ingests_and_snapshots() {
    let mut served = serve().await;
    served.create_lease("a", "l", kv("")).await.unwrap();
    served.create_lease("b", "elsewhere", kv("")).await.unwrap();
    let d = digest(1);
    // (lease, resource type, resource id, expected)
    let table: &[(&str, &str, &str, Code)] = &[
        ("l", "content", &d, Code::Ok),
        ("l", "content", &d, Code::Ok),
        ("l", "ingests", "pull-ref-1", Code::Ok),
        ("l", "snapshots/native", "rootfs", Code::Ok),
        ("l", "snapshots/overlayfs", "layer-1", Code::Ok),
        ("l", "content", "not-a-digest", Code::InvalidArgument),
        ("l", "content/extra", &d, Code::InvalidArgument),
        ("l", "ingests/extra", "ref", Code::InvalidArgument),
        ("l", "snapshots", "rootfs", Code::InvalidArgument),
        (
            "l",
            "snapshots/native/extra",
            "rootfs",
            Code::InvalidArgument,
        ),
        ("missing", "content", &d, Code::NotFound),
        ("elsewhere", "content", &d, Code::NotFound),
    ];
    for (lease, kind, id, expected) in table {
        let result = served.add_resource("a", lease, resource(kind, id)).await;
        assert_eq!(outcome(&result), *expected, "{lease}: {kind} {id}");
    }
    let blob = format!("content {d}");
    let expected = held(&[
        blob.as_str(),
        "ingests pull-ref-1",
        "snapshots/native rootfs",
        "snapshots/overlayfs layer-1",
    ]);
    let listed = served.resources("a", "l").await;
    assert_eq!(listed, Ok(expected), "each once, in containerd's order");
    assert_eq!(served.resources("b", "elsewhere").await, Ok(vec![]));
}

/// containerd 1.6 answers a resource type it does not know (or none) with Unimplemented
/// (`errdefs.ErrNotImplemented`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_add_resource_of_an_unknown_type_is_unimplemented() {
    let mut served = serve().await;
    served.create_lease("a", "l", kv("")).await.unwrap();
    for unknown in [resource("images", "alpine"), resource("", "x"), None] {
        let result = served.add_resource("a", "l", unknown.clone()).await;
        assert_eq!(result, Err(Code::Unimplemented), "{unknown:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_delete_resource_drops_one_hold() {
    let mut served = serve().await;
    let d = digest(1);
    for namespace in ["a", "b"] {
        served.create_lease(namespace, "l", kv("")).await.unwrap();
        for (kind, id) in [("content", d.as_str()), ("snapshots/native", "rootfs")] {
            let added = served
                .add_resource(namespace, "l", resource(kind, id))
                .await;
            assert_eq!(added, Ok(()));
        }
    }
    let both = held(&[&format!("content {d}"), "snapshots/native rootfs"]);
    let rootfs = held(&["snapshots/native rootfs"]);
    let nothing = Resources::new();
    // (lease, resource type, resource id, expected, what "l" holds in "a" after)
    let table: &[(&str, &str, &str, Code, &Resources)] = &[
        ("l", "content", &d, Code::Ok, &rootfs),
        ("l", "content", &d, Code::Ok, &rootfs),
        ("l", "ingests", "never-held", Code::Ok, &rootfs),
        (
            "missing",
            "snapshots/native",
            "rootfs",
            Code::NotFound,
            &rootfs,
        ),
        (
            "l",
            "content",
            "not-a-digest",
            Code::InvalidArgument,
            &rootfs,
        ),
        ("l", "snapshots/native", "rootfs", Code::Ok, &nothing),
    ];
    for (lease, kind, id, expected, left) in table {
        let result = served.delete_resource("a", lease, resource(kind, id)).await;
        assert_eq!(outcome(&result), *expected, "{lease}: {kind} {id}");
        let listed = served.resources("a", "l").await;
        assert_eq!(listed, Ok(left.to_vec()), "{lease}: {kind} {id}");
    }
    let other = served.resources("b", "l").await;
    assert_eq!(
        other,
        Ok(both),
        "the lease of that id in another namespace keeps its own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_list_resources_is_per_lease_and_per_namespace() {
    let mut served = serve().await;
    for (namespace, lease) in [("a", "l"), ("a", "m"), ("b", "l")] {
        served.create_lease(namespace, lease, kv("")).await.unwrap();
    }
    let (d1, d2) = (digest(1), digest(2));
    let adds: &[(&str, &str, &str, &str)] = &[
        ("a", "l", "snapshots/native", "z-last"),
        ("a", "l", "content", &d2),
        ("a", "l", "ingests", "ref"),
        ("a", "l", "content", &d1),
        ("a", "m", "content", &d1),
        ("b", "l", "ingests", "other-ref"),
    ];
    for (namespace, lease, kind, id) in adds {
        let added = served
            .add_resource(namespace, lease, resource(kind, id))
            .await;
        assert_eq!(added, Ok(()), "{namespace}/{lease}: {kind} {id}");
    }
    let (c1, c2) = (format!("content {d1}"), format!("content {d2}"));
    // (namespace, lease, expected): sorted by type, then id
    let table: &[(&str, &str, Result<Resources, Code>)] = &[
        (
            "a",
            "l",
            Ok(held(&[&c1, &c2, "ingests ref", "snapshots/native z-last"])),
        ),
        ("a", "m", Ok(held(&[&c1]))),
        ("b", "l", Ok(held(&["ingests other-ref"]))),
        ("b", "m", Err(Code::NotFound)),
        ("a", "missing", Err(Code::NotFound)),
    ];
    for (namespace, lease, expected) in table {
        let listed = served.resources(namespace, lease).await;
        assert_eq!(&listed, expected, "{namespace}/{lease}");
    }
}

// ---------------------------------------------------------------------------------------
// The containerd-lease header on the Snapshots service

/// A call on the Snapshots service, with or without a lease header.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// (key, parent)
    Prepare(&'static str, &'static str),
    /// (key, parent)
    View(&'static str, &'static str),
    /// (name, key)
    Commit(&'static str, &'static str),
    Remove(&'static str),
}

impl Served {
    async fn run(&mut self, namespace: &str, lease: Option<&str>, step: Step) -> Code {
        let snapshotter = "native".to_string();
        let client = &mut self.snapshots;
        match step {
            Step::Prepare(key, parent) => {
                let message = PrepareSnapshotRequest {
                    snapshotter,
                    key: key.into(),
                    parent: parent.into(),
                    ..PrepareSnapshotRequest::default()
                };
                code(&client.prepare(leased(namespace, lease, message)).await)
            }
            Step::View(key, parent) => {
                let message = ViewSnapshotRequest {
                    snapshotter,
                    key: key.into(),
                    parent: parent.into(),
                    ..ViewSnapshotRequest::default()
                };
                code(&client.view(leased(namespace, lease, message)).await)
            }
            Step::Commit(name, key) => {
                let message = CommitSnapshotRequest {
                    snapshotter,
                    name: name.into(),
                    key: key.into(),
                    ..CommitSnapshotRequest::default()
                };
                code(&client.commit(leased(namespace, lease, message)).await)
            }
            Step::Remove(key) => {
                let key = key.into();
                let message = RemoveSnapshotRequest { snapshotter, key };
                code(&client.remove(leased(namespace, lease, message)).await)
            }
        }
    }

    /// The native snapshotter's snapshots in `namespace`, as (key, kind), sorted.
    async fn snapshot_list(&mut self, namespace: &str) -> Vec<(String, Kind)> {
        let snapshotter = "native".to_string();
        let request = ns(
            namespace,
            ListSnapshotsRequest {
                snapshotter,
                filters: vec![],
            },
        );
        let mut stream = self.snapshots.list(request).await.unwrap().into_inner();
        let mut out = Vec::new();
        while let Some(batch) = stream.message().await.unwrap() {
            let infos = batch.info.into_iter();
            out.extend(infos.map(|i| (i.name, Kind::try_from(i.kind).unwrap())));
        }
        out.sort();
        out
    }
}

fn kinds(items: &[(&str, Kind)]) -> Vec<(String, Kind)> {
    let mut out: Vec<(String, Kind)> = items
        .iter()
        .map(|(k, kind)| (k.to_string(), *kind))
        .collect();
    out.sort();
    out
}

/// `snapshots/native` resources with the given keys.
fn native(keys: &[&str]) -> Resources {
    keys.iter()
        .map(|k| ("snapshots/native".to_string(), k.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_made_under_a_lease_header_are_held_by_the_lease() {
    let mut served = serve().await;
    served.create_lease("a", "l", kv("")).await.unwrap();
    // (lease header, step, what lease "l" holds after it), as containerd 1.6's metadata
    // snapshotter binds: a commit moves the hold from the key to the name, a remove drops it.
    let table: &[(Option<&str>, Step, &[&str])] = &[
        (None, Step::Prepare("base-active", ""), &[]),
        (None, Step::Commit("base", "base-active"), &[]),
        (Some("l"), Step::Prepare("work", "base"), &["work"]),
        (Some("l"), Step::View("look", "base"), &["look", "work"]),
        (None, Step::Prepare("plain", "base"), &["look", "work"]),
        (Some("l"), Step::Commit("done", "work"), &["done", "look"]),
        (Some("l"), Step::Remove("look"), &["done"]),
        (None, Step::Remove("plain"), &["done"]),
    ];
    for (lease, step, holds) in table {
        assert_eq!(served.run("a", *lease, *step).await, Code::Ok, "{step:?}");
        let listed = served.resources("a", "l").await;
        assert_eq!(listed, Ok(native(holds)), "after {step:?}");
    }
    let left = kinds(&[("base", Kind::Committed), ("done", Kind::Committed)]);
    assert_eq!(served.snapshot_list("a").await, left);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_under_a_missing_lease_are_not_found_and_nothing_is_made() {
    let mut served = serve().await;
    served.create_lease("b", "elsewhere", kv("")).await.unwrap();
    let setup = [
        Step::Prepare("base-active", ""),
        Step::Commit("base", "base-active"),
        Step::Prepare("active", "base"),
    ];
    for step in setup {
        assert_eq!(served.run("a", None, step).await, Code::Ok, "{step:?}");
    }
    let before = kinds(&[("active", Kind::Active), ("base", Kind::Committed)]);
    assert_eq!(served.snapshot_list("a").await, before);
    // (lease header, step): each is NotFound and changes nothing.
    let table: &[(&str, Step)] = &[
        ("missing", Step::Prepare("new", "")),
        ("missing", Step::Prepare("new", "base")),
        ("elsewhere", Step::Prepare("new", "")),
        ("missing", Step::View("new", "base")),
        ("missing", Step::Commit("new", "active")),
    ];
    for (lease, step) in table {
        let answer = served.run("a", Some(lease), *step).await;
        assert_eq!(answer, Code::NotFound, "{lease}: {step:?}");
        assert_eq!(served.snapshot_list("a").await, before, "{lease}: {step:?}");
    }
    assert_eq!(served.resources("b", "elsewhere").await, Ok(vec![]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_that_exist_already_are_held_by_the_header_lease_all_the_same() {
    let mut served = serve().await;
    for lease in ["l", "m"] {
        served.create_lease("a", lease, kv("")).await.unwrap();
    }
    // (lease header, step, expected, what "l" holds, what "m" holds): as in containerd, an
    // AlreadyExists under a lease still leaves the lease holding the snapshot, so that a
    // client that finds its snapshot made already can go on using it.
    type Case = (
        Option<&'static str>,
        Step,
        Code,
        &'static [&'static str],
        &'static [&'static str],
    );
    let table: &[Case] = &[
        (None, Step::Prepare("base-active", ""), Code::Ok, &[], &[]),
        (
            None,
            Step::Commit("base", "base-active"),
            Code::Ok,
            &[],
            &[],
        ),
        (
            Some("l"),
            Step::Prepare("base", ""),
            Code::AlreadyExists,
            &["base"],
            &[],
        ),
        (
            None,
            Step::Prepare("active", "base"),
            Code::Ok,
            &["base"],
            &[],
        ),
        (
            Some("m"),
            Step::View("active", "base"),
            Code::AlreadyExists,
            &["base"],
            &["active"],
        ),
        (
            Some("m"),
            Step::Commit("base", "active"),
            Code::AlreadyExists,
            &["base"],
            &["active", "base"],
        ),
    ];
    for (lease, step, expected, l_holds, m_holds) in table {
        assert_eq!(served.run("a", *lease, *step).await, *expected, "{step:?}");
        let l = served.resources("a", "l").await;
        assert_eq!(l, Ok(native(l_holds)), "l after {step:?}");
        let m = served.resources("a", "m").await;
        assert_eq!(m, Ok(native(m_holds)), "m after {step:?}");
    }
    let key = "active".to_string();
    let request = ns(
        "a",
        StatSnapshotRequest {
            snapshotter: "native".into(),
            key,
        },
    );
    let info = served.snapshots.stat(request).await.unwrap().into_inner();
    let kind = Kind::try_from(info.info.unwrap().kind);
    assert_eq!(kind, Ok(Kind::Active), "the refused commit changed nothing");
}

// ---------------------------------------------------------------------------------------
// The containerd-namespace header

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_needs_a_valid_namespace() {
    let mut served = serve().await;
    // containerd 1.6 answers FailedPrecondition when the header is missing, InvalidArgument
    // when it names no valid namespace.
    let cases = [
        (None, Code::FailedPrecondition),
        (Some("bad/namespace"), Code::InvalidArgument),
    ];
    for (header, expected) in cases {
        // (client.method(message)) → (its name, the code of its answer)
        macro_rules! call {
            ($client:ident . $method:ident ($message:expr)) => {
                (
                    concat!(stringify!($client), ".", stringify!($method)),
                    code(&served.$client.$method(in_namespace(header, $message)).await),
                )
            };
        }
        let alpine = || Some(image("alpine", "", target(INDEX, 1, 10, "")));
        let snapshotter = || "native".to_string();
        let answers = [
            call!(images.get(GetImageRequest {
                name: "alpine".into()
            })),
            call!(images.list(ListImagesRequest::default())),
            call!(images.create(CreateImageRequest { image: alpine() })),
            call!(images.update(UpdateImageRequest {
                image: alpine(),
                update_mask: None
            })),
            call!(images.delete(DeleteImageRequest {
                name: "alpine".into(),
                sync: false
            })),
            call!(containers.get(GetContainerRequest { id: "web".into() })),
            call!(containers.list(ListContainersRequest::default())),
            call!(containers.list_stream(ListContainersRequest::default())),
            call!(containers.create(CreateContainerRequest {
                container: Some(container("web"))
            })),
            call!(containers.update(UpdateContainerRequest {
                container: Some(container("web")),
                update_mask: None
            })),
            call!(containers.delete(DeleteContainerRequest { id: "web".into() })),
            call!(leases.create(CreateRequest {
                id: "l".into(),
                labels: HashMap::new()
            })),
            call!(leases.delete(DeleteRequest {
                id: "l".into(),
                sync: false
            })),
            call!(leases.list(ListRequest::default())),
            call!(leases.add_resource(AddResourceRequest {
                id: "l".into(),
                resource: resource("ingests", "ref")
            })),
            call!(leases.delete_resource(DeleteResourceRequest {
                id: "l".into(),
                resource: resource("ingests", "ref")
            })),
            call!(leases.list_resources(ListResourcesRequest { id: "l".into() })),
            call!(snapshots.prepare(PrepareSnapshotRequest {
                snapshotter: snapshotter(),
                key: "k".into(),
                ..PrepareSnapshotRequest::default()
            })),
            call!(snapshots.list(ListSnapshotsRequest {
                snapshotter: snapshotter(),
                filters: vec![]
            })),
        ];
        for (call, got) in answers {
            assert_eq!(got, expected, "{call} with namespace header {header:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Synchronous deletes and the GC scheduler

/// A GC scheduler whose collections end when the test releases them, each with `outcome`;
/// every call is announced on `calls`.
struct GatedScheduler {
    calls: tokio::sync::mpsc::UnboundedSender<()>,
    gate: tokio::sync::Semaphore,
    outcome: Result<Stats, Error>,
}

impl GatedScheduler {
    fn new(
        outcome: Result<Stats, Error>,
    ) -> (
        Arc<GatedScheduler>,
        tokio::sync::mpsc::UnboundedReceiver<()>,
    ) {
        let (calls, called) = tokio::sync::mpsc::unbounded_channel();
        let scheduler = GatedScheduler {
            calls,
            gate: tokio::sync::Semaphore::new(0),
            outcome,
        };
        (Arc::new(scheduler), called)
    }

    /// Lets one collection end.
    fn release(&self) {
        self.gate.add_permits(1);
    }
}

#[tonic::async_trait]
impl Scheduler for GatedScheduler {
    async fn schedule_and_wait(&self) -> Result<Stats, Error> {
        let _ = self.calls.send(());
        self.gate
            .acquire()
            .await
            .expect("the gate stays open")
            .forget();
        self.outcome.clone()
    }

    fn last(&self) -> Option<Run> {
        None
    }
}

/// Asserts that `status` refuses a sync delete of `what` for want of a scheduler, saying
/// how to get one.
fn assert_no_scheduler(status: &Status, what: &str) {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    for needed in [
        what,
        "io.containerd.gc.v1.scheduler",
        "gc-scheduler",
        "without sync",
    ] {
        assert!(status.message().contains(needed), "{needed}: {status:?}");
    }
}

/// How long a call that must not answer yet is given to answer anyway.
const NO_ANSWER_WINDOW: std::time::Duration = std::time::Duration::from_millis(200);

/// Runs a sync delete through `delete` against services whose GC scheduler is gated, and
/// checks that the delete has committed when the scheduler is asked (`gone` says whether
/// the object is gone), that no answer comes while the collection runs, and that the answer
/// comes once it ends. `sync: false` must not ask the scheduler at all.
async fn check_sync_delete<F, G>(
    mut served: Served,
    gc: &GatedScheduler,
    mut called: tokio::sync::mpsc::UnboundedReceiver<()>,
    delete: F,
    gone: G,
) where
    F: Fn(Served, bool) -> tokio::task::JoinHandle<(Served, Result<(), Status>)>,
    G: AsyncFn(&mut Served) -> bool,
{
    let answered = delete(served, false).await.unwrap();
    served = answered.0;
    assert_eq!(answered.1.map_err(|s| s.code()), Ok(()), "no sync");
    assert!(
        called.try_recv().is_err(),
        "a delete without sync asked for a collection"
    );

    let mut call = delete(served, true);
    // Asked while the call is open, or the call answered without asking.
    tokio::select! {
        asked = called.recv() => asked.expect("the scheduler is asked"),
        answered = &mut call => panic!(
            "answered without a collection: {:?}",
            answered.map(|(_, answer)| answer)
        ),
    }
    let early = tokio::time::timeout(NO_ANSWER_WINDOW, &mut call).await;
    assert!(
        early.is_err(),
        "answered before the collection ended: {:?}",
        early.map(|joined| joined.map(|(_, answer)| answer))
    );
    gc.release();
    let (mut served, answer) = call.await.unwrap();
    assert_eq!(answer.map_err(|s| s.code()), Ok(()));
    assert!(gone(&mut served).await, "deleted");
    assert!(called.try_recv().is_err(), "one collection per sync delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_delete_with_sync_answers_after_a_collection_that_includes_it() {
    let (gc, called) = GatedScheduler::new(Ok(Stats::default()));
    let mut served = serve_with(Some(gc.clone())).await;
    for name in ["alpine", "busybox"] {
        let image = image(name, "", target(INDEX, 1, 10, ""));
        served.create_image("a", Some(image)).await.unwrap();
    }
    let delete = |mut served: Served, sync: bool| {
        tokio::spawn(async move {
            let name = if sync { "busybox" } else { "alpine" };
            let request = ns(
                "a",
                DeleteImageRequest {
                    name: name.into(),
                    sync,
                },
            );
            let answer = served.images.delete(request).await.map(|_| ());
            (served, answer)
        })
    };
    let gone =
        async |served: &mut Served| served.get_image("a", "busybox").await == Err(Code::NotFound);
    check_sync_delete(served, &gc, called, delete, gone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_delete_with_sync_answers_after_a_collection_that_includes_it() {
    let (gc, called) = GatedScheduler::new(Ok(Stats::default()));
    let mut served = serve_with(Some(gc.clone())).await;
    for id in ["l", "m"] {
        served.create_lease("a", id, kv("")).await.unwrap();
    }
    let delete = |mut served: Served, sync: bool| {
        tokio::spawn(async move {
            let id = if sync { "m" } else { "l" };
            let request = ns(
                "a",
                DeleteRequest {
                    id: id.into(),
                    sync,
                },
            );
            let answer = served.leases.delete(request).await.map(|_| ());
            (served, answer)
        })
    };
    let gone = async |served: &mut Served| served.lease_ids("a", &[]).await == Ok(vec![]);
    check_sync_delete(served, &gc, called, delete, gone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_deletes_report_a_failed_collection_after_deleting() {
    let failure = Error::unavailable("garbage collection failed: disk gone");
    let (gc, _called) = GatedScheduler::new(Err(failure));
    gc.release();
    gc.release();
    let mut served = serve_with(Some(gc.clone())).await;
    let alpine = image("alpine", "", target(INDEX, 1, 10, ""));
    served.create_image("a", Some(alpine)).await.unwrap();
    served.create_lease("a", "l", kv("")).await.unwrap();

    let request = ns(
        "a",
        DeleteImageRequest {
            name: "alpine".into(),
            sync: true,
        },
    );
    let status = served.images.delete(request).await.unwrap_err();
    let request = ns(
        "a",
        DeleteRequest {
            id: "l".into(),
            sync: true,
        },
    );
    let lease_status = served.leases.delete(request).await.unwrap_err();
    for (status, what) in [(status, "image \"alpine\""), (lease_status, "lease \"l\"")] {
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(
            status.message(),
            format!(
                "{what} was deleted, but the collection a sync delete waits for failed: garbage collection failed: disk gone"
            )
        );
    }
    assert_eq!(served.get_image("a", "alpine").await, Err(Code::NotFound));
    assert_eq!(served.lease_ids("a", &[]).await, Ok(vec![]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_deletes_without_a_gc_scheduler_are_refused_and_delete_nothing() {
    let mut served = serve().await;
    let alpine = image("alpine", "", target(INDEX, 1, 10, ""));
    served.create_image("a", Some(alpine)).await.unwrap();
    served.create_lease("a", "l", kv("")).await.unwrap();

    let request = ns(
        "a",
        DeleteImageRequest {
            name: "alpine".into(),
            sync: true,
        },
    );
    let status = served.images.delete(request).await.unwrap_err();
    assert_no_scheduler(&status, "image \"alpine\"");
    let request = ns(
        "a",
        DeleteRequest {
            id: "l".into(),
            sync: true,
        },
    );
    let status = served.leases.delete(request).await.unwrap_err();
    assert_no_scheduler(&status, "lease \"l\"");
    assert_eq!(served.image_names("a", &[]).await, Ok(strings(&["alpine"])));
    assert_eq!(served.lease_ids("a", &[]).await, Ok(strings(&["l"])));
}

/// The Diff service against the native snapshotter through the Snapshots service, as
/// `ctr`'s unpacker and `ctr snapshots diff` use them: a layer applied onto an active
/// snapshot's mounts, a change compared into a layer, that layer applied elsewhere
/// reproducing it; and each refusal with containerd's code.
#[cfg(all(feature = "diff-service", feature = "differ-walking"))]
mod diff {
    use std::io::Write as _;

    use plinth_api::containerd::services::diff::v1::{ApplyRequest, DiffRequest};
    use plinth_api::containerd::types::Mount as MountMessage;

    use super::*;
    use crate::namespaces::NamespacedStores;

    const NS: &str = "diff";

    fn ns<T>(message: T) -> Request<T> {
        with_headers(&[(NAMESPACE_HEADER, NS)], message)
    }

    /// A gzipped tar layer of `entries` (path, contents; a path ending in `/` is a
    /// directory), with its digest.
    fn layer(entries: &[(&str, &str)]) -> (Vec<u8>, String) {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut header = tar::Header::new_ustar();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(1_700_000_000);
            if path.ends_with('/') {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder
                    .append_data(&mut header, path, std::io::empty())
                    .unwrap();
            } else {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.set_size(data.len() as u64);
                builder
                    .append_data(&mut header, path, data.as_bytes())
                    .unwrap();
            }
        }
        let tar = builder.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let bytes = gz.finish().unwrap();
        let digest = crate::content::Digest::of(&bytes).to_string();
        (bytes, digest)
    }

    async fn store(served: &Served, bytes: &[u8]) {
        let content = served.content.clone().content(NS).unwrap();
        let mut writer = content.writer("layer", 0, None).await.unwrap();
        writer.write(bytes).await.unwrap();
        match writer
            .commit(0, None, crate::namespaces::Labels::new())
            .await
        {
            Ok(_) => {}
            Err(e) if e.category == plinth_core::Category::AlreadyExists => {}
            Err(e) => panic!("{e}"),
        }
    }

    async fn prepare(served: &mut Served, key: &str, parent: &str) -> Vec<MountMessage> {
        served
            .snapshots
            .prepare(ns(PrepareSnapshotRequest {
                snapshotter: "native".into(),
                key: key.into(),
                parent: parent.into(),
                labels: HashMap::new(),
            }))
            .await
            .unwrap()
            .into_inner()
            .mounts
    }

    async fn view(served: &mut Served, key: &str, parent: &str) -> Vec<MountMessage> {
        served
            .snapshots
            .view(ns(ViewSnapshotRequest {
                snapshotter: "native".into(),
                key: key.into(),
                parent: parent.into(),
                labels: HashMap::new(),
            }))
            .await
            .unwrap()
            .into_inner()
            .mounts
    }

    async fn commit(served: &mut Served, name: &str, key: &str) {
        served
            .snapshots
            .commit(ns(CommitSnapshotRequest {
                snapshotter: "native".into(),
                name: name.into(),
                key: key.into(),
                labels: HashMap::new(),
                ..Default::default()
            }))
            .await
            .unwrap();
    }

    fn gz_descriptor(digest: &str, size: usize) -> DescriptorMessage {
        DescriptorMessage {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: digest.into(),
            size: size as i64,
            annotations: HashMap::new(),
        }
    }

    /// Every file under `root`: relative path → contents (directories as `/`).
    fn tree(root: &Path) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let name = path.strip_prefix(root).unwrap().display().to_string();
                if path.is_dir() {
                    out.insert(format!("{name}/"), String::new());
                    stack.push(path);
                } else {
                    out.insert(name, std::fs::read_to_string(&path).unwrap());
                }
            }
        }
        out
    }

    fn source(mounts: &[MountMessage]) -> &Path {
        assert_eq!(mounts.len(), 1, "{mounts:?}");
        Path::new(&mounts[0].source)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_layer_applied_compared_and_applied_again_reproduces_the_change() {
        let mut served = serve().await;
        let (bytes, digest) = layer(&[("etc/", ""), ("etc/a", "one"), ("etc/b", "two")]);
        store(&served, &bytes).await;
        let mounts = prepare(&mut served, "extract-1", "").await;
        // A descriptor may leave the size out (0): the store's is used.
        let applied = served
            .diff
            .apply(ns(ApplyRequest {
                diff: Some(gz_descriptor(&digest, 0)),
                mounts: mounts.clone(),
                payloads: HashMap::new(),
                sync_fs: true,
            }))
            .await
            .unwrap()
            .into_inner()
            .applied
            .unwrap();
        assert_eq!(applied.media_type, "application/vnd.oci.image.layer.v1.tar");
        let expected_base = BTreeMap::from([
            ("etc/".to_string(), String::new()),
            ("etc/a".to_string(), "one".to_string()),
            ("etc/b".to_string(), "two".to_string()),
        ]);
        assert_eq!(tree(source(&mounts)), expected_base);
        commit(&mut served, "base", "extract-1").await;

        // A change in an active snapshot on it, compared against a view of the base.
        let work = prepare(&mut served, "work", "base").await;
        let root = source(&work).to_path_buf();
        std::fs::write(root.join("etc/a"), "changed").unwrap();
        std::fs::remove_file(root.join("etc/b")).unwrap();
        std::fs::write(root.join("new"), "added").unwrap();
        let base_view = view(&mut served, "base-view", "base").await;
        let written = served
            .diff
            .diff(ns(DiffRequest {
                left: base_view,
                right: work.clone(),
                media_type: String::new(),
                r#ref: String::new(),
                labels: HashMap::from([("x".to_string(), "y".to_string())]),
                source_date_epoch: None,
            }))
            .await
            .unwrap()
            .into_inner()
            .diff
            .unwrap();
        assert_eq!(
            written.media_type, "application/vnd.oci.image.layer.v1.tar+gzip",
            "containerd's default"
        );
        let info = served
            .content
            .clone()
            .content(NS)
            .unwrap()
            .info(&crate::content::Digest::parse(&written.digest).unwrap())
            .await
            .unwrap();
        assert_eq!(info.size, written.size);
        assert_eq!(info.labels.get("x").map(String::as_str), Some("y"));
        assert!(
            info.labels.contains_key("containerd.io/uncompressed"),
            "{info:?}"
        );

        // Applied onto another snapshot of the base, it makes the same tree.
        let again = prepare(&mut served, "again", "base").await;
        let reapplied = served
            .diff
            .apply(ns(ApplyRequest {
                diff: Some(written.clone()),
                mounts: again.clone(),
                payloads: HashMap::new(),
                sync_fs: false,
            }))
            .await
            .unwrap()
            .into_inner()
            .applied
            .unwrap();
        assert_eq!(
            Some(&reapplied.digest),
            info.labels.get("containerd.io/uncompressed"),
            "the diff id Apply reports is the label Diff wrote"
        );
        assert_eq!(tree(source(&again)), tree(&root));

        // With a source date epoch, what changed after it carries the epoch as its time.
        let left = view(&mut served, "base-view-2", "base").await;
        let clamped = served
            .diff
            .diff(ns(DiffRequest {
                left,
                right: work.clone(),
                media_type: String::new(),
                r#ref: String::new(),
                labels: HashMap::new(),
                source_date_epoch: Some(prost_types::Timestamp {
                    seconds: 1_000_000,
                    nanos: 0,
                }),
            }))
            .await
            .unwrap()
            .into_inner()
            .diff
            .unwrap();
        assert_ne!(clamped.digest, written.digest);
        let epoch = prepare(&mut served, "epoch", "base").await;
        served
            .diff
            .apply(ns(ApplyRequest {
                diff: Some(clamped),
                mounts: epoch.clone(),
                payloads: HashMap::new(),
                sync_fs: false,
            }))
            .await
            .unwrap();
        let mtime = std::os::unix::fs::MetadataExt::mtime(
            &std::fs::symlink_metadata(source(&epoch).join("new")).unwrap(),
        );
        assert_eq!(
            mtime, 1_000_000,
            "the epoch clamps the time of what changed"
        );
        assert_eq!(
            tree(source(&again)),
            BTreeMap::from([
                ("etc/".to_string(), String::new()),
                ("etc/a".to_string(), "changed".to_string()),
                ("new".to_string(), "added".to_string()),
            ])
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refusals_have_containerds_codes_and_write_nothing() {
        let mut served = serve().await;
        let (bytes, digest) = layer(&[("f", "data")]);
        store(&served, &bytes).await;
        prepare(&mut served, "active", "").await;
        commit(&mut served, "committed", "active").await;
        let target = prepare(&mut served, "target", "committed").await;
        let view = served
            .snapshots
            .view(ns(ViewSnapshotRequest {
                snapshotter: "native".into(),
                key: "view".into(),
                parent: "committed".into(),
                labels: HashMap::new(),
            }))
            .await
            .unwrap()
            .into_inner()
            .mounts;
        let missing = format!("sha256:{}", "0".repeat(64));
        let cases: Vec<(&str, ApplyRequest, Code)> = vec![
            (
                "a blob the namespace does not hold",
                ApplyRequest {
                    diff: Some(gz_descriptor(&missing, 10)),
                    mounts: target.clone(),
                    ..Default::default()
                },
                Code::NotFound,
            ),
            (
                "an unknown media type",
                ApplyRequest {
                    diff: Some(DescriptorMessage {
                        media_type: "application/x-unknown".into(),
                        ..gz_descriptor(&digest, bytes.len())
                    }),
                    mounts: target.clone(),
                    ..Default::default()
                },
                Code::Unimplemented,
            ),
            (
                "payloads",
                ApplyRequest {
                    diff: Some(gz_descriptor(&digest, bytes.len())),
                    mounts: target.clone(),
                    payloads: HashMap::from([("decrypt".to_string(), Any::default())]),
                    sync_fs: false,
                },
                Code::Unimplemented,
            ),
            (
                "a read-only view",
                ApplyRequest {
                    diff: Some(gz_descriptor(&digest, bytes.len())),
                    mounts: view.clone(),
                    ..Default::default()
                },
                Code::FailedPrecondition,
            ),
            (
                "a wrong size",
                ApplyRequest {
                    diff: Some(gz_descriptor(&digest, bytes.len() + 1)),
                    mounts: target.clone(),
                    ..Default::default()
                },
                Code::InvalidArgument,
            ),
            (
                "no descriptor",
                ApplyRequest {
                    mounts: target.clone(),
                    ..Default::default()
                },
                Code::InvalidArgument,
            ),
            (
                "a digest that does not parse",
                ApplyRequest {
                    diff: Some(gz_descriptor("sha256:nope", bytes.len())),
                    mounts: target.clone(),
                    ..Default::default()
                },
                Code::InvalidArgument,
            ),
        ];
        for (what, request, code) in cases {
            let status = served.diff.apply(ns(request)).await.unwrap_err();
            assert_eq!(status.code(), code, "{what}: {status:?}");
            assert!(
                tree(source(&target)).is_empty(),
                "{what}: nothing was written"
            );
        }
        // The same blob from a namespace that does not hold it is not found.
        let status = served
            .diff
            .apply(with_headers(
                &[(NAMESPACE_HEADER, "other")],
                ApplyRequest {
                    diff: Some(gz_descriptor(&digest, bytes.len())),
                    mounts: target.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        let status = served
            .diff
            .diff(ns(DiffRequest {
                left: view,
                right: target,
                media_type: "application/x-unknown".into(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    }
}
