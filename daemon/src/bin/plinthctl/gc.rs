//! `plinthctl gc`: a garbage collection now, and what it removed (plinthd's own GC service;
//! containerd has none and no command to force a collection).

use std::fmt::Write as _;
use std::time::Duration;

use plinth_api::plinth::services::gc::v1::gc_client::GcClient;
use plinth_api::plinth::services::gc::v1::{CollectRequest, CollectResponse};
use plinthd::client::{Client, status_error};

/// What to do when the daemon serves no GC service.
fn not_served(client: &Client) -> anyhow::Error {
    anyhow::anyhow!(
        "the daemon at {} serves no GC service: plinthd serves it with the plugin \
         io.containerd.grpc.v1.gc (Cargo feature gc-service) over the GC scheduler \
         io.containerd.gc.v1.scheduler (feature gc-scheduler), both on by default; \
         `plinthctl plugins ls` shows whether one is disabled, failed or left out of the \
         build (containerd has no such service: there a collection follows deletes, or \
         `ctr images rm --sync` / `ctr leases rm --sync`)",
        client.socket().display()
    )
}

/// Runs a collection and says what it removed.
pub(crate) async fn run(client: &Client) -> anyhow::Result<String> {
    let mut api = GcClient::new(client.channel());
    let response = api
        .collect(client.request(CollectRequest {})?)
        .await
        .map_err(|status| {
            if status.code() == tonic::Code::Unimplemented {
                not_served(client)
            } else {
                status_error(status)
            }
        })?
        .into_inner();
    Ok(describe(&response))
}

/// A wire duration as a duration (0 when absent or negative).
fn duration(wire: Option<&prost_types::Duration>) -> Duration {
    wire.and_then(|d| Duration::try_from(*d).ok())
        .unwrap_or_default()
}

/// `n thing` or `n things`.
fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The collection in words: what it removed from the database and from disk, and how long
/// each phase took.
fn describe(response: &CollectResponse) -> String {
    let (mark, sweep, backend) = (
        duration(response.mark.as_ref()),
        duration(response.sweep.as_ref()),
        duration(response.backend.as_ref()),
    );
    let mut out = String::new();
    let _ = writeln!(out, "garbage collected in {:?}", mark + sweep + backend);
    let records = response.content + response.snapshots + response.leases;
    if records + response.blobs + response.backend_snapshots == 0 {
        out.push_str("removed: nothing (everything is reachable)\n");
    } else {
        let _ = writeln!(
            out,
            "removed records: {}, {}, {}",
            count(response.content, "blob record", "blob records"),
            count(response.snapshots, "snapshot record", "snapshot records"),
            count(response.leases, "expired lease", "expired leases"),
        );
        let _ = writeln!(
            out,
            "removed from disk: {}, {}",
            count(response.blobs, "blob", "blobs"),
            count(response.backend_snapshots, "snapshot", "snapshots"),
        );
    }
    let _ = writeln!(
        out,
        "phases: mark {mark:?}, sweep {sweep:?} (writers waited), backend {backend:?}{}",
        if response.remarked {
            "; writes during the mark made the sweep check what they touched"
        } else {
            ""
        }
    );
    if let Some(expiry) = response
        .next_expiry
        .and_then(|t| jiff::Timestamp::new(t.seconds, t.nanos).ok())
    {
        let _ = writeln!(
            out,
            "next lease expiry: {expiry} (the scheduler collects again then)"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(d: Duration) -> Option<prost_types::Duration> {
        prost_types::Duration::try_from(d).ok()
    }

    #[test]
    fn describe_says_what_was_removed_and_how_long_it_took() {
        let mut response = CollectResponse {
            content: 3,
            snapshots: 1,
            leases: 0,
            blobs: 3,
            backend_snapshots: 1,
            mark: wire(Duration::from_micros(1200)),
            sweep: wire(Duration::from_micros(300)),
            backend: wire(Duration::from_millis(4)),
            remarked: false,
            next_expiry: None,
        };
        assert_eq!(
            describe(&response),
            "garbage collected in 5.5ms\n\
             removed records: 3 blob records, 1 snapshot record, 0 expired leases\n\
             removed from disk: 3 blobs, 1 snapshot\n\
             phases: mark 1.2ms, sweep 300µs (writers waited), backend 4ms\n"
        );
        response = CollectResponse {
            remarked: true,
            next_expiry: Some(prost_types::Timestamp {
                seconds: 2_000_000_000,
                nanos: 0,
            }),
            mark: wire(Duration::from_millis(2)),
            ..CollectResponse::default()
        };
        assert_eq!(
            describe(&response),
            "garbage collected in 2ms\n\
             removed: nothing (everything is reachable)\n\
             phases: mark 2ms, sweep 0ns (writers waited), backend 0ns; writes during the mark made the sweep check what they touched\n\
             next lease expiry: 2033-05-18T03:33:20Z (the scheduler collects again then)\n"
        );
    }
}
