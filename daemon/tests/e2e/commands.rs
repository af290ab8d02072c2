//! The offline commands: `config default|dump|migrate|check`, `plugins ls|graph`.

use plinth_tests::{Output, binary, run};

fn plinthd(args: &[&str]) -> Output {
    run(&binary("plinthd"), args)
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn config_default_is_valid_toml_that_checks_clean() {
    let output = plinthd(&["config", "default"]);
    let text = output.ok();
    let table: toml::Table = text.parse().expect("config default is TOML");
    assert_eq!(table["version"].as_integer(), Some(3));
    assert!(
        table["grpc"]["address"]
            .as_str()
            .unwrap()
            .ends_with("plinthd.sock")
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "default.toml", text);
    let check = plinthd(&["-c", &path, "--strict", "config", "check"]);
    assert!(check.ok().starts_with("config ok ("), "{}", check.stdout);
}

#[test]
fn config_dump_shows_overrides_and_imports() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir,
        "extra.toml",
        "version = 3\ndisabled_plugins = [\"io.containerd.grpc.v1.version\"]\n",
    );
    let main = write(
        &dir,
        "main.toml",
        "version = 3\nimports = [\"extra.toml\"]\nroot = \"/srv/plinth\"\n",
    );
    let dump = plinthd(&["-c", &main, "--state", "/tmp/elsewhere", "config", "dump"]);
    let table: toml::Table = dump.ok().parse().unwrap();
    assert_eq!(table["root"].as_str(), Some("/srv/plinth"));
    assert_eq!(table["state"].as_str(), Some("/tmp/elsewhere"));
    assert_eq!(
        table["disabled_plugins"].as_array().unwrap()[0].as_str(),
        Some("io.containerd.grpc.v1.version")
    );
}

#[test]
fn config_migrate_turns_version_1_ids_into_uris() {
    let dir = tempfile::tempdir().unwrap();
    let old = write(
        &dir,
        "old.toml",
        "version = 1\nroot = \"/r\"\ndisabled_plugins = [\"version\"]\n",
    );
    let migrated = plinthd(&["config", "migrate", &old]);
    let table: toml::Table = migrated.ok().parse().unwrap();
    let expected: toml::Table =
        "version = 3\nroot = \"/r\"\ndisabled_plugins = [\"io.containerd.grpc.v1.version\"]\n"
            .parse()
            .unwrap();
    assert_eq!(table, expected);
}

#[test]
fn config_check_reports_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let lenient = write(
        &dir,
        "warn.toml",
        "version = 3\n[plugins.\"io.containerd.grpc.v1.versoin\"]\nx = 1\n",
    );
    let output = plinthd(&["-c", &lenient, "config", "check"]);
    assert!(output.ok().contains(
        "warning: ") && output.stdout.contains("warn.toml:2:10: section for unknown plugin io.containerd.grpc.v1.versoin (did you mean \"io.containerd.grpc.v1.version\"?)"),
        "{}", output.stdout);
    let strict = plinthd(&["-c", &lenient, "--strict", "config", "check"]);
    assert!(!strict.status.success());
    assert!(
        strict
            .stderr
            .contains("warn.toml:2:10: section for unknown plugin"),
        "{}",
        strict.stderr
    );
}

#[test]
fn plugins_ls_offline_shows_order_and_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        &dir,
        "c.toml",
        "version = 3\ndisabled_plugins = [\"io.containerd.grpc.v1.version\"]\n",
    );
    let output = plinthd(&["-c", &config, "plugins", "ls"]);
    let lines: Vec<Vec<&str>> = output
        .ok()
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["ORDER", "TYPE", "ID", "STATUS", "REQUIRES"]);
    let ids: Vec<(&str, &str)> = lines[1..].iter().map(|l| (l[0], l[2])).collect();
    assert_eq!(
        ids,
        [
            ("1", "content"),
            ("2", "native"),
            ("3", "overlayfs"),
            ("4", "exchange"),
            ("5", "redb"),
            ("6", "walking"),
            ("7", "scheduler"),
            ("8", "containers"),
            ("9", "content"),
            ("10", "diff"),
            ("11", "events"),
            ("12", "gc"),
            ("13", "images"),
            ("14", "introspection"),
            ("15", "manager"),
            ("16", "leases"),
            ("17", "namespaces"),
            ("18", "snapshots"),
            ("19", "proxy-target"),
            ("-", "version"),
        ]
    );
    let quiet = plinthd(&["-c", &config, "plugins", "ls", "-q"]);
    assert!(quiet.ok().contains("io.containerd.grpc.v1.version\n"));
}

#[test]
fn plugins_graph_is_dot() {
    let output = plinthd(&["plugins", "graph", "--format", "dot"]);
    let text = output.ok();
    assert!(text.starts_with("digraph plugins {"), "{text}");
    assert!(
        text.contains(
            "\"io.containerd.grpc.v1.namespaces\" -> \"io.containerd.metadata.v1.redb\";"
        ),
        "{text}"
    );
    let bad = plinthd(&["plugins", "graph", "--format", "svg"]);
    assert!(!bad.status.success());
}

#[test]
fn config_check_refuses_values_a_plugin_does_not_allow_where_they_are_written() {
    // (config, expected message on standard error)
    let cases: &[(&str, &str)] = &[
        (
            "version = 3\n[plugins.\"io.containerd.metadata.v1.redb\"]\ncontent_sharing_policy = \"sometimes\"\n",
            "c.toml:3:26: plugin io.containerd.metadata.v1.redb: content_sharing_policy: unknown variant `sometimes`, expected `shared` or `isolated`",
        ),
        (
            "version = 3\n[plugins.\"io.containerd.internal.v1.proxy-target\"]\naddress = \"tcp://127.0.0.1:9000\"\n",
            "c.toml:3:11: plugin io.containerd.internal.v1.proxy-target: address: \"tcp://127.0.0.1:9000\" is not a unix socket",
        ),
        (
            "version = 3\n[plugins.\"io.containerd.gc.v1.scheduler\"]\nschedule_delay = \"soon\"\n",
            "c.toml:3:18: plugin io.containerd.gc.v1.scheduler: schedule_delay: \"soon\" is not a duration: expected a number at \"soon\"; write e.g. \"5s\" (default \"0s\")",
        ),
        (
            "version = 3\n[plugins.\"io.containerd.gc.v1.scheduler\"]\ndeletion_threshold = -1\n",
            "c.toml:3:22: plugin io.containerd.gc.v1.scheduler: deletion_threshold: -1 is negative: use 0 (deletions wait for the next interval tick) or a number of deletions (default 0)",
        ),
        (
            "version = 3\n[debug]\nlevel = \"verbose\"\n",
            "c.toml:3:9: debug.level: \"verbose\" is not a log level: use \"trace\", \"debug\", \"info\", \"warn\" or \"error\"",
        ),
        (
            "version = 3\nrequired_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
            "c.toml:2:21: required plugin io.containerd.grpc.v1.cri is a containerd plugin plinthd does not provide: remove it from required_plugins",
        ),
    ];
    for (config, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "c.toml", config);
        let output = plinthd(&["-c", &path, "config", "check"]);
        assert!(!output.status.success(), "{config}: accepted");
        assert!(
            output.stderr.contains(expected),
            "{config}: {expected:?} not in:\n{}",
            output.stderr
        );
    }
}

#[test]
fn config_check_warnings_come_in_line_order_with_close_hints_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "c.toml",
        "version = 3\nrooot = \"/x\"\ndisabled_plugin = []\ndebgu = 1\n\
disabled_plugins = [\"io.containerd.snapshotter.v1.zfs\", \"overlayfs\"]\n\
[grpc]\nadress = \"/s\"\n\
[plugins.\"io.containerd.grpc.v1.cri\"]\nsandbox_image = \"pause\"\n\
[plugins.\"io.containerd.snapshotter.v1.aufs\"]\nroot_path = \"/a\"\n\
[plugins.\"io.containerd.grpc.v1.versoin\"]\nx = 1\n\
[plugins.\"io.example.v1.elsewhere\"]\ny = 2\n",
    );
    let output = plinthd(&["-c", &path, "config", "check"]);
    let warnings: Vec<String> = output
        .ok()
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .map(|l| l.replace(&path, "c.toml"))
        .collect();
    assert_eq!(
        warnings,
        [
            "warning: c.toml:2:1: unknown key rooot (did you mean \"root\"?): it is ignored; remove it",
            "warning: c.toml:3:1: unknown key disabled_plugin (did you mean \"disabled_plugins\"?): it is ignored; remove it",
            "warning: c.toml:4:1: unknown key debgu (did you mean \"debug\"?): it is ignored; remove it",
            "warning: c.toml:5:21: disabled_plugins names plugin io.containerd.snapshotter.v1.zfs, a containerd plugin plinthd does not provide; remove it",
            "warning: c.toml:5:57: disabled_plugins names unknown plugin overlayfs (did you mean \"io.containerd.snapshotter.v1.overlayfs\"?)",
            "warning: c.toml:7:1: unknown key grpc.adress (did you mean \"address\"?): it is ignored; remove it",
            "warning: c.toml:8:10: section for plugin io.containerd.grpc.v1.cri, a containerd plugin plinthd does not provide; remove it",
            "warning: c.toml:10:10: section for plugin io.containerd.snapshotter.v1.aufs, a containerd plugin plinthd does not provide; remove it",
            "warning: c.toml:12:10: section for unknown plugin io.containerd.grpc.v1.versoin (did you mean \"io.containerd.grpc.v1.version\"?): this build has no such plugin",
            "warning: c.toml:14:10: section for unknown plugin io.example.v1.elsewhere: this build has no such plugin",
        ]
    );
}
