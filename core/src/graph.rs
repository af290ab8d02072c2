//! The plugin graph: filter out disabled registrations and order the rest so that every plugin
//! comes after the plugins of every type it requires.
//!
//! The order is containerd/plugin v1.1.0's: a depth-first post-order walk over the input
//! order. For each enabled registration, in input order, each required type is taken in the
//! order listed, and within a type every enabled registration of that type in input order is
//! visited (and its own requires first) before the registration itself is appended. `"*"`
//! stands for every other enabled registration. A required type that no enabled registration
//! has is not an error; disabled registrations are never pulled in. Unlike containerd, a
//! cycle is reported with every URI on it, in order, instead of just one.
//!
//! Cost: one pass to index types, one to add the edges, one depth-first walk with an explicit
//! stack (no recursion, so 100 000 chained plugins cannot overflow the stack): linear in
//! registrations plus edges.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;

use petgraph::graph::{DiGraph, NodeIndex};

use crate::error::CycleError;
use crate::registration::{REQUIRES_ALL, Registration};

/// Which registrations config switches off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DisableFilter {
    /// Full URIs (`disabled_plugins` in config versions 2 and 3).
    pub uris: BTreeSet<String>,
    /// Bare ids (`disabled_plugins` in config version 1).
    pub ids: BTreeSet<String>,
}

impl DisableFilter {
    /// A filter that disables nothing.
    pub fn none() -> Self {
        DisableFilter::default()
    }

    /// A filter by full URI, as config versions 2 and 3 write them.
    pub fn by_uri<I: IntoIterator<Item = S>, S: Into<String>>(uris: I) -> Self {
        DisableFilter {
            uris: uris.into_iter().map(Into::into).collect(),
            ids: BTreeSet::new(),
        }
    }

    /// A filter by bare id, as config version 1 writes them.
    pub fn by_id<I: IntoIterator<Item = S>, S: Into<String>>(ids: I) -> Self {
        DisableFilter {
            uris: BTreeSet::new(),
            ids: ids.into_iter().map(Into::into).collect(),
        }
    }

    /// Whether the registration is disabled.
    pub fn is_disabled(&self, registration: &Registration) -> bool {
        (!self.ids.is_empty() && self.ids.contains(registration.id()))
            || (!self.uris.is_empty() && self.uris.contains(&registration.uri()))
    }
}

/// The ordered plugin graph over a slice of registrations.
#[derive(Debug, Clone)]
pub struct PluginGraph {
    /// Nodes carry the index into the input slice; edges point from a plugin to what it
    /// requires, in the order containerd visits them.
    graph: DiGraph<usize, ()>,
    /// Node of each input index, `None` for disabled ones.
    node_of: Vec<Option<NodeIndex>>,
    order: Vec<usize>,
    disabled: Vec<usize>,
}

impl PluginGraph {
    /// Filters and orders `registrations` (given in merge order).
    ///
    /// # Errors
    /// A [`CycleError`] naming every URI on the first cycle found, in order.
    pub fn build(
        registrations: &[Registration],
        filter: &DisableFilter,
    ) -> Result<PluginGraph, CycleError> {
        let n = registrations.len();
        let mut graph = DiGraph::with_capacity(n, n);
        let mut node_of = vec![None; n];
        let mut disabled = Vec::new();
        let mut by_type: HashMap<&str, Vec<NodeIndex>> = HashMap::new();
        let mut enabled: Vec<NodeIndex> = Vec::with_capacity(n);
        for (index, registration) in registrations.iter().enumerate() {
            if filter.is_disabled(registration) {
                disabled.push(index);
                continue;
            }
            let node = graph.add_node(index);
            node_of[index] = Some(node);
            enabled.push(node);
            by_type
                .entry(registration.plugin_type())
                .or_default()
                .push(node);
        }

        // petgraph lists a node's neighbours newest edge first, so each node's edges are
        // added in reverse of the order they must be walked in.
        let mut targets: Vec<NodeIndex> = Vec::new();
        for &node in &enabled {
            let registration = &registrations[graph[node]];
            targets.clear();
            for required in registration.required_types() {
                let candidates: &[NodeIndex] = if *required == REQUIRES_ALL {
                    &enabled
                } else {
                    by_type.get(required).map(Vec::as_slice).unwrap_or(&[])
                };
                targets.extend(candidates.iter().copied().filter(|t| *t != node));
            }
            for &target in targets.iter().rev() {
                graph.add_edge(node, target, ());
            }
        }

        let order = post_order(&graph, &enabled, registrations)?;
        Ok(PluginGraph {
            graph,
            node_of,
            order,
            disabled,
        })
    }

    /// Indices into the input slice, in init order.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Indices of disabled registrations, in input order.
    pub fn disabled(&self) -> &[usize] {
        &self.disabled
    }

    /// Indices of the registrations `index` depends on directly, in walk order.
    pub fn dependencies(&self, index: usize) -> Vec<usize> {
        match self.node_of.get(index).copied().flatten() {
            Some(node) => self.graph.neighbors(node).map(|n| self.graph[n]).collect(),
            None => Vec::new(),
        }
    }

    /// The graph in Graphviz DOT: one node per enabled plugin labelled with its URI and its
    /// position in the init order, one edge from each plugin to each plugin it requires.
    /// Disabled plugins are drawn dashed and grey, with no edges.
    pub fn to_dot(&self, registrations: &[Registration]) -> String {
        let mut out = String::from("digraph plugins {\n  rankdir=LR;\n  node [shape=box];\n");
        for (position, &index) in self.order.iter().enumerate() {
            let _ = writeln!(
                out,
                "  \"{}\" [label=\"{}. {}\"];",
                registrations[index].uri(),
                position + 1,
                registrations[index].uri()
            );
        }
        for &index in &self.disabled {
            let _ = writeln!(
                out,
                "  \"{}\" [style=dashed, color=grey, fontcolor=grey, label=\"{} (disabled)\"];",
                registrations[index].uri(),
                registrations[index].uri()
            );
        }
        for &index in &self.order {
            for dependency in self.dependencies(index) {
                let _ = writeln!(
                    out,
                    "  \"{}\" -> \"{}\";",
                    registrations[index].uri(),
                    registrations[dependency].uri()
                );
            }
        }
        out.push_str("}\n");
        out
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    New,
    OnStack,
    Done,
}

/// Iterative depth-first post-order from each root in input order.
fn post_order(
    graph: &DiGraph<usize, ()>,
    roots: &[NodeIndex],
    registrations: &[Registration],
) -> Result<Vec<usize>, CycleError> {
    let mut mark = vec![Mark::New; graph.node_count()];
    let mut order = Vec::with_capacity(graph.node_count());
    let mut stack: Vec<(NodeIndex, petgraph::graph::Neighbors<'_, ()>)> = Vec::new();
    for &root in roots {
        if mark[root.index()] != Mark::New {
            continue;
        }
        mark[root.index()] = Mark::OnStack;
        stack.push((root, graph.neighbors(root)));
        while let Some((node, children)) = stack.last_mut() {
            let node = *node;
            match children.next() {
                Some(child) => match mark[child.index()] {
                    Mark::Done => {}
                    Mark::New => {
                        mark[child.index()] = Mark::OnStack;
                        stack.push((child, graph.neighbors(child)));
                    }
                    Mark::OnStack => {
                        let start = stack
                            .iter()
                            .position(|(n, _)| *n == child)
                            .expect("a node marked on-stack is on the stack");
                        let cycle = stack[start..]
                            .iter()
                            .map(|(n, _)| registrations[graph[*n]].uri())
                            .collect();
                        return Err(CycleError { cycle });
                    }
                },
                None => {
                    mark[node.index()] = Mark::Done;
                    order.push(graph[node]);
                    stack.pop();
                }
            }
        }
    }
    Ok(order)
}
