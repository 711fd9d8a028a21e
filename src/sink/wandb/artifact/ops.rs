//! The artifact GraphQL operations, with the documents and variables
//! wandb-core sends (`core/api/graphql/mutation_*artifact*.graphql`).

use serde_json::{Value as Json, json};

use crate::sink::wandb::client::{Client, SinkError};
use crate::source::wandb::proto::ArtifactRecord;

const CREATE_ARTIFACT: &str = "mutation CreateArtifact($input: CreateArtifactInput!) { \
createArtifact(input: $input) { ...CreatedArtifact } } \
fragment CreatedArtifact on CreateArtifactPayload { artifact { id state artifactSequence { \
latestArtifact { id } } } }";

const CREATE_ARTIFACT_MANIFEST: &str = "mutation CreateArtifactManifest($artifactID: ID!, \
$baseArtifactID: ID, $name: String!, $digest: String!, $entityName: String!, $projectName: String!, \
$runName: String!, $manifestType: ArtifactManifestType!, $includeUpload: Boolean!) { \
createArtifactManifest(input: {artifactID: $artifactID, baseArtifactID: $baseArtifactID, name: $name, \
digest: $digest, entityName: $entityName, projectName: $projectName, runName: $runName, \
type: $manifestType}) { artifactManifest { id file { id uploadUrl @include(if: $includeUpload) \
uploadHeaders @include(if: $includeUpload) } } } }";

const CREATE_ARTIFACT_FILES: &str = "mutation CreateArtifactFiles($artifactFiles: \
[CreateArtifactFileSpecInput!]!, $storageLayout: ArtifactStorageLayout!) { \
createArtifactFiles(input: {artifactFiles: $artifactFiles, storageLayout: $storageLayout}) { \
files { edges { node { storagePath uploadUrl uploadHeaders uploadMultipartUrls { uploadID \
uploadUrlParts { partNumber uploadUrl } } artifact { id } } } } } }";

const COMPLETE_MULTIPART: &str = "mutation CompleteMultipartUploadArtifact(\
$completeMultipartAction: CompleteMultipartAction!, $completedParts: [UploadPartsInput!]!, \
$artifactID: ID!, $storagePath: String!, $uploadID: String!) { completeMultipartUploadArtifact(\
input: {completeMultipartAction: $completeMultipartAction, completedParts: $completedParts, \
artifactID: $artifactID, storagePath: $storagePath, uploadID: $uploadID}) { digest } }";

const COMMIT_ARTIFACT: &str = "mutation CommitArtifact($artifactID: ID!) { \
commitArtifact(input: {artifactID: $artifactID}) { artifact { id digest } } }";

const USE_ARTIFACT: &str = "mutation UseArtifact($input: UseArtifactInput!) { \
useArtifact(input: $input) { artifact { id } } }";

fn missing(what: &str, field: &str) -> SinkError {
    SinkError::Protocol {
        what: what.into(),
        message: format!("no {field}"),
    }
}

/// A version as `CreateArtifact` answers.
pub(crate) struct Created {
    pub id: String,
    /// `PENDING`, `COMMITTED` (the same content exists: nothing to send),
    /// `DELETED` (old servers' pending).
    pub state: String,
    pub latest_id: Option<String>,
}

pub(crate) async fn create_artifact(
    client: &Client,
    record: &ArtifactRecord,
    storage_region: Option<&str>,
) -> Result<Created, SinkError> {
    let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let aliases: Vec<Json> = record
        .aliases
        .iter()
        .map(|a| json!({"artifactCollectionName": record.name, "alias": a}))
        .collect();
    let mut input = json!({
        "entityName": record.entity,
        "projectName": record.project,
        "artifactTypeName": record.kind,
        "artifactCollectionName": record.name,
        "runName": (!record.user_created).then(|| record.run_id.clone()),
        "digest": record.digest,
        "digestAlgorithm": "MANIFEST_MD5",
        "description": text(&record.description),
        "aliases": aliases,
        "metadata": text(&record.metadata),
        "ttlDurationSeconds": (record.ttl_duration_seconds != 0).then_some(record.ttl_duration_seconds),
        "historyStep": null,
        "enableDigestDeduplication": true,
        "distributedID": text(&record.distributed_id),
        "clientID": record.client_id,
        "sequenceClientID": record.sequence_client_id,
        "storageRegion": storage_region,
    });
    // Left out when empty, as wandb-core does (older servers lack it).
    if !record.tags.is_empty() {
        input["tags"] = record.tags.iter().map(|t| json!({"tagName": t})).collect();
    }
    let data = client
        .graphql("CreateArtifact", CREATE_ARTIFACT, json!({"input": input}))
        .await?;
    let artifact = &data["createArtifact"]["artifact"];
    Ok(Created {
        id: artifact["id"]
            .as_str()
            .ok_or_else(|| missing("CreateArtifact", "artifact id"))?
            .to_string(),
        state: artifact["state"].as_str().unwrap_or_default().to_string(),
        latest_id: artifact["artifactSequence"]["latestArtifact"]["id"]
            .as_str()
            .map(str::to_string),
    })
}

/// The manifest's id and, asked with `digest`, where to PUT it.
pub(crate) struct ManifestSlot {
    pub id: String,
    pub upload_url: Option<String>,
    pub upload_headers: Vec<String>,
}

pub(crate) async fn create_artifact_manifest(
    client: &Client,
    record: &ArtifactRecord,
    artifact_id: &str,
    base_id: Option<&str>,
    digest: &str,
    include_upload: bool,
) -> Result<ManifestSlot, SinkError> {
    let variables = json!({
        "artifactID": artifact_id,
        "baseArtifactID": base_id,
        "name": "wandb_manifest.json",
        "digest": digest,
        "entityName": record.entity,
        "projectName": record.project,
        "runName": record.run_id,
        "manifestType": "FULL",
        "includeUpload": include_upload,
    });
    let data = client
        .graphql(
            "CreateArtifactManifest",
            CREATE_ARTIFACT_MANIFEST,
            variables,
        )
        .await?;
    let manifest = &data["createArtifactManifest"]["artifactManifest"];
    Ok(ManifestSlot {
        id: manifest["id"]
            .as_str()
            .ok_or_else(|| missing("CreateArtifactManifest", "manifest id"))?
            .to_string(),
        upload_url: manifest["file"]["uploadUrl"].as_str().map(str::to_string),
        upload_headers: strings(&manifest["file"]["uploadHeaders"]),
    })
}

fn strings(value: &Json) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|h| h.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// One file to store: its name in the artifact, MD5 (base64) and, for a
/// multipart upload, each part's MD5 (hex).
pub(crate) struct FileSpec<'a> {
    pub name: &'a str,
    pub md5: &'a str,
    pub parts: Option<Vec<String>>,
}

/// Where one file goes, as `CreateArtifactFiles` answers.
pub(crate) struct FileSlot {
    /// The artifact that stores the file (this one, or an earlier version
    /// holding the same content).
    pub birth_id: String,
    /// `None`: the server has the content already.
    pub upload_url: Option<String>,
    pub upload_headers: Vec<String>,
    pub storage_path: Option<String>,
    /// A multipart upload's id and its parts' URLs, by part number.
    pub multipart: Option<(String, Vec<(u64, String)>)>,
}

pub(crate) async fn create_artifact_files(
    client: &Client,
    artifact_id: &str,
    manifest_id: &str,
    files: &[FileSpec<'_>],
) -> Result<Vec<FileSlot>, SinkError> {
    let specs: Vec<Json> = files
        .iter()
        .map(|f| {
            json!({
                "artifactID": artifact_id,
                "name": f.name,
                "md5": f.md5,
                "artifactManifestID": manifest_id,
                "uploadPartsInput": f.parts.as_ref().map(|parts| parts
                    .iter()
                    .enumerate()
                    .map(|(i, hex)| json!({"partNumber": i as u64 + 1, "hexMD5": hex}))
                    .collect::<Vec<_>>()),
            })
        })
        .collect();
    let data = client
        .graphql(
            "CreateArtifactFiles",
            CREATE_ARTIFACT_FILES,
            json!({"artifactFiles": specs, "storageLayout": "V2"}),
        )
        .await?;
    let edges = data["createArtifactFiles"]["files"]["edges"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if edges.len() != files.len() {
        return Err(SinkError::Protocol {
            what: "CreateArtifactFiles".into(),
            message: format!("{} files asked, {} answered", files.len(), edges.len()),
        });
    }
    edges
        .iter()
        .map(|edge| {
            let node = &edge["node"];
            let multipart = node["uploadMultipartUrls"].as_object().map(|m| {
                let parts = m
                    .get("uploadUrlParts")
                    .and_then(Json::as_array)
                    .map(|parts| {
                        parts
                            .iter()
                            .filter_map(|p| {
                                Some((
                                    p["partNumber"].as_u64()?,
                                    p["uploadUrl"].as_str()?.to_string(),
                                ))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                (
                    m.get("uploadID")
                        .and_then(Json::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    parts,
                )
            });
            Ok(FileSlot {
                birth_id: node["artifact"]["id"]
                    .as_str()
                    .ok_or_else(|| missing("CreateArtifactFiles", "artifact id"))?
                    .to_string(),
                upload_url: node["uploadUrl"].as_str().map(str::to_string),
                upload_headers: strings(&node["uploadHeaders"]),
                storage_path: node["storagePath"].as_str().map(str::to_string),
                multipart,
            })
        })
        .collect()
}

pub(crate) async fn complete_multipart(
    client: &Client,
    birth_id: &str,
    storage_path: &str,
    upload_id: &str,
    etags: &[String],
) -> Result<(), SinkError> {
    let parts: Vec<Json> = etags
        .iter()
        .enumerate()
        .map(|(i, etag)| json!({"partNumber": i as u64 + 1, "hexMD5": etag}))
        .collect();
    client
        .graphql(
            "CompleteMultipartUploadArtifact",
            COMPLETE_MULTIPART,
            json!({
                "completeMultipartAction": "Complete",
                "completedParts": parts,
                "artifactID": birth_id,
                "storagePath": storage_path,
                "uploadID": upload_id,
            }),
        )
        .await?;
    Ok(())
}

pub(crate) async fn commit_artifact(client: &Client, artifact_id: &str) -> Result<(), SinkError> {
    client
        .graphql(
            "CommitArtifact",
            COMMIT_ARTIFACT,
            json!({"artifactID": artifact_id}),
        )
        .await?;
    Ok(())
}

/// Marks the artifact used by the run that logged it (`use_after_commit`).
pub(crate) async fn use_artifact(
    client: &Client,
    record: &ArtifactRecord,
    artifact_id: &str,
) -> Result<(), SinkError> {
    let input = json!({
        "artifactID": artifact_id,
        "entityName": record.entity,
        "projectName": record.project,
        "runName": record.run_id,
    });
    client
        .graphql("UseArtifact", USE_ARTIFACT, json!({"input": input}))
        .await?;
    Ok(())
}
