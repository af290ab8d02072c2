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
//! stack (no recursion, so 100 000 chained plugins cannot overflow the stack). Required types
//! are nodes of their own, so the edges number the requires entries plus the plugins, not
//! requirers times plugins per type: linear in registrations plus requires.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;

use petgraph::adj::List;
use petgraph::visit::IntoNeighbors as _;

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

/// A node of the graph: a plugin, a plugin type, or `"*"` (every plugin).
///
/// Type nodes keep the edge count linear: a plugin points at each type it requires, and a
/// type points at its plugins, instead of every requirer pointing at every plugin of the
/// type (which is quadratic when many plugins require a popular type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    /// A registration, by index into the input slice.
    Plugin(usize),
    /// A plugin type: its edges lead to its enabled plugins in input order.
    Type,
    /// `"*"`: its edges lead to every enabled plugin in input order.
    All,
}

/// Node ids of the adjacency list.
type Id = u32;

/// An Fx-style hash (eight bytes at a time): type names are short and come from
/// registrations, not from the network, so a fast non-keyed hash is right here; SipHash was
/// a fifth of the ordering time.
#[derive(Default)]
struct Fx(u64);

impl std::hash::Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut hash = self.0;
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            hash = (hash.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x517c_c1b7_2722_0a95);
        }
        self.0 = hash;
    }
}

type FxMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Fx>>;

/// The ordered plugin graph over a slice of registrations.
#[derive(Debug, Clone)]
pub struct PluginGraph {
    /// Plugin → required type (or `"*"`) → plugins of that type, as a petgraph adjacency
    /// list: each node's successors are stored together, in the order containerd visits them.
    graph: List<(), Id>,
    /// What each node is.
    nodes: Vec<Node>,
    /// Node of each input index, `None` for disabled ones.
    node_of: Vec<Option<Id>>,
    order: Vec<usize>,
    disabled: Vec<usize>,
}

fn id(index: usize) -> Id {
    // More than 4 billion nodes cannot be built in memory anyway.
    Id::try_from(index).unwrap_or(Id::MAX)
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
        let mut nodes: Vec<Node> = Vec::with_capacity(n + n / 4 + 1);
        let mut node_of = vec![None; n];
        let mut disabled = Vec::new();
        let mut enabled: Vec<Id> = Vec::with_capacity(n);
        for (index, registration) in registrations.iter().enumerate() {
            if filter.is_disabled(registration) {
                disabled.push(index);
                continue;
            }
            let node = id(nodes.len());
            nodes.push(Node::Plugin(index));
            node_of[index] = Some(node);
            enabled.push(node);
        }

        // Type nodes, for the types that are required, and "*" if anyone requires it. Each
        // plugin's resolved targets are kept (flat), so no type name is looked up twice.
        let mut type_nodes: FxMap<&str, Id> = FxMap::default();
        let mut all_node = None;
        let mut targets: Vec<Id> = Vec::with_capacity(n * 2);
        let mut ends: Vec<usize> = Vec::with_capacity(enabled.len());
        for &node in &enabled {
            let Node::Plugin(index) = nodes[node as usize] else {
                continue;
            };
            for required in registrations[index].required_types() {
                let target = if *required == REQUIRES_ALL {
                    *all_node.get_or_insert_with(|| {
                        nodes.push(Node::All);
                        id(nodes.len() - 1)
                    })
                } else {
                    *type_nodes.entry(required).or_insert_with(|| {
                        nodes.push(Node::Type);
                        id(nodes.len() - 1)
                    })
                };
                targets.push(target);
            }
            ends.push(targets.len());
        }

        let mut graph: List<(), Id> = List::with_capacity(nodes.len());
        for _ in 0..nodes.len() {
            graph.add_node();
        }
        let mut start = 0;
        for (position, &node) in enabled.iter().enumerate() {
            let Node::Plugin(index) = nodes[node as usize] else {
                continue;
            };
            if let Some(&type_node) = type_nodes.get(registrations[index].plugin_type()) {
                graph.add_edge(type_node, node, ());
            }
            if let Some(all) = all_node {
                graph.add_edge(all, node, ());
            }
            for &target in &targets[start..ends[position]] {
                graph.add_edge(node, target, ());
            }
            start = ends[position];
        }

        let order = post_order(&graph, &nodes, &enabled, registrations)?;
        Ok(PluginGraph {
            graph,
            nodes,
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

    /// Indices of the registrations `index` depends on directly, in walk order, each once.
    pub fn dependencies(&self, index: usize) -> Vec<usize> {
        let Some(node) = self.node_of.get(index).copied().flatten() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for via in self.graph.neighbors(node) {
            for target in self.graph.neighbors(via) {
                if let Node::Plugin(dependency) = self.nodes[target as usize] {
                    if dependency != index && !out.contains(&dependency) {
                        out.push(dependency);
                    }
                }
            }
        }
        out
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

/// Iterative depth-first post-order from each root in input order. Type and `"*"` nodes
/// are walked through but not output; a plugin never pulls in itself through them.
fn post_order(
    graph: &List<(), Id>,
    nodes: &[Node],
    roots: &[Id],
    registrations: &[Registration],
) -> Result<Vec<usize>, CycleError> {
    /// (node, the plugin that required it when it is a type or "*", next successor).
    type Frame = (Id, Option<Id>, usize);
    let mut mark = vec![Mark::New; nodes.len()];
    let mut order = Vec::with_capacity(roots.len());
    let mut stack: Vec<Frame> = Vec::new();
    for &root in roots {
        if mark[root as usize] != Mark::New {
            continue;
        }
        mark[root as usize] = Mark::OnStack;
        stack.push((root, None, 0));
        while let Some(frame) = stack.last_mut() {
            let (node, parent, next) = *frame;
            frame.2 += 1;
            match graph.neighbors(node).nth(next) {
                // Through a type or "*", the plugin that required it is not its own dependency.
                Some(child) if Some(child) == parent => {}
                Some(child) => match mark[child as usize] {
                    Mark::Done => {}
                    Mark::New => {
                        mark[child as usize] = Mark::OnStack;
                        let child_parent = match nodes[child as usize] {
                            Node::Plugin(_) => None,
                            Node::Type | Node::All => Some(node),
                        };
                        stack.push((child, child_parent, 0));
                    }
                    Mark::OnStack => {
                        let mut start = stack
                            .iter()
                            .position(|(n, _, _)| *n == child)
                            .expect("a node marked on-stack is on the stack");
                        // The current plugin was itself reached through this type or "*": the
                        // cycle closes through the plugin that required it (two "*" plugins
                        // each pulling in the other).
                        if stack.get(start + 1).is_some_and(|(n, _, _)| *n == node) && start > 0 {
                            start -= 1;
                        }
                        let cycle = stack[start..]
                            .iter()
                            .filter_map(|(n, _, _)| match nodes[*n as usize] {
                                Node::Plugin(index) => Some(registrations[index].uri()),
                                Node::Type | Node::All => None,
                            })
                            .collect();
                        return Err(CycleError { cycle });
                    }
                },
                None => {
                    mark[node as usize] = Mark::Done;
                    if let Node::Plugin(index) = nodes[node as usize] {
                        order.push(index);
                    }
                    stack.pop();
                }
            }
        }
    }
    Ok(order)
}
