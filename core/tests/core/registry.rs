//! Registration validation, link-time registration and the merge order of sources.

use plinth_core::registry::{BACKEND, link_time_registrations};
use plinth_core::{
    InitContext, InitError, Instance, Registration, RegistrationError, Registry, Source, register,
};

use crate::common::reg;

fn nothing(_: &mut InitContext) -> Result<Instance, InitError> {
    Ok(Instance::none())
}

// Registered at link time by this test binary, through whichever backend is compiled in.
register!(Registration::new("io.plinth.test.v1", "linked-b", nothing));
register!(
    Registration::new("io.plinth.test.v1", "linked-a", nothing).requires(&["io.plinth.other.v1"])
);

#[test]
fn link_time_registrations_are_found_and_sorted_by_uri() {
    let found: Vec<String> = link_time_registrations()
        .filter(|r| r.plugin_type() == "io.plinth.test.v1")
        .map(Registration::uri)
        .collect();
    assert_eq!(found.len(), 2, "backend {BACKEND} found {found:?}");
    let registry = Registry::from_link_time().unwrap();
    let ours: Vec<String> = registry
        .entries()
        .iter()
        .filter(|e| e.registration.plugin_type() == "io.plinth.test.v1")
        .map(|e| e.uri())
        .collect();
    assert_eq!(
        ours,
        ["io.plinth.test.v1.linked-a", "io.plinth.test.v1.linked-b"]
    );
    let a = registry.get("io.plinth.test.v1.linked-a").unwrap();
    assert_eq!(a.registration.required_types(), ["io.plinth.other.v1"]);
    assert_eq!(a.source, Source::Static);
}

#[test]
fn backend_matches_the_feature() {
    let expected = if cfg!(feature = "linkme") {
        "linkme"
    } else {
        "inventory"
    };
    assert_eq!(BACKEND, expected);
}

#[test]
fn validation_rules() {
    // (type, id, requires, expected error message or None)
    let cases: &[(&str, &str, &[&str], Option<&str>)] = &[
        ("io.a.v1", "ok", &[], None),
        ("io.a.v1", "ok", &["io.b.v1", "io.c.v1"], None),
        ("io.a.v1", "ok", &["*"], None),
        (
            "",
            "p1",
            &[],
            Some(
                "plugin with id \"p1\" has no type: give it one, e.g. \"io.containerd.content.v1\"",
            ),
        ),
        (
            "io.a.v1",
            "",
            &[],
            Some("plugin of type io.a.v1 has no id: give it a short name, e.g. \"local\""),
        ),
        (
            "io.a.v1",
            "p1",
            &["*", "io.a.v2"],
            Some(
                "plugin io.a.v1.p1 requires [\"*\", \"io.a.v2\"]: \"*\" (every other plugin) must be its only entry; remove the other types",
            ),
        ),
        (
            "io.a.v1",
            "p1",
            &["io.a.v1"],
            Some("plugin io.a.v1.p1 requires its own type io.a.v1: remove it from its requires"),
        ),
        (
            "io.a.v1",
            "../etc",
            &[],
            Some(
                "plugin id \"../etc\" contains '/': use only ASCII letters, digits, '.', '-' and '_'",
            ),
        ),
        (
            "io a",
            "p",
            &[],
            Some(
                "plugin type \"io a\" contains ' ': use only ASCII letters, digits, '.', '-' and '_'",
            ),
        ),
        (
            "io.a.v1",
            "nul\0",
            &[],
            Some(
                "plugin id \"nul\\0\" contains '\\0': use only ASCII letters, digits, '.', '-' and '_'",
            ),
        ),
    ];
    for (plugin_type, id, requires, expected) in cases {
        let result = reg(plugin_type, id, requires).validate();
        assert_eq!(
            result.err().map(|e| e.to_string()).as_deref(),
            *expected,
            "{plugin_type:?} {id:?}"
        );
    }
}

#[test]
fn sources_merge_in_deterministic_order() {
    let registry = Registry::builder()
        .add_proxy("zeta", reg("io.containerd.snapshotter.v1", "zeta", &[]))
        .add_dynamic("/plugins/b-linux-x86_64.so", reg("io.dyn.v1", "b", &[]))
        .add_static(reg("io.s.v1", "z", &[]))
        .add_proxy("alpha", reg("io.containerd.content.v1", "alpha", &[]))
        .add_dynamic("/other/a-linux-x86_64.so", reg("io.dyn.v1", "a2", &[]))
        .add_dynamic("/other/a-linux-x86_64.so", reg("io.dyn.v1", "a1", &[]))
        .add_static(reg("io.s.v1", "a", &[]))
        .build()
        .unwrap();
    let order: Vec<String> = registry.entries().iter().map(|e| e.uri()).collect();
    assert_eq!(
        order,
        [
            "io.s.v1.a",
            "io.s.v1.z",
            // by file name; one library's registrations keep the order it gave
            "io.dyn.v1.a2",
            "io.dyn.v1.a1",
            "io.dyn.v1.b",
            "io.containerd.content.v1.alpha",
            "io.containerd.snapshotter.v1.zeta",
        ]
    );
    assert_eq!(registry.len(), 7);
    assert!(registry.get("io.s.v1.q").is_none());
    assert!(registry.get("io.s.v1").is_none());
}

#[test]
fn duplicates_across_sources_name_both_and_all_errors_are_reported() {
    let errors = Registry::builder()
        .add_static(reg("io.containerd.content.v1", "content", &[]))
        .add_dynamic(
            "/p/x-linux-x86_64.so",
            reg("io.containerd.content.v1", "content", &[]),
        )
        .add_proxy("content", reg("io.containerd.content.v1", "content", &[]))
        .add_static(reg("", "broken", &[]))
        .build()
        .unwrap_err();
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [
            "this binary (link time): plugin with id \"broken\" has no type: give it one, e.g. \"io.containerd.content.v1\"",
            "library /p/x-linux-x86_64.so: plugin io.containerd.content.v1.content is registered twice: by this binary (link time) and by library /p/x-linux-x86_64.so; give one of them another id",
            "[proxy_plugins.content]: plugin io.containerd.content.v1.content is registered twice: by this binary (link time) and by [proxy_plugins.content]; give one of them another id",
        ]
    );
    assert!(matches!(
        errors[1].error,
        RegistrationError::Duplicate { .. }
    ));
    assert_eq!(
        errors[1].error.category(),
        plinth_core::Category::AlreadyExists
    );
}

#[test]
fn same_id_under_another_type_is_allowed() {
    let registry = Registry::builder()
        .add_static(reg("io.a.v1", "same", &[]))
        .add_static(reg("io.b.v1", "same", &[]))
        .build()
        .unwrap();
    assert_eq!(registry.len(), 2);
}

#[test]
fn public_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Registration>();
    check::<Registry>();
    check::<plinth_core::PluginGraph>();
    check::<plinth_core::Set>();
    check::<plinth_core::Plugin>();
    check::<plinth_core::Instance>();
    check::<plinth_core::InitContext>();
    check::<plinth_core::config::Config>();
    check::<plinth_core::config::ResolvedConfig>();
    check::<plinth_core::LookupError>();
    check::<plinth_core::StartupError>();
    check::<plinth_core::config::ConfigError>();
}
