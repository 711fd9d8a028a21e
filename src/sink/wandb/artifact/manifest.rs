//! The manifest file uploaded with an artifact (`wandb_manifest.json`,
//! storage layout V2), spelled byte for byte as wandb-core writes it (Go's
//! `encoding/json`: keys of maps in byte order, `<`, `>`, `&`, U+2028 and
//! U+2029 escaped), so that its MD5, which the server is told, is the one
//! the official client would send for the same artifact.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use crate::source::wandb::proto::ArtifactManifest;

/// The manifest of `manifest` with each uploaded file's `birthArtifactID`
/// from `births` (file name → id), as JSON bytes.
pub(crate) fn encode(manifest: &ArtifactManifest, births: &BTreeMap<String, String>) -> Vec<u8> {
    let mut out = String::new();
    out.push_str("{\"version\":");
    out.push_str(&manifest.version.to_string());
    out.push_str(",\"storagePolicy\":");
    string(&mut out, &manifest.storage_policy);
    out.push_str(",\"storagePolicyConfig\":{\"storageLayout\":\"V2\"");
    // The only other key wandb-core keeps.
    if let Some(region) = manifest
        .storage_policy_config
        .iter()
        .find(|c| c.key == "storageRegion")
        .and_then(|c| serde_json::from_str::<String>(&c.value_json).ok())
    {
        out.push_str(",\"storageRegion\":");
        string(&mut out, &region);
    }
    out.push_str("},\"contents\":{");
    // A later entry of the same path replaces an earlier one (a map).
    let entries: BTreeMap<&str, _> = manifest
        .contents
        .iter()
        .map(|e| (e.path.as_str(), e))
        .collect();
    for (i, (path, entry)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        string(&mut out, path);
        out.push_str(":{\"digest\":");
        string(&mut out, &entry.digest);
        if !entry.reference.is_empty() {
            out.push_str(",\"ref\":");
            string(&mut out, &entry.reference);
        }
        out.push_str(",\"size\":");
        out.push_str(&entry.size.to_string());
        if !entry.local_path.is_empty() {
            out.push_str(",\"local_path\":");
            string(&mut out, &entry.local_path);
        }
        let birth = births
            .get(*path)
            .map(String::as_str)
            .filter(|_| !entry.local_path.is_empty())
            .unwrap_or(entry.birth_artifact_id.as_str());
        if !birth.is_empty() {
            out.push_str(",\"birthArtifactID\":");
            string(&mut out, birth);
        }
        out.push_str(",\"skip_cache\":");
        out.push_str(if entry.skip_cache { "true" } else { "false" });
        let extra: BTreeMap<&str, Json> = entry
            .extra
            .iter()
            .filter_map(|x| Some((x.key.as_str(), serde_json::from_str(&x.value_json).ok()?)))
            .collect();
        if !extra.is_empty() {
            out.push_str(",\"extra\":{");
            for (j, (key, value)) in extra.iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                string(&mut out, key);
                out.push(':');
                value_json(&mut out, value);
            }
            out.push('}');
        }
        out.push('}');
    }
    out.push_str("}}");
    out.into_bytes()
}

/// A JSON value as Go writes an `any` decoded from JSON: objects with
/// sorted keys, numbers as float64.
fn value_json(out: &mut String, value: &Json) {
    match value {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Number(n) => {
            let f = n.as_f64().unwrap_or(0.0);
            if f.fract() == 0.0 && f.abs() < 1e21 {
                out.push_str(&format!("{f:.0}"));
            } else {
                out.push_str(&f.to_string());
            }
        }
        Json::String(s) => string(out, s),
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                value_json(out, item);
            }
            out.push(']');
        }
        Json::Object(map) => {
            let sorted: BTreeMap<&String, &Json> = map.iter().collect();
            out.push('{');
            for (i, (key, item)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                string(out, key);
                out.push(':');
                value_json(out, item);
            }
            out.push('}');
        }
    }
}

/// A JSON string as Go's `encoding/json` escapes it.
fn string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::wandb::proto::{ArtifactManifestEntry, KeyJson};

    #[test]
    fn entries_sorted_with_births_references_and_extras_as_go_writes_them() {
        let manifest = ArtifactManifest {
            version: 1,
            storage_policy: "wandb-storage-policy-v1".into(),
            storage_policy_config: vec![KeyJson {
                key: "storageLayout".into(),
                value_json: "\"V2\"".into(),
            }],
            contents: vec![
                ArtifactManifestEntry {
                    path: "data.csv".into(),
                    digest: "w8a8Kujs5L0lENyiEiXAQQ==".into(),
                    size: 12,
                    local_path: "/h/staging/tmp<1>".into(),
                    ..Default::default()
                },
                ArtifactManifestEntry {
                    path: "a/ref".into(),
                    digest: "etag".into(),
                    reference: "s3://bucket/key".into(),
                    size: 5,
                    extra: vec![KeyJson {
                        key: "versionID".into(),
                        value_json: "{\"z\": 1, \"a\": 2.5}".into(),
                    }],
                    ..Default::default()
                },
            ],
            manifest_file_path: String::new(),
        };
        let births = BTreeMap::from([("data.csv".to_string(), "QXJ0aWZhY3Q6MQ==".to_string())]);
        assert_eq!(
            String::from_utf8(encode(&manifest, &births)).unwrap(),
            "{\"version\":1,\"storagePolicy\":\"wandb-storage-policy-v1\",\"storagePolicyConfig\":{\"storageLayout\":\"V2\"},\
\"contents\":{\"a/ref\":{\"digest\":\"etag\",\"ref\":\"s3://bucket/key\",\"size\":5,\"skip_cache\":false,\
\"extra\":{\"versionID\":{\"a\":2.5,\"z\":1}}},\"data.csv\":{\"digest\":\"w8a8Kujs5L0lENyiEiXAQQ==\",\"size\":12,\
\"local_path\":\"/h/staging/tmp\\u003c1\\u003e\",\"birthArtifactID\":\"QXJ0aWZhY3Q6MQ==\",\"skip_cache\":false}}}"
        );
    }
}
