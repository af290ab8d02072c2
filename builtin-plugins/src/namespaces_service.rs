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

use crate::error::Error;
use crate::filters::FilterSet;
use crate::grpc::{GrpcService, MessageLimits};
use crate::namespaces::{NamespaceStore, validate_identifier};

#[derive(Clone)]
struct Service {
    store: Arc<dyn NamespaceStore>,
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

    fn run<T>(&self, f: impl FnOnce(&Service) -> Result<T, Error>) -> Reply<T> {
        f(self).map(tonic::Response::new).map_err(Into::into)
    }
}

#[tonic::async_trait]
impl Namespaces for Service {
    async fn get(
        &self,
        request: tonic::Request<GetNamespaceRequest>,
    ) -> Reply<GetNamespaceResponse> {
        let name = request.into_inner().name;
        self.run(|s| {
            validate_identifier("namespace", &name)?;
            Ok(GetNamespaceResponse {
                namespace: Some(s.namespace(&name)?),
            })
        })
    }

    async fn list(
        &self,
        request: tonic::Request<ListNamespacesRequest>,
    ) -> Reply<ListNamespacesResponse> {
        let filter = request.into_inner().filter;
        self.run(|s| {
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
    }

    async fn create(
        &self,
        request: tonic::Request<CreateNamespaceRequest>,
    ) -> Reply<CreateNamespaceResponse> {
        let namespace = request.into_inner().namespace.unwrap_or_default();
        self.run(|s| {
            let labels: BTreeMap<String, String> = namespace.labels.clone().into_iter().collect();
            s.store.create(&namespace.name, &labels)?;
            Ok(CreateNamespaceResponse {
                namespace: Some(s.namespace(&namespace.name)?),
            })
        })
    }

    async fn update(
        &self,
        request: tonic::Request<UpdateNamespaceRequest>,
    ) -> Reply<UpdateNamespaceResponse> {
        let request = request.into_inner();
        let namespace = request.namespace.unwrap_or_default();
        let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
        self.run(|s| {
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
            s.store.update_labels(&namespace.name, &changes)?;
            Ok(UpdateNamespaceResponse { namespace: Some(s.namespace(&namespace.name)?) })
        })
    }

    async fn delete(&self, request: tonic::Request<DeleteNamespaceRequest>) -> Reply<()> {
        let name = request.into_inner().name;
        self.run(|s| {
            validate_identifier("namespace", &name)?;
            s.store.delete(&name)
        })
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

register!(Registration::new(types::GRPC, "namespaces", init).requires(&[types::METADATA]));
