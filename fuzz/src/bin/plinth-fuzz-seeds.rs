//! Writes the seed corpora under `fuzz/corpus/` (run from the repository root:
//! `cargo run -p plinth-fuzz --bin plinth-fuzz-seeds`). Seeds are inputs a fuzzer starts
//! from: well-formed examples of each format, and the hostile cases the tests already know.
//! Existing files are overwritten; regression inputs that fuzzing found (named `crash-*`)
//! are left alone.

use std::collections::HashMap;
use std::path::Path;

use plinth_api::containerd::services::containers::v1 as containers;
use plinth_api::containerd::services::content::v1 as content;
use plinth_api::containerd::services::diff::v1 as diff;
use plinth_api::containerd::services::events::v1 as events;
use plinth_api::containerd::services::images::v1 as images;
use plinth_api::containerd::services::leases::v1 as leases;
use plinth_api::containerd::services::namespaces::v1 as namespaces;
use plinth_api::containerd::services::snapshots::v1 as snapshots;
use plinth_api::containerd::types::{Descriptor, Mount};
use prost::Message;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    write(&root, "filters", filters());
    write(&root, "identifiers", identifiers());
    write(&root, "config", configs());
    write(&root, "elf", elves());
    write(&root, "layer", layers());
    write(&root, "services", services());
}

fn write(root: &Path, target: &str, seeds: Vec<(&str, Vec<u8>)>) {
    let dir = root.join(target);
    std::fs::create_dir_all(&dir).expect("the corpus directory");
    for (name, bytes) in seeds {
        std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("a seed");
    }
}

fn text(seeds: &[(&'static str, &str)]) -> Vec<(&'static str, Vec<u8>)> {
    seeds
        .iter()
        .map(|(name, text)| (*name, text.as_bytes().to_vec()))
        .collect()
}

fn filters() -> Vec<(&'static str, Vec<u8>)> {
    text(&[
        ("name", "name==docker.io/library/busybox:latest"),
        ("regexp", "name~=^docker\\.io/,labels.\"a.b\"==c"),
        (
            "or",
            "topic==\"/images/create\"\nnamespace==default,topic~=/containers/",
        ),
        ("label-present", "labels.\"containerd.io/gc.root\""),
        ("not-equal", "target.mediatype!=application/json,name!=x"),
        (
            "quoted",
            "labels.\"quoted \\\"key\\\"\"==\"value with, comma\"",
        ),
        ("bad-regexp", "name~=(unclosed"),
        ("empty-field", "==x"),
        (
            "deep",
            "target.digest==sha256:abababababababababababababababababababababababababababababababab",
        ),
    ])
}

fn identifiers() -> Vec<(&'static str, Vec<u8>)> {
    text(&[
        ("namespace", "default"),
        ("separators", "k8s.io"),
        ("double-separator", "a..b"),
        ("long", &"a".repeat(77)),
        (
            "digest",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ),
        (
            "digest-upper",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
        ),
        ("digest-other", "sha512:abc"),
        ("key", "default/1/sha256:abc"),
        ("label", "containerd.io/gc.ref.content.l.0=sha256:abc"),
        ("topic", "/images/create"),
        ("unicode", "défaut"),
        ("nul", "a\u{0}b"),
    ])
}

fn configs() -> Vec<(&'static str, Vec<u8>)> {
    text(&[
        ("empty", ""),
        ("v3", "version = 3\n"),
        (
            "v3-plugins",
            "version = 3\nroot = \"/x\"\ndisabled_plugins = [\"io.containerd.snapshotter.v1.overlayfs\"]\n\n[grpc]\nmax_recv_message_size = 16777216\n\n[plugins.\"io.containerd.gc.v1.scheduler\"]\npause_threshold = 0.02\ndeletion_threshold = 0\nmutation_threshold = 100\nschedule_delay = \"0s\"\nstartup_delay = \"100ms\"\n\n[plugins.\"io.containerd.metadata.v1.bolt\"]\ncontent_sharing_policy = \"isolated\"\n",
        ),
        (
            "v2",
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\nsandbox_image = \"pause\"\n[plugins.\"io.containerd.snapshotter.v1.overlayfs\"]\nmount_options = [\"index=off\"]\n",
        ),
        (
            "v1",
            "[plugins.linux]\nshim = \"containerd-shim\"\n[plugins.cri]\nstream_server_port = \"0\"\n",
        ),
        (
            "imports",
            "version = 3\nimports = [\"imported.toml\"]\n\u{0}[plugins.\"io.containerd.gc.v1.scheduler\"]\nstartup_delay = \"1h\"\n",
        ),
        (
            "import-glob",
            "version = 3\nimports = [\"*.toml\"]\n\u{0}version = 3\n",
        ),
        (
            "proxy",
            "version = 3\n[proxy_plugins.store]\ntype = \"content\"\naddress = \"store.sock\"\n",
        ),
        (
            "required",
            "version = 3\nrequired_plugins = [\"io.containerd.nope.v1.nope\"]\n",
        ),
        (
            "timeouts",
            "version = 3\n[timeouts]\n\"io.containerd.timeout.shim.cleanup\" = \"5s\"\n",
        ),
        (
            "unknown-key",
            "version = 3\nnot_a_key = 1\n[plugins.\"io.containerd.metadata.v1.bolt\"]\nnope = true\n",
        ),
        ("bad-toml", "version = = 3\n[plugins\n"),
        ("future", "version = 4\n"),
        (
            "debug",
            "version = 3\n[debug]\nlevel = \"trace\"\nformat = \"json\"\n",
        ),
    ])
}

/// A minimal 64-bit little-endian ELF shared object: a header and one loadable segment
/// inside the file.
fn elf64(program_offset: u64, segment_end: u64) -> Vec<u8> {
    let mut elf = vec![0u8; 120];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // 64-bit
    elf[5] = 1; // little-endian
    elf[6] = 1; // version
    elf[16..18].copy_from_slice(&3u16.to_le_bytes()); // ET_DYN
    elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    elf[20..24].copy_from_slice(&1u32.to_le_bytes());
    elf[32..40].copy_from_slice(&program_offset.to_le_bytes()); // e_phoff
    elf[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    elf[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    elf[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    let ph = 64;
    elf[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf[ph + 32..ph + 40].copy_from_slice(&segment_end.to_le_bytes()); // p_filesz
    elf
}

fn elves() -> Vec<(&'static str, Vec<u8>)> {
    let good = elf64(64, 120);
    let mut executable = good.clone();
    executable[16] = 2;
    let mut thirty_two = good.clone();
    thirty_two[4] = 1;
    let mut big_endian = good.clone();
    big_endian[5] = 2;
    vec![
        ("shared-object", good.clone()),
        ("segment-past-the-end", elf64(64, 1 << 40)),
        ("headers-past-the-end", elf64(1 << 20, 120)),
        ("executable", executable),
        ("32-bit", thirty_two),
        ("big-endian", big_endian),
        ("truncated", good[..40].to_vec()),
        ("not-elf", b"#!/bin/sh\necho\n".to_vec()),
    ]
}

/// A tar entry with any name, written byte for byte (the tar crate refuses `..`).
fn entry(out: &mut Vec<u8>, name: &[u8], kind: u8, link: &[u8], data: &[u8], mode: u32) {
    let mut header = tar::Header::new_ustar();
    {
        let bytes = header.as_mut_bytes();
        bytes[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
        bytes[157..157 + link.len().min(100)].copy_from_slice(&link[..link.len().min(100)]);
    }
    header.set_mode(mode);
    header.set_size(data.len() as u64);
    header.set_mtime(1_700_000_000);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::new(kind));
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn finish(mut out: Vec<u8>) -> Vec<u8> {
    out.extend_from_slice(&[0; 1024]);
    out
}

fn layers() -> Vec<(&'static str, Vec<u8>)> {
    let mut ordinary = Vec::new();
    entry(&mut ordinary, b"etc/", b'5', b"", b"", 0o755);
    entry(
        &mut ordinary,
        b"etc/hosts",
        b'0',
        b"",
        b"127.0.0.1 localhost\n",
        0o644,
    );
    entry(
        &mut ordinary,
        b"etc/hosts.link",
        b'1',
        b"etc/hosts",
        b"",
        0o644,
    );
    entry(&mut ordinary, b"bin/", b'5', b"", b"", 0o755);
    entry(&mut ordinary, b"bin/sh", b'2', b"busybox", b"", 0o777);
    entry(&mut ordinary, b"etc/.wh.passwd", b'0', b"", b"", 0o644);
    entry(&mut ordinary, b"var/.wh..wh..opq", b'0', b"", b"", 0o644);
    let ordinary = finish(ordinary);

    let mut escapes = Vec::new();
    entry(&mut escapes, b"../escaped", b'0', b"", b"x", 0o644);
    entry(&mut escapes, b"/absolute", b'0', b"", b"x", 0o644);
    entry(
        &mut escapes,
        b"rel/through-relative-link",
        b'0',
        b"",
        b"x",
        0o644,
    );
    entry(
        &mut escapes,
        b"abs/through-absolute-link",
        b'0',
        b"",
        b"x",
        0o644,
    );
    entry(&mut escapes, b"up", b'2', b"../outside", b"", 0o777);
    entry(&mut escapes, b"up/file", b'0', b"", b"overwritten", 0o644);
    entry(&mut escapes, b"hard", b'1', b"../outside/file", b"", 0o644);
    entry(&mut escapes, b"rel/.wh.file", b'0', b"", b"", 0o644);
    entry(&mut escapes, b".wh..", b'0', b"", b"", 0o644);
    entry(&mut escapes, b"chain1", b'2', b"chain2", b"", 0o777);
    entry(&mut escapes, b"chain2", b'2', b"rel", b"", 0o777);
    entry(&mut escapes, b"chain1/file", b'0', b"", b"x", 0o644);
    let escapes = finish(escapes);

    let mut devices = Vec::new();
    entry(&mut devices, b"dev/", b'5', b"", b"", 0o755);
    entry(&mut devices, b"dev/null", b'3', b"", b"", 0o666);
    entry(&mut devices, b"dev/fifo", b'6', b"", b"", 0o644);
    let devices = finish(devices);

    let with_mode = |mode: u8, layer: &[u8]| {
        let mut input = vec![mode];
        input.extend_from_slice(layer);
        input
    };
    vec![
        ("plain", with_mode(0, &ordinary)),
        ("gzip", with_mode(1, &ordinary)),
        ("zstd", with_mode(2, &ordinary)),
        ("overlay", with_mode(4, &ordinary)),
        ("escapes", with_mode(0, &escapes)),
        ("escapes-overlay", with_mode(5, &escapes)),
        ("devices", with_mode(0, &devices)),
        ("not-gzip", with_mode(3, b"\x1f\x8b\x08\x00 not really")),
        ("empty", with_mode(0, &finish(Vec::new()))),
    ]
}

/// One record of the services target's input.
fn call(method: &str, flags: u8, payload: &[u8]) -> Vec<u8> {
    let index = plinth_fuzz::services::METHODS
        .iter()
        .position(|(path, _)| path.ends_with(method))
        .unwrap_or_else(|| panic!("no method {method}"));
    let mut record = vec![u8::try_from(index).expect("fewer than 256 methods"), flags];
    record.extend_from_slice(
        &u16::try_from(payload.len())
            .expect("a short payload")
            .to_le_bytes(),
    );
    record.extend_from_slice(payload);
    record
}

/// A streaming payload: each message behind its length.
fn stream(messages: &[Vec<u8>]) -> Vec<u8> {
    let mut payload = Vec::new();
    for message in messages {
        payload.push(u8::try_from(message.len()).expect("a short message"));
        payload.extend_from_slice(message);
    }
    payload
}

fn services() -> Vec<(&'static str, Vec<u8>)> {
    let data = b"hello fuzz";
    let digest = "sha256:5b48c9902d1cd0ed5431f9417255c298b7410e0686459e563b205bab0d724478";
    let descriptor = Descriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        digest: digest.into(),
        size: data.len() as i64,
        ..Default::default()
    };
    let labels: HashMap<String, String> =
        [("containerd.io/gc.root".to_string(), "x".to_string())].into();
    let namespace = namespaces::CreateNamespaceRequest {
        namespace: Some(namespaces::Namespace {
            name: "fuzz".into(),
            labels: labels.clone(),
        }),
    }
    .encode_to_vec();
    let write = stream(&[
        content::WriteContentRequest {
            action: content::WriteAction::Stat as i32,
            r#ref: "fuzz-ref".into(),
            ..Default::default()
        }
        .encode_to_vec(),
        content::WriteContentRequest {
            action: content::WriteAction::Commit as i32,
            r#ref: "fuzz-ref".into(),
            total: data.len() as i64,
            expected: digest.into(),
            data: data.to_vec(),
            ..Default::default()
        }
        .encode_to_vec(),
    ]);
    let prepare = snapshots::PrepareSnapshotRequest {
        snapshotter: "native".into(),
        key: "active".into(),
        labels: labels.clone(),
        ..Default::default()
    }
    .encode_to_vec();
    let commit = snapshots::CommitSnapshotRequest {
        snapshotter: "native".into(),
        name: "committed".into(),
        key: "active".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let image = images::CreateImageRequest {
        image: Some(images::Image {
            name: "docker.io/library/fuzz:latest".into(),
            target: Some(descriptor.clone()),
            labels: labels.clone(),
            ..Default::default()
        }),
    }
    .encode_to_vec();
    let container = containers::CreateContainerRequest {
        container: Some(containers::Container {
            id: "fuzz".into(),
            image: "docker.io/library/fuzz:latest".into(),
            runtime: Some(containers::container::Runtime {
                name: "io.containerd.runc.v2".into(),
                options: None,
            }),
            snapshotter: "native".into(),
            snapshot_key: "active".into(),
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                value: b"{}".to_vec(),
            }),
            ..Default::default()
        }),
    }
    .encode_to_vec();
    let lease = leases::CreateRequest {
        id: "fuzz-lease".into(),
        labels: [(
            "containerd.io/gc.expire".to_string(),
            "2100-01-01T00:00:00Z".to_string(),
        )]
        .into(),
    }
    .encode_to_vec();
    let resource = leases::AddResourceRequest {
        id: "fuzz-lease".into(),
        resource: Some(leases::Resource {
            id: digest.into(),
            r#type: "content".into(),
        }),
    }
    .encode_to_vec();
    let publish = events::PublishRequest {
        topic: "/fuzz/event".into(),
        event: Some(prost_types_any()),
    }
    .encode_to_vec();
    let apply = diff::ApplyRequest {
        diff: Some(descriptor.clone()),
        mounts: vec![Mount {
            r#type: "bind".into(),
            source: "/nonexistent".into(),
            target: String::new(),
            options: vec!["rbind".into(), "ro".into()],
        }],
        ..Default::default()
    }
    .encode_to_vec();
    let info = content::InfoRequest {
        digest: digest.into(),
    }
    .encode_to_vec();
    let read = content::ReadContentRequest {
        digest: digest.into(),
        offset: 0,
        size: 0,
    }
    .encode_to_vec();
    let list_images = images::ListImagesRequest {
        filters: vec![
            "labels.\"containerd.io/gc.root\"".into(),
            "name~=fuzz".into(),
        ],
    }
    .encode_to_vec();

    let mut workflow = Vec::new();
    for (method, flags, payload) in [
        ("Namespaces/Create", 2, namespace.as_slice()),
        ("Leases/Create", 0, lease.as_slice()),
        ("Content/Write", 4, write.as_slice()),
        ("Leases/AddResource", 0, resource.as_slice()),
        ("Content/Info", 0, info.as_slice()),
        ("Content/Read", 0, read.as_slice()),
        ("Snapshots/Prepare", 4, prepare.as_slice()),
        ("Snapshots/Commit", 0, commit.as_slice()),
        ("Images/Create", 0, image.as_slice()),
        ("Images/List", 0, list_images.as_slice()),
        ("Containers/Create", 0, container.as_slice()),
        ("Events/Publish", 0, publish.as_slice()),
        ("Diff/Apply", 0, apply.as_slice()),
        ("GC/Collect", 0, &[]),
    ] {
        workflow.extend(call(method, flags, payload));
    }
    vec![
        ("workflow", workflow),
        ("version", call("Version/Version", 2, &[])),
        ("bad-namespace", call("Images/Create", 3, &image)),
        ("garbage", call("Content/Info", 0, b"\xff\xff\xff\xff\x0f")),
        ("plugins", call("Introspection/Plugins", 2, &[])),
    ]
}

fn prost_types_any() -> prost_types::Any {
    prost_types::Any {
        type_url: "types.containerd.io/containerd.events.ImageCreate".into(),
        value: b"\n\x04fuzz".to_vec(),
    }
}
