//! Conversions between the plugin interfaces' types and containerd's wire messages.

use std::time::{SystemTime, UNIX_EPOCH};

use plinth_api::containerd::services::content::v1 as content_api;
use plinth_api::containerd::services::snapshots::v1 as snapshots_api;
use plinth_api::containerd::types::Mount as MountMessage;
use plinth_api::prost_types::Timestamp;

use crate::content::{Digest, Info, Status};
use crate::error::Error;
use crate::namespaces::Labels;
use crate::snapshots::{self, Kind, Mount};

/// A time as a protobuf timestamp, to the nanosecond.
pub fn timestamp(time: SystemTime) -> Timestamp {
    Timestamp::from(time)
}

/// A protobuf timestamp as a time (the epoch when absent, or beyond what `SystemTime` holds).
pub fn time(timestamp: Option<&Timestamp>) -> SystemTime {
    timestamp
        .and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(UNIX_EPOCH)
}

/// A wire map as labels.
pub fn labels(map: &std::collections::HashMap<String, String>) -> Labels {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// A digest from the wire; empty is an error.
///
/// # Errors
/// Invalid argument.
pub fn digest(text: &str) -> Result<Digest, Error> {
    Digest::parse(text)
}

/// A digest from the wire; empty is none.
///
/// # Errors
/// Invalid argument for a malformed digest.
pub fn optional_digest(text: &str) -> Result<Option<Digest>, Error> {
    if text.is_empty() {
        Ok(None)
    } else {
        Digest::parse(text).map(Some)
    }
}

/// Content info on the wire.
pub fn content_info(info: &Info) -> content_api::Info {
    content_api::Info {
        digest: info.digest.to_string(),
        size: info.size,
        created_at: Some(timestamp(info.created_at)),
        updated_at: Some(timestamp(info.updated_at)),
        labels: info.labels.clone().into_iter().collect(),
    }
}

/// Content info from the wire.
///
/// # Errors
/// Invalid argument for a malformed digest.
pub fn content_info_from(info: &content_api::Info) -> Result<Info, Error> {
    Ok(Info {
        digest: digest(&info.digest)?,
        size: info.size,
        created_at: time(info.created_at.as_ref()),
        updated_at: time(info.updated_at.as_ref()),
        labels: labels(&info.labels),
    })
}

/// An ingest status on the wire.
pub fn content_status(status: &Status) -> content_api::Status {
    content_api::Status {
        started_at: Some(timestamp(status.started_at)),
        updated_at: Some(timestamp(status.updated_at)),
        r#ref: status.reference.clone(),
        offset: status.offset,
        total: status.total,
        expected: status
            .expected
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
    }
}

/// A snapshot kind on the wire.
pub fn kind(kind: Kind) -> snapshots_api::Kind {
    match kind {
        Kind::View => snapshots_api::Kind::View,
        Kind::Active => snapshots_api::Kind::Active,
        Kind::Committed => snapshots_api::Kind::Committed,
    }
}

/// Snapshot info on the wire.
pub fn snapshot_info(info: &snapshots::Info) -> snapshots_api::Info {
    snapshots_api::Info {
        name: info.name.clone(),
        parent: info.parent.clone(),
        kind: kind(info.kind) as i32,
        created_at: Some(timestamp(info.created_at)),
        updated_at: Some(timestamp(info.updated_at)),
        labels: info.labels.clone().into_iter().collect(),
    }
}

/// Snapshot info from the wire (only name and labels matter to an update).
pub fn snapshot_info_from(info: &snapshots_api::Info) -> snapshots::Info {
    snapshots::Info {
        kind: match snapshots_api::Kind::try_from(info.kind) {
            Ok(snapshots_api::Kind::View) => Kind::View,
            Ok(snapshots_api::Kind::Active) => Kind::Active,
            _ => Kind::Committed,
        },
        name: info.name.clone(),
        parent: info.parent.clone(),
        labels: labels(&info.labels),
        created_at: time(info.created_at.as_ref()),
        updated_at: time(info.updated_at.as_ref()),
    }
}

/// Mounts on the wire.
pub fn mounts(mounts: &[Mount]) -> Vec<MountMessage> {
    mounts
        .iter()
        .map(|m| MountMessage {
            r#type: m.mount_type.clone(),
            source: m.source.clone(),
            target: m.target.clone(),
            options: m.options.clone(),
        })
        .collect()
}

/// Mounts from the wire.
pub fn mounts_from(mounts: Vec<MountMessage>) -> Vec<Mount> {
    mounts
        .into_iter()
        .map(|m| Mount {
            mount_type: m.r#type,
            source: m.source,
            target: m.target,
            options: m.options,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn times_round_trip_through_timestamps() {
        let cases: &[(SystemTime, (i64, i32))] = &[
            (UNIX_EPOCH, (0, 0)),
            (
                UNIX_EPOCH + Duration::new(1_796_002_947, 123_456_789),
                (1_796_002_947, 123_456_789),
            ),
            // Before the epoch: whole seconds below, nanoseconds above (protobuf's rule).
            (
                UNIX_EPOCH - Duration::new(1, 250_000_000),
                (-2, 750_000_000),
            ),
        ];
        for &(time_value, (seconds, nanos)) in cases {
            let wire = timestamp(time_value);
            assert_eq!(
                (wire.seconds, wire.nanos),
                (seconds, nanos),
                "{time_value:?}"
            );
            assert_eq!(time(Some(&wire)), time_value, "{time_value:?}");
        }
        assert_eq!(time(None), UNIX_EPOCH);
    }
}
