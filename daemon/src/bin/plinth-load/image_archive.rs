//! `plinth-load image-archive`: a generated OCI image layout archive (the kind `ctr images
//! import` reads) for the import benchmark, the same bytes for the same arguments.
//!
//! The image has `--layers` gzip layers holding `--size` bytes of file content in all
//! (uncompressed, split evenly over the layers). In each layer, `--small-share` of its bytes
//! are in small files (1–16 KiB each, 32 to a directory, three levels deep, with one symlink
//! per middle directory) and the rest in a few large files of at most 40 MiB each. File
//! content is pseudo-random from `--seed` and partly compressible: each 4 KiB block is either
//! random bytes or text of words from a small vocabulary, about half and half, so gzip makes
//! the layers a little over half their size.
//!
//! Nothing is held in memory beyond a block: each layer is generated, tarred and gzipped in
//! one stream straight into the archive (its tar header, whose name is the layer's digest, is
//! written in place once the layer is done), hashing the tar (the diff id) and the gzip (the
//! blob's digest) on the way. Then the config (`rootfs.diff_ids`), the manifest, `index.json`
//! (the manifest named by `org.opencontainers.image.ref.name`) and `oci-layout`.
//!
//! On standard output: a JSON summary (sizes, digests, the chain ids an unpack gives, bottom
//! first), which the benchmark script uses to check both daemons unpacked the same image.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};

use crate::rng::Rng;

/// The modification time of every entry (of the layers' and of the archive's own).
const MTIME: u64 = 1_700_000_000;
/// Tar's block size.
const BLOCK: u64 = 512;
/// The block of generated content that is either random or text.
const CONTENT_BLOCK: usize = 4096;
/// The largest "large" file.
const LARGE_MAX: u64 = 40 << 20;
/// Small files per leaf directory, and leaf directories per middle directory.
const FILES_PER_DIR: usize = 32;
const DIRS_PER_DIR: usize = 16;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The words of the compressible blocks.
const WORDS: [&str; 64] = [
    "the",
    "config",
    "value",
    "return",
    "struct",
    "function",
    "import",
    "package",
    "error",
    "string",
    "buffer",
    "layer",
    "image",
    "content",
    "snapshot",
    "digest",
    "manifest",
    "index",
    "container",
    "runtime",
    "mount",
    "options",
    "namespace",
    "label",
    "lease",
    "plugin",
    "service",
    "client",
    "server",
    "request",
    "response",
    "stream",
    "status",
    "version",
    "update",
    "delete",
    "create",
    "commit",
    "prepare",
    "remove",
    "parent",
    "child",
    "data",
    "metadata",
    "bytes",
    "length",
    "offset",
    "size",
    "name",
    "path",
    "file",
    "directory",
    "symlink",
    "mode",
    "owner",
    "group",
    "time",
    "linux",
    "amd64",
    "debian",
    "library",
    "share",
    "include",
    "local",
];

/// What `image-archive` writes.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ImageArchiveArgs {
    /// Where to write the archive (an OCI image layout as a tar)
    #[arg(short, long)]
    pub(crate) output: PathBuf,
    /// Layers of the image
    #[arg(long, default_value_t = 10)]
    pub(crate) layers: usize,
    /// Bytes of file content over all layers, uncompressed: `1GiB`, `64MiB`, `512KiB` or a
    /// number of bytes
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    pub(crate) size: u64,
    /// Seed of the content (the same seed and sizes give the same archive, byte for byte)
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Share of each layer's bytes in small files (1–16 KiB); the rest is in large files
    #[arg(long, default_value_t = 0.4)]
    pub(crate) small_share: f64,
    /// The image's name in index.json (`org.opencontainers.image.ref.name`)
    #[arg(long, default_value = "plinth.bench/import:latest")]
    pub(crate) reference: String,
}

/// The shape of the image.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Spec {
    pub(crate) layers: usize,
    pub(crate) size: u64,
    pub(crate) seed: u64,
    pub(crate) small_share: f64,
    pub(crate) reference: String,
}

/// One layer as written.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct LayerSummary {
    /// Digest of the gzip blob.
    pub(crate) digest: String,
    /// Digest of the uncompressed tar.
    pub(crate) diff_id: String,
    /// Bytes of the gzip blob.
    pub(crate) size: u64,
    /// Bytes of the uncompressed tar.
    pub(crate) tar_size: u64,
    /// Regular files in it.
    pub(crate) files: u64,
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Summary {
    pub(crate) reference: String,
    pub(crate) manifest_digest: String,
    /// Bytes of the archive.
    pub(crate) archive_bytes: u64,
    /// Bytes of file content, uncompressed.
    pub(crate) content_bytes: u64,
    /// Regular files over all layers.
    pub(crate) files: u64,
    pub(crate) layers: Vec<LayerSummary>,
    /// The chain ids of the layers, bottom first: the committed snapshots of an unpack.
    pub(crate) chain_ids: Vec<String>,
}

/// `1GiB`, `64MiB`, `512KiB`, `1G`, `64M`, `512K` or a number of bytes.
fn parse_size(text: &str) -> Result<u64, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (write e.g. 1GiB, 64MiB, 4096)"))?;
    let shift = match unit {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use KiB, MiB or GiB)"
            ));
        }
    };
    value
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// `image-archive`: writes the archive and prints its summary as JSON.
///
/// # Errors
/// Bad arguments, or the output cannot be written.
pub(crate) fn image_archive(args: ImageArchiveArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(args.layers > 0, "--layers must be at least 1");
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.small_share),
        "--small-share must be between 0 and 1"
    );
    let spec = Spec {
        layers: args.layers,
        size: args.size,
        seed: args.seed,
        small_share: args.small_share,
        reference: args.reference,
    };
    let path = &args.output;
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = io::BufWriter::with_capacity(1 << 20, file);
    let summary = write_archive(&mut out, &spec)
        .and_then(|s| out.flush().map(|()| s))
        .with_context(|| format!("writing {}", path.display()))?;
    let text = serde_json::to_string_pretty(&summary).context("encoding the summary")?;
    crate::out(&format!("{text}\n"));
    Ok(true)
}

/// Writes the whole archive into `out` (from its current position, which must be a multiple
/// of 512 from the start of the tar: normally 0).
///
/// # Errors
/// Writing or seeking `out` failed.
pub(crate) fn write_archive<W: Write + Seek>(out: &mut W, spec: &Spec) -> io::Result<Summary> {
    let start = out.stream_position()?;
    write_entry(out, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    write_dir(out, "blobs/")?;
    write_dir(out, "blobs/sha256/")?;

    let mut layers = Vec::with_capacity(spec.layers);
    let per_layer = spec.size / u64::try_from(spec.layers).unwrap_or(1);
    for index in 0..spec.layers {
        // The last layer takes what the division left over.
        let budget = if index + 1 == spec.layers {
            spec.size - per_layer * u64::try_from(spec.layers - 1).unwrap_or(0)
        } else {
            per_layer
        };
        let mut rng = Rng::new(spec.seed.wrapping_mul(1000).wrapping_add(index as u64));
        layers.push(write_layer_entry(
            out,
            index,
            budget,
            spec.small_share,
            &mut rng,
        )?);
    }

    let diff_ids: Vec<String> = layers.iter().map(|l| format!("{:?}", l.diff_id)).collect();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/usr/local/bin:/usr/bin:/bin"],"Cmd":["/bin/sh"],"WorkingDir":"/"}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids.join(",")
    );
    let config_digest = sha256(config.as_bytes());
    write_entry(out, &blob_name(&config_digest), config.as_bytes())?;
    let layer_descriptors: Vec<String> = layers
        .iter()
        .map(|l| {
            format!(
                r#"{{"mediaType":"{OCI_LAYER_GZIP}","digest":"{}","size":{}}}"#,
                l.digest, l.size
            )
        })
        .collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{config_digest}","size":{}}},"layers":[{}]}}"#,
        config.len(),
        layer_descriptors.join(",")
    );
    let manifest_digest = sha256(manifest.as_bytes());
    write_entry(out, &blob_name(&manifest_digest), manifest.as_bytes())?;
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{manifest_digest}","size":{},"annotations":{{"org.opencontainers.image.ref.name":{:?}}},"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
        manifest.len(),
        spec.reference
    );
    write_entry(out, "index.json", index.as_bytes())?;
    // The end of a tar: two zero blocks.
    out.write_all(&[0; 2 * BLOCK as usize])?;
    let end = out.stream_position()?;

    let mut chain_ids: Vec<String> = Vec::with_capacity(layers.len());
    for layer in &layers {
        let next = match chain_ids.last() {
            None => layer.diff_id.clone(),
            Some(parent) => sha256(format!("{parent} {}", layer.diff_id).as_bytes()),
        };
        chain_ids.push(next);
    }
    Ok(Summary {
        reference: spec.reference.clone(),
        manifest_digest,
        archive_bytes: end - start,
        content_bytes: spec.size,
        files: layers.iter().map(|l| l.files).sum(),
        layers,
        chain_ids,
    })
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

fn blob_name(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

/// The archive's own header for a regular file or a directory.
fn archive_header(name: &str, size: u64, directory: bool) -> io::Result<tar::Header> {
    let mut header = tar::Header::new_ustar();
    header.set_path(name)?;
    header.set_size(size);
    header.set_mtime(MTIME);
    if directory {
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
    } else {
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
    }
    header.set_cksum();
    Ok(header)
}

/// Zeros up to the next 512-byte boundary after `size` bytes of data.
fn pad(out: &mut impl Write, size: u64) -> io::Result<()> {
    let rest = size % BLOCK;
    if rest != 0 {
        out.write_all(&[0; BLOCK as usize][..usize::try_from(BLOCK - rest).unwrap_or(0)])?;
    }
    Ok(())
}

fn write_entry(out: &mut impl Write, name: &str, data: &[u8]) -> io::Result<()> {
    out.write_all(archive_header(name, data.len() as u64, false)?.as_bytes())?;
    out.write_all(data)?;
    pad(out, data.len() as u64)
}

fn write_dir(out: &mut impl Write, name: &str) -> io::Result<()> {
    out.write_all(archive_header(name, 0, true)?.as_bytes())
}

/// A writer that hashes and counts what goes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W> Hashing<W> {
    fn new(inner: W) -> Hashing<W> {
        Hashing {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// The writer, the digest of what went through and its length.
    fn finish(self) -> (W, String, u64) {
        let digest = format!("sha256:{:x}", self.hasher.finalize());
        (self.inner, digest, self.bytes)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        self.bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes layer `index` as an archive entry: a placeholder header, the gzip stream, then the
/// real header (named by the blob's digest, sized) written over the placeholder.
fn write_layer_entry<W: Write + Seek>(
    out: &mut W,
    index: usize,
    budget: u64,
    small_share: f64,
    rng: &mut Rng,
) -> io::Result<LayerSummary> {
    let header_at = out.stream_position()?;
    out.write_all(&[0; BLOCK as usize])?;
    let (files, diff_id, tar_size, digest, size) = {
        let encoder = flate2::GzBuilder::new()
            .mtime(0)
            .write(Hashing::new(&mut *out), flate2::Compression::default());
        let mut builder = tar::Builder::new(Hashing::new(encoder));
        let files = write_layer(&mut builder, index, budget, small_share, rng)?;
        let (encoder, diff_id, tar_size) = builder.into_inner()?.finish();
        let (_, digest, size) = encoder.finish()?.finish();
        (files, diff_id, tar_size, digest, size)
    };
    pad(out, size)?;
    let end = out.stream_position()?;
    out.seek(SeekFrom::Start(header_at))?;
    out.write_all(archive_header(&blob_name(&digest), size, false)?.as_bytes())?;
    out.seek(SeekFrom::Start(end))?;
    Ok(LayerSummary {
        digest,
        diff_id,
        size,
        tar_size,
        files,
    })
}

/// The entries of layer `index`: directories, small files and their symlinks, large files.
/// Returns the number of regular files.
fn write_layer<W: Write>(
    builder: &mut tar::Builder<W>,
    index: usize,
    budget: u64,
    small_share: f64,
    rng: &mut Rng,
) -> io::Result<u64> {
    // A share of a size far below 2^53: the float's rounding is irrelevant.
    let small_budget = ((budget as f64) * small_share) as u64;
    let large_budget = budget - small_budget;
    let mut files = 0u64;

    let top = format!("usr/lib/bench{index:02}");
    for dir in ["usr/", "usr/lib/", format!("{top}/").as_str()] {
        append_dir(builder, dir)?;
    }
    let mut written = 0u64;
    let mut file_index = 0usize;
    while written < small_budget {
        let size = u64::try_from(rng.between(1024, 16 * 1024))
            .unwrap_or(1024)
            .min(small_budget - written);
        let leaf = file_index / FILES_PER_DIR;
        let middle = leaf / DIRS_PER_DIR;
        if file_index % (FILES_PER_DIR * DIRS_PER_DIR) == 0 {
            append_dir(builder, &format!("{top}/m{middle:03}/"))?;
            append_symlink(
                builder,
                &format!("{top}/m{middle:03}/first"),
                &format!("l{leaf:04}/f{file_index:06}.dat"),
            )?;
        }
        if file_index % FILES_PER_DIR == 0 {
            append_dir(builder, &format!("{top}/m{middle:03}/l{leaf:04}/"))?;
        }
        let mode = if file_index % 7 == 0 { 0o755 } else { 0o644 };
        append_file(
            builder,
            &format!("{top}/m{middle:03}/l{leaf:04}/f{file_index:06}.dat"),
            size,
            mode,
            rng,
        )?;
        written += size;
        file_index += 1;
        files += 1;
    }

    if large_budget > 0 {
        append_dir(builder, "opt/")?;
        append_dir(builder, &format!("opt/bench{index:02}/"))?;
        let n_large = large_budget.div_ceil(LARGE_MAX);
        for large in 0..n_large {
            let size = if large + 1 == n_large {
                large_budget - (large_budget / n_large) * (n_large - 1)
            } else {
                large_budget / n_large
            };
            append_file(
                builder,
                &format!("opt/bench{index:02}/large{large}.bin"),
                size,
                0o644,
                rng,
            )?;
            files += 1;
        }
    }
    builder.finish()?;
    Ok(files)
}

fn layer_header(entry_type: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(entry_type);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(MTIME);
    header.set_uid(0);
    header.set_gid(0);
    header
}

fn append_dir<W: Write>(builder: &mut tar::Builder<W>, path: &str) -> io::Result<()> {
    let mut header = layer_header(tar::EntryType::Directory, 0o755, 0);
    builder.append_data(&mut header, path, io::empty())
}

fn append_symlink<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &str,
    target: &str,
) -> io::Result<()> {
    let mut header = layer_header(tar::EntryType::Symlink, 0o777, 0);
    builder.append_link(&mut header, path, target)
}

fn append_file<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &str,
    size: u64,
    mode: u32,
    rng: &mut Rng,
) -> io::Result<()> {
    let mut header = layer_header(tar::EntryType::Regular, mode, size);
    builder.append_data(&mut header, path, Content::new(rng, size))
}

/// A file's content, generated as it is read: 4 KiB blocks, each random bytes or words.
struct Content<'a> {
    rng: &'a mut Rng,
    remaining: u64,
    block: Vec<u8>,
    position: usize,
}

impl<'a> Content<'a> {
    fn new(rng: &'a mut Rng, size: u64) -> Content<'a> {
        Content {
            rng,
            remaining: size,
            block: Vec::with_capacity(CONTENT_BLOCK + 16),
            position: 0,
        }
    }

    /// The next block, of at most `CONTENT_BLOCK` bytes and at most what remains.
    fn fill_block(&mut self) {
        let len = usize::try_from(self.remaining.min(CONTENT_BLOCK as u64)).unwrap_or(0);
        self.block.clear();
        self.position = 0;
        if self.rng.below(2) == 0 {
            while self.block.len() < len {
                self.block.extend_from_slice(&self.rng.next().to_le_bytes());
            }
        } else {
            let mut word = 0usize;
            while self.block.len() < len {
                self.block
                    .extend_from_slice(WORDS[self.rng.below(WORDS.len())].as_bytes());
                word += 1;
                self.block.push(if word % 12 == 0 { b'\n' } else { b' ' });
            }
        }
        self.block.truncate(len);
    }
}

impl Read for Content<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.position == self.block.len() {
            if self.remaining == 0 {
                return Ok(0);
            }
            self.fill_block();
        }
        let n = buf.len().min(self.block.len() - self.position);
        buf[..n].copy_from_slice(&self.block[self.position..self.position + n]);
        self.position += n;
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Cursor;

    use super::*;

    fn spec(seed: u64) -> Spec {
        Spec {
            layers: 3,
            size: 3 << 20,
            seed,
            small_share: 0.4,
            reference: "plinth.test/bench:latest".into(),
        }
    }

    fn archive(spec: &Spec) -> (Vec<u8>, Summary) {
        let mut out = Cursor::new(Vec::new());
        let summary = write_archive(&mut out, spec).unwrap();
        (out.into_inner(), summary)
    }

    #[test]
    fn sizes() {
        let table: [(&str, Result<u64, ()>); 7] = [
            ("4096", Ok(4096)),
            ("512KiB", Ok(512 << 10)),
            ("64MiB", Ok(64 << 20)),
            ("1GiB", Ok(1 << 30)),
            ("2G", Ok(2 << 30)),
            ("1 GiB", Err(())),
            ("GiB", Err(())),
        ];
        for (text, expected) in table {
            assert_eq!(parse_size(text).map_err(|_| ()), expected, "{text}");
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_bytes_and_another_seed_others() {
        let (first, first_summary) = archive(&spec(7));
        let (second, second_summary) = archive(&spec(7));
        assert!(first == second, "two archives of seed 7 differ");
        assert_eq!(first_summary, second_summary);
        let (other, _) = archive(&spec(8));
        assert!(first != other, "seeds 7 and 8 gave the same archive");
        assert_eq!(first_summary.archive_bytes, first.len() as u64);
    }

    #[test]
    fn a_valid_layout_whose_digests_and_diff_ids_match_the_layers() {
        let spec = spec(3);
        let (bytes, summary) = archive(&spec);
        let mut entries: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut archive = tar::Archive::new(bytes.as_slice());
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            entries.insert(name, data);
        }
        // Every blob is named by its digest.
        for (name, data) in &entries {
            if let Some(hex) = name.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
                assert_eq!(sha256(data), format!("sha256:{hex}"), "{name}");
            }
        }
        assert!(entries.contains_key("oci-layout"));
        let json = |name: &str| -> serde_json::Value {
            serde_json::from_slice(&entries[name]).unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        let index = json("index.json");
        let descriptor = &index["manifests"][0];
        assert_eq!(
            descriptor["annotations"]["org.opencontainers.image.ref.name"],
            spec.reference.as_str()
        );
        let manifest_digest = descriptor["digest"].as_str().unwrap();
        assert_eq!(manifest_digest, summary.manifest_digest);
        let manifest = json(&blob_name(manifest_digest));
        let config = json(&blob_name(manifest["config"]["digest"].as_str().unwrap()));
        let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), spec.layers);
        assert_eq!(diff_ids.len(), spec.layers);

        let mut content_bytes = 0u64;
        let mut files = 0u64;
        for ((layer, diff_id), listed) in layers.iter().zip(diff_ids).zip(&summary.layers) {
            let blob = &entries[&blob_name(layer["digest"].as_str().unwrap())];
            assert_eq!(layer["size"].as_u64(), Some(blob.len() as u64));
            assert_eq!(layer["mediaType"], OCI_LAYER_GZIP);
            let mut tar_bytes = Vec::new();
            flate2::read::GzDecoder::new(blob.as_slice())
                .read_to_end(&mut tar_bytes)
                .unwrap();
            assert_eq!(diff_id.as_str().unwrap(), sha256(&tar_bytes));
            assert_eq!(listed.diff_id, sha256(&tar_bytes));
            let mut layer_files = 0u64;
            for entry in tar::Archive::new(tar_bytes.as_slice()).entries().unwrap() {
                let entry = entry.unwrap();
                if entry.header().entry_type() == tar::EntryType::Regular {
                    content_bytes += entry.size();
                    layer_files += 1;
                }
            }
            assert!(layer_files > 20, "only {layer_files} files in a layer");
            files += layer_files;
        }
        assert_eq!(content_bytes, spec.size);
        assert_eq!(files, summary.files);
        assert_eq!(summary.chain_ids.len(), spec.layers);
        assert_eq!(summary.chain_ids[0], summary.layers[0].diff_id);
        // Partly compressible: gzip saves something, and not everything.
        let compressed: u64 = summary.layers.iter().map(|l| l.size).sum();
        assert!(
            compressed > spec.size / 3 && compressed < spec.size * 9 / 10,
            "{compressed} bytes of gzip for {} of content",
            spec.size
        );
    }
}
