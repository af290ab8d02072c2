//! containerd/plugin v1.1.0's own ordering cases, ported as data (tests/data/).

use plinth_core::{DisableFilter, PluginGraph};
use serde::Deserialize;

use crate::common::{reg, uris};

#[derive(Deserialize)]
struct Cases {
    case: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    upstream: String,
    check: String,
    disabled_uris: Vec<String>,
    #[serde(default)]
    disabled_ids: Vec<String>,
    registrations: Vec<Reg>,
    expected: Vec<String>,
}

#[derive(Deserialize)]
struct Reg {
    #[serde(rename = "type")]
    plugin_type: String,
    id: String,
    requires: Vec<String>,
}

#[test]
fn containerd_ordering_cases() {
    let text = include_str!("../data/containerd_graph_cases.toml");
    let cases: Cases = toml::from_str(text).expect("the case file parses");
    // containerd/plugin v1.1.0 plugin_test.go: every ordering case, each once, in its order
    // (TestPluginGraph's four are unnamed table entries, named here by index).
    const UPSTREAM_CASES: [&str; 6] = [
        "TestContainerdPlugin",
        "TestPluginGraph/0",
        "TestPluginGraph/1",
        "TestPluginGraph/2",
        "TestPluginGraph/3",
        "TestRequiresAll",
    ];
    let present: Vec<&str> = cases.case.iter().map(|c| c.upstream.as_str()).collect();
    assert_eq!(
        present, UPSTREAM_CASES,
        "the upstream ordering cases, as ported"
    );
    for case in cases.case {
        assert_eq!(case.check, "exact", "{}", case.name);
        let registrations: Vec<_> = case
            .registrations
            .iter()
            .map(|r| {
                let requires: Vec<&str> = r.requires.iter().map(String::as_str).collect();
                reg(&r.plugin_type, &r.id, &requires)
            })
            .collect();
        let filter = DisableFilter {
            uris: case.disabled_uris.iter().cloned().collect(),
            ids: case.disabled_ids.iter().cloned().collect(),
        };
        let graph = PluginGraph::build(&registrations, &filter)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(
            uris(&registrations, graph.order()),
            case.expected,
            "{}",
            case.name
        );
    }
}

#[test]
fn containerd_circular_case_names_the_whole_cycle() {
    let registrations = [
        reg(
            "io.containerd.internal.v1",
            "p1",
            &["io.containerd.runtime.v1"],
        ),
        reg(
            "io.containerd.runtime.v1",
            "p2",
            &["io.containerd.internal.v1"],
        ),
        reg("io.containerd.internal.v1", "p3", &[]),
    ];
    let error = PluginGraph::build(&registrations, &DisableFilter::none()).unwrap_err();
    assert_eq!(
        error.cycle,
        [
            "io.containerd.internal.v1.p1",
            "io.containerd.runtime.v1.p2"
        ]
    );
    assert_eq!(
        error.to_string(),
        "plugin dependency cycle: io.containerd.internal.v1.p1 -> io.containerd.runtime.v1.p2 -> \
         io.containerd.internal.v1.p1: remove one of these requires or disable one of these plugins"
    );
}
