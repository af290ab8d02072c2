//! `plinth-load check`: what runs recorded with `--journal`, verified against the daemon
//! (after a crash and a restart): every acknowledged write is there and verifies; nothing
//! that was never acknowledged is visible as committed.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use plinth_api::containerd::services::content::v1::content_client::ContentClient;
use plinth_api::containerd::services::content::v1::{ListContentRequest, ReadContentRequest};
use plinth_api::containerd::services::images::v1::ListImagesRequest;
use plinth_api::containerd::services::images::v1::images_client::ImagesClient;
use plinth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use plinth_api::containerd::services::snapshots::v1::{Kind, ListSnapshotsRequest};
use plinthd::client::{Client, status_error};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::worker::Model;

/// What a run leaves for `check`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Journal {
    /// The shared namespace: whatever is there must verify.
    pub(crate) shared: String,
    /// Each client's namespace.
    pub(crate) models: Vec<Model>,
}

/// Checks every journal; whether all held.
///
/// # Errors
/// A journal cannot be read, or the daemon cannot be reached.
pub(crate) async fn check(address: &str, journals: &[PathBuf]) -> anyhow::Result<bool> {
    let mut problems = Vec::new();
    let (mut namespaces, mut blobs, mut snapshots) = (0, 0, 0);
    for path in journals {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the journal {}", path.display()))?;
        let journal: Journal = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a plinth-load journal", path.display()))?;
        for model in &journal.models {
            let client = Client::connect(address, &model.namespace).await?;
            let (b, s) = check_model(&client, model, &mut problems).await?;
            namespaces += 1;
            blobs += b;
            snapshots += s;
        }
        let client = Client::connect(address, &journal.shared).await?;
        for (digest, size) in list(&client).await? {
            verify(&client, &digest, size, &mut problems).await?;
            blobs += 1;
        }
    }
    let mut text = format!(
        "checked {namespaces} namespaces: {blobs} blobs read and verified, {snapshots} snapshots; {} problems\n",
        problems.len()
    );
    for problem in &problems {
        text.push_str(&format!("  {problem}\n"));
    }
    crate::out(&text);
    Ok(problems.is_empty())
}

/// Every blob in the client's namespace, with its size.
async fn list(client: &Client) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut api = ContentClient::new(client.channel());
    let mut stream = api
        .list(client.request(ListContentRequest::default())?)
        .await
        .map_err(status_error)?
        .into_inner();
    let mut all = BTreeMap::new();
    while let Some(page) = stream.message().await.map_err(status_error)? {
        all.extend(page.info.into_iter().map(|i| (i.digest, i.size as u64)));
    }
    Ok(all)
}

/// Reads `digest` whole: its bytes must hash to it and be `size` long.
async fn verify(
    client: &Client,
    digest: &str,
    size: u64,
    problems: &mut Vec<String>,
) -> anyhow::Result<()> {
    let mut api = ContentClient::new(client.channel()).max_decoding_message_size(usize::MAX);
    let request = client.request(ReadContentRequest {
        digest: digest.to_string(),
        ..ReadContentRequest::default()
    })?;
    let read = async {
        let mut stream = api.read(request).await?.into_inner();
        let mut hasher = Sha256::new();
        let mut read = 0u64;
        while let Some(chunk) = stream.message().await? {
            read += chunk.data.len() as u64;
            hasher.update(&chunk.data);
        }
        Ok::<_, tonic::Status>((format!("sha256:{:x}", hasher.finalize()), read))
    };
    match read.await {
        Ok((actual, read)) if actual == digest && read == size => {}
        Ok((actual, read)) => problems.push(format!(
            "{}: blob {digest} ({size} bytes) reads as {read} bytes hashing to {actual}",
            client_namespace(client)
        )),
        Err(status) => problems.push(format!(
            "{}: reading blob {digest}: {} ({:?})",
            client_namespace(client),
            status.message(),
            status.code()
        )),
    }
    Ok(())
}

fn client_namespace(client: &Client) -> String {
    client
        .request(())
        .ok()
        .and_then(|r| {
            r.metadata()
                .get(plinth_builtin_plugins::namespaces::NAMESPACE_HEADER)
                .and_then(|v| v.to_str().ok().map(str::to_string))
        })
        .unwrap_or_default()
}

/// Checks one client's namespace against its model; the blobs and snapshots checked.
async fn check_model(
    client: &Client,
    model: &Model,
    problems: &mut Vec<String>,
) -> anyhow::Result<(usize, usize)> {
    let ns = &model.namespace;
    let listed = list(client).await?;
    for (digest, blob) in &model.blobs {
        match listed.get(digest) {
            None => problems.push(format!("{ns}: acknowledged blob {digest} is missing")),
            Some(&size) if size != blob.size => problems.push(format!(
                "{ns}: blob {digest} of {} bytes is listed with {size}",
                blob.size
            )),
            Some(_) => {}
        }
    }
    for (digest, &size) in &listed {
        if !model.blobs.contains_key(digest) && !model.uncertain_blobs.contains(digest) {
            problems.push(format!(
                "{ns}: blob {digest} is visible but its commit was never acknowledged (or its delete was)"
            ));
        }
        verify(client, digest, size, problems).await?;
    }
    let mut api = SnapshotsClient::new(client.channel());
    let mut stream = api
        .list(client.request(ListSnapshotsRequest {
            snapshotter: model.snapshotter.clone(),
            filters: Vec::new(),
        })?)
        .await
        .map_err(status_error)?
        .into_inner();
    let mut snapshots = BTreeMap::new();
    while let Some(page) = stream.message().await.map_err(status_error)? {
        snapshots.extend(page.info.into_iter().map(|i| (i.name, (i.parent, i.kind))));
    }
    let mut known = 0;
    for chain in &model.chains {
        let mut parent = String::new();
        for name in chain {
            known += 1;
            match snapshots.get(name) {
                None => problems.push(format!("{ns}: acknowledged snapshot {name} is missing")),
                Some((p, kind)) if *p != parent || *kind != Kind::Committed as i32 => {
                    problems.push(format!(
                        "{ns}: snapshot {name} is kind {kind} on {p:?}, not committed on {parent:?}"
                    ));
                }
                Some(_) => {}
            }
            parent.clone_from(name);
        }
    }
    for name in snapshots.keys() {
        let in_chain = model.chains.iter().any(|c| c.contains(name));
        if !in_chain && !model.uncertain_snapshots.contains(name) {
            problems.push(format!(
                "{ns}: snapshot {name} exists but was never acknowledged (or its removal was)"
            ));
        }
    }
    check_images(client, model, problems).await?;
    Ok((listed.len(), known))
}

/// Every acknowledged image is there with its target; none is there that was not.
async fn check_images(
    client: &Client,
    model: &Model,
    problems: &mut Vec<String>,
) -> anyhow::Result<()> {
    let ns = &model.namespace;
    let listed: BTreeMap<String, (String, i64)> = ImagesClient::new(client.channel())
        .list(client.request(ListImagesRequest::default())?)
        .await
        .map_err(status_error)?
        .into_inner()
        .images
        .into_iter()
        .map(|i| {
            let target = i.target.unwrap_or_default();
            (i.name, (target.digest, target.size))
        })
        .collect();
    for (name, image) in &model.images {
        match listed.get(name) {
            None if !model.uncertain_images.contains(name) => {
                problems.push(format!("{ns}: acknowledged image {name} is missing"));
            }
            Some((digest, size)) if *digest != image.target || *size as u64 != image.size => {
                problems.push(format!(
                    "{ns}: image {name} targets {digest} ({size} bytes), not {} ({} bytes)",
                    image.target, image.size
                ));
            }
            _ => {}
        }
    }
    for name in listed.keys() {
        if !model.images.contains_key(name) && !model.uncertain_images.contains(name) {
            problems.push(format!(
                "{ns}: image {name} exists but its creation was never acknowledged (or its deletion was)"
            ));
        }
    }
    Ok(())
}
