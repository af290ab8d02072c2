//! The stock `ctr` client and plinthctl against the real daemon: the same commands, the same
//! answers.

use plinth_tests::{Daemon, Start, start};

/// Rows of a table printed by ctr or plinthctl, split on whitespace, header dropped.
fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

fn plugin_rows(text: &str) -> Vec<(String, String, String)> {
    rows(text)
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone(), r[3].clone()))
        .collect()
}

fn owned(rows: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    rows.iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect()
}

/// Every plugin of the default build, in init order.
const ALL: &[(&str, &str, &str)] = &[
    ("io.containerd.content.v1", "content", "ok"),
    ("io.containerd.snapshotter.v1", "native", "ok"),
    ("io.containerd.snapshotter.v1", "overlayfs", "ok"),
    ("io.containerd.event.v1", "exchange", "ok"),
    ("io.containerd.metadata.v1", "redb", "ok"),
    ("io.containerd.differ.v1", "walking", "ok"),
    ("io.containerd.gc.v1", "scheduler", "ok"),
    ("io.containerd.grpc.v1", "containers", "ok"),
    ("io.containerd.grpc.v1", "content", "ok"),
    ("io.containerd.grpc.v1", "diff", "ok"),
    ("io.containerd.grpc.v1", "events", "ok"),
    ("io.containerd.grpc.v1", "gc", "ok"),
    ("io.containerd.grpc.v1", "images", "ok"),
    ("io.containerd.grpc.v1", "introspection", "ok"),
    ("io.containerd.lease.v1", "manager", "ok"),
    ("io.containerd.grpc.v1", "leases", "ok"),
    ("io.containerd.grpc.v1", "namespaces", "ok"),
    ("io.containerd.grpc.v1", "snapshots", "ok"),
    ("io.containerd.grpc.v1", "version", "ok"),
    // Raw serving for other daemons' proxy_plugins: off without an address.
    ("io.containerd.internal.v1", "proxy-target", "skip"),
];

/// Runs the same listing checks through ctr and through plinthctl.
fn check_plugin_listings(daemon: &Daemon, client: &dyn Fn(&[&str]) -> plinth_tests::Output) {
    // (arguments, expected rows)
    let cases: &[(&[&str], &[(&str, &str, &str)])] = &[
        (&["plugins", "ls"], ALL),
        (
            &["plugins", "ls", "type==io.containerd.grpc.v1"],
            &[
                ("io.containerd.grpc.v1", "containers", "ok"),
                ("io.containerd.grpc.v1", "content", "ok"),
                ("io.containerd.grpc.v1", "diff", "ok"),
                ("io.containerd.grpc.v1", "events", "ok"),
                ("io.containerd.grpc.v1", "gc", "ok"),
                ("io.containerd.grpc.v1", "images", "ok"),
                ("io.containerd.grpc.v1", "introspection", "ok"),
                ("io.containerd.grpc.v1", "leases", "ok"),
                ("io.containerd.grpc.v1", "namespaces", "ok"),
                ("io.containerd.grpc.v1", "snapshots", "ok"),
                ("io.containerd.grpc.v1", "version", "ok"),
            ],
        ),
        (
            &["plugins", "ls", "id==version"],
            &[("io.containerd.grpc.v1", "version", "ok")],
        ),
        (
            &["plugins", "ls", "id==version", "id~=^intro"],
            &[
                ("io.containerd.grpc.v1", "introspection", "ok"),
                ("io.containerd.grpc.v1", "version", "ok"),
            ],
        ),
        (&["plugins", "ls", "type==io.nothing.v1"], &[]),
    ];
    for (args, expected) in cases {
        let output = client(args);
        assert_eq!(
            plugin_rows(output.ok()),
            owned(expected),
            "{args:?}\n{}",
            output.stdout
        );
        assert!(output.stdout.starts_with("TYPE"), "{}", output.stdout);
    }
    let detailed = client(&["plugins", "ls", "-d", "id==redb"]);
    let text = detailed.ok();
    for needle in [
        "io.containerd.metadata.v1",
        "Requires:",
        "io.containerd.content.v1",
        "io.containerd.snapshotter.v1",
        "Exports:",
        &daemon
            .root()
            .join("io.containerd.metadata.v1.redb/meta.db")
            .display()
            .to_string(),
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
    let bad = client(&["plugins", "ls", "type=io"]);
    assert!(!bad.status.success());
    assert!(
        bad.stderr.contains("unsupported operator"),
        "{}",
        bad.stderr
    );
}

#[test]
fn ctr_plugins_ls_shows_what_plinthd_reports() {
    let daemon = start(Start::default());
    check_plugin_listings(&daemon, &|args| daemon.ctr(args));
}

#[test]
fn plinthctl_plugins_ls_shows_the_same() {
    let daemon = start(Start::default());
    check_plugin_listings(&daemon, &|args| daemon.plinthctl(args));
    let quiet = daemon.plinthctl(&["plugins", "ls", "-q"]);
    assert_eq!(
        quiet.ok(),
        "content\nnative\noverlayfs\nexchange\nredb\nwalking\nscheduler\ncontainers\ncontent\ndiff\nevents\ngc\nimages\nintrospection\nmanager\nleases\nnamespaces\nsnapshots\nversion\nproxy-target\n"
    );
}

#[test]
fn failed_plugins_show_as_error_with_their_cause() {
    let config = "version = 3\ndisabled_plugins = [\"io.containerd.metadata.v1.redb\"]\n";
    let daemon = start(Start {
        config: config.into(),
        ..Start::default()
    });
    for output in [
        daemon.ctr(&["plugins", "ls"]),
        daemon.plinthctl(&["plugins", "ls"]),
    ] {
        assert_eq!(
            plugin_rows(output.ok()),
            // Without the metadata plugin nothing pulls the stores forward: URI order.
            owned(&[
                ("io.containerd.content.v1", "content", "ok"),
                ("io.containerd.differ.v1", "walking", "error"),
                ("io.containerd.event.v1", "exchange", "ok"),
                ("io.containerd.gc.v1", "scheduler", "error"),
                ("io.containerd.grpc.v1", "containers", "error"),
                ("io.containerd.grpc.v1", "content", "error"),
                ("io.containerd.grpc.v1", "diff", "error"),
                ("io.containerd.grpc.v1", "events", "ok"),
                ("io.containerd.grpc.v1", "gc", "error"),
                ("io.containerd.grpc.v1", "images", "error"),
                ("io.containerd.grpc.v1", "introspection", "ok"),
                ("io.containerd.lease.v1", "manager", "error"),
                ("io.containerd.grpc.v1", "leases", "error"),
                ("io.containerd.grpc.v1", "namespaces", "error"),
                ("io.containerd.grpc.v1", "snapshots", "error"),
                ("io.containerd.grpc.v1", "version", "ok"),
                ("io.containerd.snapshotter.v1", "native", "ok"),
                ("io.containerd.snapshotter.v1", "overlayfs", "ok"),
                ("io.containerd.internal.v1", "proxy-target", "skip"),
            ])
        );
    }
    let detail = daemon.ctr(&["plugins", "ls", "-d", "id==namespaces"]);
    assert!(
        detail.ok().contains(
            "requires io.containerd.metadata.v1: no plugin of type io.containerd.metadata.v1 is initialised \
             (io.containerd.metadata.v1.redb is disabled by config)"
        ),
        "{}",
        detail.stdout
    );
    // The namespaces service is not served: ctr gets Unimplemented, not a crash.
    let ls = daemon.ctr(&["namespaces", "ls"]);
    assert!(!ls.status.success());
}

#[test]
fn version_through_ctr_and_plinthctl() {
    let daemon = start(Start::default());
    for output in [daemon.ctr(&["version"]), daemon.plinthctl(&["version"])] {
        let text = output.ok();
        let server = text.split("Server:").nth(1).expect("server section");
        assert!(
            server.contains(&format!("Version:  {}", env!("CARGO_PKG_VERSION"))),
            "{text}"
        );
        let uuid = server
            .lines()
            .find_map(|l| l.trim().strip_prefix("UUID: "))
            .expect("uuid");
        assert_eq!(uuid.len(), 36, "{uuid}");
    }
}

/// The namespace steps, through either client: (arguments, expect success, expected text).
fn check_namespaces(client: &dyn Fn(&[&str]) -> plinth_tests::Output) {
    let steps: &[(&[&str], bool, &str)] = &[
        (
            &["namespaces", "create", "team-a", "owner=alice", "tier=gold"],
            true,
            "",
        ),
        (&["namespaces", "create", "team-b"], true, ""),
        (&["namespaces", "create", "team-a"], false, "already exists"),
        (&["namespaces", "create", "bad/name"], false, "invalid"),
        (&["namespaces", "ls", "-q"], true, "team-a\nteam-b\n"),
        (
            &["namespaces", "label", "team-a", "tier=", "zone=eu"],
            true,
            "",
        ),
        (&["namespaces", "rm", "team-b"], true, "team-b\n"),
        (&["namespaces", "ls", "-q"], true, "team-a\n"),
    ];
    for (args, success, expected) in steps {
        let output = client(args);
        if *success {
            if !expected.is_empty() {
                assert_eq!(output.ok(), *expected, "{args:?}");
            } else {
                output.ok();
            }
        } else {
            assert!(!output.status.success(), "{args:?} should fail");
            assert!(
                output.stderr.contains(expected),
                "{args:?}: {}",
                output.stderr
            );
        }
    }
    let listing = client(&["namespaces", "ls"]);
    assert_eq!(
        rows(listing.ok()),
        vec![vec![
            "team-a".to_string(),
            "owner=alice,zone=eu".to_string()
        ]]
    );
}

#[test]
fn ctr_namespaces_create_ls_label_remove() {
    let daemon = start(Start::default());
    check_namespaces(&|args| daemon.ctr(args));
    // ctr treats removing a missing namespace as done (it ignores NotFound).
    assert_eq!(daemon.ctr(&["namespaces", "rm", "team-b"]).ok(), "team-b\n");
}

#[test]
fn plinthctl_namespaces_create_ls_label_remove() {
    let daemon = start(Start::default());
    check_namespaces(&|args| daemon.plinthctl(args));
    // plinthctl says so.
    let again = daemon.plinthctl(&["namespaces", "rm", "team-b"]);
    assert!(!again.status.success());
    assert!(
        again
            .stderr
            .contains("namespace \"team-b\": not found (NotFound)"),
        "{}",
        again.stderr
    );
}

#[test]
fn an_invalid_namespace_header_is_invalid_argument() {
    let daemon = start(Start::default());
    for output in [
        daemon.ctr(&["--namespace", "../etc", "plugins", "ls"]),
        daemon.plinthctl(&["--namespace", "a..b", "version"]),
    ] {
        assert!(!output.status.success());
        assert!(
            output.stderr.contains("is invalid: use letters and digits"),
            "{}",
            output.stderr
        );
        assert!(output.stderr.contains("nvalid"), "{}", output.stderr);
    }
    assert!(
        daemon
            .plinthctl(&["--namespace", "InvalidArgument-check", "version"])
            .ok()
            .contains("UUID")
    );
}
