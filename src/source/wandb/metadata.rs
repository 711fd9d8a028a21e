//! `files/wandb-metadata.json`, which writers before wandb 0.21 (no
//! `environment` records) leave in the run directory. It fills what the
//! records do not say: program, host, git, Slurm variables.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use super::proto::GitRepoRecord;
use super::views::RunIdentity;

/// Larger files are not metadata wandb wrote; they are not read.
const MAX_BYTES: u64 = 1 << 20;

/// The run's `files/wandb-metadata.json`, parsed, if it is there and is
/// the run's own. Unreadable or malformed metadata is no metadata: it only
/// adds detail.
fn read(run_dir: &Path) -> Option<serde_json::Value> {
    let path = run_dir.join("files").join("wandb-metadata.json");
    // What it adds goes to the server: only the run's own file (no symlink
    // leading out of the run, in any component), and never a named pipe,
    // which would block the read.
    let file = crate::fs::open_beneath(run_dir, &path).ok()?;
    if file.metadata().map_or(true, |m| m.len() > MAX_BYTES) {
        return None;
    }
    let mut text = String::new();
    file.take(MAX_BYTES).read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

/// The Slurm variables the metadata of the run in `run_dir` lists (as
/// wandb keeps them: lowercased, without `SLURM_`); empty if none.
pub(crate) fn slurm_variables(run_dir: &Path) -> BTreeMap<String, String> {
    read(run_dir).as_ref().map(slurm_of).unwrap_or_default()
}

fn slurm_of(json: &serde_json::Value) -> BTreeMap<String, String> {
    let Some(slurm) = json.get("slurm").and_then(|v| v.as_object()) else {
        return BTreeMap::new();
    };
    slurm
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect()
}

/// Fills the gaps of `identity` from `<run_dir>/files/wandb-metadata.json`,
/// if there is one.
pub(crate) fn fill_gaps(identity: &mut RunIdentity, run_dir: &Path) {
    let Some(json) = read(run_dir) else {
        return;
    };
    let string = |key: &str| {
        json.get(key)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    if identity.program.is_none() {
        identity.program = string("program");
    }
    if identity.host.is_none() {
        identity.host = string("host");
    }
    if identity.git.is_none() {
        let git = json.get("git");
        let field = |k: &str| {
            git.and_then(|g| g.get(k))
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let record = GitRepoRecord {
            remote_url: field("remote"),
            commit: field("commit"),
        };
        if !record.remote_url.is_empty() || !record.commit.is_empty() {
            identity.git = Some(record);
        }
    }
    if identity.slurm.is_empty() {
        identity.slurm = slurm_of(&json);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_metadata_fills_only_gaps() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("files")).unwrap();
        std::fs::write(
            tmp.path().join("files/wandb-metadata.json"),
            r#"{"program":"train.py","host":"node7","git":{"remote":"https://x/r.git","commit":"abc"},"slurm":{"job_id":"99"}}"#,
        )
        .unwrap();
        let mut identity = RunIdentity {
            host: Some("login1".into()),
            ..Default::default()
        };
        fill_gaps(&mut identity, tmp.path());
        assert_eq!(identity.program.as_deref(), Some("train.py"));
        assert_eq!(identity.host.as_deref(), Some("login1"));
        assert_eq!(identity.git.as_ref().unwrap().commit, "abc");
        assert_eq!(identity.slurm_job_id(), Some("99"));
    }

    #[test]
    fn missing_or_bad_metadata_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let mut identity = RunIdentity::default();
        fill_gaps(&mut identity, tmp.path());
        std::fs::create_dir(tmp.path().join("files")).unwrap();
        std::fs::write(tmp.path().join("files/wandb-metadata.json"), "{not json").unwrap();
        fill_gaps(&mut identity, tmp.path());
        assert_eq!(identity, RunIdentity::default());
    }
}
