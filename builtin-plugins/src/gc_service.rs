//! `io.containerd.grpc.v1.gc`: plinthd's own GC service (`plinth.services.gc.v1.GC`;
//! containerd has none): `Collect` asks the GC scheduler for a collection now and answers
//! with what it removed, once it has finished. `plinthctl gc` calls it.

use std::sync::Arc;

use plinth_api::plinth::services::gc::v1::gc_server::{Gc, GcServer};
use plinth_api::plinth::services::gc::v1::{CollectRequest, CollectResponse};
use plinth_core::{InitContext, InitError, Instance, Registration, register, types};

use crate::gc::{Scheduler, Stats};
use crate::grpc::{GrpcService, MessageLimits};

#[derive(Clone)]
struct Service {
    scheduler: Arc<dyn Scheduler>,
}

/// A duration on the wire (the longest the wire holds, for one beyond it).
fn duration(duration: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(duration).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 999_999_999,
    })
}

/// A collection's stats on the wire.
fn response(stats: &Stats) -> CollectResponse {
    CollectResponse {
        content: stats.content,
        snapshots: stats.snapshots,
        leases: stats.leases,
        blobs: stats.blobs,
        backend_snapshots: stats.backend_snapshots,
        mark: Some(duration(stats.mark)),
        sweep: Some(duration(stats.sweep)),
        backend: Some(duration(stats.backend)),
        remarked: stats.remarked,
        next_expiry: stats.next_expiry.map(prost_types::Timestamp::from),
    }
}

#[tonic::async_trait]
impl Gc for Service {
    async fn collect(
        &self,
        _request: tonic::Request<CollectRequest>,
    ) -> Result<tonic::Response<CollectResponse>, tonic::Status> {
        let stats = self.scheduler.schedule_and_wait().await?;
        Ok(tonic::Response::new(response(&stats)))
    }
}

impl GrpcService for Service {
    fn register(&self, routes: &mut tonic::service::RoutesBuilder, limits: MessageLimits) {
        crate::add_limited!(routes, GcServer::new(self.clone()), limits);
    }
}

fn init(ctx: &mut InitContext) -> Result<Instance, InitError> {
    let scheduler: Arc<dyn Scheduler> = ctx.get_single(types::GC)?;
    Ok(Instance::new(
        Arc::new(Service { scheduler }) as Arc<dyn GrpcService>
    ))
}

register!(Registration::new(types::GRPC, "gc", init).requires(&[types::GC]));

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::error::Error;
    use crate::gc::Run;

    /// Answers every call with its one outcome.
    struct Fixed(Result<Stats, Error>);

    #[tonic::async_trait]
    impl Scheduler for Fixed {
        async fn schedule_and_wait(&self) -> Result<Stats, Error> {
            self.0.clone()
        }

        fn last(&self) -> Option<Run> {
            None
        }
    }

    #[tokio::test]
    async fn collect_answers_with_the_stats_or_the_error_of_the_collection() {
        let expiry = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let stats = Stats {
            content: 1,
            snapshots: 2,
            leases: 3,
            blobs: 4,
            backend_snapshots: 5,
            mark: Duration::from_micros(1_500),
            sweep: Duration::from_secs(2),
            backend: Duration::from_nanos(7),
            blob_removal: Duration::from_nanos(4),
            snapshot_removal: Duration::from_nanos(3),
            remarked: true,
            next_expiry: Some(expiry),
        };
        let service = Service {
            scheduler: Arc::new(Fixed(Ok(stats))),
        };
        let reply = service
            .collect(tonic::Request::new(CollectRequest {}))
            .await
            .unwrap()
            .into_inner();
        let wire = |seconds, nanos| Some(prost_types::Duration { seconds, nanos });
        assert_eq!(
            reply,
            CollectResponse {
                content: 1,
                snapshots: 2,
                leases: 3,
                blobs: 4,
                backend_snapshots: 5,
                mark: wire(0, 1_500_000),
                sweep: wire(2, 0),
                backend: wire(0, 7),
                remarked: true,
                next_expiry: Some(prost_types::Timestamp {
                    seconds: 2_000_000_000,
                    nanos: 0
                }),
            }
        );

        let service = Service {
            scheduler: Arc::new(Fixed(Err(Error::unavailable(
                "garbage collection failed: disk gone",
            )))),
        };
        let status = service
            .collect(tonic::Request::new(CollectRequest {}))
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (
                tonic::Code::Unavailable,
                "garbage collection failed: disk gone"
            )
        );
    }
}
