//! The artifact protocol as the official clients use it: wandb-core (0.31)
//! sends `CreateArtifact` → `CreateArtifactManifest` (`includeUpload:
//! false`) → `CreateArtifactFiles` (storage layout V2, one spec per file with
//! its md5) → a PUT per file → `CreateArtifactManifest` (the manifest's
//! digest, `includeUpload: true`) → PUT of the manifest → `CommitArtifact`;
//! the legacy Python saver (≤ 0.17) sends the same mutations with flat
//! variables, `artifactCollectionNames`, and asks about the schema first
//! (`__type` introspection).
//!
//! Versions live in collections keyed by (entity, project, name). A digest
//! already known in a collection returns the existing version (its state
//! tells the client whether anything is left to do), as W&B does. A file
//! whose md5 the collection already stores comes back without an upload URL.
//! Aliases the client asks for are attached at commit (at once for a version
//! that is already committed); `latest` is the server's: the committed
//! version with the highest index. Version indexes are given at commit, so an
//! abandoned pending version takes none.
//!
//! Uploads: `PUT /artifacts/{id}/files/{name}` with the `Content-MD5` the
//! server handed out (a mismatch with the body, or a body whose md5 is not
//! the declared one, is refused with 400 like S3's `BadDigest`),
//! `PUT /artifacts/{id}/manifest`, and for multipart uploads
//! `PUT /artifacts/{id}/parts/{part}/{name}` answered with an `ETag`, then
//! `CompleteMultipartUploadArtifact`. The clients pick multipart themselves
//! (files of 2 GiB and more, a constant in both wandb-core and the legacy
//! saver; nothing the server says changes it): the server hands out part
//! URLs to any file spec that lists `uploadPartsInput`, whatever its size.

use std::collections::BTreeMap;

use base64::Engine;
use md5::{Digest, Md5};
use serde_json::{Map, Value, json};
use sha2::Sha256;

use super::state::State;

#[derive(Clone, Default)]
pub struct Multipart {
    pub upload_id: String,
    /// `(partNumber, hexMD5)` as the client declared them.
    pub parts: Vec<(u64, String)>,
    pub received: BTreeMap<u64, Vec<u8>>,
    pub completed: bool,
}

#[derive(Clone, Default)]
pub struct ArtifactFile {
    /// Base64 md5, as declared in `CreateArtifactFiles`.
    pub md5: String,
    /// The version that stores the bytes (this one, or an earlier one the
    /// file was deduplicated against).
    pub birth_artifact_id: String,
    /// An upload URL was handed out for it.
    pub upload_requested: bool,
    pub bytes: Option<Vec<u8>>,
    /// PUTs (or completed multipart uploads) stored for it.
    pub puts: u64,
    pub multipart: Option<Multipart>,
}

#[derive(Clone, Default)]
pub struct Artifact {
    pub id: String,
    pub entity: String,
    pub project: String,
    pub name: String,
    pub type_name: String,
    /// Given at commit: `v0`, `v1`, … in commit order within the collection.
    pub version_index: Option<u64>,
    pub digest: String,
    /// Aliases attached now (`latest` included when it points here).
    pub aliases: Vec<String>,
    /// Asked for by `CreateArtifact`, attached at commit.
    pub requested_aliases: Vec<String>,
    pub tags: Vec<String>,
    pub committed: bool,
    pub description: Option<String>,
    pub metadata: Option<Value>,
    pub created_by: Option<String>,
    pub used_by: Vec<String>,
    pub client_id: Option<String>,
    pub sequence_client_id: Option<String>,
    pub history_step: Value,
    /// `CreateArtifact` calls that returned this version.
    pub creates: u64,
    pub commits: u64,
    pub manifest_digest: Option<String>,
    pub manifest_type: Option<String>,
    /// `CreateArtifactManifest` / `UpdateArtifactManifest` calls.
    pub manifest_requests: u64,
    pub manifest_bytes: Option<Vec<u8>>,
    pub manifest_puts: u64,
    pub files: BTreeMap<String, ArtifactFile>,
}

impl Artifact {
    fn state(&self) -> &'static str {
        if self.committed {
            "COMMITTED"
        } else {
            "PENDING"
        }
    }

    fn version_json(&self) -> Value {
        self.version_index
            .map_or(Value::Null, |i| json!(format!("v{i}")))
    }
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn error(message: String) -> Value {
    json!({"data": null, "errors": [{"message": message}]})
}

pub fn md5_b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(bytes))
}

fn md5_hex(bytes: &[u8]) -> String {
    hex(&Md5::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// A base64 md5 as hex (for storage paths and ETags); the input if it is not one.
fn b64_to_hex(b64: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_or_else(|_| b64.to_string(), |b| hex(&b))
}

impl State {
    fn artifact_index(&self, id: &str) -> Option<usize> {
        self.artifacts.iter().position(|a| a.id == id)
    }

    fn upload_base(&self, id: &str) -> String {
        format!(
            "http://127.0.0.1:{}/artifacts/{}",
            self.port,
            super::percent_encode(id)
        )
    }

    /// The stored bytes of a file with this md5 in a collection, and the
    /// version holding them.
    fn stored_in_collection(
        &self,
        (entity, project, name): (&str, &str, &str),
        md5: &str,
    ) -> Option<(&str, &[u8])> {
        self.artifacts
            .iter()
            .filter(|a| a.entity == entity && a.project == project && a.name == name)
            .find_map(|a| {
                a.files
                    .values()
                    .find(|f| f.md5 == md5 && f.bytes.is_some())
                    .map(|f| (a.id.as_str(), f.bytes.as_deref().unwrap_or_default()))
            })
    }

    /// Moves `latest` to the committed version with the highest index.
    fn reset_latest(&mut self, collection: (String, String, String)) {
        let same = |a: &Artifact| {
            a.entity == collection.0 && a.project == collection.1 && a.name == collection.2
        };
        let newest = self
            .artifacts
            .iter()
            .filter(|a| same(a) && a.committed)
            .max_by_key(|a| a.version_index)
            .map(|a| a.id.clone());
        for a in self.artifacts.iter_mut().filter(|a| same(a)) {
            a.aliases.retain(|x| x != "latest");
            if Some(&a.id) == newest.as_ref() {
                a.aliases.push("latest".into());
            }
        }
    }

    /// Attaches the version's requested aliases (moving them off other
    /// versions of the collection) and resets `latest`.
    fn apply_aliases(&mut self, i: usize) {
        let a = &self.artifacts[i];
        let collection = (a.entity.clone(), a.project.clone(), a.name.clone());
        let wanted: Vec<String> = a
            .requested_aliases
            .iter()
            .filter(|x| *x != "latest")
            .cloned()
            .collect();
        for (j, other) in self.artifacts.iter_mut().enumerate() {
            let same = other.entity == collection.0
                && other.project == collection.1
                && other.name == collection.2;
            if j == i || !same {
                continue;
            }
            other.aliases.retain(|x| !wanted.contains(x));
        }
        let this = &mut self.artifacts[i];
        for alias in wanted {
            if !this.aliases.contains(&alias) {
                this.aliases.push(alias);
            }
        }
        self.reset_latest(collection);
    }

    fn latest_committed(&self, entity: &str, project: &str, name: &str) -> Option<&Artifact> {
        self.artifacts
            .iter()
            .filter(|a| a.entity == entity && a.project == project && a.name == name)
            .filter(|a| a.committed)
            .max_by_key(|a| a.version_index)
    }

    /// `CreateArtifact`: wandb-core sends `{input: {...}}`; the legacy saver
    /// flat variables with `artifactCollectionNames`.
    pub fn create_artifact(&mut self, vars: &Value) -> Value {
        let input = vars.get("input").filter(|v| v.is_object()).unwrap_or(vars);
        let name = str_of(input, "artifactCollectionName")
            .or_else(|| {
                input
                    .get("artifactCollectionNames")
                    .and_then(|n| n.get(0))
                    .and_then(Value::as_str)
            })
            .map(str::to_string);
        let (Some(name), Some(type_name), Some(digest)) = (
            name,
            str_of(input, "artifactTypeName"),
            str_of(input, "digest"),
        ) else {
            return error(
                "CreateArtifact: artifactCollectionName, artifactTypeName and digest are required"
                    .into(),
            );
        };
        let entity = self.entity_or_default(str_of(input, "entityName"));
        let project = str_of(input, "projectName")
            .unwrap_or("uncategorized")
            .to_string();
        let aliases: Vec<String> = input
            .get("aliases")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|a| a.get("alias").and_then(Value::as_str).map(str::to_string))
            .collect();
        let existing = self.artifacts.iter().position(|a| {
            a.entity == entity && a.project == project && a.name == name && a.digest == digest
        });
        let i = match existing {
            Some(i) => {
                let a = &mut self.artifacts[i];
                a.creates += 1;
                for alias in aliases {
                    if !a.requested_aliases.contains(&alias) {
                        a.requested_aliases.push(alias);
                    }
                }
                if a.committed {
                    self.apply_aliases(i);
                }
                i
            }
            None => {
                if self.artifacts.iter().any(|a| {
                    a.entity == entity
                        && a.project == project
                        && a.name == name
                        && a.type_name != type_name
                }) {
                    return error(format!(
                        "CreateArtifact: {entity}/{project}/{name} has another type"
                    ));
                }
                let metadata = str_of(input, "metadata")
                    .map(|m| super::parse_lenient(m).unwrap_or_else(|| m.into()));
                let tags = input
                    .get("tags")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.get("tagName").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect();
                self.artifacts.push(Artifact {
                    id: format!("artifact-{}", self.artifacts.len() + 1),
                    entity: entity.clone(),
                    project: project.clone(),
                    name: name.clone(),
                    type_name: type_name.to_string(),
                    digest: digest.to_string(),
                    requested_aliases: aliases,
                    tags,
                    description: str_of(input, "description").map(str::to_string),
                    metadata,
                    created_by: str_of(input, "runName").map(str::to_string),
                    client_id: str_of(input, "clientID").map(str::to_string),
                    sequence_client_id: str_of(input, "sequenceClientID").map(str::to_string),
                    history_step: input.get("historyStep").cloned().unwrap_or(Value::Null),
                    creates: 1,
                    ..Artifact::default()
                });
                self.artifacts.len() - 1
            }
        };
        let a = &self.artifacts[i];
        let latest = self
            .latest_committed(&entity, &project, &name)
            .map(|l| json!({"id": l.id, "versionIndex": l.version_index}));
        json!({"data": {"createArtifact": {"artifact": {
            "id": a.id,
            "state": a.state(),
            "digest": a.digest,
            "versionIndex": a.version_index,
            "artifactSequence": {
                "id": format!("sequence-{entity}/{project}/{name}"),
                "latestArtifact": latest,
            },
        }}}})
    }

    /// `CreateArtifactManifest` (and `UpdateArtifactManifest`, which names
    /// the manifest by its id, `manifest-<artifact id>`).
    pub fn artifact_manifest(&mut self, op: &str, vars: &Value) -> Value {
        let id = match op {
            "UpdateArtifactManifest" => str_of(vars, "artifactManifestID")
                .and_then(|m| m.strip_prefix("manifest-"))
                .map(str::to_string),
            _ => str_of(vars, "artifactID").map(str::to_string),
        };
        let Some(i) = id.as_deref().and_then(|id| self.artifact_index(id)) else {
            return error(format!("{op}: no such artifact {id:?}"));
        };
        let include_upload = vars.get("includeUpload").and_then(Value::as_bool) == Some(true);
        let digest = str_of(vars, "digest").map(str::to_string);
        let base = self.upload_base(&self.artifacts[i].id);
        let mut headers: Vec<String> = self.upload_headers.clone();
        let a = &mut self.artifacts[i];
        a.manifest_requests += 1;
        if let Some(digest) = &digest {
            a.manifest_digest = Some(digest.clone());
            headers.push(format!("Content-MD5:{digest}"));
        }
        if let Some(t) = str_of(vars, "manifestType").or_else(|| str_of(vars, "type")) {
            a.manifest_type = Some(t.to_string());
        }
        let name = str_of(vars, "name").unwrap_or("wandb_manifest.json");
        let mut file =
            json!({"id": format!("manifest-file-{}", a.id), "name": name, "displayName": name});
        if include_upload {
            file["uploadUrl"] = json!(format!("{base}/manifest"));
            file["uploadHeaders"] = json!(headers);
        }
        let payload =
            json!({"artifactManifest": {"id": format!("manifest-{}", a.id), "file": file}});
        let field = if op == "UpdateArtifactManifest" {
            "updateArtifactManifest"
        } else {
            "createArtifactManifest"
        };
        json!({"data": {field: payload}})
    }

    /// `CreateArtifactFiles`: one edge per spec, in order.
    pub fn create_artifact_files(&mut self, vars: &Value) -> Value {
        let input = vars.get("input").filter(|v| v.is_object()).unwrap_or(vars);
        let layout = str_of(input, "storageLayout").unwrap_or("V1");
        let specs: Vec<Value> = input
            .get("artifactFiles")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut edges = Vec::with_capacity(specs.len());
        for spec in &specs {
            let (Some(id), Some(name), Some(md5)) = (
                str_of(spec, "artifactID"),
                str_of(spec, "name"),
                str_of(spec, "md5"),
            ) else {
                return error("CreateArtifactFiles: artifactID, name and md5 are required".into());
            };
            let Some(i) = self.artifact_index(id) else {
                return error(format!("CreateArtifactFiles: no such artifact {id}"));
            };
            let parts: Vec<(u64, String)> = spec
                .get("uploadPartsInput")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| {
                    Some((
                        p.get("partNumber")?.as_u64()?,
                        p.get("hexMD5")?.as_str()?.to_string(),
                    ))
                })
                .collect();
            let a = &self.artifacts[i];
            let collection = (a.entity.as_str(), a.project.as_str(), a.name.as_str());
            let stored = self
                .stored_in_collection(collection, md5)
                .map(|(birth, _)| birth.to_string());
            let base = self.upload_base(id);
            let storage_path = format!("wandb_artifacts/{}/{}", layout, b64_to_hex(md5));
            let encoded = super::percent_encode(name);
            let mut headers = self.upload_headers.clone();
            headers.push(format!("Content-MD5:{md5}"));
            let a = &mut self.artifacts[i];
            let file = a.files.entry(name.to_string()).or_default();
            file.md5 = md5.to_string();
            let node = match stored {
                Some(birth) => {
                    file.birth_artifact_id = birth.clone();
                    json!({"id": format!("file-{id}-{name}"), "name": name, "displayName": name,
                        "uploadUrl": null, "uploadHeaders": [], "storagePath": storage_path,
                        "uploadMultipartUrls": null, "artifact": {"id": birth}})
                }
                None => {
                    file.birth_artifact_id = id.to_string();
                    file.upload_requested = true;
                    let multipart = if parts.is_empty() {
                        Value::Null
                    } else {
                        let upload_id = format!("upload-{id}-{}", b64_to_hex(md5));
                        let urls: Vec<Value> = parts
                            .iter()
                            .map(|(n, _)| {
                                json!({"partNumber": n, "uploadUrl": format!("{base}/parts/{n}/{encoded}")})
                            })
                            .collect();
                        file.multipart = Some(Multipart {
                            upload_id: upload_id.clone(),
                            parts: parts.clone(),
                            ..Multipart::default()
                        });
                        json!({"uploadID": upload_id, "uploadUrlParts": urls})
                    };
                    json!({"id": format!("file-{id}-{name}"), "name": name, "displayName": name,
                        "uploadUrl": format!("{base}/files/{encoded}"), "uploadHeaders": headers,
                        "storagePath": storage_path, "uploadMultipartUrls": multipart,
                        "artifact": {"id": id}})
                }
            };
            edges.push(json!({"node": node}));
        }
        json!({"data": {"createArtifactFiles": {"files": {"edges": edges}}}})
    }

    /// `CompleteMultipartUploadArtifact`: the parts, in order, checked
    /// against their ETags and the file's declared md5.
    pub fn complete_multipart(&mut self, vars: &Value) -> Value {
        let (Some(id), Some(upload_id)) = (str_of(vars, "artifactID"), str_of(vars, "uploadID"))
        else {
            return error(
                "CompleteMultipartUploadArtifact: artifactID and uploadID are required".into(),
            );
        };
        let Some(i) = self.artifact_index(id) else {
            return error(format!(
                "CompleteMultipartUploadArtifact: no such artifact {id}"
            ));
        };
        let completed: Vec<(u64, String)> = vars
            .get("completedParts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p.get("partNumber")?.as_u64()?,
                    p.get("hexMD5")?.as_str()?.trim_matches('"').to_string(),
                ))
            })
            .collect();
        let Some(file) = self.artifacts[i].files.values_mut().find(|f| {
            f.multipart
                .as_ref()
                .is_some_and(|m| m.upload_id == upload_id)
        }) else {
            return error(format!(
                "CompleteMultipartUploadArtifact: no upload {upload_id}"
            ));
        };
        let multipart = file.multipart.as_mut().expect("found by its upload");
        let mut whole = Vec::new();
        for (n, declared) in &multipart.parts {
            let Some(bytes) = multipart.received.get(n) else {
                return error(format!(
                    "CompleteMultipartUploadArtifact: part {n} was never uploaded"
                ));
            };
            let etag = completed
                .iter()
                .find(|(c, _)| c == n)
                .map(|(_, e)| e.as_str());
            if etag != Some(declared.as_str()) || md5_hex(bytes) != *declared {
                return error(format!(
                    "CompleteMultipartUploadArtifact: part {n}: ETag {etag:?} does not match its bytes"
                ));
            }
            whole.extend_from_slice(bytes);
        }
        if md5_b64(&whole) != file.md5 {
            return error(format!(
                "CompleteMultipartUploadArtifact: the parts' md5 {} is not the file's {}",
                md5_b64(&whole),
                file.md5
            ));
        }
        multipart.completed = true;
        multipart.received.clear();
        file.bytes = Some(whole);
        file.puts += 1;
        let digest = file.md5.clone();
        json!({"data": {"completeMultipartUploadArtifact": {"digest": digest}}})
    }

    /// `CommitArtifact`: refused unless the manifest was uploaded and every
    /// file entry in it (not references) is stored in the collection.
    pub fn commit_artifact(&mut self, vars: &Value) -> Value {
        let id = str_of(vars, "artifactID").unwrap_or_default().to_string();
        let Some(i) = self.artifact_index(&id) else {
            return error(format!("CommitArtifact: no such artifact {id}"));
        };
        let a = &self.artifacts[i];
        let Some(manifest) = a
            .manifest_bytes
            .as_deref()
            .and_then(|b| serde_json::from_slice::<Value>(b).ok())
        else {
            return error(format!("CommitArtifact: {id} has no uploaded manifest"));
        };
        let collection = (a.entity.as_str(), a.project.as_str(), a.name.as_str());
        let contents = manifest["contents"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for (path, entry) in &contents {
            if entry.get("ref").is_some_and(|r| !r.is_null()) {
                continue;
            }
            let digest = entry["digest"].as_str().unwrap_or_default();
            if self.stored_in_collection(collection, digest).is_none() {
                return error(format!(
                    "CommitArtifact: {id}: file {path} ({digest}) was never uploaded"
                ));
            }
        }
        let a = &mut self.artifacts[i];
        a.commits += 1;
        if !a.committed {
            let (entity, project, name) = (a.entity.clone(), a.project.clone(), a.name.clone());
            let index = self
                .artifacts
                .iter()
                .filter(|o| o.entity == entity && o.project == project && o.name == name)
                .filter(|o| o.committed)
                .count() as u64;
            let a = &mut self.artifacts[i];
            a.committed = true;
            a.version_index = Some(index);
        }
        self.apply_aliases(i);
        let a = &self.artifacts[i];
        json!({"data": {"commitArtifact": {"artifact": {"id": a.id, "digest": a.digest}}}})
    }

    /// `UseArtifact`: wandb-core `{input: {...}}`, legacy flat variables.
    pub fn use_artifact(&mut self, vars: &Value) -> Value {
        let input = vars.get("input").filter(|v| v.is_object()).unwrap_or(vars);
        let id = str_of(input, "artifactID").unwrap_or_default().to_string();
        let Some(i) = self.artifact_index(&id) else {
            return error(format!("UseArtifact: no such artifact {id}"));
        };
        let run = str_of(input, "runName").map(str::to_string);
        let a = &mut self.artifacts[i];
        if let Some(run) = run
            && !a.used_by.contains(&run)
        {
            a.used_by.push(run);
        }
        json!({"data": {"useArtifact": {"artifact": {
            "id": a.id, "digest": a.digest, "description": a.description, "state": a.state(),
            "createdAt": "2026-01-01T00:00:00", "metadata": a.metadata.as_ref().map(Value::to_string),
        }}}})
    }

    pub fn client_id_mapping(&self, vars: &Value) -> Value {
        let client = str_of(vars, "clientID");
        let found = self
            .artifacts
            .iter()
            .find(|a| client.is_some() && a.client_id.as_deref() == client);
        json!({"data": {"clientIDMapping": found.map(|a| json!({"serverID": a.id}))}})
    }

    /// `PUT /artifacts/{id}/...`. `Ok(etag)` when stored.
    pub fn artifact_put(
        &mut self,
        id: &str,
        rest: &[String],
        content_md5: Option<&str>,
        body: Vec<u8>,
    ) -> Result<String, (u16, String)> {
        let Some(i) = self.artifact_index(id) else {
            return Err((404, format!("no artifact {id}")));
        };
        let actual = md5_b64(&body);
        if let Some(header) = content_md5
            && header.trim() != actual
        {
            self.counters.artifact_md5_mismatches += 1;
            return Err((
                400,
                format!("BadDigest: Content-MD5 {header} does not match the body's md5 {actual}"),
            ));
        }
        if content_md5.is_none() {
            self.counters.artifact_puts_without_md5 += 1;
        }
        let etag = format!("\"{}\"", md5_hex(&body));
        let a = &mut self.artifacts[i];
        match rest {
            [m] if m == "manifest" => {
                if let Some(declared) = &a.manifest_digest
                    && *declared != actual
                {
                    self.counters.artifact_md5_mismatches += 1;
                    return Err((
                        400,
                        format!("BadDigest: manifest md5 {actual}, declared {declared}"),
                    ));
                }
                a.manifest_bytes = Some(body);
                a.manifest_puts += 1;
                Ok(etag)
            }
            [kind, name @ ..] if kind == "files" && !name.is_empty() => {
                let name = name.join("/");
                let Some(file) = a.files.get_mut(&name).filter(|f| f.upload_requested) else {
                    return Err((403, format!("no upload URL was handed out for {name}")));
                };
                if file.md5 != actual {
                    self.counters.artifact_md5_mismatches += 1;
                    return Err((
                        400,
                        format!("BadDigest: {name} has md5 {actual}, declared {}", file.md5),
                    ));
                }
                file.bytes = Some(body);
                file.puts += 1;
                Ok(etag)
            }
            [kind, part, name @ ..] if kind == "parts" && !name.is_empty() => {
                let name = name.join("/");
                let part: u64 = part
                    .parse()
                    .map_err(|_| (400, format!("bad part number {part}")))?;
                let Some(multipart) = a.files.get_mut(&name).and_then(|f| f.multipart.as_mut())
                else {
                    return Err((403, format!("no multipart upload for {name}")));
                };
                let Some((_, declared)) = multipart.parts.iter().find(|(n, _)| *n == part) else {
                    return Err((400, format!("{name} has no part {part}")));
                };
                if md5_hex(&body) != *declared {
                    self.counters.artifact_md5_mismatches += 1;
                    return Err((
                        400,
                        format!("BadDigest: part {part} of {name} does not match its hexMD5"),
                    ));
                }
                multipart.received.insert(part, body);
                Ok(etag)
            }
            _ => Err((404, format!("no artifact upload at {}", rest.join("/")))),
        }
    }

    /// The bytes of `path` of artifact version `id`: stored with this
    /// version or with the one it was deduplicated against.
    pub fn artifact_file_bytes(&self, id: &str, path: &str) -> Option<&[u8]> {
        let a = &self.artifacts[self.artifact_index(id)?];
        let file = a.files.get(path)?;
        if let Some(bytes) = &file.bytes {
            return Some(bytes);
        }
        let birth = &self.artifacts[self.artifact_index(&file.birth_artifact_id)?];
        birth
            .files
            .values()
            .find(|f| f.md5 == file.md5)
            .and_then(|f| f.bytes.as_deref())
    }
}

/// Answers a legacy `__type(name: "...")` introspection query: every
/// `Alias: __type(name: "T")` in the query gets the fields and input fields
/// the real schema has for `T` (the ones the clients look for).
pub fn introspection(query: &str) -> Value {
    let mut data = Map::new();
    let mut rest = query;
    while let Some(at) = rest.find("__type") {
        let before = rest[..at].trim_end();
        let alias = before
            .strip_suffix(':')
            .map(|b| {
                let b = b.trim_end();
                let start = b
                    .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .map_or(0, |p| p + 1);
                b[start..].to_string()
            })
            .unwrap_or_else(|| "__type".into());
        let after = &rest[at..];
        let type_name = after.split('"').nth(1).unwrap_or_default().to_string();
        let names = |list: &[&str]| -> Value {
            Value::Array(list.iter().map(|n| json!({"name": n})).collect())
        };
        let (fields, input_fields): (&[&str], &[&str]) = match type_name.as_str() {
            "CreateArtifactInput" => (
                &[],
                &[
                    "entityName",
                    "projectName",
                    "artifactTypeName",
                    "artifactCollectionName",
                    "artifactCollectionNames",
                    "runName",
                    "digest",
                    "digestAlgorithm",
                    "description",
                    "labels",
                    "aliases",
                    "tags",
                    "metadata",
                    "ttlDurationSeconds",
                    "historyStep",
                    "enableDigestDeduplication",
                    "distributedID",
                    "clientID",
                    "sequenceClientID",
                    "storageRegion",
                ],
            ),
            "CreateArtifactFileSpecInput" => (
                &[],
                &[
                    "artifactID",
                    "name",
                    "md5",
                    "mimetype",
                    "artifactManifestID",
                    "uploadPartsInput",
                ],
            ),
            "UseArtifactInput" => (
                &[],
                &[
                    "entityName",
                    "projectName",
                    "runName",
                    "artifactID",
                    "usedAs",
                    "artifactEntityName",
                    "artifactProjectName",
                    "clientMutationId",
                ],
            ),
            "Artifact" => (
                &[
                    "id",
                    "digest",
                    "description",
                    "state",
                    "size",
                    "createdAt",
                    "updatedAt",
                    "versionIndex",
                    "metadata",
                    "aliases",
                    "ttlDurationSeconds",
                    "ttlIsInherited",
                    "tags",
                    "historyStep",
                ],
                &[],
            ),
            "Query" => (
                &[
                    "viewer",
                    "model",
                    "project",
                    "serverInfo",
                    "artifact",
                    "clientIDMapping",
                ],
                &[],
            ),
            "Mutation" => (
                &[
                    "upsertBucket",
                    "createRunFiles",
                    "createArtifact",
                    "createArtifactManifest",
                    "updateArtifactManifest",
                    "createArtifactFiles",
                    "completeMultipartUploadArtifact",
                    "commitArtifact",
                    "useArtifact",
                    "notifyScriptableRunAlert",
                ],
                &[],
            ),
            "ServerInfo" => (
                &["cliVersionInfo", "latestLocalVersionInfo", "features"],
                &[],
            ),
            _ => (&[], &[]),
        };
        data.insert(
            alias,
            json!({"name": type_name, "fields": names(fields), "inputFields": names(input_fields)}),
        );
        rest = &after["__type".len()..];
    }
    json!({"data": data})
}

/// One version as the snapshot shows it.
pub fn artifact_snapshot(state_artifacts: &[Artifact], a: &Artifact) -> Value {
    let by_id = |id: &str| state_artifacts.iter().find(|o| o.id == id);
    let manifest = a
        .manifest_bytes
        .as_deref()
        .and_then(|b| serde_json::from_slice::<Value>(b).ok());
    let entries: Map<String, Value> = manifest
        .as_ref()
        .and_then(|m| m["contents"].as_object())
        .map(|contents| {
            contents
                .iter()
                .map(|(path, e)| {
                    let mut e = e.clone();
                    // The birth artifact as name:version, comparable across servers.
                    if let Some(birth) = e["birthArtifactID"].as_str().and_then(by_id) {
                        e["birthArtifact"] = json!(format!(
                            "{}:{}",
                            birth.name,
                            birth
                                .version_index
                                .map_or_else(|| "pending".into(), |v| format!("v{v}"))
                        ));
                    }
                    (path.clone(), e)
                })
                .collect()
        })
        .unwrap_or_default();
    let files: Map<String, Value> = a
        .files
        .iter()
        .map(|(path, f)| {
            let bytes = f.bytes.as_deref().or_else(|| {
                by_id(&f.birth_artifact_id)?
                    .files
                    .values()
                    .find(|o| o.md5 == f.md5)?
                    .bytes
                    .as_deref()
            });
            (
                path.clone(),
                json!({
                    "md5": f.md5,
                    "birthArtifactID": f.birth_artifact_id,
                    "upload_requested": f.upload_requested,
                    "stored_here": f.bytes.is_some(),
                    "puts": f.puts,
                    "multipart": f.multipart.as_ref().map(|m| json!({
                        "uploadID": m.upload_id, "parts": m.parts.len(), "completed": m.completed,
                    })),
                    "size": bytes.map(<[u8]>::len),
                    "sha256": bytes.map(sha256_hex),
                }),
            )
        })
        .collect();
    let mut aliases = a.aliases.clone();
    aliases.sort();
    json!({
        "id": a.id,
        "entity": a.entity,
        "project": a.project,
        "name": a.name,
        "type": a.type_name,
        "version": a.version_json(),
        "versionIndex": a.version_index,
        "digest": a.digest,
        "aliases": aliases,
        "requested_aliases": a.requested_aliases,
        "tags": a.tags,
        "state": a.state(),
        "description": a.description,
        "metadata": a.metadata,
        "created_by": a.created_by,
        "used_by": a.used_by,
        "clientID": a.client_id,
        "sequenceClientID": a.sequence_client_id,
        "historyStep": a.history_step,
        "creates": a.creates,
        "commits": a.commits,
        "manifest_digest": a.manifest_digest,
        "manifest_type": a.manifest_type,
        "manifest_requests": a.manifest_requests,
        "manifest_puts": a.manifest_puts,
        "manifest": manifest,
        "entries": entries,
        "files": files,
    })
}
