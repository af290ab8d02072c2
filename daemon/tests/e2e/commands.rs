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
            ("4", "redb"),
            ("5", "content"),
            ("6", "introspection"),
            ("7", "namespaces"),
            ("8", "snapshots"),
            ("9", "proxy-target"),
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
