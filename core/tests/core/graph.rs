//! Ordering edge cases beyond containerd's own, as a table.

use plinth_core::{DisableFilter, PluginGraph};

use crate::common::{reg, uris};

struct Case {
    name: &'static str,
    /// (type, id, requires)
    registrations: &'static [(&'static str, &'static str, &'static [&'static str])],
    disabled_uris: &'static [&'static str],
    disabled_ids: &'static [&'static str],
    /// Ok(order) or Err(cycle)
    expected: Result<&'static [&'static str], &'static [&'static str]>,
}

const CASES: &[Case] = &[
    Case {
        name: "empty input gives empty order",
        registrations: &[],
        disabled_uris: &[],
        disabled_ids: &[],
        expected: Ok(&[]),
    },
    Case {
        name: "missing required type is not an error",
        registrations: &[("a", "1", &["nobody"]), ("b", "1", &[])],
        disabled_uris: &[],
        disabled_ids: &[],
        expected: Ok(&["a.1", "b.1"]),
    },
    Case {
        name: "a type pulls in every plugin of that type, in input order",
        registrations: &[
            ("svc", "x", &["store"]),
            ("store", "b", &[]),
            ("store", "a", &[]),
        ],
        disabled_uris: &[],
        disabled_ids: &[],
        expected: Ok(&["store.b", "store.a", "svc.x"]),
    },
    Case {
        name: "disabled dependency is never pulled in, dependent still runs",
        registrations: &[("svc", "x", &["store"]), ("store", "a", &[])],
        disabled_uris: &["store.a"],
        disabled_ids: &[],
        expected: Ok(&["svc.x"]),
    },
    Case {
        name: "disabled by id (config version 1) matches every type",
        registrations: &[("a", "same", &[]), ("b", "same", &[]), ("c", "other", &[])],
        disabled_uris: &[],
        disabled_ids: &["same"],
        expected: Ok(&["c.other"]),
    },
    Case {
        name: "disabled plugin on a cycle breaks it",
        registrations: &[("a", "1", &["b"]), ("b", "1", &["a"])],
        disabled_uris: &["b.1"],
        disabled_ids: &[],
        expected: Ok(&["a.1"]),
    },
    Case {
        name: "diamond: shared dependency appears once, first use wins",
        registrations: &[
            ("top", "t", &["left", "right"]),
            ("left", "l", &["base"]),
            ("right", "r", &["base"]),
            ("base", "b", &[]),
        ],
        disabled_uris: &[],
        disabled_ids: &[],
        expected: Ok(&["base.b", "left.l", "right.r", "top.t"]),
    },
    Case {
        name: "wildcard goes after everything else, wherever it is listed",
        registrations: &[("x", "all", &["*"]), ("a", "1", &[]), ("b", "1", &["a"])],
        disabled_uris: &[],
        disabled_ids: &[],
        expected: Ok(&["a.1", "b.1", "x.all"]),
    },
    Case {
        name: "wildcard skips disabled plugins",
        registrations: &[("x", "all", &["*"]), ("a", "1", &[]), ("b", "1", &[])],
        disabled_uris: &["a.1"],
        disabled_ids: &[],
        expected: Ok(&["b.1", "x.all"]),
    },
    Case {
        name: "wildcard includes other plugins of its own type",
        registrations: &[("x", "all", &["*"]), ("x", "sibling", &[])],
        disabled_uris: &[],
        disabled_ids: &[],
        expected: Ok(&["x.sibling", "x.all"]),
    },
    Case {
        name: "two wildcard plugins form a cycle",
        registrations: &[("x", "one", &["*"]), ("y", "two", &["*"])],
        disabled_uris: &[],
        disabled_ids: &[],
        expected: Err(&["x.one", "y.two"]),
    },
    Case {
        name: "requiring the wildcard plugin's type is a cycle",
        registrations: &[("x", "all", &["*"]), ("a", "1", &["x"])],
        disabled_uris: &[],
        disabled_ids: &[],
        expected: Err(&["x.all", "a.1"]),
    },
    Case {
        name: "long cycle is named in full, in order",
        registrations: &[
            ("a", "1", &["b"]),
            ("b", "1", &["c"]),
            ("c", "1", &["d"]),
            ("d", "1", &["a"]),
            ("e", "1", &[]),
        ],
        disabled_uris: &[],
        disabled_ids: &[],
        expected: Err(&["a.1", "b.1", "c.1", "d.1"]),
    },
    Case {
        name: "cycle reached through an acyclic prefix names only the cycle",
        registrations: &[
            ("head", "h", &["a"]),
            ("a", "1", &["b"]),
            ("b", "1", &["a"]),
        ],
        disabled_uris: &[],
        disabled_ids: &[],
        expected: Err(&["a.1", "b.1"]),
    },
];

#[test]
fn ordering_edge_cases() {
    for case in CASES {
        let registrations: Vec<_> = case
            .registrations
            .iter()
            .map(|(t, id, requires)| reg(t, id, requires))
            .collect();
        let filter = DisableFilter {
            uris: case.disabled_uris.iter().map(|s| s.to_string()).collect(),
            ids: case.disabled_ids.iter().map(|s| s.to_string()).collect(),
        };
        let result = PluginGraph::build(&registrations, &filter);
        match (&result, case.expected) {
            (Ok(graph), Ok(expected)) => {
                assert_eq!(
                    uris(&registrations, graph.order()),
                    expected,
                    "{}",
                    case.name
                )
            }
            (Err(error), Err(cycle)) => assert_eq!(error.cycle, cycle, "{}", case.name),
            (got, expected) => panic!("{}: got {got:?}, expected {expected:?}", case.name),
        }
    }
}

#[test]
fn deep_chain_does_not_overflow_the_stack() {
    // 100 000 plugins each requiring the next one's type: a recursive walk would overflow.
    let n = 100_000;
    let types: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
    let registrations: Vec<_> = (0..n)
        .map(|i| {
            let requires: Vec<&str> = if i + 1 < n {
                vec![types[i + 1].as_str()]
            } else {
                Vec::new()
            };
            reg(&types[i], "p", &requires)
        })
        .collect();
    let graph = PluginGraph::build(&registrations, &DisableFilter::none()).unwrap();
    let order = graph.order();
    assert_eq!(order.len(), n);
    assert_eq!(order[0], n - 1, "the last of the chain initialises first");
    assert_eq!(order[n - 1], 0);
}

#[test]
fn dot_output_lists_nodes_in_order_edges_and_disabled() {
    let registrations = [
        reg("svc", "x", &["store"]),
        reg("store", "a", &[]),
        reg("store", "off", &[]),
    ];
    let graph = PluginGraph::build(&registrations, &DisableFilter::by_uri(["store.off"])).unwrap();
    let dot = graph.to_dot(&registrations);
    let expected = "digraph plugins {
  rankdir=LR;
  node [shape=box];
  \"store.a\" [label=\"1. store.a\"];
  \"svc.x\" [label=\"2. svc.x\"];
  \"store.off\" [style=dashed, color=grey, fontcolor=grey, label=\"store.off (disabled)\"];
  \"svc.x\" -> \"store.a\";
}
";
    assert_eq!(dot, expected);
    assert_eq!(graph.disabled(), &[2]);
    assert_eq!(graph.dependencies(0), vec![1]);
}
