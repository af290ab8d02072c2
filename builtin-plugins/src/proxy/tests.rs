//! The conformance suites through the proxies: every case's store is a proxy talking over a
//! unix socket to an in-process server of the proxy target's raw services (the code plinthd
//! serves with), backed by the local content store or the native snapshotter. Plus the
//! config rules of `[proxy_plugins]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use plinth_core::config::ProxyPlugin;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::target::RawStores;
use super::{ProxyConfigError, ProxyContentStore, ProxySnapshotter};
use crate::content::local::LocalStore;
use crate::content::{ContentStore, ContentWriter, Digest, Info, Status};
use crate::error::Error;
use crate::grpc::MessageLimits;
use crate::namespaces::Labels;
use crate::snapshots::native::NativeSnapshotter;
use crate::snapshots::{self, Mount, Snapshotter, Usage};

/// Server tasks by root, so that a store made again on the same root waits for the last
/// server there to stop (and release its files).
static SERVERS: Mutex<Vec<(PathBuf, JoinHandle<()>)>> = Mutex::new(Vec::new());

/// Stops its server when dropped.
struct ServerGuard(Option<oneshot::Sender<()>>);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            let _ = stop.send(());
        }
    }
}

/// Waits until the last server on `root` (told to stop when its store was dropped) is gone
/// and has released its files.
async fn previous_stopped(root: &Path) {
    let previous = {
        let mut servers = SERVERS.lock().unwrap_or_else(PoisonError::into_inner);
        servers
            .iter()
            .position(|(r, _)| r == root)
            .map(|i| servers.remove(i).1)
    };
    if let Some(previous) = previous {
        let _ = previous.await;
    }
}

/// Serves `stores` raw on `<root>/raw.sock`.
async fn serve(root: &Path, stores: RawStores) -> Result<(PathBuf, ServerGuard), Error> {
    let socket = root.join("raw.sock");
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket)
        .map_err(|e| Error::internal(format!("binding {}: {e}", socket.display())))?;
    let mut routes = tonic::service::RoutesBuilder::default();
    Arc::new(stores).add_routes(&mut routes, MessageLimits::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let result = tonic::transport::Server::builder()
            .add_routes(routes.routes())
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await;
        if let Err(error) = result {
            panic!("raw server: {error}");
        }
    });
    SERVERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((root.to_path_buf(), task));
    Ok((socket, ServerGuard(Some(stop))))
}

/// A proxy content store and the server behind it.
struct ServedContent {
    proxy: ProxyContentStore,
    _server: ServerGuard,
}

#[tonic::async_trait]
impl ContentStore for ServedContent {
    async fn info(&self, digest: &Digest) -> Result<Info, Error> {
        self.proxy.info(digest).await
    }
    async fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info, Error> {
        self.proxy.update(info, fieldpaths).await
    }
    async fn walk(&self, filters: &[String]) -> Result<Vec<Info>, Error> {
        self.proxy.walk(filters).await
    }
    async fn delete(&self, digest: &Digest) -> Result<(), Error> {
        self.proxy.delete(digest).await
    }
    async fn read_at(&self, digest: &Digest, offset: u64, length: usize) -> Result<Vec<u8>, Error> {
        self.proxy.read_at(digest, offset, length).await
    }
    async fn status(&self, reference: &str) -> Result<Status, Error> {
        self.proxy.status(reference).await
    }
    async fn list_statuses(&self, filters: &[String]) -> Result<Vec<Status>, Error> {
        self.proxy.list_statuses(filters).await
    }
    async fn abort(&self, reference: &str) -> Result<(), Error> {
        self.proxy.abort(reference).await
    }
    async fn writer(
        &self,
        reference: &str,
        total: i64,
        expected: Option<Digest>,
    ) -> Result<Box<dyn ContentWriter>, Error> {
        self.proxy.writer(reference, total, expected).await
    }
}

/// A proxy snapshotter and the server behind it.
struct ServedSnapshotter {
    proxy: ProxySnapshotter,
    _server: ServerGuard,
}

#[tonic::async_trait]
impl Snapshotter for ServedSnapshotter {
    async fn stat(&self, key: &str) -> Result<snapshots::Info, Error> {
        self.proxy.stat(key).await
    }
    async fn update(
        &self,
        info: snapshots::Info,
        fieldpaths: &[String],
    ) -> Result<snapshots::Info, Error> {
        self.proxy.update(info, fieldpaths).await
    }
    async fn usage(&self, key: &str) -> Result<Usage, Error> {
        self.proxy.usage(key).await
    }
    async fn mounts(&self, key: &str) -> Result<Vec<Mount>, Error> {
        self.proxy.mounts(key).await
    }
    async fn prepare(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>, Error> {
        self.proxy.prepare(key, parent, labels).await
    }
    async fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>, Error> {
        self.proxy.view(key, parent, labels).await
    }
    async fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<(), Error> {
        self.proxy.commit(name, key, labels).await
    }
    async fn remove(&self, key: &str) -> Result<(), Error> {
        self.proxy.remove(key).await
    }
    async fn walk(&self, filters: &[String]) -> Result<Vec<snapshots::Info>, Error> {
        self.proxy.walk(filters).await
    }
    async fn cleanup(&self) -> Result<(), Error> {
        self.proxy.cleanup().await
    }
}

async fn served_content(root: PathBuf) -> Result<Arc<dyn ContentStore>, Error> {
    previous_stopped(&root).await;
    let local: Arc<dyn ContentStore> = Arc::new(LocalStore::open(&root.join("content"))?);
    let (socket, server) =
        serve(&root, RawStores::new(Some(local), BTreeMap::new(), None)?).await?;
    Ok(Arc::new(ServedContent {
        proxy: ProxyContentStore::connect(&socket)?,
        _server: server,
    }))
}

async fn served_snapshotter(root: PathBuf) -> Result<Arc<dyn Snapshotter>, Error> {
    previous_stopped(&root).await;
    let native: Arc<dyn Snapshotter> = Arc::new(NativeSnapshotter::open(&root.join("native"))?);
    let snapshotters = BTreeMap::from([("native".to_string(), native)]);
    // The proxy names itself "remote", as containerd's proxy sends its own name: the
    // target's default snapshotter answers.
    let stores = RawStores::new(None, snapshotters, Some("native".to_string()))?;
    let (socket, server) = serve(&root, stores).await?;
    Ok(Arc::new(ServedSnapshotter {
        proxy: ProxySnapshotter::connect(&socket, "remote")?,
        _server: server,
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_content_store_passes_the_content_conformance_suite() {
    crate::content::testsuite::run(served_content).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_snapshotter_passes_the_snapshot_conformance_suite() {
    crate::snapshots::testsuite::run(served_snapshotter).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_over_a_proxy_snapshotter_passes_the_snapshot_conformance_suite() {
    use crate::metadata::{Metadata, SharingPolicy};
    use crate::namespaces::NamespacedStores;
    crate::snapshots::testsuite::run(|root: PathBuf| async move {
        let proxy = served_snapshotter(root.clone()).await?;
        let metadata = Arc::new(Metadata::open_with(
            &root.join("meta.db"),
            None,
            BTreeMap::from([("remote".to_string(), proxy)]),
            SharingPolicy::Shared,
        )?);
        metadata.snapshotter("suite", "remote")
    })
    .await;
}

fn proxy(plugin_type: &str, address: &str) -> ProxyPlugin {
    ProxyPlugin {
        plugin_type: plugin_type.to_string(),
        address: address.to_string(),
        ..ProxyPlugin::default()
    }
}

#[test]
fn proxy_sections_become_registrations_or_errors() {
    // (name, type, address, expected URI or error)
    let table: &[(&str, &str, &str, Result<&str, ProxyConfigError>)] = &[
        (
            "stargz",
            "snapshot",
            "/run/stargz.sock",
            Ok("io.containerd.snapshotter.v1.stargz"),
        ),
        (
            "full",
            "io.containerd.snapshotter.v1",
            "unix:///run/s.sock",
            Ok("io.containerd.snapshotter.v1.full"),
        ),
        (
            "blobs",
            "content",
            "/run/c.sock",
            Ok("io.containerd.content.v1.blobs"),
        ),
        (
            "blobs-full",
            "io.containerd.content.v1",
            "/run/c.sock",
            Ok("io.containerd.content.v1.blobs-full"),
        ),
        (
            "differ",
            "diff",
            "/run/d.sock",
            Err(ProxyConfigError::UnknownType {
                name: "differ".into(),
                found: "diff".into(),
            }),
        ),
        (
            "nowhere",
            "snapshot",
            " ",
            Err(ProxyConfigError::NoAddress {
                name: "nowhere".into(),
            }),
        ),
    ];
    for (name, plugin_type, address, expected) in table {
        let sections = BTreeMap::from([(name.to_string(), proxy(plugin_type, address))]);
        let result = super::registrations(&sections);
        match expected {
            Ok(uri) => {
                let registrations = result.unwrap_or_else(|e| panic!("{name}: {e:?}"));
                assert_eq!(registrations.len(), 1);
                assert_eq!(registrations[0].0, *name);
                assert_eq!(&registrations[0].1.uri(), uri);
                // Built once per process: the same section gives the same registration.
                let again = super::registrations(&sections).unwrap();
                assert!(std::ptr::eq(registrations[0].1.id(), again[0].1.id()));
            }
            Err(error) => assert_eq!(result.unwrap_err(), vec![error.clone()], "{name}"),
        }
    }
    assert_eq!(
        ProxyConfigError::UnknownType {
            name: "differ".into(),
            found: "diff".into()
        }
        .to_string(),
        "[proxy_plugins.differ]: type \"diff\" is not a proxy plugin type: use \"snapshot\", \"content\", \"io.containerd.snapshotter.v1\" or \"io.containerd.content.v1\""
    );
}

#[test]
fn a_proxy_named_like_a_built_in_plugin_is_a_duplicate_naming_both() {
    fn init(
        _: &mut plinth_core::InitContext,
    ) -> Result<plinth_core::Instance, plinth_core::InitError> {
        Ok(plinth_core::Instance::none())
    }
    let sections = BTreeMap::from([("native".to_string(), proxy("snapshot", "/run/n.sock"))]);
    let proxies = super::registrations(&sections).unwrap();
    let mut builder = plinth_core::Registry::builder().add_static(plinth_core::Registration::new(
        plinth_core::types::SNAPSHOTTER,
        "native",
        init,
    ));
    for (name, registration) in proxies {
        builder = builder.add_proxy(name, registration);
    }
    let errors = builder.build().unwrap_err();
    let message = errors[0].to_string();
    assert!(
        message.contains("io.containerd.snapshotter.v1.native is registered twice")
            && message.contains("[proxy_plugins.native]"),
        "{message}"
    );
}

#[test]
fn public_proxy_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<ProxySnapshotter>();
    send_sync::<ProxyContentStore>();
    send_sync::<super::remote::Remote>();
    send_sync::<super::remote::Health>();
    send_sync::<RawStores>();
    send_sync::<ProxyConfigError>();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_tell_serving_absent_and_wrong_remotes_apart() {
    use super::Check;
    let dir = tempfile::tempdir().unwrap();
    let native: Arc<dyn Snapshotter> =
        Arc::new(NativeSnapshotter::open(&dir.path().join("native")).unwrap());
    // A target without a content store serves only the snapshots API.
    let stores =
        RawStores::new(None, BTreeMap::from([("native".to_string(), native)]), None).unwrap();
    let (socket, _server) = serve(dir.path(), stores).await.unwrap();
    let absent = dir.path().join("absent.sock");

    assert_eq!(
        ProxySnapshotter::connect(&socket, "native")
            .unwrap()
            .check()
            .await,
        Check::Serves
    );
    match ProxyContentStore::connect(&socket).unwrap().check().await {
        Check::NotServed(reason) => assert!(
            reason.contains("does not serve containerd.services.content.v1.Content"),
            "{reason}"
        ),
        other => panic!("content check on a snapshots-only remote: {other:?}"),
    }
    let proxy = ProxySnapshotter::connect(&absent, "native").unwrap();
    match proxy.check().await {
        Check::Down(reason) => assert!(
            reason.contains(&format!("no listener at {}", absent.display())),
            "{reason}"
        ),
        other => panic!("check of an absent remote: {other:?}"),
    }
    let error = proxy.stat("anything").await.unwrap_err();
    assert_eq!(
        error.category,
        plinth_core::Category::Unavailable,
        "{error:?}"
    );
    assert_eq!(
        crate::live::LiveStatus::exports(&proxy)
            .get("connection")
            .map(String::as_str),
        Some("down")
    );
}
