//! `POST /graphql`: the operations `wandb sync` uses, answered from [`State`].

use serde_json::{Value, json};

use super::state::{EVENTS, HISTORY, OUTPUT, PARAMS, RunKey, State, parse_lenient};

/// The operation name: `operationName`, else the first `query|mutation <Name>`
/// in the query text (the legacy client sends an empty `operationName`).
pub fn operation_name(body: &Value) -> String {
    match body.get("operationName").and_then(Value::as_str) {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => body
            .get("query")
            .and_then(Value::as_str)
            .and_then(name_from_query)
            .unwrap_or_default(),
    }
}

/// `(query|mutation)\s+(\w+)`, first match.
fn name_from_query(query: &str) -> Option<String> {
    let b = query.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    for i in 0..b.len() {
        for kw in ["query", "mutation"] {
            if !b[i..].starts_with(kw.as_bytes()) || (i > 0 && word(b[i - 1])) {
                continue;
            }
            let mut j = i + kw.len();
            let ws_start = j;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            let name_start = j;
            while j < b.len() && word(b[j]) {
                j += 1;
            }
            if name_start > ws_start && j > name_start {
                return Some(query[name_start..j].to_string());
            }
        }
    }
    None
}

fn var<'a>(vars: &'a Value, name: &str) -> Option<&'a str> {
    vars.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn not_implemented(op: &str) -> Value {
    json!({"data": null, "errors": [{"message": format!("not implemented: {op}")}]})
}

/// The JSON answer to one operation (always sent with status 200).
pub fn respond(state: &mut State, op: &str, query: &str, vars: &Value) -> Value {
    match op {
        "CreateArtifact" => state.create_artifact(vars),
        "CreateArtifactManifest" | "UpdateArtifactManifest" => state.artifact_manifest(op, vars),
        "CreateArtifactFiles" => state.create_artifact_files(vars),
        "CompleteMultipartUploadArtifact" => state.complete_multipart(vars),
        "CommitArtifact" => state.commit_artifact(vars),
        "UseArtifact" => state.use_artifact(vars),
        "ClientIDMapping" => state.client_id_mapping(vars),
        // The legacy client asks the schema which fields it may send.
        _ if query.contains("__type") => super::artifacts::introspection(query),
        "UpsertBucket" => upsert_bucket(state, vars),
        "ServerFeaturesQuery" => json!({"data": {"serverInfo": {"features": []}}}),
        "CreateRunFiles" => create_run_files(state, vars),
        "RunResumeStatus" => run_resume_status(state, vars),
        "NotifyScriptableRunAlert" => alert(state, vars),
        "Viewer" => {
            let entity = state.default_entity.clone();
            json!({"data": {"viewer": {
                "id": "user-1", "entity": entity, "username": entity, "email": "test@example.invalid",
                "admin": false, "flags": "{}", "teams": {"edges": []}, "photoUrl": null,
            }}})
        }
        "ServerInfo" => json!({"data": {"serverInfo": {
            "cliVersionInfo": {}, "latestLocalVersionInfo": null, "features": [],
        }}}),
        _ => {
            state.counters.not_implemented += 1;
            not_implemented(op)
        }
    }
}

fn key(state: &State, vars: &Value, entity: &str, project: &str, name: &str) -> Option<RunKey> {
    Some((
        state.entity_or_default(var(vars, entity)),
        var(vars, project).unwrap_or("uncategorized").to_string(),
        var(vars, name)?.to_string(),
    ))
}

fn bucket(state: &State, key: &RunKey) -> Value {
    let run = &state.runs[key];
    let (entity, project, name) = key;
    json!({
        "id": run.id,
        "name": name,
        "displayName": run.params.get("displayName").cloned().unwrap_or_else(|| name.as_str().into()),
        "description": run.params.get("description").cloned().unwrap_or(Value::Null),
        "config": run.config_raw.as_deref().unwrap_or("{}"),
        "sweepName": run.params.get("sweep").cloned().unwrap_or(Value::Null),
        "project": {
            "id": format!("project-{entity}-{project}"),
            "name": project,
            "entity": {"id": format!("entity-{entity}"), "name": entity},
        },
        "historyLineCount": run.lines(HISTORY),
    })
}

fn upsert_bucket(state: &mut State, vars: &Value) -> Value {
    let key = match key(state, vars, "entity", "project", "name") {
        Some(key) => key,
        None => {
            // No name: look the run up by its storage id, else invent a name.
            let by_id = var(vars, "id").and_then(|id| state.runs.iter().find(|(_, r)| r.id == id));
            match by_id {
                Some((key, _)) => key.clone(),
                None => (
                    state.entity_or_default(var(vars, "entity")),
                    var(vars, "project").unwrap_or("uncategorized").to_string(),
                    format!("generated-{}", state.runs.len() + 1),
                ),
            }
        }
    };
    let (run, inserted) = state.run_entry(key.clone());
    run.upserts += 1;
    if let Some(config) = var(vars, "config") {
        run.config_raw = Some(config.to_string());
    }
    if let Some(summary) = var(vars, "summaryMetrics") {
        run.summary_metrics = Some(parse_lenient(summary).unwrap_or_else(|| summary.into()));
    }
    for param in PARAMS {
        if let Some(value) = vars.get(*param).filter(|v| !v.is_null()) {
            run.params.insert(param.to_string(), value.clone());
        }
    }
    json!({"data": {"upsertBucket": {"bucket": bucket(state, &key), "inserted": inserted}}})
}

fn create_run_files(state: &mut State, vars: &Value) -> Value {
    let Some(key) = key(state, vars, "entity", "project", "run") else {
        return json!({"data": null, "errors": [{"message": "CreateRunFiles: `run` is required"}]});
    };
    let files: Vec<&str> = vars
        .get("files")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let base = format!(
        "http://127.0.0.1:{}/storage/{}/{}/{}",
        state.port,
        super::percent_encode(&key.0),
        super::percent_encode(&key.1),
        super::percent_encode(&key.2)
    );
    let entries: Vec<Value> = files
        .iter()
        .map(|f| json!({"name": f, "uploadUrl": format!("{base}/{}", super::percent_encode(f))}))
        .collect();
    let headers = state.upload_headers.clone();
    let run_id = state
        .runs
        .get(&key)
        .map(|r| r.id.clone())
        .unwrap_or_default();
    json!({"data": {"createRunFiles": {"runID": run_id, "uploadHeaders": headers, "files": entries}}})
}

fn run_resume_status(state: &mut State, vars: &Value) -> Value {
    let Some(key) = key(state, vars, "entity", "project", "name") else {
        return json!({"data": {"model": null}});
    };
    let Some(run) = state.runs.get(&key) else {
        return json!({"data": {"model": null}});
    };
    let (entity, project, name) = &key;
    // wandb-core reads element 0 of historyTail as "the last line", the legacy
    // client element -1: a one-line tail satisfies both.
    let tail = |file: &str| -> String {
        let lines: Vec<&str> = run.last_line(file).into_iter().collect();
        serde_json::to_string(&lines).expect("strings serialize")
    };
    let summary = run
        .last_line(super::state::SUMMARY)
        .map(str::to_string)
        .unwrap_or_else(|| {
            run.summary_metrics
                .as_ref()
                .map_or_else(|| "{}".to_string(), Value::to_string)
        });
    let t = run
        .config_raw
        .as_deref()
        .and_then(parse_lenient)
        .and_then(|c| c.pointer("/_wandb/value/t").cloned())
        .unwrap_or_else(|| json!({}));
    json!({"data": {"model": {
        "id": format!("project-{entity}-{project}"),
        "name": project,
        "entity": {"id": format!("entity-{entity}"), "name": entity},
        "bucket": {
            "id": run.id,
            "name": name,
            "summaryMetrics": summary,
            "displayName": run.params.get("displayName").cloned().unwrap_or_else(|| name.as_str().into()),
            "logLineCount": run.lines(OUTPUT),
            "historyLineCount": run.lines(HISTORY),
            "eventsLineCount": run.lines(EVENTS),
            "historyTail": tail(HISTORY),
            "eventsTail": tail(EVENTS),
            "config": run.config_raw.as_deref().unwrap_or("{}"),
            "tags": run.params.get("tags").cloned().unwrap_or_else(|| json!([])),
            "notes": run.params.get("notes").cloned().unwrap_or(Value::Null),
            "wandbConfig": json!({"t": t}).to_string(),
        },
    }}})
}

fn alert(state: &mut State, vars: &Value) -> Value {
    if let Some(key) = key(state, vars, "entityName", "projectName", "runName") {
        state.run_entry(key).0.alerts.push(vars.clone());
    }
    json!({"data": {"notifyScriptableRunAlert": {"success": true}}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_name_falls_back_to_the_query_text() {
        let named = json!({"operationName": "UpsertBucket", "query": "mutation Other { x }"});
        assert_eq!(operation_name(&named), "UpsertBucket");
        let legacy = json!({"operationName": "", "query": "\n    mutation UpsertBucket(\n $id: String) { x }"});
        assert_eq!(operation_name(&legacy), "UpsertBucket");
        let query = json!({"query": "query\tRunResumeStatus($name: String!) { x }"});
        assert_eq!(operation_name(&query), "RunResumeStatus");
        assert_eq!(
            operation_name(&json!({"query": "subquery Nope { mutation { x } }"})),
            ""
        );
    }
}
