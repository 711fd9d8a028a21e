//! The job manifest: what the sbatch templates record about a job beside
//! its runs, for naming them (see [`MANIFEST_FILE`]).

use std::path::{Path, PathBuf};

use super::facts::clean;

/// The job manifest's file name. The sbatch templates write it into
/// `$WANDB_DIR` (the directory holding `wandb/`), so it sits two levels
/// above each run directory of the job.
///
/// Its format is one JSON object; every key is optional, values are strings
/// (numbers are accepted), an empty string or `null` means unset, and other
/// keys are ignored:
///
/// ```json
/// {"job_id": "4242", "array_job_id": "4240", "array_task_id": "2",
///  "restart_count": "0", "job_name": "train", "version": "3",
///  "cluster": "hpc", "user": "alice"}
/// ```
///
/// A template writes it with a here-document, to a temporary name first so
/// syncd never reads half a file:
///
/// ```sh
/// cat > "$WANDB_DIR/syncd-job.json.tmp" <<EOF
/// {"job_id": "${SLURM_JOB_ID:-}", "array_job_id": "${SLURM_ARRAY_JOB_ID:-}",
///  "array_task_id": "${SLURM_ARRAY_TASK_ID:-}", "restart_count": "${SLURM_RESTART_COUNT:-0}",
///  "job_name": "${SLURM_JOB_NAME:-}", "version": "${VERSION:-}",
///  "cluster": "${SLURM_CLUSTER_NAME:-}", "user": "${USER:-}"}
/// EOF
/// mv "$WANDB_DIR/syncd-job.json.tmp" "$WANDB_DIR/syncd-job.json"
/// ```
pub(crate) const MANIFEST_FILE: &str = "syncd-job.json";

/// A manifest larger than this is not one.
const MAX_MANIFEST_BYTES: u64 = 64 * 1024;

/// What the sbatch templates record about the job; see [`MANIFEST_FILE`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct JobManifest {
    pub job_id: Option<String>,
    pub array_job_id: Option<String>,
    pub array_task_id: Option<String>,
    pub restart_count: Option<String>,
    pub job_name: Option<String>,
    pub version: Option<String>,
    pub cluster: Option<String>,
    pub user: Option<String>,
}

impl JobManifest {
    /// Parses the manifest's JSON text.
    pub fn parse(text: &str) -> Result<JobManifest, String> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let object = value
            .as_object()
            .ok_or_else(|| "not a JSON object".to_string())?;
        let get = |key: &str| -> Result<Option<String>, String> {
            match object.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(clean(Some(s))),
                Some(serde_json::Value::Number(n)) => Ok(Some(n.to_string())),
                Some(_) => Err(format!("{key:?} is not a string or a number")),
            }
        };
        Ok(JobManifest {
            job_id: get("job_id")?,
            array_job_id: get("array_job_id")?,
            array_task_id: get("array_task_id")?,
            restart_count: get("restart_count")?,
            job_name: get("job_name")?,
            version: get("version")?,
            cluster: get("cluster")?,
            user: get("user")?,
        })
    }
}

/// Shown with `to_string`: the io cause is in the text, not a `source()`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ManifestError {
    #[error("cannot read job manifest {}: {error}", .path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("job manifest {path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The nearest job manifest for a run, searching [`crate::project::search_dirs`]
/// (the run directory, then up to `root`); the nearest file decides, an
/// invalid one is an error rather than a reason to look further up.
pub(crate) fn find_manifest(
    run_dir: &Path,
    root: &Path,
) -> Result<Option<(PathBuf, JobManifest)>, ManifestError> {
    use std::io::Read;
    for dir in crate::project::search_dirs(run_dir, root) {
        let path = dir.join(MANIFEST_FILE);
        let file = match crate::fs::open_regular(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(ManifestError::Read { path, error }),
        };
        let mut text = String::new();
        let read = file.take(MAX_MANIFEST_BYTES + 1).read_to_string(&mut text);
        if let Err(error) = read {
            return Err(if error.kind() == std::io::ErrorKind::InvalidData {
                ManifestError::Invalid {
                    path,
                    message: "not UTF-8".into(),
                }
            } else {
                ManifestError::Read { path, error }
            });
        }
        if text.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(ManifestError::Invalid {
                path,
                message: format!("larger than {MAX_MANIFEST_BYTES} bytes"),
            });
        }
        return match JobManifest::parse(&text) {
            Ok(manifest) => Ok(Some((path, manifest))),
            Err(message) => Err(ManifestError::Invalid { path, message }),
        };
    }
    Ok(None)
}

/// [`find_manifest`] for callers that only want the facts: no manifest, or
/// an unreadable one, is `None`.
pub(crate) fn read_manifest(run_dir: &Path, root: &Path) -> Option<JobManifest> {
    find_manifest(run_dir, root).ok().flatten().map(|(_, m)| m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_are_found_up_to_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let run = root.join("proj/job-1/wandb/offline-run-x");
        std::fs::create_dir_all(&run).unwrap();
        assert!(find_manifest(&run, root).unwrap().is_none());
        // Above the root: not seen.
        let outer = tempfile::tempdir().unwrap();
        let inner_root = outer.path().join("root");
        let inner_run = inner_root.join("wandb/offline-run-y");
        std::fs::create_dir_all(&inner_run).unwrap();
        std::fs::write(outer.path().join(MANIFEST_FILE), r#"{"job_id": "1"}"#).unwrap();
        assert!(read_manifest(&inner_run, &inner_root).is_none());

        std::fs::write(root.join(MANIFEST_FILE), r#"{"job_id": "1"}"#).unwrap();
        let far = read_manifest(&run, root).unwrap();
        assert_eq!(far.job_id.as_deref(), Some("1"));
        // WANDB_DIR's manifest is nearer.
        let wandb_dir = root.join("proj/job-1");
        std::fs::write(wandb_dir.join(MANIFEST_FILE), r#"{"job_id": "2"}"#).unwrap();
        let (path, near) = find_manifest(&run, root).unwrap().unwrap();
        assert_eq!(path, wandb_dir.join(MANIFEST_FILE));
        assert_eq!(near.job_id.as_deref(), Some("2"));
        // The nearest file decides, even when it is broken.
        std::fs::write(wandb_dir.join(MANIFEST_FILE), "{\"job_id\": ").unwrap();
        let err = find_manifest(&run, root).unwrap_err().to_string();
        assert!(
            err.contains("syncd-job.json") && err.contains("not valid"),
            "{err}"
        );
        assert!(read_manifest(&run, root).is_none());
        std::fs::write(wandb_dir.join(MANIFEST_FILE), vec![b' '; 70_000]).unwrap();
        let err = find_manifest(&run, root).unwrap_err().to_string();
        assert!(err.contains("larger than"), "{err}");
    }
}
