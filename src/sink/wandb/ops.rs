//! The GraphQL operations syncd uses, with typed inputs and answers. The
//! documents follow wandb's published schema (the same fields the official
//! client asks for).

use serde_json::{Value as Json, json};

use super::client::{Client, Delivery, SinkError};

const UPSERT_BUCKET: &str = "mutation UpsertBucket($id: String, $name: String, $project: String, $entity: String, \
$groupName: String, $description: String, $displayName: String, $notes: String, $commit: String, $config: JSONString, \
$host: String, $debug: Boolean, $program: String, $repo: String, $jobType: String, $state: String, $sweep: String, \
$tags: [String!], $summaryMetrics: JSONString) { upsertBucket(input: {id: $id, name: $name, groupName: $groupName, \
modelName: $project, entityName: $entity, description: $description, displayName: $displayName, notes: $notes, \
config: $config, commit: $commit, host: $host, debug: $debug, jobProgram: $program, jobRepo: $repo, jobType: $jobType, \
state: $state, sweep: $sweep, tags: $tags, summaryMetrics: $summaryMetrics}) { bucket { id name displayName \
description config sweepName project { id name entity { id name } } historyLineCount } inserted } }";

const SERVER_FEATURES: &str =
    "query ServerFeaturesQuery { serverInfo { features { name isEnabled } } }";

const CREATE_RUN_FILES: &str = "mutation CreateRunFiles($entity: String!, $project: String!, $run: String!, \
$files: [String!]!) { createRunFiles(input: {entityName: $entity, projectName: $project, runName: $run, \
files: $files}) { runID uploadHeaders files { name uploadUrl } } }";

const NOTIFY_ALERT: &str = "mutation NotifyScriptableRunAlert($entityName: String!, $projectName: String!, \
$runName: String!, $title: String!, $text: String!, $severity: AlertSeverity = INFO, $waitDuration: Duration) { \
notifyScriptableRunAlert(input: {entityName: $entityName, projectName: $projectName, runName: $runName, \
title: $title, text: $text, severity: $severity, waitDuration: $waitDuration}) { success } }";

/// What `UpsertBucket` creates or changes. `None` fields are sent as null
/// (left unchanged by the server).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct UpsertRun {
    pub storage_id: Option<String>,
    pub name: String,
    pub entity: Option<String>,
    pub project: Option<String>,
    pub group: Option<String>,
    pub display_name: Option<String>,
    pub notes: Option<String>,
    pub commit: Option<String>,
    pub repo: Option<String>,
    pub config: Option<String>,
    pub host: Option<String>,
    pub program: Option<String>,
    pub job_type: Option<String>,
    pub tags: Option<Vec<String>>,
    pub summary_metrics: Option<String>,
}

/// The server's identity of a run; later URLs use these names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRun {
    pub entity: String,
    pub project: String,
    pub name: String,
    pub storage_id: String,
    pub history_line_count: u64,
}

pub(crate) async fn upsert_bucket(
    client: &Client,
    run: &UpsertRun,
) -> Result<ServerRun, SinkError> {
    let variables = json!({
        "id": run.storage_id, "name": run.name, "project": run.project, "entity": run.entity,
        "groupName": run.group, "description": null, "displayName": run.display_name, "notes": run.notes,
        "commit": run.commit, "config": run.config, "host": run.host, "debug": null, "program": run.program,
        "repo": run.repo, "jobType": run.job_type, "state": null, "sweep": null, "tags": run.tags,
        "summaryMetrics": run.summary_metrics,
    });
    let data = client
        .graphql("UpsertBucket", UPSERT_BUCKET, variables)
        .await?;
    let bucket = &data["upsertBucket"]["bucket"];
    let text = |v: &Json| v.as_str().map(str::to_string);
    let missing = |field: &str| SinkError::Protocol {
        what: "UpsertBucket".into(),
        message: format!("no {field}"),
    };
    Ok(ServerRun {
        entity: text(&bucket["project"]["entity"]["name"])
            .or_else(|| run.entity.clone())
            .ok_or_else(|| missing("entity"))?,
        project: text(&bucket["project"]["name"])
            .or_else(|| run.project.clone())
            .ok_or_else(|| missing("project"))?,
        name: text(&bucket["name"]).unwrap_or_else(|| run.name.clone()),
        storage_id: text(&bucket["id"]).unwrap_or_default(),
        history_line_count: bucket["historyLineCount"].as_u64().unwrap_or(0),
    })
}

/// Names of the server features that are enabled.
pub(crate) async fn server_features(client: &Client) -> Result<Vec<String>, SinkError> {
    let data = client
        .graphql("ServerFeaturesQuery", SERVER_FEATURES, Json::Null)
        .await?;
    Ok(data["serverInfo"]["features"]
        .as_array()
        .map(|features| {
            features
                .iter()
                .filter(|f| f["isEnabled"].as_bool().unwrap_or(false))
                .filter_map(|f| f["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// Upload targets for `files` (paths relative to the run's files dir).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UploadTargets {
    pub headers: Vec<String>,
    /// `(file, url)`; a file the server does not want has no URL.
    pub files: Vec<(String, Option<String>)>,
}

pub(crate) async fn create_run_files(
    client: &Client,
    run: &ServerRun,
    files: &[String],
) -> Result<UploadTargets, SinkError> {
    let variables =
        json!({"entity": run.entity, "project": run.project, "run": run.name, "files": files});
    let data = client
        .graphql("CreateRunFiles", CREATE_RUN_FILES, variables)
        .await?;
    let answer = &data["createRunFiles"];
    let headers = answer["uploadHeaders"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let listed = answer["files"].as_array().cloned().unwrap_or_default();
    let files = files
        .iter()
        .map(|name| {
            let url = listed
                .iter()
                .find(|f| f["name"].as_str() == Some(name))
                .and_then(|f| f["uploadUrl"].as_str().map(str::to_string));
            (name.clone(), url)
        })
        .collect();
    Ok(UploadTargets { headers, files })
}

/// Sends one alert, at most once (see [`Delivery::AtMostOnce`]).
pub(crate) async fn notify_alert(
    client: &Client,
    run: &ServerRun,
    title: &str,
    text: &str,
    level: &str,
    wait_duration_ms: i64,
) -> Result<(), SinkError> {
    let severity = match level.to_ascii_uppercase().as_str() {
        "WARN" | "WARNING" => "WARN",
        "ERROR" => "ERROR",
        _ => "INFO",
    };
    let variables = json!({
        "entityName": run.entity, "projectName": run.project, "runName": run.name,
        "title": title, "text": text, "severity": severity, "waitDuration": wait_duration_ms,
    });
    // An alert pages a person: never repeated on a lost answer.
    client
        .graphql_delivered(
            "NotifyScriptableRunAlert",
            NOTIFY_ALERT,
            variables,
            Delivery::AtMostOnce,
        )
        .await?;
    Ok(())
}
