//! Bad input makes plinthd exit non-zero with a message naming file:line:col or the plugin,
//! and leaves nothing on disk.

use plinth_tests::{Start, start_in};

#[test]
fn bad_configs_fail_with_a_precise_message_and_create_nothing() {
    // (name, config, extra args, expected message fragment)
    let cases: &[(&str, &str, &[&str], &str)] = &[
        (
            "syntax error",
            "version = 3\n[grpc\n",
            &[],
            "config.toml:2:6:",
        ),
        (
            "wrong type",
            "version = 3\n[grpc]\nuid = \"root\"\n",
            &[],
            "config.toml:3:7: grpc.uid: invalid type: string \"root\", expected u32",
        ),
        (
            "unknown key under --strict",
            "version = 3\nrooot = \"/x\"\n",
            &["--strict"],
            "config.toml:2:1: unknown key rooot",
        ),
        (
            "unknown key with strict in the file",
            "version = 3\nstrict = true\n[grpc]\nadress = \"/x\"\n",
            &[],
            "config.toml:4:1: unknown key grpc.adress",
        ),
        (
            "required plugin disabled",
            "version = 3\ndisabled_plugins = [\"io.containerd.grpc.v1.version\"]\nrequired_plugins = [\"io.containerd.grpc.v1.version\"]\n",
            &[],
            "required plugin io.containerd.grpc.v1.version is disabled",
        ),
        (
            "required plugin that does not exist",
            "version = 3\nrequired_plugins = [\"io.containerd.grpc.v1.versoin\"]\n",
            &[],
            "required plugin io.containerd.grpc.v1.versoin is not registered (did you mean \"io.containerd.grpc.v1.version\"?)",
        ),
        (
            "bad --log-level over a level the file sets",
            "version = 3\n[debug]\nlevel = \"info\"\n",
            &["--log-level", "lou"],
            "--log-level \"lou\" is not a log level: use trace, debug, info, warn, error",
        ),
        (
            "bad version",
            "version = 9\n",
            &[],
            "config.toml:1:11: unsupported config version 9",
        ),
    ];
    for (name, config, args, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let options = Start {
            config: config.to_string(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Start::default()
        };
        match start_in(dir, options) {
            Ok(_) => panic!("{name}: plinthd started"),
            Err((log, status)) => {
                assert!(status.is_some_and(|s| !s.success()), "{name}: {status:?}");
                assert!(
                    log.contains(expected),
                    "{name}: {expected:?} not in:\n{log}"
                );
                assert!(!path.join("root").exists(), "{name}: root was created");
                assert!(!path.join("state").exists(), "{name}: state was created");
                assert!(
                    !path.join("plinthd.sock").exists(),
                    "{name}: socket was created"
                );
            }
        }
    }
}

#[test]
fn a_required_plugin_that_fails_stops_startup_naming_it() {
    let config = "version = 3\ndisabled_plugins = [\"io.containerd.metadata.v1.redb\"]\nrequired_plugins = [\"io.containerd.grpc.v1.namespaces\"]\n";
    let log = refused_start(config);
    assert!(
        log.contains("required plugin io.containerd.grpc.v1.namespaces failed: requires io.containerd.metadata.v1"),
        "{log}"
    );
}

#[test]
fn a_missing_config_file_is_named_with_its_os_error_once() {
    // Offline commands and start-up load the config the same way.
    let commands: &[&[&str]] = &[&["config", "check"], &["config", "dump"], &[]];
    for command in commands {
        let mut args = vec!["-c", "/nonexistent/plinth.toml"];
        args.extend_from_slice(command);
        let output = plinth_tests::run(&plinth_tests::binary("plinthd"), &args);
        assert!(!output.status.success(), "{command:?}");
        assert!(
            output
                .stderr
                .contains("reading config /nonexistent/plinth.toml: No such file"),
            "{command:?}: {}",
            output.stderr
        );
        assert_eq!(
            output.stderr.matches("os error 2").count(),
            1,
            "{command:?}: {}",
            output.stderr
        );
    }
}

#[test]
fn a_value_the_plugin_does_not_allow_stops_startup_before_any_plugin_runs() {
    let config = "version = 3\n[plugins.\"io.containerd.metadata.v1.redb\"]\ncontent_sharing_policy = \"sometimes\"\n";
    let log = refused_start(config);
    assert!(
        log.contains("config.toml:3:26: plugin io.containerd.metadata.v1.redb: content_sharing_policy: unknown variant `sometimes`, expected `shared` or `isolated`"),
        "{log}"
    );
    // Refused while loading the config, not by the plugin's init.
    assert!(!log.contains("plugin failed"), "{log}");
}

/// Starts plinthd with `config`, which must refuse to start; its log.
fn refused_start(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let Err((log, status)) = start_in(
        dir,
        Start {
            config: config.into(),
            ..Start::default()
        },
    ) else {
        panic!("plinthd started");
    };
    assert!(status.is_some_and(|s| !s.success()), "{status:?}:\n{log}");
    log
}
