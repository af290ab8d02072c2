//! Benchmarks `PluginGraph::build` on large random acyclic registries, and containerd's
//! quadratic ordering on the smaller ones for comparison.
//!
//! Shape of a registry of `n` registrations:
//! - `n / 10` plugin types, ten registrations each (`io.plinth.bench.t<k>.v1`, id `p<i>`);
//! - each registration requires 0–3 distinct types of a strictly lower rank than its own, so
//!   the graph is acyclic whatever the input order; a required type pulls in all ten of its
//!   registrations, hence about 13 edges per registration;
//! - the input order is then shuffled, so it is not already an init order and the walk has to
//!   go deep.
//!
//! `"*"` requirers are left out: each adds an edge to every other enabled registration, so a
//! handful of them would dominate the edge count and measure nothing else.
//!
//! Registrations are built once, outside the timed loop, with leaked strings and slices, as
//! link-time registrations are `'static`. The generator is a seeded splitmix64: every run
//! benchmarks the same registries.

use std::collections::HashSet;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use plinth_core::{DisableFilter, InitContext, InitError, Instance, PluginGraph, Registration};

/// Registrations in each plugin type.
const REGISTRATIONS_PER_TYPE: usize = 10;
/// Largest number of types one registration requires.
const MAX_REQUIRES: u64 = 3;
/// Registry sizes benchmarked with `PluginGraph::build`.
const SIZES: [usize; 3] = [1_000, 10_000, 100_000];
/// Registry sizes benchmarked with the containerd reference (quadratic: 100 000 would take
/// minutes).
const REFERENCE_SIZES: [usize; 2] = [1_000, 10_000];
/// Seed of the generator, fixed so every run measures the same registries.
const SEED: u64 = 0x5eed_91a7_0000_0001;

/// splitmix64: tiny, seeded, good enough to shape a benchmark input.
struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound`; `bound` must not be zero.
    fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound as u64) as usize
    }
}

fn init_nothing(_: &mut InitContext) -> Result<Instance, InitError> {
    Ok(Instance::none())
}

fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

/// `n_registrations` registrations shaped as the module docs say.
fn random_registrations(n_registrations: usize, seed: u64) -> Vec<Registration> {
    let mut rng = SplitMix64::new(seed);
    let n_types = n_registrations.div_ceil(REGISTRATIONS_PER_TYPE).max(1);
    let type_names: Vec<&'static str> = (0..n_types)
        .map(|rank| leak(format!("io.plinth.bench.t{rank}.v1")))
        .collect();
    let mut registrations: Vec<Registration> = (0..n_registrations)
        .map(|index| {
            let rank = index / REGISTRATIONS_PER_TYPE;
            let mut requires: Vec<&'static str> = Vec::new();
            if rank > 0 {
                let n_requires = rng.below(MAX_REQUIRES as usize + 1);
                for _ in 0..n_requires {
                    let required = type_names[rng.below(rank)];
                    if !requires.contains(&required) {
                        requires.push(required);
                    }
                }
            }
            let requires: &'static [&'static str] = Box::leak(requires.into_boxed_slice());
            Registration::new(type_names[rank], leak(format!("p{index}")), init_nothing)
                .requires(requires)
        })
        .collect();
    // Fisher–Yates, so that the input order is not a topological order.
    for index in (1..registrations.len()).rev() {
        let other = rng.below(index + 1);
        registrations.swap(index, other);
    }
    registrations
}

/// Edges of the built graph: one per (plugin, enabled plugin of a type it requires).
fn count_edges(graph: &PluginGraph, n_registrations: usize) -> usize {
    (0..n_registrations)
        .map(|index| graph.dependencies(index).len())
        .sum()
}

/// containerd/plugin's `Graph`, transcribed: for each registration in input order, for each
/// required type, scan the whole registry for that type, recurse, then append. Registrations
/// already added are skipped before recursing, which gives the same order on acyclic input
/// and keeps it quadratic rather than exponential.
fn containerd_order(registrations: &[Registration]) -> Vec<usize> {
    fn children(
        index: usize,
        registrations: &[Registration],
        added: &mut [bool],
        order: &mut Vec<usize>,
    ) {
        for required in registrations[index].required_types() {
            for (candidate, registration) in registrations.iter().enumerate() {
                if candidate != index
                    && !added[candidate]
                    && (*required == "*" || registration.plugin_type() == *required)
                {
                    children(candidate, registrations, added, order);
                    if !added[candidate] {
                        added[candidate] = true;
                        order.push(candidate);
                    }
                }
            }
        }
    }

    let mut added = vec![false; registrations.len()];
    let mut order = Vec::with_capacity(registrations.len());
    for index in 0..registrations.len() {
        children(index, registrations, &mut added, &mut order);
        if !added[index] {
            added[index] = true;
            order.push(index);
        }
    }
    order
}

fn bench_build(c: &mut Criterion) {
    let filter = DisableFilter::none();
    let mut group = c.benchmark_group("graph_build");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    for n_registrations in SIZES {
        let registrations = random_registrations(n_registrations, SEED);
        let graph = PluginGraph::build(&registrations, &filter).expect("the registry is acyclic");
        let n_edges = count_edges(&graph, n_registrations);
        let n_types: HashSet<&str> = registrations.iter().map(|r| r.plugin_type()).collect();
        eprintln!(
            "graph_build/{n_registrations}: {n_registrations} registrations, {} types, \
             {n_edges} edges",
            n_types.len()
        );
        group.sample_size(if n_registrations >= 100_000 { 10 } else { 20 });
        group.throughput(Throughput::Elements(n_registrations as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(n_registrations),
            &registrations,
            |b, registrations| {
                b.iter(|| PluginGraph::build(black_box(registrations), &filter));
            },
        );
    }
    group.finish();
}

fn bench_containerd_reference(c: &mut Criterion) {
    let filter = DisableFilter::none();
    let mut group = c.benchmark_group("containerd_reference");
    group.warm_up_time(Duration::from_secs(1));
    // Ten samples of about a second each at 10 000 registrations.
    group.measurement_time(Duration::from_secs(12));
    group.sample_size(10);
    for n_registrations in REFERENCE_SIZES {
        let registrations = random_registrations(n_registrations, SEED);
        let graph = PluginGraph::build(&registrations, &filter).expect("the registry is acyclic");
        assert_eq!(
            containerd_order(&registrations),
            graph.order(),
            "the reference agrees with PluginGraph on {n_registrations} registrations"
        );
        group.throughput(Throughput::Elements(n_registrations as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(n_registrations),
            &registrations,
            |b, registrations| {
                b.iter(|| containerd_order(black_box(registrations)));
            },
        );
    }
    group.finish();
}

// What `criterion_group!` and `criterion_main!` expand to, written out: the macro's `pub fn`
// trips the workspace's `missing_docs` lint.
fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench_build(&mut criterion);
    bench_containerd_reference(&mut criterion);
    criterion.final_summary();
}
