//! `io.containerd.grpc.v1.namespaces`: containerd's Namespaces service over the metadata
//! store.

use std::collections::BTreeMap;
use std::sync::Arc;

use plinth_api::containerd::services::namespaces::v1::namespaces_server::{
    Namespaces, NamespacesServer,
};
use plinth_api::containerd::services::namespaces::v1::{
    CreateNamespaceRequest, CreateNamespaceResponse, DeleteNamespaceRequest, GetNamespaceRequest,
    GetNamespaceResponse, ListNamespacesRequest, ListNamespacesResponse, Namespace,
    UpdateNamespaceRequest, UpdateNamespaceResponse,
};
use plinth_core::{InitContext, InitError, Instance, Registration, register, types};

use crate::Pool;
use crate::error::Error;
use crate::filters::FilterSet;
use crate::grpc::{GrpcService, MessageLimits};
use crate::namespaces::{NamespaceStore, validate_identifier};

#[derive(Clone)]
struct Service {
    store: Arc<dyn NamespaceStore>,
}

/// The namespace a namespace event is published in: the request's `containerd-namespace`
/// header, as containerd publishes it; a request without one publishes in the namespace it
/// changes (containerd fails such a call after making the change).
fn event_namespace<T>(request: &tonic::Request<T>, changed: &str) -> String {
    crate::namespaces::from_request(request).unwrap_or_else(|_| changed.to_string())
}

type Reply<T> = Result<tonic::Response<T>, tonic::Status>;

impl Service {
    fn namespace(&self, name: &str) -> Result<Namespace, Error> {
        let labels = self.store.labels(name)?;
        Ok(Namespace {
            name: name.to_string(),
            labels: labels.into_iter().collect(),
        })
    }

    /// Runs `f` on `pool`: the store is a database, which must not hold up the async workers
    /// serving other calls for long (a list starts on the serving thread, [`crate::list`]).
    async fn run<T: Send + 'static>(
        &self,
        pool: Pool,
        f: impl FnOnce(&Service) -> Result<T, Error> + Clone + Send + 'static,
    ) -> Reply<T> {
        let service = self.clone();
        crate::blocking_in(pool, "namespaces service worker", move || f(&service))
            .await
            .map(tonic::Response::new)
            .map_err(Into::into)
    }
}

#[tonic::async_trait]
impl Namespaces for Service {
    async fn get(
        &self,
        request: tonic::Request<GetNamespaceRequest>,
    ) -> Reply<GetNamespaceResponse> {
        // A point read, on the thread that serves the call (ARCHITECTURE.md, "Point reads").
        let name = request.into_inner().name;
        validate_identifier("namespace", &name)?;
        Ok(tonic::Response::new(GetNamespaceResponse {
            namespace: Some(self.namespace(&name)?),
        }))
    }

    async fn list(
        &self,
        request: tonic::Request<ListNamespacesRequest>,
    ) -> Reply<ListNamespacesResponse> {
        let filter = request.into_inner().filter;
        self.run(Pool::Reads, move |s| {
            let filters =
                FilterSet::parse_all(&[filter]).map_err(|e| Error::invalid(e.to_string()))?;
            let namespaces = s
                .store
                .list()?
                .into_iter()
                .filter(|(name, labels)| {
                    filters.matches(|path| match path {
                        [f] if f == "name" => Some(name.clone()),
                        [f, ..] if f == "labels" => crate::filters::label_field(path, labels),
                        _ => None,
                    })
                })
                .map(|(name, labels)| Namespace {
                    name,
                    labels: labels.into_iter().collect(),
                })
                .collect();
            Ok(ListNamespacesResponse { namespaces })
        })
        .await
    }

    async fn create(
        &self,
        request: tonic::Request<CreateNamespaceRequest>,
    ) -> Reply<CreateNamespaceResponse> {
        let namespace = request.get_ref().namespace.clone().unwrap_or_default();
        let publish_in = event_namespace(&request, &namespace.name);
        self.run(Pool::Writes, move |s| {
            let labels: BTreeMap<String, String> = namespace.labels.clone().into_iter().collect();
            s.store
                .create_publishing(&namespace.name, &labels, &publish_in)?;
            let created = s.namespace(&namespace.name)?;
            Ok(CreateNamespaceResponse {
                namespace: Some(created),
            })
        })
        .await
    }

    async fn update(
        &self,
        request: tonic::Request<UpdateNamespaceRequest>,
    ) -> Reply<UpdateNamespaceResponse> {
        let publish_in = event_namespace(
            &request,
            request
                .get_ref()
                .namespace
                .as_ref()
                .map_or("", |n| n.name.as_str()),
        );
        let request = request.into_inner();
        let namespace = request.namespace.unwrap_or_default();
        let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
        self.run(Pool::Writes, move |s| {
            validate_identifier("namespace", &namespace.name)?;
            let existing = s.store.labels(&namespace.name)?;
            let replace_all = |changes: &mut Vec<(String, Option<String>)>| {
                changes.extend(existing.keys().map(|k| (k.clone(), None)));
                changes.extend(namespace.labels.iter().map(|(k, v)| (k.clone(), Some(v.clone()))));
            };
            let mut changes = Vec::new();
            if paths.is_empty() {
                replace_all(&mut changes);
            }
            for path in &paths {
                if path == "labels" {
                    replace_all(&mut changes);
                } else if let Some(key) = path.strip_prefix("labels.") {
                    // An empty or absent value removes the label, as in containerd.
                    let value = namespace.labels.get(key).filter(|v| !v.is_empty()).cloned();
                    changes.push((key.to_string(), value));
                } else {
                    return Err(Error::invalid(format!(
                        "cannot update {path:?} field on namespace {:?}: only \"labels\" and \"labels.<key>\" can be updated",
                        namespace.name
                    )));
                }
            }
            s.store.update_labels_publishing(&namespace.name, &changes, &publish_in)?;
            let updated = s.namespace(&namespace.name)?;
            Ok(UpdateNamespaceResponse { namespace: Some(updated) })
        }).await
    }

    async fn delete(&self, request: tonic::Request<DeleteNamespaceRequest>) -> Reply<()> {
        let name = request.get_ref().name.clone();
        let publish_in = event_namespace(&request, &name);
        self.run(Pool::Writes, move |s| {
            validate_identifier("namespace", &name)?;
            s.store.delete_publishing(&name, &publish_in)?;
            Ok(())
        })
        .await
    }
}

impl GrpcService for Service {
    fn register(&self, routes: &mut tonic::service::RoutesBuilder, limits: MessageLimits) {
        crate::add_limited!(routes, NamespacesServer::new(self.clone()), limits);
    }
}

fn init(ctx: &mut InitContext) -> Result<Instance, InitError> {
    let store: Arc<dyn NamespaceStore> = ctx.get_single(types::METADATA)?;
    Ok(Instance::new(
        Arc::new(Service { store }) as Arc<dyn GrpcService>
    ))
}

register!(
    Registration::new(types::GRPC, "namespaces", init).requires(&[types::METADATA, types::EVENT])
);

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::mpsc::{Receiver, Sender, channel};
    use std::time::Duration;

    use super::*;
    use crate::namespaces::Labels;

    /// A store whose `list` walks more records than a serving thread may
    /// ([`crate::DEFAULT_INLINE_LIST_RECORDS`]) and then waits for a `create` made by another
    /// call: served whole on the async worker itself, it would keep that call from ever
    /// running.
    struct Rendezvous {
        created: Mutex<Option<Sender<()>>>,
        waiting: Mutex<Receiver<()>>,
    }

    impl NamespaceStore for Rendezvous {
        fn create(&self, _: &str, _: &BTreeMap<String, String>) -> Result<(), Error> {
            if let Some(sender) = self.created.lock().expect("lock").take() {
                let _ = sender.send(());
            }
            Ok(())
        }
        fn ensure(&self, _: &str) -> Result<(), Error> {
            Ok(())
        }
        fn labels(&self, _: &str) -> Result<BTreeMap<String, String>, Error> {
            Ok(BTreeMap::new())
        }
        fn update_labels(&self, _: &str, _: &[(String, Option<String>)]) -> Result<(), Error> {
            Ok(())
        }
        fn list(&self) -> Result<Vec<(String, Labels)>, Error> {
            for _ in 0..=crate::DEFAULT_INLINE_LIST_RECORDS {
                crate::lists::walk_record()?;
            }
            self.waiting
                .lock()
                .expect("lock")
                .recv_timeout(Duration::from_secs(10))
                .map_err(|_| Error::internal("no create arrived while list waited: blocked"))?;
            Ok(Vec::new())
        }
        fn delete(&self, _: &str) -> Result<(), Error> {
            Ok(())
        }
    }

    /// On a runtime with one async worker, a call whose store work is long and waits for
    /// another call still lets that call run: a long list goes to the read pool.
    #[tokio::test(flavor = "current_thread")]
    async fn store_work_does_not_hold_up_the_async_worker() {
        let (sender, receiver) = channel();
        let service = Service {
            store: Arc::new(Rendezvous {
                created: Mutex::new(Some(sender)),
                waiting: Mutex::new(receiver),
            }),
        };
        let lister = service.clone();
        let list = tokio::spawn(async move {
            lister
                .list(tonic::Request::new(ListNamespacesRequest::default()))
                .await
        });
        tokio::task::yield_now().await;
        let request = CreateNamespaceRequest {
            namespace: Some(Namespace {
                name: "other".to_string(),
                ..Namespace::default()
            }),
        };
        service
            .create(tonic::Request::new(request))
            .await
            .expect("create");
        list.await
            .expect("list task")
            .expect("list ran while its store call waited for create");
    }
}
