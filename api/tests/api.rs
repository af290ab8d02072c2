//! Checks the compiled API against containerd's wire API: services, methods and streaming
//! flags, field numbers and types of key messages, enum values, and a message round trip.
//!
//! The expectations below were taken from containerd's published `.proto` files
//! (containerd `api/`, commit 301026e58c619e63d09c0ec411012e54c0124b03, v2.4 development line),
//! except those of the events, leases, images and containers services and of the event
//! payloads, which were taken from containerd v1.6.39 (commit
//! b4506601d9819897827fd0611288969e8b3ccae9), the line plinthd is compatible with there.

use std::collections::BTreeMap;

use plinth_api::prost::Message as _;
use plinth_api::prost_types::field_descriptor_proto::{Label, Type};
use plinth_api::prost_types::{
    DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorSet,
    ServiceDescriptorProto,
};

/// A method as expected on the wire: name, input, output, client streaming, server streaming.
type Method<'a> = (&'a str, &'a str, &'a str, bool, bool);

/// Every service with every method, in containerd's declaration order.
#[rustfmt::skip] // One row per line: the tables are data.
const SERVICES: &[(&str, &[Method<'static>])] = &[
    (
        "containerd.services.introspection.v1.Introspection",
        &[
            ("Plugins", ".containerd.services.introspection.v1.PluginsRequest", ".containerd.services.introspection.v1.PluginsResponse", false, false),
            ("Server", ".google.protobuf.Empty", ".containerd.services.introspection.v1.ServerResponse", false, false),
            ("PluginInfo", ".containerd.services.introspection.v1.PluginInfoRequest", ".containerd.services.introspection.v1.PluginInfoResponse", false, false),
        ],
    ),
    (
        "containerd.services.version.v1.Version",
        &[
            ("Version", ".google.protobuf.Empty", ".containerd.services.version.v1.VersionResponse", false, false),
        ],
    ),
    (
        "containerd.services.namespaces.v1.Namespaces",
        &[
            ("Get", ".containerd.services.namespaces.v1.GetNamespaceRequest", ".containerd.services.namespaces.v1.GetNamespaceResponse", false, false),
            ("List", ".containerd.services.namespaces.v1.ListNamespacesRequest", ".containerd.services.namespaces.v1.ListNamespacesResponse", false, false),
            ("Create", ".containerd.services.namespaces.v1.CreateNamespaceRequest", ".containerd.services.namespaces.v1.CreateNamespaceResponse", false, false),
            ("Update", ".containerd.services.namespaces.v1.UpdateNamespaceRequest", ".containerd.services.namespaces.v1.UpdateNamespaceResponse", false, false),
            ("Delete", ".containerd.services.namespaces.v1.DeleteNamespaceRequest", ".google.protobuf.Empty", false, false),
        ],
    ),
    (
        "containerd.services.content.v1.Content",
        &[
            ("Info", ".containerd.services.content.v1.InfoRequest", ".containerd.services.content.v1.InfoResponse", false, false),
            ("Update", ".containerd.services.content.v1.UpdateRequest", ".containerd.services.content.v1.UpdateResponse", false, false),
            ("List", ".containerd.services.content.v1.ListContentRequest", ".containerd.services.content.v1.ListContentResponse", false, true),
            ("Delete", ".containerd.services.content.v1.DeleteContentRequest", ".google.protobuf.Empty", false, false),
            ("Read", ".containerd.services.content.v1.ReadContentRequest", ".containerd.services.content.v1.ReadContentResponse", false, true),
            ("Status", ".containerd.services.content.v1.StatusRequest", ".containerd.services.content.v1.StatusResponse", false, false),
            ("ListStatuses", ".containerd.services.content.v1.ListStatusesRequest", ".containerd.services.content.v1.ListStatusesResponse", false, false),
            ("Write", ".containerd.services.content.v1.WriteContentRequest", ".containerd.services.content.v1.WriteContentResponse", true, true),
            ("Abort", ".containerd.services.content.v1.AbortRequest", ".google.protobuf.Empty", false, false),
        ],
    ),
    (
        "containerd.services.snapshots.v1.Snapshots",
        &[
            ("Prepare", ".containerd.services.snapshots.v1.PrepareSnapshotRequest", ".containerd.services.snapshots.v1.PrepareSnapshotResponse", false, false),
            ("View", ".containerd.services.snapshots.v1.ViewSnapshotRequest", ".containerd.services.snapshots.v1.ViewSnapshotResponse", false, false),
            ("Mounts", ".containerd.services.snapshots.v1.MountsRequest", ".containerd.services.snapshots.v1.MountsResponse", false, false),
            ("Commit", ".containerd.services.snapshots.v1.CommitSnapshotRequest", ".google.protobuf.Empty", false, false),
            ("Remove", ".containerd.services.snapshots.v1.RemoveSnapshotRequest", ".google.protobuf.Empty", false, false),
            ("Stat", ".containerd.services.snapshots.v1.StatSnapshotRequest", ".containerd.services.snapshots.v1.StatSnapshotResponse", false, false),
            ("Update", ".containerd.services.snapshots.v1.UpdateSnapshotRequest", ".containerd.services.snapshots.v1.UpdateSnapshotResponse", false, false),
            ("List", ".containerd.services.snapshots.v1.ListSnapshotsRequest", ".containerd.services.snapshots.v1.ListSnapshotsResponse", false, true),
            ("Usage", ".containerd.services.snapshots.v1.UsageRequest", ".containerd.services.snapshots.v1.UsageResponse", false, false),
            ("Cleanup", ".containerd.services.snapshots.v1.CleanupRequest", ".google.protobuf.Empty", false, false),
        ],
    ),
    (
        "containerd.services.events.v1.Events",
        &[
            ("Publish", ".containerd.services.events.v1.PublishRequest", ".google.protobuf.Empty", false, false),
            ("Forward", ".containerd.services.events.v1.ForwardRequest", ".google.protobuf.Empty", false, false),
            ("Subscribe", ".containerd.services.events.v1.SubscribeRequest", ".containerd.services.events.v1.Envelope", false, true),
        ],
    ),
    (
        "containerd.services.leases.v1.Leases",
        &[
            ("Create", ".containerd.services.leases.v1.CreateRequest", ".containerd.services.leases.v1.CreateResponse", false, false),
            ("Delete", ".containerd.services.leases.v1.DeleteRequest", ".google.protobuf.Empty", false, false),
            ("List", ".containerd.services.leases.v1.ListRequest", ".containerd.services.leases.v1.ListResponse", false, false),
            ("AddResource", ".containerd.services.leases.v1.AddResourceRequest", ".google.protobuf.Empty", false, false),
            ("DeleteResource", ".containerd.services.leases.v1.DeleteResourceRequest", ".google.protobuf.Empty", false, false),
            ("ListResources", ".containerd.services.leases.v1.ListResourcesRequest", ".containerd.services.leases.v1.ListResourcesResponse", false, false),
        ],
    ),
    (
        "containerd.services.images.v1.Images",
        &[
            ("Get", ".containerd.services.images.v1.GetImageRequest", ".containerd.services.images.v1.GetImageResponse", false, false),
            ("List", ".containerd.services.images.v1.ListImagesRequest", ".containerd.services.images.v1.ListImagesResponse", false, false),
            ("Create", ".containerd.services.images.v1.CreateImageRequest", ".containerd.services.images.v1.CreateImageResponse", false, false),
            ("Update", ".containerd.services.images.v1.UpdateImageRequest", ".containerd.services.images.v1.UpdateImageResponse", false, false),
            ("Delete", ".containerd.services.images.v1.DeleteImageRequest", ".google.protobuf.Empty", false, false),
        ],
    ),
    (
        "containerd.services.containers.v1.Containers",
        &[
            ("Get", ".containerd.services.containers.v1.GetContainerRequest", ".containerd.services.containers.v1.GetContainerResponse", false, false),
            ("List", ".containerd.services.containers.v1.ListContainersRequest", ".containerd.services.containers.v1.ListContainersResponse", false, false),
            ("ListStream", ".containerd.services.containers.v1.ListContainersRequest", ".containerd.services.containers.v1.ListContainerMessage", false, true),
            ("Create", ".containerd.services.containers.v1.CreateContainerRequest", ".containerd.services.containers.v1.CreateContainerResponse", false, false),
            ("Update", ".containerd.services.containers.v1.UpdateContainerRequest", ".containerd.services.containers.v1.UpdateContainerResponse", false, false),
            ("Delete", ".containerd.services.containers.v1.DeleteContainerRequest", ".google.protobuf.Empty", false, false),
        ],
    ),
    (
        "containerd.services.diff.v1.Diff",
        &[
            ("Apply", ".containerd.services.diff.v1.ApplyRequest", ".containerd.services.diff.v1.ApplyResponse", false, false),
            ("Diff", ".containerd.services.diff.v1.DiffRequest", ".containerd.services.diff.v1.DiffResponse", false, false),
        ],
    ),
];

/// Fields of key messages: message, field name, field number, type as written in a proto.
/// A message listed here must have exactly these fields.
#[rustfmt::skip] // One row per line: the tables are data.
const FIELDS: &[(&str, &str, i32, &str)] = &[
    ("containerd.services.content.v1.WriteContentRequest", "action", 1, ".containerd.services.content.v1.WriteAction"),
    ("containerd.services.content.v1.WriteContentRequest", "ref", 2, "string"),
    ("containerd.services.content.v1.WriteContentRequest", "total", 3, "int64"),
    ("containerd.services.content.v1.WriteContentRequest", "expected", 4, "string"),
    ("containerd.services.content.v1.WriteContentRequest", "offset", 5, "int64"),
    ("containerd.services.content.v1.WriteContentRequest", "data", 6, "bytes"),
    ("containerd.services.content.v1.WriteContentRequest", "labels", 7, "map<string, string>"),
    ("containerd.services.content.v1.WriteContentResponse", "action", 1, ".containerd.services.content.v1.WriteAction"),
    ("containerd.services.content.v1.WriteContentResponse", "started_at", 2, ".google.protobuf.Timestamp"),
    ("containerd.services.content.v1.WriteContentResponse", "updated_at", 3, ".google.protobuf.Timestamp"),
    ("containerd.services.content.v1.WriteContentResponse", "offset", 4, "int64"),
    ("containerd.services.content.v1.WriteContentResponse", "total", 5, "int64"),
    ("containerd.services.content.v1.WriteContentResponse", "digest", 6, "string"),
    ("containerd.services.content.v1.Info", "digest", 1, "string"),
    ("containerd.services.content.v1.Info", "size", 2, "int64"),
    ("containerd.services.content.v1.Info", "created_at", 3, ".google.protobuf.Timestamp"),
    ("containerd.services.content.v1.Info", "updated_at", 4, ".google.protobuf.Timestamp"),
    ("containerd.services.content.v1.Info", "labels", 5, "map<string, string>"),
    ("containerd.services.content.v1.ReadContentRequest", "digest", 1, "string"),
    ("containerd.services.content.v1.ReadContentRequest", "offset", 2, "int64"),
    ("containerd.services.content.v1.ReadContentRequest", "size", 3, "int64"),
    ("containerd.services.content.v1.Status", "started_at", 1, ".google.protobuf.Timestamp"),
    ("containerd.services.content.v1.Status", "updated_at", 2, ".google.protobuf.Timestamp"),
    ("containerd.services.content.v1.Status", "ref", 3, "string"),
    ("containerd.services.content.v1.Status", "offset", 4, "int64"),
    ("containerd.services.content.v1.Status", "total", 5, "int64"),
    ("containerd.services.content.v1.Status", "expected", 6, "string"),
    ("containerd.services.content.v1.UpdateRequest", "info", 1, ".containerd.services.content.v1.Info"),
    ("containerd.services.content.v1.UpdateRequest", "update_mask", 2, ".google.protobuf.FieldMask"),
    ("containerd.services.introspection.v1.Plugin", "type", 1, "string"),
    ("containerd.services.introspection.v1.Plugin", "id", 2, "string"),
    ("containerd.services.introspection.v1.Plugin", "requires", 3, "repeated string"),
    ("containerd.services.introspection.v1.Plugin", "platforms", 4, "repeated .containerd.types.Platform"),
    ("containerd.services.introspection.v1.Plugin", "exports", 5, "map<string, string>"),
    ("containerd.services.introspection.v1.Plugin", "capabilities", 6, "repeated string"),
    ("containerd.services.introspection.v1.Plugin", "init_err", 7, ".google.rpc.Status"),
    ("containerd.services.introspection.v1.PluginsRequest", "filters", 1, "repeated string"),
    ("containerd.services.introspection.v1.ServerResponse", "uuid", 1, "string"),
    ("containerd.services.introspection.v1.ServerResponse", "pid", 2, "uint64"),
    ("containerd.services.introspection.v1.ServerResponse", "pidns", 3, "uint64"),
    ("containerd.services.introspection.v1.ServerResponse", "deprecations", 4, "repeated .containerd.services.introspection.v1.DeprecationWarning"),
    ("containerd.services.introspection.v1.PluginInfoRequest", "type", 1, "string"),
    ("containerd.services.introspection.v1.PluginInfoRequest", "id", 2, "string"),
    ("containerd.services.introspection.v1.PluginInfoRequest", "options", 3, ".google.protobuf.Any"),
    ("containerd.services.version.v1.VersionResponse", "version", 1, "string"),
    ("containerd.services.version.v1.VersionResponse", "revision", 2, "string"),
    ("containerd.services.namespaces.v1.Namespace", "name", 1, "string"),
    ("containerd.services.namespaces.v1.Namespace", "labels", 2, "map<string, string>"),
    ("containerd.services.namespaces.v1.UpdateNamespaceRequest", "namespace", 1, ".containerd.services.namespaces.v1.Namespace"),
    ("containerd.services.namespaces.v1.UpdateNamespaceRequest", "update_mask", 2, ".google.protobuf.FieldMask"),
    ("containerd.services.snapshots.v1.PrepareSnapshotRequest", "snapshotter", 1, "string"),
    ("containerd.services.snapshots.v1.PrepareSnapshotRequest", "key", 2, "string"),
    ("containerd.services.snapshots.v1.PrepareSnapshotRequest", "parent", 3, "string"),
    ("containerd.services.snapshots.v1.PrepareSnapshotRequest", "labels", 4, "map<string, string>"),
    ("containerd.services.snapshots.v1.PrepareSnapshotResponse", "mounts", 1, "repeated .containerd.types.Mount"),
    ("containerd.services.snapshots.v1.CommitSnapshotRequest", "snapshotter", 1, "string"),
    ("containerd.services.snapshots.v1.CommitSnapshotRequest", "name", 2, "string"),
    ("containerd.services.snapshots.v1.CommitSnapshotRequest", "key", 3, "string"),
    ("containerd.services.snapshots.v1.CommitSnapshotRequest", "labels", 4, "map<string, string>"),
    ("containerd.services.snapshots.v1.CommitSnapshotRequest", "parent", 5, "string"),
    ("containerd.services.snapshots.v1.Info", "name", 1, "string"),
    ("containerd.services.snapshots.v1.Info", "parent", 2, "string"),
    ("containerd.services.snapshots.v1.Info", "kind", 3, ".containerd.services.snapshots.v1.Kind"),
    ("containerd.services.snapshots.v1.Info", "created_at", 4, ".google.protobuf.Timestamp"),
    ("containerd.services.snapshots.v1.Info", "updated_at", 5, ".google.protobuf.Timestamp"),
    ("containerd.services.snapshots.v1.Info", "labels", 6, "map<string, string>"),
    ("containerd.services.snapshots.v1.UpdateSnapshotRequest", "snapshotter", 1, "string"),
    ("containerd.services.snapshots.v1.UpdateSnapshotRequest", "info", 2, ".containerd.services.snapshots.v1.Info"),
    ("containerd.services.snapshots.v1.UpdateSnapshotRequest", "update_mask", 3, ".google.protobuf.FieldMask"),
    ("containerd.services.snapshots.v1.ListSnapshotsRequest", "snapshotter", 1, "string"),
    ("containerd.services.snapshots.v1.ListSnapshotsRequest", "filters", 2, "repeated string"),
    ("containerd.services.snapshots.v1.UsageResponse", "size", 1, "int64"),
    ("containerd.services.snapshots.v1.UsageResponse", "inodes", 2, "int64"),
    ("containerd.types.Mount", "type", 1, "string"),
    ("containerd.types.Mount", "source", 2, "string"),
    ("containerd.types.Mount", "target", 3, "string"),
    ("containerd.types.Mount", "options", 4, "repeated string"),
    ("containerd.types.Platform", "os", 1, "string"),
    ("containerd.types.Platform", "architecture", 2, "string"),
    ("containerd.types.Platform", "variant", 3, "string"),
    ("containerd.types.Platform", "os_version", 4, "string"),
    ("containerd.types.Platform", "os_features", 5, "repeated string"),
    ("containerd.types.Descriptor", "media_type", 1, "string"),
    ("containerd.types.Descriptor", "digest", 2, "string"),
    ("containerd.types.Descriptor", "size", 3, "int64"),
    ("containerd.types.Descriptor", "annotations", 5, "map<string, string>"),
    ("containerd.services.events.v1.PublishRequest", "topic", 1, "string"),
    ("containerd.services.events.v1.PublishRequest", "event", 2, ".google.protobuf.Any"),
    ("containerd.services.events.v1.ForwardRequest", "envelope", 1, ".containerd.services.events.v1.Envelope"),
    ("containerd.services.events.v1.SubscribeRequest", "filters", 1, "repeated string"),
    ("containerd.services.events.v1.Envelope", "timestamp", 1, ".google.protobuf.Timestamp"),
    ("containerd.services.events.v1.Envelope", "namespace", 2, "string"),
    ("containerd.services.events.v1.Envelope", "topic", 3, "string"),
    ("containerd.services.events.v1.Envelope", "event", 4, ".google.protobuf.Any"),
    ("containerd.services.leases.v1.Lease", "id", 1, "string"),
    ("containerd.services.leases.v1.Lease", "created_at", 2, ".google.protobuf.Timestamp"),
    ("containerd.services.leases.v1.Lease", "labels", 3, "map<string, string>"),
    ("containerd.services.leases.v1.CreateRequest", "id", 1, "string"),
    ("containerd.services.leases.v1.CreateRequest", "labels", 3, "map<string, string>"),
    ("containerd.services.leases.v1.CreateResponse", "lease", 1, ".containerd.services.leases.v1.Lease"),
    ("containerd.services.leases.v1.DeleteRequest", "id", 1, "string"),
    ("containerd.services.leases.v1.DeleteRequest", "sync", 2, "bool"),
    ("containerd.services.leases.v1.ListRequest", "filters", 1, "repeated string"),
    ("containerd.services.leases.v1.ListResponse", "leases", 1, "repeated .containerd.services.leases.v1.Lease"),
    ("containerd.services.leases.v1.Resource", "id", 1, "string"),
    ("containerd.services.leases.v1.Resource", "type", 2, "string"),
    ("containerd.services.leases.v1.AddResourceRequest", "id", 1, "string"),
    ("containerd.services.leases.v1.AddResourceRequest", "resource", 2, ".containerd.services.leases.v1.Resource"),
    ("containerd.services.leases.v1.DeleteResourceRequest", "id", 1, "string"),
    ("containerd.services.leases.v1.DeleteResourceRequest", "resource", 2, ".containerd.services.leases.v1.Resource"),
    ("containerd.services.leases.v1.ListResourcesRequest", "id", 1, "string"),
    ("containerd.services.leases.v1.ListResourcesResponse", "resources", 1, "repeated .containerd.services.leases.v1.Resource"),
    ("containerd.services.images.v1.Image", "name", 1, "string"),
    ("containerd.services.images.v1.Image", "labels", 2, "map<string, string>"),
    ("containerd.services.images.v1.Image", "target", 3, ".containerd.types.Descriptor"),
    ("containerd.services.images.v1.Image", "created_at", 7, ".google.protobuf.Timestamp"),
    ("containerd.services.images.v1.Image", "updated_at", 8, ".google.protobuf.Timestamp"),
    ("containerd.services.images.v1.GetImageRequest", "name", 1, "string"),
    ("containerd.services.images.v1.GetImageResponse", "image", 1, ".containerd.services.images.v1.Image"),
    ("containerd.services.images.v1.CreateImageRequest", "image", 1, ".containerd.services.images.v1.Image"),
    ("containerd.services.images.v1.CreateImageResponse", "image", 1, ".containerd.services.images.v1.Image"),
    ("containerd.services.images.v1.UpdateImageRequest", "image", 1, ".containerd.services.images.v1.Image"),
    ("containerd.services.images.v1.UpdateImageRequest", "update_mask", 2, ".google.protobuf.FieldMask"),
    ("containerd.services.images.v1.UpdateImageResponse", "image", 1, ".containerd.services.images.v1.Image"),
    ("containerd.services.images.v1.ListImagesRequest", "filters", 1, "repeated string"),
    ("containerd.services.images.v1.ListImagesResponse", "images", 1, "repeated .containerd.services.images.v1.Image"),
    ("containerd.services.images.v1.DeleteImageRequest", "name", 1, "string"),
    ("containerd.services.images.v1.DeleteImageRequest", "sync", 2, "bool"),
    ("containerd.services.containers.v1.Container", "id", 1, "string"),
    ("containerd.services.containers.v1.Container", "labels", 2, "map<string, string>"),
    ("containerd.services.containers.v1.Container", "image", 3, "string"),
    ("containerd.services.containers.v1.Container", "runtime", 4, ".containerd.services.containers.v1.Container.Runtime"),
    ("containerd.services.containers.v1.Container", "spec", 5, ".google.protobuf.Any"),
    ("containerd.services.containers.v1.Container", "snapshotter", 6, "string"),
    ("containerd.services.containers.v1.Container", "snapshot_key", 7, "string"),
    ("containerd.services.containers.v1.Container", "created_at", 8, ".google.protobuf.Timestamp"),
    ("containerd.services.containers.v1.Container", "updated_at", 9, ".google.protobuf.Timestamp"),
    ("containerd.services.containers.v1.Container", "extensions", 10, "map<string, .google.protobuf.Any>"),
    // Not in containerd 1.6; containerd 1.7 added it (v1.7.0, api/services/containers/v1/containers.proto).
    ("containerd.services.containers.v1.Container", "sandbox", 11, "string"),
    ("containerd.services.containers.v1.Container.Runtime", "name", 1, "string"),
    ("containerd.services.containers.v1.Container.Runtime", "options", 2, ".google.protobuf.Any"),
    ("containerd.services.containers.v1.GetContainerRequest", "id", 1, "string"),
    ("containerd.services.containers.v1.GetContainerResponse", "container", 1, ".containerd.services.containers.v1.Container"),
    ("containerd.services.containers.v1.ListContainersRequest", "filters", 1, "repeated string"),
    ("containerd.services.containers.v1.ListContainersResponse", "containers", 1, "repeated .containerd.services.containers.v1.Container"),
    ("containerd.services.containers.v1.CreateContainerRequest", "container", 1, ".containerd.services.containers.v1.Container"),
    ("containerd.services.containers.v1.CreateContainerResponse", "container", 1, ".containerd.services.containers.v1.Container"),
    ("containerd.services.containers.v1.UpdateContainerRequest", "container", 1, ".containerd.services.containers.v1.Container"),
    ("containerd.services.containers.v1.UpdateContainerRequest", "update_mask", 2, ".google.protobuf.FieldMask"),
    ("containerd.services.containers.v1.UpdateContainerResponse", "container", 1, ".containerd.services.containers.v1.Container"),
    ("containerd.services.containers.v1.DeleteContainerRequest", "id", 1, "string"),
    ("containerd.services.containers.v1.ListContainerMessage", "container", 1, ".containerd.services.containers.v1.Container"),
    ("containerd.events.NamespaceCreate", "name", 1, "string"),
    ("containerd.events.NamespaceCreate", "labels", 2, "map<string, string>"),
    ("containerd.events.NamespaceUpdate", "name", 1, "string"),
    ("containerd.events.NamespaceUpdate", "labels", 2, "map<string, string>"),
    ("containerd.events.NamespaceDelete", "name", 1, "string"),
    // containerd declares the image events in the images service's package.
    ("containerd.services.images.v1.ImageCreate", "name", 1, "string"),
    ("containerd.services.images.v1.ImageCreate", "labels", 2, "map<string, string>"),
    ("containerd.services.images.v1.ImageUpdate", "name", 1, "string"),
    ("containerd.services.images.v1.ImageUpdate", "labels", 2, "map<string, string>"),
    ("containerd.services.images.v1.ImageDelete", "name", 1, "string"),
    ("containerd.events.ContainerCreate", "id", 1, "string"),
    ("containerd.events.ContainerCreate", "image", 2, "string"),
    ("containerd.events.ContainerCreate", "runtime", 3, ".containerd.events.ContainerCreate.Runtime"),
    ("containerd.events.ContainerCreate.Runtime", "name", 1, "string"),
    ("containerd.events.ContainerCreate.Runtime", "options", 2, ".google.protobuf.Any"),
    ("containerd.events.ContainerUpdate", "id", 1, "string"),
    ("containerd.events.ContainerUpdate", "image", 2, "string"),
    ("containerd.events.ContainerUpdate", "labels", 3, "map<string, string>"),
    ("containerd.events.ContainerUpdate", "snapshot_key", 4, "string"),
    ("containerd.events.ContainerDelete", "id", 1, "string"),
    ("containerd.events.ContentDelete", "digest", 1, "string"),
    ("containerd.events.SnapshotPrepare", "key", 1, "string"),
    ("containerd.events.SnapshotPrepare", "parent", 2, "string"),
    ("containerd.events.SnapshotCommit", "key", 1, "string"),
    ("containerd.events.SnapshotCommit", "name", 2, "string"),
    ("containerd.events.SnapshotRemove", "key", 1, "string"),
    ("containerd.services.diff.v1.ApplyRequest", "diff", 1, ".containerd.types.Descriptor"),
    ("containerd.services.diff.v1.ApplyRequest", "mounts", 2, "repeated .containerd.types.Mount"),
    ("containerd.services.diff.v1.ApplyRequest", "payloads", 3, "map<string, .google.protobuf.Any>"),
    ("containerd.services.diff.v1.ApplyRequest", "sync_fs", 4, "bool"),
    ("containerd.services.diff.v1.ApplyResponse", "applied", 1, ".containerd.types.Descriptor"),
    ("containerd.services.diff.v1.DiffRequest", "left", 1, "repeated .containerd.types.Mount"),
    ("containerd.services.diff.v1.DiffRequest", "right", 2, "repeated .containerd.types.Mount"),
    ("containerd.services.diff.v1.DiffRequest", "media_type", 3, "string"),
    ("containerd.services.diff.v1.DiffRequest", "ref", 4, "string"),
    ("containerd.services.diff.v1.DiffRequest", "labels", 5, "map<string, string>"),
    ("containerd.services.diff.v1.DiffRequest", "source_date_epoch", 6, ".google.protobuf.Timestamp"),
    ("containerd.services.diff.v1.DiffResponse", "diff", 3, ".containerd.types.Descriptor"),
    ("google.rpc.Status", "code", 1, "int32"),
    ("google.rpc.Status", "message", 2, "string"),
    ("google.rpc.Status", "details", 3, "repeated .google.protobuf.Any"),
];

/// Enum values: enum, value name, number.
#[rustfmt::skip] // One row per line: the tables are data.
const ENUM_VALUES: &[(&str, &str, i32)] = &[
    ("containerd.services.content.v1.WriteAction", "STAT", 0),
    ("containerd.services.content.v1.WriteAction", "WRITE", 1),
    ("containerd.services.content.v1.WriteAction", "COMMIT", 2),
    ("containerd.services.snapshots.v1.Kind", "UNKNOWN", 0),
    ("containerd.services.snapshots.v1.Kind", "VIEW", 1),
    ("containerd.services.snapshots.v1.Kind", "ACTIVE", 2),
    ("containerd.services.snapshots.v1.Kind", "COMMITTED", 3),
];

/// Proto file names, as containerd names them (paths relative to its `api/` folder).
const FILE_NAMES: &[&str] = &[
    "google/rpc/status.proto",
    "types/descriptor.proto",
    "types/introspection.proto",
    "types/mount.proto",
    "types/platform.proto",
    "services/content/v1/content.proto",
    "services/introspection/v1/introspection.proto",
    "services/namespaces/v1/namespace.proto",
    "services/snapshots/v1/snapshots.proto",
    "services/version/v1/version.proto",
    "services/events/v1/events.proto",
    "services/leases/v1/leases.proto",
    "services/images/v1/images.proto",
    "services/containers/v1/containers.proto",
    "services/diff/v1/diff.proto",
    "events/namespace.proto",
    "events/image.proto",
    "events/container.proto",
    "events/content.proto",
    "events/snapshot.proto",
];

/// The events containerd 1.6 publishes for metadata changes: topic and the type URL in
/// `Envelope.event`, as `ctr events` decodes them (the name each message registers in
/// containerd's `api/events/*.pb.go`; no `type.googleapis.com/` prefix).
#[rustfmt::skip] // One row per line: the tables are data.
const EVENTS: &[(&str, &str)] = &[
    ("/namespaces/create", "containerd.events.NamespaceCreate"),
    ("/namespaces/update", "containerd.events.NamespaceUpdate"),
    ("/namespaces/delete", "containerd.events.NamespaceDelete"),
    ("/images/create", "containerd.services.images.v1.ImageCreate"),
    ("/images/update", "containerd.services.images.v1.ImageUpdate"),
    ("/images/delete", "containerd.services.images.v1.ImageDelete"),
    ("/containers/create", "containerd.events.ContainerCreate"),
    ("/containers/update", "containerd.events.ContainerUpdate"),
    ("/containers/delete", "containerd.events.ContainerDelete"),
    ("/content/delete", "containerd.events.ContentDelete"),
    ("/snapshot/prepare", "containerd.events.SnapshotPrepare"),
    ("/snapshot/commit", "containerd.events.SnapshotCommit"),
    ("/snapshot/remove", "containerd.events.SnapshotRemove"),
];

/// Everything in the descriptor set, indexed by full name (without the leading dot).
struct Index {
    file_names: Vec<String>,
    services: BTreeMap<String, ServiceDescriptorProto>,
    messages: BTreeMap<String, DescriptorProto>,
    enums: BTreeMap<String, EnumDescriptorProto>,
}

impl Index {
    fn load() -> Index {
        let set = FileDescriptorSet::decode(plinth_api::FILE_DESCRIPTOR_SET)
            .expect("FILE_DESCRIPTOR_SET decodes");
        let mut index = Index {
            file_names: Vec::new(),
            services: BTreeMap::new(),
            messages: BTreeMap::new(),
            enums: BTreeMap::new(),
        };
        for file in &set.file {
            index.file_names.push(file.name().to_owned());
            let package = file.package();
            for service in &file.service {
                index
                    .services
                    .insert(format!("{package}.{}", service.name()), service.clone());
            }
            for message in &file.message_type {
                index.add_message(package, message);
            }
            for enumeration in &file.enum_type {
                index.enums.insert(
                    format!("{package}.{}", enumeration.name()),
                    enumeration.clone(),
                );
            }
        }
        index
    }

    fn add_message(&mut self, scope: &str, message: &DescriptorProto) {
        let full_name = format!("{scope}.{}", message.name());
        for nested in &message.nested_type {
            self.add_message(&full_name, nested);
        }
        for enumeration in &message.enum_type {
            self.enums.insert(
                format!("{full_name}.{}", enumeration.name()),
                enumeration.clone(),
            );
        }
        self.messages.insert(full_name, message.clone());
    }

    /// The field's type as it would be written in a `.proto` file.
    fn describe_type(&self, field: &FieldDescriptorProto) -> String {
        let repeated = field.label() == Label::Repeated;
        let base = match field.r#type() {
            Type::Message | Type::Enum => {
                let type_name = field.type_name();
                let target = self.messages.get(type_name.trim_start_matches('.'));
                if let Some(entry) = target.filter(|message| message.options.map_entry()) {
                    let key = self.describe_type(&entry.field[0]);
                    let value = self.describe_type(&entry.field[1]);
                    return format!("map<{key}, {value}>");
                }
                type_name.to_owned()
            }
            Type::String => "string".to_owned(),
            Type::Bytes => "bytes".to_owned(),
            Type::Int32 => "int32".to_owned(),
            Type::Int64 => "int64".to_owned(),
            Type::Uint32 => "uint32".to_owned(),
            Type::Uint64 => "uint64".to_owned(),
            Type::Bool => "bool".to_owned(),
            other => format!("{other:?}"),
        };
        if repeated {
            format!("repeated {base}")
        } else {
            base
        }
    }
}

/// `options.map_entry()` on an optional `MessageOptions`.
trait MapEntry {
    fn map_entry(&self) -> bool;
}

impl MapEntry for Option<plinth_api::prost_types::MessageOptions> {
    fn map_entry(&self) -> bool {
        self.as_ref().is_some_and(|options| options.map_entry())
    }
}

#[test]
fn services_have_containerds_methods_and_streaming() {
    let index = Index::load();
    for (service_name, expected_methods) in SERVICES {
        let service = index
            .services
            .get(*service_name)
            .unwrap_or_else(|| panic!("service {service_name} is missing"));
        let actual: Vec<Method<'_>> = service
            .method
            .iter()
            .map(|method| {
                (
                    method.name(),
                    method.input_type(),
                    method.output_type(),
                    method.client_streaming(),
                    method.server_streaming(),
                )
            })
            .collect();
        assert_eq!(actual, *expected_methods, "methods of {service_name}");
    }
    let expected_services: Vec<&str> = {
        let mut names: Vec<&str> = SERVICES.iter().map(|(name, _)| *name).collect();
        names.sort_unstable();
        names
    };
    let (actual_services, own): (Vec<&str>, Vec<&str>) = index
        .services
        .keys()
        .map(String::as_str)
        .partition(|name| name.starts_with("containerd."));
    assert_eq!(
        actual_services, expected_services,
        "no service is missing or extra"
    );
    // Beside containerd's, only plinthd's own services, in their own package.
    assert_eq!(
        own,
        [
            "plinth.services.config.v1.Config",
            "plinth.services.gc.v1.GC"
        ]
    );
}

#[test]
fn key_messages_have_containerds_field_numbers_and_types() {
    let index = Index::load();
    let mut expected_by_message: BTreeMap<&str, Vec<(String, i32, String)>> = BTreeMap::new();
    for (message, field, number, field_type) in FIELDS {
        expected_by_message.entry(message).or_default().push((
            (*field).to_owned(),
            *number,
            (*field_type).to_owned(),
        ));
    }
    for (message_name, expected_fields) in expected_by_message {
        let message = index
            .messages
            .get(message_name)
            .unwrap_or_else(|| panic!("message {message_name} is missing"));
        let actual_fields: Vec<(String, i32, String)> = message
            .field
            .iter()
            .map(|field| {
                (
                    field.name().to_owned(),
                    field.number(),
                    index.describe_type(field),
                )
            })
            .collect();
        assert_eq!(actual_fields, expected_fields, "fields of {message_name}");
    }
}

#[test]
fn enums_have_containerds_values() {
    let index = Index::load();
    for (enum_name, value_name, number) in ENUM_VALUES {
        let enumeration = index
            .enums
            .get(*enum_name)
            .unwrap_or_else(|| panic!("enum {enum_name} is missing"));
        let value = enumeration
            .value
            .iter()
            .find(|value| value.name() == *value_name)
            .unwrap_or_else(|| panic!("{enum_name} has no value {value_name}"));
        assert_eq!(value.number(), *number, "{enum_name}.{value_name}");
    }
}

#[test]
fn proto_files_are_named_as_in_containerd() {
    let index = Index::load();
    for file_name in FILE_NAMES {
        assert!(
            index.file_names.iter().any(|name| name == file_name),
            "{file_name} is missing from {:?}",
            index.file_names
        );
    }
}

#[test]
fn event_type_urls_name_our_event_messages() {
    let index = Index::load();
    for (topic, type_url) in EVENTS {
        let descriptor_name = format!(".{type_url}");
        assert!(
            index.messages.contains_key(*type_url),
            "the {topic} event {type_url} is missing"
        );
        assert_eq!(plinth_api::event_type_url(&descriptor_name), *type_url);
        assert_eq!(plinth_api::event_type_url(type_url), *type_url);
    }
}

#[test]
fn envelope_carries_an_event_as_containerd_does() {
    use plinth_api::containerd::events::ImageCreate;
    use plinth_api::containerd::services::events::v1::Envelope;
    use plinth_api::prost_types::{Any, Timestamp};

    let event = ImageCreate {
        name: "docker.io/library/busybox:latest".to_owned(),
        labels: [("a".to_owned(), "b".to_owned())].into(),
    };
    let envelope = Envelope {
        timestamp: Some(Timestamp {
            seconds: 1_700_000_000,
            nanos: 5,
        }),
        namespace: "default".to_owned(),
        topic: "/images/create".to_owned(),
        event: Some(Any {
            type_url: plinth_api::event_type_url("containerd.services.images.v1.ImageCreate"),
            value: event.encode_to_vec(),
        }),
    };
    let bytes = envelope.encode_to_vec();
    // Field 1 (timestamp) is length-delimited and comes first.
    assert_eq!(bytes[0], 0x0a);
    let decoded = Envelope::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(decoded, envelope);
    let any = decoded.event.expect("has an event");
    assert_eq!(any.type_url, "containerd.services.images.v1.ImageCreate");
    assert_eq!(
        ImageCreate::decode(any.value.as_slice()).expect("decodes"),
        event
    );
}

#[test]
fn write_content_request_round_trips_and_matches_the_wire_format() {
    use plinth_api::containerd::services::content::v1::{WriteAction, WriteContentRequest};

    let request = WriteContentRequest {
        action: WriteAction::Commit.into(),
        r#ref: "ingest-1".to_owned(),
        total: 3,
        expected: "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
            .to_owned(),
        offset: 0,
        data: b"abc".to_vec(),
        labels: [("containerd.io/gc.root".to_owned(), "yes".to_owned())].into(),
    };
    let bytes = request.encode_to_vec();
    // Field 1 (action) as a varint with value 2 (COMMIT), then field 2 (ref) length-delimited.
    assert_eq!(bytes[..4], [0x08, 0x02, 0x12, 8]);
    let decoded = WriteContentRequest::decode(bytes.as_slice()).expect("decodes");
    assert_eq!(decoded, request);
    assert_eq!(decoded.action(), WriteAction::Commit);
}

#[test]
fn generated_clients_and_servers_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    use plinth_api::containerd::services;
    use plinth_api::tonic::transport::Channel;

    assert_send_sync::<services::content::v1::content_client::ContentClient<Channel>>();
    assert_send_sync::<services::snapshots::v1::snapshots_client::SnapshotsClient<Channel>>();
    assert_send_sync::<
        services::introspection::v1::introspection_client::IntrospectionClient<Channel>,
    >();
    assert_send_sync::<services::namespaces::v1::namespaces_client::NamespacesClient<Channel>>();
    assert_send_sync::<services::version::v1::version_client::VersionClient<Channel>>();
    assert_send_sync::<services::events::v1::events_client::EventsClient<Channel>>();
    assert_send_sync::<services::leases::v1::leases_client::LeasesClient<Channel>>();
    assert_send_sync::<services::images::v1::images_client::ImagesClient<Channel>>();
    assert_send_sync::<services::containers::v1::containers_client::ContainersClient<Channel>>();
    assert_send_sync::<services::events::v1::Envelope>();
    assert_send_sync::<services::containers::v1::Container>();
    assert_send_sync::<services::content::v1::WriteContentRequest>();
    assert_send_sync::<plinth_api::google::rpc::Status>();
}
