//! Property tests of `PluginGraph::build` on random acyclic registries, checked against a
//! transcription of containerd's ordering, and of the cycles it reports.
//!
//! Random registries are acyclic by construction: each registration gets a type rank and
//! requires only types of a strictly lower rank (possibly a type no registration has, possibly
//! twice). The input order is random, so it is usually not an init order already. Requiring
//! "the types of earlier registrations" would not be enough on its own: when a type has
//! registrations both before and after a plugin, two plugins can require each other's types.

use std::collections::{BTreeSet, HashMap};

use plinth_core::{DisableFilter, PluginGraph, Registration};
use proptest::prelude::*;

use crate::common::reg;

/// Number of distinct plugin types a random registry draws from.
const N_TYPES: usize = 6;
/// Largest random registry.
const MAX_REGISTRATIONS: usize = 24;

/// One registration of a random registry, before it is turned into a `Registration`.
#[derive(Debug, Clone)]
struct Spec {
    rank: usize,
    /// Ranks of the required types, all lower than `rank`, in declaration order.
    requires: Vec<usize>,
    disabled: bool,
}

fn type_name(rank: usize) -> String {
    format!("io.plinth.test.t{rank}.v1")
}

fn specs() -> impl Strategy<Value = Vec<Spec>> {
    let one = (
        0..N_TYPES,
        prop::collection::vec(any::<usize>(), 0..=3),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(rank, picks, disabled)| Spec {
            rank,
            requires: if rank == 0 {
                Vec::new()
            } else {
                picks.iter().map(|pick| pick % rank).collect()
            },
            disabled,
        });
    prop::collection::vec(one, 1..=MAX_REGISTRATIONS)
}

/// The registrations of `specs` (id `p<index>`, so URIs are unique) and the filter that
/// disables the ones marked disabled, by URI.
fn registry(specs: &[Spec]) -> (Vec<Registration>, DisableFilter) {
    let registrations: Vec<Registration> = specs
        .iter()
        .enumerate()
        .map(|(index, spec)| {
            let requires: Vec<String> = spec.requires.iter().map(|&r| type_name(r)).collect();
            let requires: Vec<&str> = requires.iter().map(String::as_str).collect();
            reg(&type_name(spec.rank), &format!("p{index}"), &requires)
        })
        .collect();
    let filter = DisableFilter::by_uri(
        specs
            .iter()
            .zip(&registrations)
            .filter(|(spec, _)| spec.disabled)
            .map(|(_, registration)| registration.uri()),
    );
    (registrations, filter)
}

/// containerd/plugin's `Graph` and `children`, transcribed: for each enabled registration in
/// input order, for each required type in order, for each enabled registration of that type in
/// input order except itself, recurse and then append it if not added; then append the
/// registration itself if not added.
///
/// One liberty: a registration already added is skipped before recursing. On acyclic input
/// this changes nothing (everything below an added registration is added already) and keeps
/// the reference quadratic instead of exponential.
fn containerd_order(registrations: &[Registration], filter: &DisableFilter) -> Vec<usize> {
    fn children(
        index: usize,
        registrations: &[Registration],
        disabled: &[bool],
        added: &mut [bool],
        order: &mut Vec<usize>,
    ) {
        for required in registrations[index].required_types() {
            for (candidate, registration) in registrations.iter().enumerate() {
                if !disabled[candidate]
                    && candidate != index
                    && !added[candidate]
                    && (*required == "*" || registration.plugin_type() == *required)
                {
                    children(candidate, registrations, disabled, added, order);
                    if !added[candidate] {
                        added[candidate] = true;
                        order.push(candidate);
                    }
                }
            }
        }
    }

    let disabled: Vec<bool> = registrations
        .iter()
        .map(|r| filter.is_disabled(r))
        .collect();
    let mut added = vec![false; registrations.len()];
    let mut order = Vec::new();
    for index in 0..registrations.len() {
        if disabled[index] {
            continue;
        }
        children(index, registrations, &disabled, &mut added, &mut order);
        if !added[index] {
            added[index] = true;
            order.push(index);
        }
    }
    order
}

/// Enabled registrations `index` requires directly (any other enabled one of a required type).
fn direct_dependencies(
    index: usize,
    registrations: &[Registration],
    enabled: &[bool],
) -> Vec<usize> {
    let required = registrations[index].required_types();
    (0..registrations.len())
        .filter(|&other| {
            other != index
                && enabled[other]
                && required.contains(&registrations[other].plugin_type())
        })
        .collect()
}

/// Enabled registrations `index` requires, directly or not.
fn transitive_dependencies(
    index: usize,
    registrations: &[Registration],
    enabled: &[bool],
) -> BTreeSet<usize> {
    let mut seen = BTreeSet::new();
    let mut pending = direct_dependencies(index, registrations, enabled);
    while let Some(next) = pending.pop() {
        if seen.insert(next) {
            pending.extend(direct_dependencies(next, registrations, enabled));
        }
    }
    seen
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn order_is_containerd_order_on_random_dags(specs in specs()) {
        let (registrations, filter) = registry(&specs);
        let graph = PluginGraph::build(&registrations, &filter);
        prop_assert!(graph.is_ok(), "acyclic by construction: {:?}", graph.as_ref().err());
        let graph = graph.unwrap();
        let order = graph.order();

        // (a) Every enabled plugin exactly once, disabled ones never.
        let enabled: Vec<bool> = specs.iter().map(|spec| !spec.disabled).collect();
        let mut sorted = order.to_vec();
        sorted.sort_unstable();
        let expected_enabled: Vec<usize> = (0..specs.len()).filter(|&i| enabled[i]).collect();
        prop_assert_eq!(&sorted, &expected_enabled);
        let expected_disabled: Vec<usize> = (0..specs.len()).filter(|&i| !enabled[i]).collect();
        prop_assert_eq!(graph.disabled(), expected_disabled.as_slice());

        // (b) Every plugin after every enabled plugin of each type it requires.
        let position: HashMap<usize, usize> =
            order.iter().enumerate().map(|(position, &index)| (index, position)).collect();
        for &index in order {
            for dependency in direct_dependencies(index, &registrations, &enabled) {
                prop_assert!(
                    position[&dependency] < position[&index],
                    "{} must come after {}",
                    registrations[index].uri(),
                    registrations[dependency].uri()
                );
            }
        }

        // (c) Deterministic.
        let again = PluginGraph::build(&registrations, &filter).expect("acyclic");
        prop_assert_eq!(again.order(), order);

        // (d) containerd's order, exactly.
        let reference = containerd_order(&registrations, &filter);
        prop_assert_eq!(order, reference.as_slice());
    }

    #[test]
    fn back_edge_gives_a_real_cycle(specs in specs(), pick_from in any::<usize>(), pick_to in any::<usize>()) {
        let enabled: Vec<bool> = specs.iter().map(|spec| !spec.disabled).collect();
        let (registrations, _) = registry(&specs);
        // A plugin `from` that depends, maybe indirectly, on a plugin `to`; `to` then also
        // requires the type of `from`, which closes a cycle.
        let n = specs.len();
        let found = (0..n).map(|offset| (pick_from + offset) % n).find_map(|from| {
            if !enabled[from] {
                return None;
            }
            let below: Vec<usize> =
                transitive_dependencies(from, &registrations, &enabled).into_iter().collect();
            (!below.is_empty()).then(|| (from, below[pick_to % below.len()]))
        });
        prop_assume!(found.is_some(), "no enabled plugin requires another");
        let (from, to) = found.unwrap();
        let mut specs = specs;
        let from_rank = specs[from].rank;
        specs[to].requires.push(from_rank);
        let (registrations, filter) = registry(&specs);

        let error = PluginGraph::build(&registrations, &filter);
        prop_assert!(error.is_err(), "a cycle through {} and {} is reported",
            registrations[from].uri(), registrations[to].uri());
        let cycle = error.unwrap_err().cycle;
        let index_of: HashMap<String, usize> =
            registrations.iter().enumerate().map(|(index, r)| (r.uri(), index)).collect();
        prop_assert!(cycle.len() >= 2, "a cycle has at least two plugins: {:?}", cycle);
        let distinct: BTreeSet<&String> = cycle.iter().collect();
        prop_assert_eq!(distinct.len(), cycle.len(), "no plugin twice on {:?}", &cycle);
        for (position, uri) in cycle.iter().enumerate() {
            let next = &cycle[(position + 1) % cycle.len()];
            prop_assert!(index_of.contains_key(uri), "{} is a registration", uri);
            let registration = &registrations[index_of[uri]];
            let next_registration = &registrations[index_of[next]];
            prop_assert!(enabled[index_of[uri]], "{} is enabled", uri);
            prop_assert!(
                registration.required_types().contains(&next_registration.plugin_type()),
                "{} requires the type of {} on {:?}", uri, next, &cycle
            );
        }
    }
}
