//! The metadata records of the mix: images (create, get, filtered list, label update,
//! delete), leases (create, resources, filtered list, delete, some of them synchronous, which
//! runs a collection), and each client's event subscription, which must deliver an
//! `/images/create` event for every image the client's creates were answered for.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use plinth_api::containerd::events::ImageCreate;
use plinth_api::containerd::services::events::v1::events_client::EventsClient;
use plinth_api::containerd::services::events::v1::{PublishRequest, SubscribeRequest};
use plinth_api::containerd::services::images::v1::{
    CreateImageRequest, DeleteImageRequest, GetImageRequest, Image, ListImagesRequest,
    UpdateImageRequest,
};
use plinth_api::containerd::services::leases::v1::{
    AddResourceRequest, CreateRequest as CreateLeaseRequest, DeleteRequest as DeleteLeaseRequest,
    ListRequest as ListLeasesRequest, ListResourcesRequest, Resource,
};
use plinth_api::containerd::types::Descriptor;
use plinth_api::prost::Message as _;
use plinth_api::prost_types::{Any, FieldMask};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::Worker;

/// Images a client keeps at most; past that a create becomes a delete.
pub(super) const MAX_IMAGES: usize = 16;
/// How long an acknowledged image create may wait for its event at the end of a run.
const EVENT_WAIT: Duration = Duration::from_secs(10);
/// How long a new subscription may take to deliver the client's own probe event.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(30);
/// The topic of the probe a client publishes until its subscription delivers it.
const READY_TOPIC: &str = "/plinth-load/ready";
/// The topic containerd publishes an image creation under.
const IMAGE_CREATE_TOPIC: &str = "/images/create";
/// The image events' type URL (containerd names their declaring package).
const IMAGE_CREATE_TYPE: &str = "containerd.services.images.v1.ImageCreate";
/// The media type of an image's target (the bytes are random; no daemon reads them).
const TARGET_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// An image as its client created and updated it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ImageRecord {
    /// Its target's digest (one of the client's blobs when it was created).
    pub(crate) target: String,
    /// Its target's size.
    pub(crate) size: u64,
    /// Its labels.
    pub(crate) labels: BTreeMap<String, String>,
}

/// What the subscription task tells its client.
#[derive(Debug)]
enum Delivery {
    /// The client's probe came through: the subscription is live.
    Ready,
    /// An `/images/create` event for the image of this name, when it arrived.
    ImageCreated(String, Instant),
    /// The stream ended, with the daemon's error if it gave one.
    Closed(Option<Status>),
}

/// A client's subscription to its own namespace's image creations, on its own task (stopped
/// when this is dropped, so that the client's connection can close).
pub(super) struct Subscription {
    task: JoinHandle<()>,
    deliveries: mpsc::UnboundedReceiver<Delivery>,
    /// Acknowledged creates whose event has not arrived yet: when each create was called.
    pending: BTreeMap<String, Instant>,
    /// The stream ended, with the daemon's error if it gave one (judged at the end of a
    /// run, once it is known whether the daemon itself went away).
    closed: Option<Option<Status>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads the stream into `deliveries` until it ends or the receiver is gone.
async fn subscription_task(
    mut api: EventsClient<Channel>,
    request: tonic::Request<SubscribeRequest>,
    deliveries: mpsc::UnboundedSender<Delivery>,
) {
    let mut stream = match api.subscribe(request).await {
        Ok(stream) => stream.into_inner(),
        Err(status) => {
            let _ = deliveries.send(Delivery::Closed(Some(status)));
            return;
        }
    };
    loop {
        let delivery = match stream.message().await {
            Ok(Some(envelope)) if envelope.topic == READY_TOPIC => Delivery::Ready,
            Ok(Some(envelope)) => {
                let name = envelope
                    .event
                    .filter(|any| any.type_url == IMAGE_CREATE_TYPE)
                    .and_then(|any| ImageCreate::decode(any.value.as_slice()).ok())
                    .map(|event| event.name)
                    .unwrap_or_else(|| format!("<{} event>", envelope.topic));
                Delivery::ImageCreated(name, Instant::now())
            }
            Ok(None) => Delivery::Closed(None),
            Err(status) => Delivery::Closed(Some(status)),
        };
        let closed = matches!(delivery, Delivery::Closed(_));
        if deliveries.send(delivery).is_err() || closed {
            return;
        }
    }
}

impl Worker {
    /// Subscribes to the image creations in the client's namespace and waits until the
    /// subscription delivers a probe the client publishes (a daemon sends a subscription's
    /// headers with its first event, so only an event proves it live). Repeats the probe
    /// while it waits; gives up after [`SUBSCRIBE_WAIT`] (a wrong answer).
    pub(crate) async fn subscribe(&mut self) {
        let namespace = self.model.namespace.clone();
        let request = self.request(
            false,
            SubscribeRequest {
                filters: vec![
                    format!(r#"namespace=={namespace},topic=="{IMAGE_CREATE_TOPIC}""#),
                    format!(r#"namespace=={namespace},topic=="{READY_TOPIC}""#),
                ],
            },
        );
        let (sender, mut deliveries) = mpsc::unbounded_channel();
        let task = tokio::spawn(subscription_task(self.events.clone(), request, sender));
        let deadline = Instant::now() + SUBSCRIBE_WAIT;
        let mut closed = None;
        let ready = loop {
            if !self.publish_probe().await {
                break false;
            }
            let wait = tokio::time::timeout(Duration::from_millis(200), deliveries.recv());
            match wait.await {
                Ok(Some(Delivery::Ready)) => break true,
                Ok(Some(Delivery::Closed(status))) => {
                    closed = Some(status);
                    break false;
                }
                Ok(Some(Delivery::ImageCreated(..)) | None) | Err(_) => {}
            }
            if Instant::now() > deadline {
                break false;
            }
        };
        if !ready {
            task.abort();
            if self.gone {
                return;
            }
            let why = match closed {
                Some(Some(status)) => format!("{} ({:?})", status.message(), status.code()),
                Some(None) => "its stream ended".to_string(),
                None => format!("nothing within {} s", SUBSCRIBE_WAIT.as_secs()),
            };
            self.wrong(format!(
                "the event subscription did not deliver the client's probe: {why}"
            ));
            return;
        }
        self.subscription = Some(Subscription {
            task,
            deliveries,
            pending: BTreeMap::new(),
            closed: None,
        });
    }

    /// Takes what the subscription delivered so far: each image create event's latency from
    /// its create's call (as `event-delivery`); an event for an image the client did not
    /// create, or a stream that ended, is a wrong answer.
    pub(super) fn take_deliveries(&mut self) {
        let Some(mut subscription) = self.subscription.take() else {
            return;
        };
        while let Ok(delivery) = subscription.deliveries.try_recv() {
            self.delivered(&mut subscription, delivery);
        }
        self.subscription = Some(subscription);
    }

    fn delivered(&mut self, subscription: &mut Subscription, delivery: Delivery) {
        match delivery {
            Delivery::Ready => {}
            Delivery::ImageCreated(name, at) => {
                if let Some(called) = subscription.pending.remove(&name) {
                    self.stats
                        .ok("event-delivery", at.saturating_duration_since(called));
                } else if !self.model.uncertain_images.contains(&name) {
                    self.wrong(format!(
                        "an /images/create event for {name}, which the client did not create"
                    ));
                }
            }
            Delivery::Closed(status) => {
                subscription.closed.get_or_insert(status);
            }
        }
    }

    /// Waits (up to [`EVENT_WAIT`]) for the events of every acknowledged create; each
    /// missing one is a wrong answer, and so is a subscription that stopped while the daemon
    /// still answers.
    pub(crate) async fn settle_events(&mut self) {
        let Some(mut subscription) = self.subscription.take() else {
            return;
        };
        let deadline = tokio::time::Instant::now() + EVENT_WAIT;
        while !subscription.pending.is_empty() && subscription.closed.is_none() {
            match tokio::time::timeout_at(deadline, subscription.deliveries.recv()).await {
                Ok(Some(delivery)) => self.delivered(&mut subscription, delivery),
                Ok(None) | Err(_) => break,
            }
        }
        if !self.gone && self.daemon_answers().await {
            if let Some(status) = subscription.closed.take() {
                let why = status.map_or("its stream ended".to_string(), |s| {
                    format!("{} ({:?})", s.message(), s.code())
                });
                self.wrong(format!("the event subscription stopped: {why}"));
            } else if !subscription.pending.is_empty() {
                let missing: Vec<&str> = subscription.pending.keys().map(String::as_str).collect();
                self.wrong(format!(
                    "no /images/create event within {} s for the acknowledged images {}",
                    EVENT_WAIT.as_secs(),
                    missing.join(", ")
                ));
            }
        }
        subscription.pending.clear();
        self.subscription = Some(subscription);
    }

    fn pick_image(&mut self) -> Option<(String, ImageRecord)> {
        let n = self.model.images.len();
        if n == 0 {
            return None;
        }
        let i = self.rng.below(n);
        self.model
            .images
            .iter()
            .nth(i)
            .map(|(name, image)| (name.clone(), image.clone()))
    }

    /// Whether `got` is the image `want` named `name`; its labels may differ if an update
    /// of it went unanswered.
    fn same_image(&self, name: &str, want: &ImageRecord, got: &Image) -> bool {
        let target = got.target.clone().unwrap_or_default();
        let labels: BTreeMap<String, String> = got
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        got.name == name
            && target.digest == want.target
            && target.size as u64 == want.size
            && target.media_type == TARGET_MEDIA_TYPE
            && (labels == want.labels || self.model.uncertain_images.contains(name))
            && got.created_at.is_some()
            && got.updated_at.is_some()
    }

    /// Creates an image whose target is one of the client's blobs.
    pub(super) async fn image_create(&mut self) {
        let Some((target, blob)) = self.pick_blob() else {
            return self.ingest_small().await;
        };
        let name = self.next_name("img");
        let want = ImageRecord {
            target: target.clone(),
            size: blob.size,
            labels: self.labels("image"),
        };
        let request = self.request(
            false,
            CreateImageRequest {
                image: Some(Image {
                    name: name.clone(),
                    labels: want.labels.clone().into_iter().collect(),
                    target: Some(Descriptor {
                        media_type: TARGET_MEDIA_TYPE.to_string(),
                        digest: target,
                        size: blob.size as i64,
                        annotations: HashMap::new(),
                    }),
                    ..Image::default()
                }),
            },
        );
        let mut api = self.images.clone();
        self.model.uncertain_images.insert(name.clone());
        let Ok(reply) = self
            .call(
                "image-create",
                &[],
                async move { api.create(request).await },
            )
            .await
        else {
            return;
        };
        let called = self.last_call;
        let got = reply.into_inner().image.unwrap_or_default();
        self.model.uncertain_images.remove(&name);
        if !self.same_image(&name, &want, &got) {
            self.wrong(format!(
                "image create of {name} ({want:?}) answered {got:?}"
            ));
        }
        if let Some(subscription) = &mut self.subscription {
            subscription.pending.insert(name.clone(), called);
        }
        self.model.images.insert(name, want);
    }

    /// Gets one of the client's images.
    pub(super) async fn image_get(&mut self) {
        let Some((name, want)) = self.pick_image() else {
            return self.image_create().await;
        };
        let request = self.request(false, GetImageRequest { name: name.clone() });
        let mut api = self.images.clone();
        let Ok(reply) = self
            .call("image-get", &[], async move { api.get(request).await })
            .await
        else {
            return;
        };
        let got = reply.into_inner().image.unwrap_or_default();
        if !self.same_image(&name, &want, &got) {
            self.wrong(format!("image get of {name} ({want:?}) answered {got:?}"));
        }
    }

    /// Lists the client's images by a label filter: exactly those created and not deleted.
    pub(super) async fn image_list(&mut self) {
        let request = self.request(
            false,
            ListImagesRequest {
                filters: vec![format!(r#"labels."load.client"=={}"#, self.index)],
            },
        );
        let mut api = self.images.clone();
        let Ok(reply) = self
            .call("image-list", &[], async move { api.list(request).await })
            .await
        else {
            return;
        };
        let listed = reply.into_inner().images;
        let mut problems = Vec::new();
        let mut seen = BTreeSet::new();
        for image in &listed {
            if !seen.insert(image.name.clone()) {
                problems.push(format!("{} listed twice", image.name));
            }
            match self.model.images.get(&image.name) {
                Some(want) if !self.same_image(&image.name, want, image) => {
                    problems.push(format!("{} listed as {image:?}", image.name));
                }
                None if !self.model.uncertain_images.contains(&image.name) => {
                    problems.push(format!("{} listed but not created", image.name));
                }
                _ => {}
            }
        }
        for name in self.model.images.keys() {
            if !seen.contains(name) && !self.model.uncertain_images.contains(name) {
                problems.push(format!("{name} missing"));
            }
        }
        if !problems.is_empty() {
            self.wrong(format!("image list: {}", problems.join(", ")));
        }
    }

    /// Sets a label of one of the client's images through a field path.
    pub(super) async fn image_update(&mut self) {
        let Some((name, mut want)) = self.pick_image() else {
            return self.image_create().await;
        };
        self.counter += 1;
        want.labels
            .insert("load.update".to_string(), self.counter.to_string());
        let request = self.request(
            false,
            UpdateImageRequest {
                image: Some(Image {
                    name: name.clone(),
                    labels: want.labels.clone().into_iter().collect(),
                    ..Image::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["labels.load.update".to_string()],
                }),
            },
        );
        let mut api = self.images.clone();
        self.model.uncertain_images.insert(name.clone());
        let Ok(reply) = self
            .call(
                "image-update",
                &[],
                async move { api.update(request).await },
            )
            .await
        else {
            return;
        };
        let got = reply.into_inner().image.unwrap_or_default();
        self.model.uncertain_images.remove(&name);
        if !self.same_image(&name, &want, &got) {
            self.wrong(format!(
                "image update of {name} ({want:?}) answered {got:?}"
            ));
        }
        self.model.images.insert(name, want);
    }

    /// Deletes one of the client's images; a get of it is then NotFound.
    pub(super) async fn image_delete(&mut self) {
        let Some((name, _)) = self.pick_image() else {
            return self.image_create().await;
        };
        self.model.images.remove(&name);
        self.model.uncertain_images.insert(name.clone());
        let request = self.request(
            false,
            DeleteImageRequest {
                name: name.clone(),
                ..DeleteImageRequest::default()
            },
        );
        let mut api = self.images.clone();
        if self
            .call(
                "image-delete",
                &[],
                async move { api.delete(request).await },
            )
            .await
            .is_err()
        {
            return;
        }
        self.model.uncertain_images.remove(&name);
        let request = self.request(false, GetImageRequest { name: name.clone() });
        let mut api = self.images.clone();
        if self
            .call("image-get", &[Code::NotFound], async move {
                api.get(request).await
            })
            .await
            .is_ok()
        {
            self.wrong(format!("deleted image {name} is still there"));
        }
    }

    /// Publishes the client's probe event (in its namespace, on the topic its subscription
    /// takes for readiness): false if the call failed. In the mix it measures Publish under
    /// load, one subscriber taking the event among all the clients' subscriptions; after
    /// [`Worker::subscribe`] the client ignores the probes it gets back.
    pub(super) async fn publish_probe(&mut self) -> bool {
        let probe = Any {
            type_url: IMAGE_CREATE_TYPE.to_string(),
            value: ImageCreate {
                name: format!("{}-ready", self.model.namespace),
                ..ImageCreate::default()
            }
            .encode_to_vec(),
        };
        let publish = self.request(
            false,
            PublishRequest {
                topic: READY_TOPIC.to_string(),
                event: Some(probe),
            },
        );
        let mut api = self.events.clone();
        self.call(
            "event-publish",
            &[],
            async move { api.publish(publish).await },
        )
        .await
        .is_ok()
    }

    /// A lease's life ([`Worker::lease_life`]), deleted synchronously one time in four.
    pub(super) async fn lease_cycle(&mut self) {
        let sync = self.rng.below(4) == 0;
        self.lease_life(sync).await;
    }

    /// A lease's life: created with labels, given one of the client's blobs, its resources
    /// and a filtered list checked, deleted (with `sync`, the daemon answers only after a
    /// collection that includes the deletion).
    pub(super) async fn lease_life(&mut self, sync: bool) {
        let id = self.next_name("lease");
        let labels: HashMap<String, String> = [
            ("load.client".to_string(), self.index.to_string()),
            ("load.kind".to_string(), "lease".to_string()),
        ]
        .into();
        let request = self.request(
            false,
            CreateLeaseRequest {
                id: id.clone(),
                labels: labels.clone(),
            },
        );
        let mut api = self.leases.clone();
        let Ok(reply) = self
            .call(
                "lease-create",
                &[],
                async move { api.create(request).await },
            )
            .await
        else {
            return;
        };
        let lease = reply.into_inner().lease.unwrap_or_default();
        if lease.id != id || lease.labels != labels || lease.created_at.is_none() {
            self.wrong(format!("lease create of {id} answered {lease:?}"));
        }
        let mut resources = Vec::new();
        if let Some((digest, _)) = self.pick_blob() {
            let resource = Resource {
                id: digest,
                r#type: "content".to_string(),
            };
            let request = self.request(
                false,
                AddResourceRequest {
                    id: id.clone(),
                    resource: Some(resource.clone()),
                },
            );
            let mut api = self.leases.clone();
            if self
                .call("lease-add-resource", &[], async move {
                    api.add_resource(request).await
                })
                .await
                .is_ok()
            {
                resources.push(resource);
            }
        }
        let request = self.request(false, ListResourcesRequest { id: id.clone() });
        let mut api = self.leases.clone();
        if let Ok(reply) = self
            .call("lease-list-resources", &[], async move {
                api.list_resources(request).await
            })
            .await
            && reply.get_ref().resources != resources
        {
            self.wrong(format!(
                "lease {id} with resources {resources:?} lists {:?}",
                reply.into_inner().resources
            ));
        }
        let request = self.request(
            false,
            ListLeasesRequest {
                filters: vec![format!("id=={id}")],
            },
        );
        let mut api = self.leases.clone();
        if let Ok(reply) = self
            .call("lease-list", &[], async move { api.list(request).await })
            .await
        {
            let listed = reply.into_inner().leases;
            if listed.len() != 1 || listed[0].id != id || listed[0].labels != labels {
                self.wrong(format!("lease list by id=={id} answered {listed:?}"));
            }
        }
        let request = self.request(
            false,
            DeleteLeaseRequest {
                id: id.clone(),
                sync,
            },
        );
        let mut api = self.leases.clone();
        let op = if sync {
            "lease-delete-sync"
        } else {
            "lease-delete"
        };
        if self
            .call(op, &[], async move { api.delete(request).await })
            .await
            .is_err()
        {
            return;
        }
        let request = self.request(
            false,
            ListLeasesRequest {
                filters: vec![format!("id=={id}")],
            },
        );
        let mut api = self.leases.clone();
        if let Ok(reply) = self
            .call("lease-list", &[], async move { api.list(request).await })
            .await
            && !reply.get_ref().leases.is_empty()
        {
            self.wrong(format!("deleted lease {id} is still listed"));
        }
    }

    /// Deletes the client's images and any lease left in its namespace (not timed).
    pub(super) async fn clean_up_records(&mut self) {
        let names: Vec<String> = self
            .model
            .images
            .keys()
            .chain(&self.model.uncertain_images)
            .cloned()
            .collect();
        for name in names {
            let request = self.request(
                false,
                DeleteImageRequest {
                    name,
                    ..DeleteImageRequest::default()
                },
            );
            let _ = self.images.delete(request).await;
        }
        let request = self.request(false, ListLeasesRequest::default());
        if let Ok(reply) = self.leases.list(request).await {
            for lease in reply.into_inner().leases {
                let request = self.request(
                    false,
                    DeleteLeaseRequest {
                        id: lease.id,
                        sync: false,
                    },
                );
                let _ = self.leases.delete(request).await;
            }
        }
    }
}
