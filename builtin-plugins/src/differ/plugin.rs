//! The plugin `io.containerd.differ.v1.walking`: [the applier](super::apply) and
//! [the comparer](super::compare) over the metadata plugin's namespaced stores, behind the
//! [`Differ`] interface the Diff service serves.
//!
//! Apply takes the layer from the namespace's content store and writes it where the mounts
//! say, without mounting anything:
//!
//! | mounts | applied into | whiteouts |
//! |---|---|---|
//! | one `bind` (native snapshots; an overlayfs snapshot without parent) | its source | deleted ([`Whiteouts::Native`]) |
//! | one `overlay` with an `upperdir` | the upper directory | overlay's own ([`Whiteouts::Overlay`]) |
//!
//! Anything else (read-only mounts, an overlay without an upper directory, other types or
//! several mounts) is refused with the reason, before anything is written. Compare mounts
//! both sides read-only under `<state>/mounts` and writes the layer into the namespace's
//! content store, bound to the request's lease.
//!
//! Config, `[plugins."io.containerd.differ.v1.walking"]` (plinthd's own keys; containerd's
//! walking differ has none and no limit):
//!
//! ```toml
//! [plugins."io.containerd.differ.v1.walking"]
//!   # Bytes an applied layer may hold uncompressed (and write into files): a layer past
//!   # it is stopped, a decompression bomb with it. Default 64 GiB.
//!   max_uncompressed_size = 68719476736
//!   # Entries one layer may hold. Default 10 000 000.
//!   max_entries = 10000000
//! ```

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use plinth_core::registration::{ConfigViolation, ValidateConfig};
use plinth_core::{InitContext, InitError, Instance, Registration, register, types};

use super::apply::{self, ApplyOptions, Limits, Whiteouts};
use super::compare;
use crate::content::{ContentStore, Digest};
pub use crate::diff::{CompareRequest, Descriptor, Differ};
use crate::error::Error;
use crate::namespaces::NamespacedStores;
use crate::snapshots::Mount;

/// The plugin's URI.
pub const URI: &str = "io.containerd.differ.v1.walking";

/// The media type of what Apply reports: the uncompressed layer.
pub const MEDIA_TYPE_APPLIED: &str = "application/vnd.oci.image.layer.v1.tar";

/// How much of a blob one read of the content store takes while applying.
const READ_CHUNK: usize = 1 << 20;

/// The plugin's config section.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub(crate) struct DifferConfig {
    /// [`Limits::max_uncompressed_size`].
    pub(crate) max_uncompressed_size: u64,
    /// [`Limits::max_entries`].
    pub(crate) max_entries: u64,
}

impl Default for DifferConfig {
    fn default() -> Self {
        let limits = Limits::default();
        DifferConfig {
            max_uncompressed_size: limits.max_uncompressed_size,
            max_entries: limits.max_entries,
        }
    }
}

impl ValidateConfig for DifferConfig {
    fn validate(&self) -> Result<(), ConfigViolation> {
        if self.max_uncompressed_size == 0 {
            return Err(ConfigViolation::new(
                "max_uncompressed_size",
                "must be more than 0 bytes (it stops layers larger than it; default 64 GiB)",
            ));
        }
        if self.max_entries == 0 {
            return Err(ConfigViolation::new(
                "max_entries",
                "must be more than 0 (it stops layers with more entries; default 10000000)",
            ));
        }
        Ok(())
    }
}

/// The walking differ over a metadata plugin's stores.
pub struct WalkingDiffer {
    stores: Arc<dyn NamespacedStores>,
    limits: Limits,
    /// Where Compare mounts the two sides.
    mounts_dir: PathBuf,
}

impl WalkingDiffer {
    /// A differ over `stores`, stopping layers at `limits`, mounting under `mounts_dir`.
    pub fn new(stores: Arc<dyn NamespacedStores>, limits: Limits, mounts_dir: PathBuf) -> Self {
        WalkingDiffer {
            stores,
            limits,
            mounts_dir,
        }
    }
}

/// Where a layer goes for `mounts`, in which whiteout form, and (for an overlay) its lower
/// directories, top first.
///
/// # Errors
/// See the module docs.
pub fn apply_target(mounts: &[Mount]) -> Result<(PathBuf, Whiteouts, Vec<PathBuf>), Error> {
    let [mount] = mounts else {
        return Err(Error::unimplemented(format!(
            "cannot apply a layer onto {} mounts: the walking differ applies onto one bind or \
             overlay mount (an active snapshot's)",
            mounts.len()
        )));
    };
    let read_only = mount.options.iter().any(|o| o == "ro");
    let is_bind =
        mount.mount_type == "bind" || mount.options.iter().any(|o| o == "bind" || o == "rbind");
    if is_bind {
        if read_only {
            return Err(Error::failed_precondition(format!(
                "cannot apply a layer onto the read-only bind mount of {}: apply onto an active \
                 snapshot, not a view",
                mount.source
            )));
        }
        return Ok((PathBuf::from(&mount.source), Whiteouts::Native, Vec::new()));
    }
    if mount.mount_type == "overlay" {
        let upper = mount
            .options
            .iter()
            .find_map(|o| o.strip_prefix("upperdir="))
            .ok_or_else(|| {
                Error::failed_precondition(
                    "cannot apply a layer onto an overlay mount without an upper directory (a \
                     view): apply onto an active snapshot",
                )
            })?;
        let lowers = mount
            .options
            .iter()
            .find_map(|o| o.strip_prefix("lowerdir="))
            .map(|dirs| dirs.split(':').map(PathBuf::from).collect())
            .unwrap_or_default();
        return Ok((PathBuf::from(upper), Whiteouts::Overlay, lowers));
    }
    Err(Error::unimplemented(format!(
        "cannot apply a layer onto a mount of type {:?}: the walking differ applies onto bind \
         and overlay mounts",
        mount.mount_type
    )))
}

/// A blob of a content store read in order, for the (blocking) applier: each read is one
/// `read_at` of the store, run on the runtime from the blocking thread.
struct BlobReader {
    store: Arc<dyn ContentStore>,
    digest: Digest,
    offset: u64,
    buffer: Vec<u8>,
    position: usize,
    done: bool,
    runtime: tokio::runtime::Handle,
}

impl Read for BlobReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.position == self.buffer.len() {
            if self.done {
                return Ok(0);
            }
            let chunk = self
                .runtime
                .block_on(self.store.read_at(&self.digest, self.offset, READ_CHUNK))
                .map_err(|e| std::io::Error::other(e.message))?;
            if chunk.is_empty() {
                self.done = true;
                return Ok(0);
            }
            self.offset += chunk.len() as u64;
            self.buffer = chunk;
            self.position = 0;
        }
        let n = out.len().min(self.buffer.len() - self.position);
        out[..n].copy_from_slice(&self.buffer[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}

/// Syncs the filesystem that holds `path`.
fn sync_filesystem(path: &Path) -> Result<(), Error> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io(format_args!("opening {}", path.display()), &e.into()))?;
    rustix::fs::syncfs(&fd).map_err(|e| {
        Error::io(
            format_args!("syncing the filesystem of {}", path.display()),
            &e.into(),
        )
    })
}

#[tonic::async_trait]
impl Differ for WalkingDiffer {
    async fn apply(
        &self,
        namespace: &str,
        layer: &Descriptor,
        mounts: Vec<Mount>,
        sync_fs: bool,
    ) -> Result<Descriptor, Error> {
        apply::compression_of(&layer.media_type)?;
        let (root, whiteouts, lower_dirs) = apply_target(&mounts)?;
        let store = self.stores.clone().content(namespace)?;
        let info = store.info(&layer.digest).await.map_err(|e| {
            Error::new(
                e.category,
                format!("the layer {} to apply: {}", layer.digest, e.message),
            )
        })?;
        if layer.size > 0 && info.size != layer.size {
            return Err(Error::invalid(format!(
                "the layer {} is {} bytes in the content store, not the {} its descriptor says",
                layer.digest, info.size, layer.size
            )));
        }
        let options = ApplyOptions {
            whiteouts,
            limits: self.limits,
            expected_digest: Some(layer.digest.clone()),
            expected_diff_id: None,
            lower_dirs,
        };
        let reader = BlobReader {
            store,
            digest: layer.digest.clone(),
            offset: 0,
            buffer: Vec::new(),
            position: 0,
            done: false,
            runtime: tokio::runtime::Handle::current(),
        };
        let media_type = layer.media_type.clone();
        // On a thread of its own, not the blocking pool: its reader waits for the store's
        // reads, which take the pool's threads (ARCHITECTURE.md, "Blocking work").
        let applied = crate::on_own_thread("layer-apply", move || {
            let applied = apply::apply(reader, &media_type, &root, &options)?;
            if sync_fs {
                sync_filesystem(&root)?;
            }
            Ok::<_, Error>(applied)
        })
        .await?;
        tracing::debug!(
            layer = %layer.digest,
            diff_id = %applied.diff_id,
            entries = applied.entries,
            "applied a layer"
        );
        Ok(Descriptor {
            media_type: MEDIA_TYPE_APPLIED.to_string(),
            digest: applied.diff_id,
            size: i64::try_from(applied.uncompressed_size).unwrap_or(i64::MAX),
        })
    }

    async fn compare(
        &self,
        namespace: &str,
        lease: Option<&str>,
        left: Vec<Mount>,
        right: Vec<Mount>,
        request: CompareRequest,
    ) -> Result<Descriptor, Error> {
        let store = self.stores.clone().leased_content(namespace, lease)?;
        compare::compare_mounts_into_content(
            store.as_ref(),
            left,
            right,
            self.mounts_dir.clone(),
            &request,
        )
        .await
    }
}

fn init(ctx: &mut InitContext) -> Result<Instance, InitError> {
    let config = ctx.config::<DifferConfig>()?;
    let stores: Arc<dyn NamespacedStores> = ctx.get_single(types::METADATA)?;
    let limits = Limits {
        max_uncompressed_size: config.max_uncompressed_size,
        max_entries: config.max_entries,
    };
    let mounts_dir = ctx.state().join("mounts");
    let differ = Arc::new(WalkingDiffer::new(stores, limits, mounts_dir));
    Ok(Instance::new(differ as Arc<dyn Differ>))
}

register!(
    Registration::new(types::DIFF, "walking", init)
        .requires(&[types::METADATA])
        .validated_config::<DifferConfig>()
);

#[cfg(test)]
mod tests {
    use super::*;
    use plinth_core::Category;

    /// A blob read back through the applier's reader in reads of every size, across the
    /// store's chunks, is the blob.
    #[test]
    fn a_blob_reads_back_whole_in_reads_of_any_size() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ContentStore> =
            Arc::new(crate::content::local::LocalStore::open(dir.path()).unwrap());
        // Two chunks and a bit, in a pattern that shows any byte out of place.
        let blob: Vec<u8> = (0..2 * READ_CHUNK + 4099)
            .map(|i| (i % 251) as u8)
            .collect();
        let digest = runtime.block_on(async {
            let mut writer = store.writer("blob", 0, None).await.unwrap();
            writer.write(&blob).await.unwrap();
            let digest = writer
                .commit(blob.len() as i64, None, Default::default())
                .await
                .unwrap();
            writer.close().await.unwrap();
            digest
        });
        let mut reader = BlobReader {
            store,
            digest,
            offset: 0,
            buffer: Vec::new(),
            position: 0,
            done: false,
            runtime: runtime.handle().clone(),
        };
        let mut read = Vec::new();
        let sizes = [1, 7000, 100, 1 << 20, 3, 65536, 2 << 20];
        for size in sizes.iter().cycle() {
            let mut buffer = vec![0; *size];
            let n = reader.read(&mut buffer).unwrap();
            if n == 0 {
                break;
            }
            read.extend_from_slice(&buffer[..n]);
        }
        assert_eq!(read.len(), blob.len());
        assert!(read == blob, "the bytes read back differ from the blob");
    }

    fn mount(kind: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            mount_type: kind.to_string(),
            source: source.to_string(),
            target: String::new(),
            options: options.iter().map(|o| o.to_string()).collect(),
        }
    }

    #[test]
    fn mounts_say_where_a_layer_goes_and_in_which_form() {
        let overlay = mount(
            "overlay",
            "overlay",
            &[
                "workdir=/s/3/work",
                "upperdir=/s/3/fs",
                "lowerdir=/s/2/fs:/s/1/fs",
            ],
        );
        // mounts → (root, form, lower directories)
        type Target<'a> = (&'a str, Whiteouts, &'a [&'a str]);
        let ok: &[(Vec<Mount>, Target<'_>)] = &[
            (
                vec![mount("bind", "/s/1/fs", &["rbind", "rw"])],
                ("/s/1/fs", Whiteouts::Native, &[]),
            ),
            (
                vec![mount("none", "/s/1/fs", &["rbind"])],
                ("/s/1/fs", Whiteouts::Native, &[]),
            ),
            (
                vec![overlay],
                ("/s/3/fs", Whiteouts::Overlay, &["/s/2/fs", "/s/1/fs"]),
            ),
        ];
        for (mounts, (root, form, lowers)) in ok {
            let lowers: Vec<PathBuf> = lowers.iter().map(PathBuf::from).collect();
            assert_eq!(
                apply_target(mounts).unwrap(),
                (PathBuf::from(root), *form, lowers),
                "{mounts:?}"
            );
        }
        let refused: &[(Vec<Mount>, Category)] = &[
            (vec![], Category::Unimplemented),
            (
                vec![
                    mount("bind", "/a", &["rbind"]),
                    mount("bind", "/b", &["rbind"]),
                ],
                Category::Unimplemented,
            ),
            (
                vec![mount("bind", "/s/1/fs", &["ro", "rbind"])],
                Category::FailedPrecondition,
            ),
            (
                vec![mount("overlay", "overlay", &["lowerdir=/s/2/fs:/s/1/fs"])],
                Category::FailedPrecondition,
            ),
            (vec![mount("tmpfs", "tmpfs", &[])], Category::Unimplemented),
        ];
        for (mounts, category) in refused {
            assert_eq!(
                apply_target(mounts).unwrap_err().category,
                *category,
                "{mounts:?}"
            );
        }
    }

    #[test]
    fn limits_of_zero_are_refused_with_their_key() {
        assert!(DifferConfig::default().validate().is_ok());
        for (config, key) in [
            (
                DifferConfig {
                    max_uncompressed_size: 0,
                    ..DifferConfig::default()
                },
                "max_uncompressed_size",
            ),
            (
                DifferConfig {
                    max_entries: 0,
                    ..DifferConfig::default()
                },
                "max_entries",
            ),
        ] {
            let violation = config.validate().unwrap_err();
            assert!(format!("{violation:?}").contains(key), "{violation:?}");
        }
    }
}
