//! The server's own contract, checked with raw HTTP/1.1 requests (the official
//! client never sends gaps, gzip, or storage headers, so those are shown here).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use super::{Endpoint, Fault, Options, RateLimit, WandbServer};

struct Reply {
    status: u16,
    headers: String,
    body: Value,
}

/// One request on a fresh connection; `None` if the server closed it unanswered.
fn send(
    server: &WandbServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<Reply> {
    let mut stream = TcpStream::connect(server.addr()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        server.addr()
    );
    head += &format!("Content-Length: {}\r\n", body.len());
    for (name, value) in headers {
        head += &format!("{name}: {value}\r\n");
    }
    head += "\r\n";
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    if raw.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).expect("JSON body")
    };
    Some(Reply {
        status,
        headers: head.to_ascii_lowercase(),
        body,
    })
}

fn auth(key: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("api:{key}"))
    )
}

fn gql(server: &WandbServer, op: &str, query: &str, variables: Value) -> Option<Reply> {
    let body = json!({"operationName": op, "query": query, "variables": variables});
    let key = auth(server.api_key());
    send(
        server,
        "POST",
        "/graphql",
        &[("Authorization", &key)],
        body.to_string().as_bytes(),
    )
}

fn stream(server: &WandbServer, run: &str, body: &Value, gzip: bool) -> Option<Reply> {
    let key = auth(server.api_key());
    let path = format!("/files/ent/proj/{run}/file_stream");
    let mut bytes = body.to_string().into_bytes();
    let mut headers = vec![("Authorization", key.as_str())];
    if gzip {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&bytes).unwrap();
        bytes = encoder.finish().unwrap();
        headers.push(("Content-Encoding", "gzip"));
    }
    send(server, "POST", &path, &headers, &bytes)
}

const UPSERT: &str = "mutation UpsertBucket($name: String) { upsertBucket { bucket { id } } }";

#[test]
fn graphql_operations_follow_the_blueprint() {
    let server = WandbServer::start();
    // Legacy clients send an empty operationName: the name comes from the query.
    let vars = json!({"name": "r1", "project": "proj", "entity": null, "config": "{\"lr\":{\"value\":0.1}}",
        "tags": ["a"], "displayName": "shown", "summaryMetrics": "{\"x\":NaN}", "notes": null});
    let first = gql(&server, "", &format!("\n  {UPSERT}"), vars).unwrap();
    assert_eq!(first.status, 200);
    let bucket = &first.body["data"]["upsertBucket"]["bucket"];
    assert_eq!(first.body["data"]["upsertBucket"]["inserted"], true);
    assert_eq!(bucket["project"]["entity"]["name"], "default-entity");
    assert_eq!(bucket["project"]["name"], "proj");
    assert_eq!(bucket["historyLineCount"], 0);
    assert_eq!(bucket["displayName"], "shown");
    // Null parameters leave stored ones alone.
    let again = gql(
        &server,
        "UpsertBucket",
        UPSERT,
        json!({"name": "r1", "project": "proj", "tags": null}),
    )
    .unwrap();
    assert_eq!(again.body["data"]["upsertBucket"]["inserted"], false);
    assert_eq!(
        again.body["data"]["upsertBucket"]["bucket"]["id"],
        bucket["id"]
    );

    let files = gql(&server, "CreateRunFiles", "mutation CreateRunFiles { x }",
        json!({"entity": "default-entity", "project": "proj", "run": "r1", "files": ["a b.txt", "media/x.png"]}))
    .unwrap();
    let entries = files.body["data"]["createRunFiles"]["files"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(entries.len(), 2);
    let port = server.addr().port();
    assert_eq!(
        entries[0]["uploadUrl"],
        format!("http://127.0.0.1:{port}/storage/default-entity/proj/r1/a%20b.txt")
    );
    assert_eq!(
        files.body["data"]["createRunFiles"]["uploadHeaders"],
        json!([])
    );

    let unknown = gql(
        &server,
        "RunResumeStatus",
        "query RunResumeStatus { x }",
        json!({"project": "proj", "name": "zz"}),
    );
    assert_eq!(unknown.unwrap().body, json!({"data": {"model": null}}));
    let resume = gql(
        &server,
        "RunResumeStatus",
        "query RunResumeStatus { x }",
        json!({"project": "proj", "name": "r1"}),
    );
    let resume = resume.unwrap().body["data"]["model"]["bucket"].clone();
    assert_eq!(resume["historyLineCount"], 0);
    assert_eq!(resume["historyTail"], "[]");
    assert!(
        serde_json::from_str::<Value>(resume["wandbConfig"].as_str().unwrap())
            .unwrap()
            .get("t")
            .is_some()
    );

    let other = gql(
        &server,
        "LinkArtifact",
        "mutation LinkArtifact { x }",
        json!({}),
    )
    .unwrap();
    assert_eq!(
        other.body,
        json!({"data": null, "errors": [{"message": "not implemented: LinkArtifact"}]})
    );

    let run = server.run("r1").unwrap();
    assert_eq!(run["config"]["lr"]["value"], 0.1);
    assert_eq!(run["tags"], json!(["a"]));
    assert_eq!(run["summaryMetrics"]["x"], "NaN");
    assert_eq!(run["upserts"], 2);
    let names = server.operation_names();
    assert_eq!(
        names,
        [
            "UpsertBucket",
            "UpsertBucket",
            "CreateRunFiles",
            "RunResumeStatus",
            "RunResumeStatus",
            "LinkArtifact"
        ]
    );
    assert_eq!(
        server.snapshot()["operations"][1]["variables"]["name"],
        "r1"
    );
}

#[test]
fn file_stream_stores_lines_by_offset() {
    let server = WandbServer::start();
    let h = |o: usize, lines: &[&str]| json!({"files": {"wandb-history.jsonl": {"offset": o, "content": lines}}});
    stream(
        &server,
        "r",
        &h(0, &[r#"{"_step":0,"v":NaN}"#, r#"{"_step":1}"#]),
        false,
    )
    .unwrap();
    stream(
        &server,
        "r",
        &h(1, &[r#"{"_step":1,"again":true}"#, r#"{"_step":2}"#]),
        true,
    )
    .unwrap();
    stream(&server, "r", &h(5, &[r#"{"_step":5}"#]), false).unwrap();
    let done = json!({"files": {"wandb-summary.json": {"offset": 0, "content": ["{\"loss\":Infinity}"]}},
        "uploaded": ["config.yaml"], "preempting": true, "complete": true, "exitcode": 3});
    let reply = stream(&server, "r", &done, false).unwrap();
    assert_eq!(reply.body, json!({"exitcode": null, "limits": {}}));
    stream(&server, "r", &json!({}), false).unwrap();

    let run = server.run("r").unwrap();
    assert_eq!(run["history_raw"][0], r#"{"_step":0,"v":NaN}"#);
    assert_eq!(run["history"][0]["v"], "NaN");
    assert_eq!(run["history"][1]["again"], true);
    assert_eq!(run["history"].as_array().unwrap().len(), 6);
    assert_eq!(run["history"][3], Value::Null);
    assert_eq!(run["gaps"], 2);
    assert_eq!(run["history_lines_received"], 5);
    assert_eq!(run["summary"]["loss"], "Infinity");
    assert_eq!(run["uploaded"], json!(["config.yaml"]));
    assert_eq!(
        (
            run["preempting"].clone(),
            run["complete"].clone(),
            run["exitcode"].clone()
        ),
        (json!(true), json!(true), json!(3))
    );
    assert_eq!(run["heartbeats"], 1);
    assert_eq!(server.snapshot()["counters"]["history_lines_received"], 5);

    server.set_stopped(true);
    assert_eq!(
        stream(&server, "r", &json!({}), false).unwrap().body["stopped"],
        true
    );
}

#[test]
fn auth_and_storage_rules_are_enforced_and_recorded() {
    let options = Options {
        upload_headers: vec!["X-Old:1".into()],
        ..Options::default()
    };
    let server = WandbServer::with_options(options);
    server.set_upload_headers(vec!["X-Test-Upload:yes".into()]);
    let body = json!({"query": UPSERT, "variables": {"name": "r"}}).to_string();
    let wrong = auth("some-other-key-0123456789abcdef0123456789abcdef");
    let refused = send(
        &server,
        "POST",
        "/graphql",
        &[("Authorization", &wrong)],
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(refused.status, 401);
    assert!(refused.body["errors"][0]["message"].is_string());
    assert_eq!(
        send(&server, "POST", "/files/e/p/r/file_stream", &[], b"{}")
            .unwrap()
            .status,
        401
    );

    let ok = send(
        &server,
        "PUT",
        "/storage/e/p/r/media/a%20b.png",
        &[("X-Test-Upload", "yes")],
        b"png",
    )
    .unwrap();
    assert_eq!(ok.status, 200);
    let key = auth(server.api_key());
    send(
        &server,
        "PUT",
        "/storage/e/p/r/config.yaml",
        &[("Authorization", &key)],
        b"lr: 1",
    )
    .unwrap();
    let snapshot = server.snapshot();
    assert_eq!(snapshot["counters"]["unauthorized"], 2);
    assert_eq!(snapshot["counters"]["storage_auth_violations"], 1);
    assert_eq!(snapshot["counters"]["missing_upload_headers"], 1);
    let storage = &snapshot["runs"][0]["storage"];
    assert_eq!(storage["media/a b.png"]["size"], 3);
    assert_eq!(
        storage["config.yaml"]["sha256"],
        "56803655119c9c119ecd09e436f85028254393f4c67c76873300732e605fea1f"
    );
    assert_eq!(server.stored_file("r", "config.yaml").unwrap(), b"lr: 1");

    assert_eq!(
        send(&server, "GET", "/api/v1/nope", &[], b"")
            .unwrap()
            .status,
        404
    );
    let last = server.snapshot()["requests"]
        .as_array()
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    assert_eq!(
        (&last["path"], &last["status"]),
        (&json!("/api/v1/nope"), &json!(404))
    );
    let over_http = send(&server, "GET", "/_state", &[], b"").unwrap().body;
    assert_eq!(over_http["counters"], server.snapshot()["counters"]);
}

#[test]
fn faults_hit_the_next_n_matching_requests() {
    let server = WandbServer::start();
    server.inject(
        Endpoint::Operation("UpsertBucket".into()),
        Fault::Status {
            code: 429,
            retry_after: Some(7),
        },
        1,
    );
    server.inject(Endpoint::Graphql, Fault::GraphqlError("boom".into()), 1);
    server.inject(Endpoint::FileStream, Fault::Drop, 1);
    server.inject(Endpoint::FileStream, Fault::DropAfterProcessing, 1);
    server.inject_after(
        Endpoint::Storage,
        Fault::Delay(Duration::from_millis(300)),
        1,
        1,
    );
    server.set_rate_limit(Some(RateLimit {
        remaining: 4,
        reset: 9,
    }));
    let cleared = WandbServer::start();
    cleared.inject(Endpoint::Graphql, Fault::Drop, 1);
    cleared.clear_faults();
    assert!(
        gql(
            &cleared,
            "Viewer",
            "query Viewer { viewer { id } }",
            json!({})
        )
        .unwrap()
        .body["data"]["viewer"]
            .is_object()
    );

    // The operation-specific rule does not match another operation.
    let other = gql(
        &server,
        "ServerFeaturesQuery",
        "query ServerFeaturesQuery { x }",
        json!({}),
    )
    .unwrap();
    assert_eq!(other.body["errors"][0]["message"], "boom");
    let limited = gql(&server, "UpsertBucket", UPSERT, json!({"name": "u"})).unwrap();
    assert_eq!(limited.status, 429);
    assert!(
        limited.headers.contains("retry-after: 7"),
        "{}",
        limited.headers
    );
    assert!(
        limited.headers.contains("ratelimit-remaining: 4")
            && limited.headers.contains("ratelimit-reset: 9")
    );
    assert_eq!(
        gql(&server, "UpsertBucket", UPSERT, json!({"name": "u"}))
            .unwrap()
            .status,
        200
    );

    let line = json!({"files": {"wandb-history.jsonl": {"offset": 0, "content": ["{}"]}}});
    let received = || server.snapshot()["counters"]["history_lines_received"].clone();
    assert!(
        stream(&server, "r", &line, false).is_none(),
        "dropped unprocessed"
    );
    assert_eq!(received(), 0);
    assert!(
        stream(&server, "r", &line, false).is_none(),
        "dropped after processing"
    );
    assert_eq!(received(), 1);
    assert_eq!(stream(&server, "r", &line, false).unwrap().status, 200);
    assert_eq!(
        server.run("r").unwrap()["history"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A rule for one FileStream file ignores requests without it.
    server.inject(
        Endpoint::FileStreamWith("output.log".into()),
        Fault::Status {
            code: 503,
            retry_after: None,
        },
        1,
    );
    assert_eq!(stream(&server, "r", &line, false).unwrap().status, 200);
    let output = json!({"files": {"output.log": {"offset": 0, "content": ["hi"]}}});
    assert_eq!(stream(&server, "r", &output, false).unwrap().status, 503);
    assert_eq!(stream(&server, "r", &output, false).unwrap().status, 200);

    // The delay skips the first upload and hits the second.
    let started = Instant::now();
    assert_eq!(
        send(&server, "PUT", "/storage/e/p/r/f", &[], b"x")
            .unwrap()
            .status,
        200
    );
    assert!(started.elapsed() < Duration::from_millis(300));
    assert_eq!(
        send(&server, "PUT", "/storage/e/p/r/f", &[], b"x")
            .unwrap()
            .status,
        200
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(server.snapshot()["counters"]["faults_injected"], 6);
    let statuses: Vec<Value> = server.snapshot()["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].clone())
        .collect();
    assert_eq!(
        statuses,
        [200, 429, 200, 0, 0, 200, 200, 503, 200, 200, 200].map(|s| json!(s))
    );
}

#[test]
fn dropping_the_handle_stops_the_server() {
    let server = WandbServer::start();
    let addr = server.addr();
    assert!(addr.ip().is_loopback());
    drop(server);
    assert!(TcpStream::connect(addr).is_err());
}

// ---------------------------------------------------------------------------
// The artifact protocol, request by request.
// ---------------------------------------------------------------------------

fn md5_hex(bytes: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn data(reply: Option<Reply>, field: &str) -> Value {
    let reply = reply.expect("an answer");
    assert_eq!(reply.status, 200);
    assert!(reply.body["errors"].is_null(), "{field}: {}", reply.body);
    reply.body["data"][field].clone()
}

fn path_of(server: &WandbServer, url: &Value) -> String {
    url.as_str()
        .unwrap()
        .strip_prefix(&server.base_url())
        .unwrap()
        .to_string()
}

fn create_version(server: &WandbServer, digest: &str, aliases: &[&str]) -> Value {
    let aliases: Vec<Value> = aliases
        .iter()
        .map(|a| json!({"artifactCollectionName": "ds", "alias": a}))
        .collect();
    let input = json!({"entityName": "", "projectName": "p", "artifactTypeName": "dataset",
        "artifactCollectionName": "ds", "runName": "r1", "digest": digest, "aliases": aliases,
        "description": "d", "metadata": "{\"k\":1}", "clientID": format!("client-{digest}")});
    let q = "mutation CreateArtifact($input: CreateArtifactInput!) { x }";
    data(
        gql(server, "CreateArtifact", q, json!({"input": input})),
        "createArtifact",
    )["artifact"]
        .clone()
}

fn manifest_request(server: &WandbServer, id: &Value, digest: &str, upload: bool) -> Value {
    let vars = json!({"artifactID": id, "baseArtifactID": null, "name": "wandb_manifest.json",
        "digest": digest, "entityName": "default-entity", "projectName": "p", "runName": "r1",
        "manifestType": "FULL", "includeUpload": upload});
    data(
        gql(
            server,
            "CreateArtifactManifest",
            "mutation CreateArtifactManifest { x }",
            vars,
        ),
        "createArtifactManifest",
    )["artifactManifest"]
        .clone()
}

fn file_specs(server: &WandbServer, specs: Value) -> Vec<Value> {
    let vars = json!({"input": {"storageLayout": "V2", "artifactFiles": specs}});
    data(
        gql(
            server,
            "CreateArtifactFiles",
            "mutation CreateArtifactFiles { x }",
            vars,
        ),
        "createArtifactFiles",
    )["files"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"].clone())
        .collect()
}

fn put(server: &WandbServer, url: &Value, md5: Option<&str>, body: &[u8]) -> Reply {
    let headers: Vec<(&str, &str)> = md5.map(|m| ("Content-MD5", m)).into_iter().collect();
    send(server, "PUT", &path_of(server, url), &headers, body).expect("an answer")
}

/// Uploads `manifest` for version `id` and commits it.
fn finish_version(server: &WandbServer, id: &Value, manifest: &Value) -> Option<Reply> {
    let bytes = manifest.to_string().into_bytes();
    let digest = super::artifacts::md5_b64(&bytes);
    let file = &manifest_request(server, id, &digest, true)["file"];
    assert!(
        file["uploadHeaders"]
            .as_array()
            .unwrap()
            .contains(&json!(format!("Content-MD5:{digest}")))
    );
    assert_eq!(
        put(server, &file["uploadUrl"], Some(&digest), &bytes).status,
        200
    );
    gql(
        server,
        "CommitArtifact",
        "mutation CommitArtifact { x }",
        json!({"artifactID": id}),
    )
}

#[test]
fn artifact_versions_dedup_check_md5_and_complete_multipart() {
    let server = WandbServer::start();
    let md5 = super::artifacts::md5_b64;
    let (one, part1, part2) = (b"one".to_vec(), vec![7u8; 1000], vec![9u8; 10]);
    let big: Vec<u8> = [part1.clone(), part2.clone()].concat();

    let v0 = create_version(&server, "digest-0", &["latest", "best"]);
    assert_eq!(v0["state"], "PENDING");
    assert!(v0["artifactSequence"]["latestArtifact"].is_null());
    // The same digest while pending: the same version (a client resuming).
    assert_eq!(
        create_version(&server, "digest-0", &["latest"])["id"],
        v0["id"]
    );
    let id = &v0["id"];
    let manifest = manifest_request(&server, id, "", false);
    assert!(manifest["file"].get("uploadUrl").is_none());
    let nodes = file_specs(
        &server,
        json!([
            {"artifactID": id, "name": "dir/one.txt", "md5": md5(&one), "artifactManifestID": manifest["id"]},
            {"artifactID": id, "name": "big.bin", "md5": md5(&big), "artifactManifestID": manifest["id"],
             "uploadPartsInput": [{"partNumber": 1, "hexMD5": md5_hex(&part1)}, {"partNumber": 2, "hexMD5": md5_hex(&part2)}]},
        ]),
    );
    assert_eq!(nodes[0]["artifact"]["id"], *id);
    assert!(nodes[0]["uploadMultipartUrls"].is_null());
    let headers = nodes[0]["uploadHeaders"].as_array().unwrap();
    assert_eq!(headers, &[json!(format!("Content-MD5:{}", md5(&one)))]);

    // Content-MD5 must be the body's, and the body the declared file.
    assert_eq!(
        put(&server, &nodes[0]["uploadUrl"], Some(&md5(b"two")), &one).status,
        400
    );
    assert_eq!(
        put(&server, &nodes[0]["uploadUrl"], Some(&md5(b"two")), b"two").status,
        400
    );
    // Committing before every file and the manifest are there is refused.
    let early = gql(
        &server,
        "CommitArtifact",
        "mutation CommitArtifact { x }",
        json!({"artifactID": id}),
    );
    assert!(
        early.unwrap().body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("no uploaded manifest")
    );
    let stored = put(&server, &nodes[0]["uploadUrl"], Some(&md5(&one)), &one);
    assert_eq!(stored.status, 200);
    assert!(
        stored
            .headers
            .contains(&format!("etag: \"{}\"", md5_hex(&one)))
    );

    // Multipart: parts checked against their hexMD5, answered with ETags.
    let parts = nodes[1]["uploadMultipartUrls"]["uploadUrlParts"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(
        put(&server, &parts[1]["uploadUrl"], None, &part1).status,
        400
    );
    let mut etags = Vec::new();
    for (part, bytes) in parts.iter().zip([&part1, &part2]) {
        let reply = put(&server, &part["uploadUrl"], Some(&md5(bytes)), bytes);
        assert_eq!(reply.status, 200);
        let etag = reply
            .headers
            .lines()
            .find_map(|l| l.strip_prefix("etag: "))
            .unwrap()
            .to_string();
        etags.push(json!({"partNumber": part["partNumber"], "hexMD5": etag}));
    }
    let complete = |parts: Value| {
        gql(&server, "CompleteMultipartUploadArtifact", "mutation CompleteMultipartUploadArtifact { x }",
            json!({"completeMultipartAction": "Complete", "completedParts": parts, "artifactID": id,
                   "storagePath": nodes[1]["storagePath"], "uploadID": nodes[1]["uploadMultipartUrls"]["uploadID"]}))
        .unwrap()
        .body
    };
    let wrong = json!([etags[0], {"partNumber": 2, "hexMD5": "\"0\""}]);
    assert!(complete(wrong)["errors"].is_array());
    assert_eq!(
        complete(json!(etags))["data"]["completeMultipartUploadArtifact"]["digest"],
        md5(&big)
    );

    let entries = json!({"version": 1, "storagePolicy": "wandb-storage-policy-v1",
        "storagePolicyConfig": {"storageLayout": "V2"}, "contents": {
            "dir/one.txt": {"digest": md5(&one), "size": 3, "birthArtifactID": id},
            "big.bin": {"digest": md5(&big), "size": big.len(), "birthArtifactID": id},
            "remote.csv": {"digest": "s3://b/remote.csv", "ref": "s3://b/remote.csv"}}});
    assert!(finish_version(&server, id, &entries).unwrap().body["errors"].is_null());

    // A second version: the file the collection stores gets no upload URL.
    let v1 = create_version(&server, "digest-1", &["latest", "best"]);
    assert_eq!(v1["artifactSequence"]["latestArtifact"]["id"], *id);
    let nodes = file_specs(
        &server,
        json!([{"artifactID": v1["id"], "name": "copy.txt", "md5": md5(&one)}]),
    );
    assert!(nodes[0]["uploadUrl"].is_null());
    assert_eq!(nodes[0]["artifact"]["id"], *id);
    let entries = json!({"version": 1, "storagePolicyConfig": {"storageLayout": "V2"},
        "contents": {"copy.txt": {"digest": md5(&one), "size": 3, "birthArtifactID": id}}});
    assert!(finish_version(&server, &v1["id"], &entries).unwrap().body["errors"].is_null());
    // Committed: the same digest again returns it, committed.
    assert_eq!(
        create_version(&server, "digest-1", &[])["state"],
        "COMMITTED"
    );
    let used = json!({"input": {"artifactID": id, "entityName": "default-entity", "projectName": "p", "runName": "r2"}});
    data(
        gql(&server, "UseArtifact", "mutation UseArtifact { x }", used),
        "useArtifact",
    );
    let mapped = gql(
        &server,
        "ClientIDMapping",
        "query ClientIDMapping { x }",
        json!({"clientID": "client-digest-1"}),
    );
    assert_eq!(data(mapped, "clientIDMapping")["serverID"], v1["id"]);

    let artifacts = server.artifacts();
    let (a0, a1) = (&artifacts[0], &artifacts[1]);
    assert_eq!(
        (a0["version"].clone(), a1["version"].clone()),
        (json!("v0"), json!("v1"))
    );
    assert_eq!(a0["aliases"], json!([]), "best and latest moved to v1");
    assert_eq!(a1["aliases"], json!(["best", "latest"]));
    assert_eq!(
        (a0["creates"].clone(), a1["creates"].clone()),
        (json!(2), json!(2))
    );
    assert_eq!(a0["entity"], "default-entity");
    assert_eq!(a0["metadata"], json!({"k": 1}));
    assert_eq!(a0["used_by"], json!(["r2"]));
    assert_eq!(a0["files"]["big.bin"]["multipart"]["completed"], true);
    assert_eq!(a0["files"]["dir/one.txt"]["puts"], 1);
    assert_eq!(a0["entries"]["remote.csv"]["ref"], "s3://b/remote.csv");
    assert_eq!(a1["entries"]["copy.txt"]["birthArtifact"], "ds:v0");
    assert_eq!(
        a1["files"]["copy.txt"]["sha256"],
        super::artifacts::sha256_hex(&one)
    );
    assert_eq!(
        server
            .artifact_file(a1["id"].as_str().unwrap(), "copy.txt")
            .unwrap(),
        one
    );
    assert_eq!(
        server
            .artifact_file(a0["id"].as_str().unwrap(), "big.bin")
            .unwrap(),
        big
    );
    let counters = server.snapshot()["counters"].clone();
    assert_eq!(counters["artifact_md5_mismatches"], 3);
    assert_eq!(counters["artifact_puts"], 8);
    assert_eq!(counters["storage_puts"], 0);
}

#[test]
fn artifact_uploads_can_fail_or_hang() {
    let server = WandbServer::start();
    let v = create_version(&server, "digest-h", &["latest"]);
    let bytes = b"payload".to_vec();
    let md5 = super::artifacts::md5_b64(&bytes);
    let nodes = file_specs(
        &server,
        json!([{"artifactID": v["id"], "name": "a.txt", "md5": md5}]),
    );
    server.inject(
        Endpoint::ArtifactStorage,
        Fault::Status {
            code: 503,
            retry_after: None,
        },
        1,
    );
    server.inject(Endpoint::ArtifactFile("a.txt".into()), Fault::Hang, 1);
    server.inject(
        Endpoint::Operation("CommitArtifact".into()),
        Fault::GraphqlError("boom".into()),
        1,
    );
    assert_eq!(
        put(&server, &nodes[0]["uploadUrl"], Some(&md5), &bytes).status,
        503
    );

    // The hung PUT gets no answer and stores nothing.
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let path = path_of(&server, &nodes[0]["uploadUrl"]);
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: x\r\nContent-MD5: {md5}\r\nContent-Length: {}\r\n\r\n",
        bytes.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&bytes).unwrap();
    let mut buf = [0u8; 64];
    assert!(
        stream.read(&mut buf).is_err(),
        "a hung request was answered"
    );
    assert_eq!(server.artifacts()[0]["files"]["a.txt"]["puts"], 0);

    assert_eq!(
        put(&server, &nodes[0]["uploadUrl"], Some(&md5), &bytes).status,
        200
    );
    let manifest = json!({"version": 1, "contents": {"a.txt": {"digest": md5, "size": 7}}});
    let failed = finish_version(&server, &v["id"], &manifest).unwrap();
    assert_eq!(failed.body["errors"][0]["message"], "boom");
    assert_eq!(server.artifacts()[0]["state"], "PENDING");
    let again = gql(
        &server,
        "CommitArtifact",
        "mutation CommitArtifact { x }",
        json!({"artifactID": v["id"]}),
    );
    assert!(again.unwrap().body["errors"].is_null());
    let a = &server.artifacts()[0];
    assert_eq!(
        (
            a["state"].clone(),
            a["version"].clone(),
            a["commits"].clone()
        ),
        (json!("COMMITTED"), json!("v0"), json!(1))
    );
    let faults: Vec<Value> = server.snapshot()["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["fault"].as_str().map(|f| json!(f)))
        .collect();
    assert_eq!(
        faults,
        [
            json!("status 503"),
            json!("hang"),
            json!("graphql error: boom")
        ]
    );
}
