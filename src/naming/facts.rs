//! What a run's name can be made of: [`NameFacts`], from the run itself and
//! its job manifest.
//!
//! # Where the facts come from
//!
//! [`NameFacts::from_run`]: the `SLURM_*` variables the run's own
//! environment record holds first, then the [`JobManifest`] the sbatch
//! templates write (ignored when its job id is not the run's), then the
//! run's config and identity. See each [`NameFacts`] field.

use std::borrow::Cow;

use super::manifest::JobManifest;
use super::template::Field;
use crate::source::wandb::value::{Map, Value};
use crate::source::wandb::views::RunIdentity;

/// The values a template can use. Every field is optional; empty or
/// whitespace-only values count as missing (see [`NameFacts::get`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct NameFacts {
    /// The run config's `version` key (a string or a number; a leading `v`
    /// before a digit is removed, the template has its own), else the
    /// manifest's `version`.
    pub version: Option<String>,
    /// `SLURM_JOB_NAME`, else the manifest's `job_name`, else the run's own
    /// display name. The names an interactive allocation gets (`bash`, `sh`,
    /// `zsh`, `interactive`) say nothing and are skipped.
    pub experiment: Option<String>,
    /// `SLURM_JOB_ID`: for an array task, the task's own job id.
    pub job_id: Option<String>,
    /// `SLURM_ARRAY_JOB_ID`.
    pub array_job_id: Option<String>,
    /// `SLURM_ARRAY_TASK_ID`.
    pub array_task_id: Option<String>,
    /// `SLURM_RESTART_COUNT` (how often the job was requeued).
    pub restart: Option<String>,
    /// The W&B run id.
    pub run_id: Option<String>,
    /// `SLURM_CLUSTER_NAME`, else the manifest's `cluster`.
    pub cluster: Option<String>,
    /// `SLURM_JOB_USER`, else the manifest's `user`.
    pub user: Option<String>,
    /// The run's start, `YYYY-MM-DD` in UTC.
    pub date: Option<String>,
}

impl NameFacts {
    /// The facts of a run: its Slurm variables (as wandb captured them:
    /// lowercased, without `SLURM_`), else the manifest's, then its config
    /// and identity. A manifest whose `job_id` differs from the run's own
    /// belongs to another job and is ignored.
    pub fn from_run(
        identity: &RunIdentity,
        config: &Map,
        manifest: Option<&JobManifest>,
    ) -> NameFacts {
        let slurm = |key: &str| clean(identity.slurm.get(key).map(String::as_str));
        let manifest = manifest.filter(|m| match (clean(m.job_id.as_deref()), slurm("job_id")) {
            (Some(theirs), Some(ours)) => theirs == ours,
            _ => true,
        });
        let from_manifest = |get: fn(&JobManifest) -> &Option<String>| {
            manifest.and_then(|m| clean(get(m).as_deref()))
        };
        let either = |key: &str, get: fn(&JobManifest) -> &Option<String>| {
            slurm(key).or_else(|| from_manifest(get))
        };
        let version = config_text(config.get("version"))
            .or_else(|| from_manifest(|m| &m.version))
            .map(strip_v);
        let experiment = [slurm("job_name"), from_manifest(|m| &m.job_name)]
            .into_iter()
            .flatten()
            .find(|name| !UNINFORMATIVE_JOB_NAMES.contains(&name.as_str()))
            // A display name that is the run id is no name (see `user_named`).
            .or_else(|| {
                clean(identity.display_name.as_deref())
                    .filter(|n| Some(n.as_str()) != identity.run_id.as_deref())
            });
        NameFacts {
            version,
            experiment,
            job_id: either("job_id", |m| &m.job_id),
            array_job_id: either("array_job_id", |m| &m.array_job_id),
            array_task_id: either("array_task_id", |m| &m.array_task_id),
            restart: either("restart_count", |m| &m.restart_count),
            run_id: clean(identity.run_id.as_deref()),
            cluster: either("cluster_name", |m| &m.cluster),
            user: either("job_user", |m| &m.user),
            date: identity.start_time.and_then(utc_date),
        }
    }

    /// The value of `field`, `None` if missing or blank. `job` is
    /// `{array_job_id}_{array_task_id}` for an array task, else `job_id`.
    pub fn get(&self, field: Field) -> Option<Cow<'_, str>> {
        let value = match field {
            Field::Version => &self.version,
            Field::Experiment => &self.experiment,
            Field::Job => {
                return match (self.get(Field::ArrayJobId), self.get(Field::ArrayTaskId)) {
                    (Some(array), Some(task)) => Some(Cow::Owned(format!("{array}_{task}"))),
                    _ => self.get(Field::JobId),
                };
            }
            Field::JobId => &self.job_id,
            Field::ArrayJobId => &self.array_job_id,
            Field::ArrayTaskId => &self.array_task_id,
            Field::Restart => &self.restart,
            Field::RunId => &self.run_id,
            Field::Cluster => &self.cluster,
            Field::User => &self.user,
            Field::Date => &self.date,
        };
        value
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(Cow::Borrowed)
    }
}

/// Job names that interactive allocations get, which name no experiment.
const UNINFORMATIVE_JOB_NAMES: &[&str] = &["bash", "sh", "zsh", "interactive"];

/// A trimmed value without control characters; `None` if that is empty.
pub(super) fn clean(value: Option<&str>) -> Option<String> {
    let value: String = value?.chars().filter(|c| !c.is_control()).collect();
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_string())
}

/// A config value as name text: strings and numbers (wandb-core may wrap a
/// value as `{"value": v}`); anything else is not a version.
fn config_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => clean(Some(s)),
        Value::Number(n) if n.parse::<f64>().is_ok_and(f64::is_finite) => clean(Some(n)),
        Value::Object(m) => config_text(m.get("value")),
        _ => None,
    }
}

/// `v3` → `3`: the default template writes the `v` itself.
fn strip_v(version: String) -> String {
    let mut chars = version.chars();
    match (chars.next(), chars.next()) {
        (Some('v' | 'V'), Some(d)) if d.is_ascii_digit() => version[1..].to_string(),
        _ => version,
    }
}

/// `YYYY-MM-DD` (UTC) of a Unix time in seconds.
fn utc_date(secs: f64) -> Option<String> {
    if !(0.0..=253_402_300_799.0).contains(&secs) {
        return None;
    }
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
    let text = humantime::format_rfc3339_seconds(time).to_string();
    Some(text[..10].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_days() {
        assert_eq!(utc_date(0.0).unwrap(), "1970-01-01");
        assert_eq!(utc_date(1_795_433_853.9).unwrap(), "2026-11-23");
        assert_eq!(utc_date(-1.0), None);
        assert_eq!(utc_date(f64::NAN), None);
    }
}
