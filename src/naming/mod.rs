//! A run's server-side name and group, from the Slurm job that wrote it.
//!
//! # The template
//!
//! A naming template is literal text with `{field}` placeholders; `{{` and
//! `}}` stand for literal braces. The fields are [`Field`]'s: `version`,
//! `experiment`, `job`, `job_id`, `array_job_id`, `array_task_id`,
//! `restart`, `run_id`, `cluster`, `user`, `date`. An unknown field, an
//! unclosed `{` or a template with no field at all is a [`TemplateError`]
//! when the template is parsed, i.e. when the config is loaded.
//!
//! # Missing fields drop their part
//!
//! The template is cut into parts: each placeholder together with the
//! literal text right before it (its *lead*), and the text after the last
//! placeholder (the *tail*), which belongs to the last placeholder. So
//! `v{version}-{experiment}_{job}` is `v{version}`, `-{experiment}`,
//! `_{job}`. Rendering keeps the parts whose field has a value and:
//!
//! 1. drops every part whose field is missing (or empty), lead included;
//!    the tail goes with the last placeholder;
//! 2. drops the lead of the first part kept when that part is not the
//!    template's first: it joined the part to text that is gone;
//! 3. renders nothing when no field has a value (the run keeps its own
//!    name).
//!
//! | version | experiment | job    | `v{version}-{experiment}_{job}` |
//! |---------|------------|--------|---------------------------------|
//! | 3       | train      | 4242   | `v3-train_4242`                 |
//! | -       | train      | 4242   | `train_4242`                    |
//! | 3       | train      | 4240_2 | `v3-train_4240_2` (array)       |
//! | 3       | train      | -      | `v3-train`                      |
//! | 3       | -          | 4242   | `v3_4242`                       |
//! | -       | -          | 4242   | `4242`                          |
//! | -       | -          | -      | nothing                         |
//!
//! Text that labels a field belongs before it (`-r{restart}`, not
//! `{restart}r`), and a pair of brackets around the last field is dropped
//! with it (`{experiment} (job {job})`).
//!
//! # Where the facts come from
//!
//! [`NameFacts::from_run`]: the `SLURM_*` variables the run's own
//! environment record holds first, then the [`JobManifest`] the sbatch
//! templates write (ignored when its job id is not the run's), then the
//! run's config and identity. See each [`NameFacts`] field.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::source::wandb::value::{Map, Value};
use crate::source::wandb::views::RunIdentity;

/// The default naming template.
pub const DEFAULT_TEMPLATE: &str = "v{version}-{experiment}_{job}";
/// The default group of array jobs: the experiment and the array job id.
pub const DEFAULT_GROUP_TEMPLATE: &str = "{experiment}_{array_job_id}";

/// A placeholder of a naming template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    Version,
    Experiment,
    Job,
    JobId,
    ArrayJobId,
    ArrayTaskId,
    Restart,
    RunId,
    Cluster,
    User,
    Date,
}

impl Field {
    pub const ALL: [Field; 11] = [
        Field::Version,
        Field::Experiment,
        Field::Job,
        Field::JobId,
        Field::ArrayJobId,
        Field::ArrayTaskId,
        Field::Restart,
        Field::RunId,
        Field::Cluster,
        Field::User,
        Field::Date,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Field::Version => "version",
            Field::Experiment => "experiment",
            Field::Job => "job",
            Field::JobId => "job_id",
            Field::ArrayJobId => "array_job_id",
            Field::ArrayTaskId => "array_task_id",
            Field::Restart => "restart",
            Field::RunId => "run_id",
            Field::Cluster => "cluster",
            Field::User => "user",
            Field::Date => "date",
        }
    }

    pub fn from_name(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name() == name)
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("naming template {template:?}: unknown field {{{field}}} (fields: {known})")]
    UnknownField {
        template: String,
        field: String,
        known: String,
    },
    #[error(
        "naming template {template:?}: `{{` at byte {at} is not closed (write `{{{{` for a literal brace)"
    )]
    Unclosed { template: String, at: usize },
    #[error(
        "naming template {template:?}: `}}` at byte {at} has no `{{` (write `}}}}` for a literal brace)"
    )]
    Unopened { template: String, at: usize },
    #[error("naming template {template:?} has no {{field}}: every run would get the same name")]
    NoField { template: String },
}

/// A parsed naming template; see the module documentation for how it
/// renders. Parsing is where mistakes are reported, so a config holds this
/// rather than the text (it deserializes from a string).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Template {
    text: String,
    /// Each placeholder with the literal text before it.
    parts: Vec<(String, Field)>,
    /// The literal text after the last placeholder.
    tail: String,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|&(_, c)| c) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|&(_, c)| c) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let rest = &text[at + 1..];
                    let Some(len) = rest.find('}') else {
                        return Err(TemplateError::Unclosed {
                            template: text.into(),
                            at,
                        });
                    };
                    let name = &rest[..len];
                    let field =
                        Field::from_name(name).ok_or_else(|| TemplateError::UnknownField {
                            template: text.into(),
                            field: name.into(),
                            known: Field::ALL.map(Field::name).join(", "),
                        })?;
                    parts.push((std::mem::take(&mut literal), field));
                    // Skip the name and the closing brace.
                    for _ in 0..name.chars().count() + 1 {
                        chars.next();
                    }
                }
                '}' => {
                    return Err(TemplateError::Unopened {
                        template: text.into(),
                        at,
                    });
                }
                c => literal.push(c),
            }
        }
        if parts.is_empty() {
            return Err(TemplateError::NoField {
                template: text.into(),
            });
        }
        Ok(Template {
            text: text.into(),
            parts,
            tail: literal,
        })
    }

    /// The fields the template uses, in order.
    pub fn fields(&self) -> impl Iterator<Item = Field> + '_ {
        self.parts.iter().map(|(_, f)| *f)
    }

    /// The name for `facts`; `None` when none of the template's fields has a
    /// value.
    pub fn render(&self, facts: &NameFacts) -> Option<String> {
        let values: Vec<Option<Cow<str>>> = self.parts.iter().map(|(_, f)| facts.get(*f)).collect();
        let kept: Vec<usize> = (0..values.len()).filter(|&i| values[i].is_some()).collect();
        let (&first, &last) = (kept.first()?, kept.last()?);
        let mut out = String::new();
        for &i in &kept {
            if i == 0 || i != first {
                out.push_str(&self.parts[i].0);
            }
            out.push_str(values[i].as_deref().unwrap_or_default());
        }
        if last == self.parts.len() - 1 {
            out.push_str(&self.tail);
        }
        let out = out.trim();
        (!out.is_empty()).then(|| out.to_string())
    }
}

impl Default for Template {
    fn default() -> Self {
        Template::parse(DEFAULT_TEMPLATE).expect("the default template parses")
    }
}

impl std::str::FromStr for Template {
    type Err = TemplateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Template::parse(s)
    }
}

impl TryFrom<String> for Template {
    type Error = TemplateError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Template::parse(&s)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

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
fn clean(value: Option<&str>) -> Option<String> {
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

/// How runs are named: the lead's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamingRule {
    /// The display name template, [`DEFAULT_TEMPLATE`] by default.
    pub template: Template,
    /// Rename runs the user named explicitly too (`wandb.init(name=…)`,
    /// `WANDB_NAME`). Off by default: a name the user chose is kept.
    pub override_user_names: bool,
    /// The group of an array task whose run has no group of its own;
    /// [`DEFAULT_GROUP_TEMPLATE`] by default, `None` leaves arrays
    /// ungrouped. A run's own group is always kept.
    pub array_group: Option<Template>,
}

impl Default for NamingRule {
    fn default() -> Self {
        NamingRule {
            template: Template::default(),
            override_user_names: false,
            array_group: Some(
                Template::parse(DEFAULT_GROUP_TEMPLATE).expect("the default group template parses"),
            ),
        }
    }
}

impl NamingRule {
    /// A rule with `template` and the default array grouping.
    #[cfg(test)]
    pub fn new(template: &str, override_user_names: bool) -> Result<NamingRule, TemplateError> {
        Ok(NamingRule {
            template: Template::parse(template)?,
            override_user_names,
            ..NamingRule::default()
        })
    }

    /// What to send for a run with these facts.
    pub fn apply(&self, identity: &RunIdentity, facts: &NameFacts) -> Naming {
        let display_name = if user_named(identity) && !self.override_user_names {
            None
        } else {
            // A version alone is not a name ("v3"): some other field must
            // have a value too.
            let named =
                (self.template.fields()).any(|f| f != Field::Version && facts.get(f).is_some());
            named
                .then(|| self.template.render(facts))
                .flatten()
                .filter(|name| Some(name.as_str()) != identity.display_name.as_deref())
        };
        let group = match &self.array_group {
            Some(template)
                if identity.group.is_none() && facts.get(Field::ArrayJobId).is_some() =>
            {
                template.render(facts)
            }
            _ => None,
        };
        Naming {
            display_name,
            group,
        }
    }
}

/// The user gave the run a name: wandb writes none for an offline run
/// unless asked to (some versions write the run id, which is not a name).
fn user_named(identity: &RunIdentity) -> bool {
    identity
        .display_name
        .as_deref()
        .is_some_and(|n| !n.trim().is_empty() && Some(n) != identity.run_id.as_deref())
}

/// What to set on the server run; `None` leaves the run's own value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Naming {
    pub display_name: Option<String>,
    pub group: Option<String>,
}

/// The name and group `rule` gives a run: [`NameFacts::from_run`] then
/// [`NamingRule::apply`].
pub fn name_run(
    rule: &NamingRule,
    identity: &RunIdentity,
    config: &Map,
    manifest: Option<&JobManifest>,
) -> Naming {
    rule.apply(identity, &NameFacts::from_run(identity, config, manifest))
}

// ---------------------------------------------------------------------------
// The job manifest

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
pub const MANIFEST_FILE: &str = "syncd-job.json";

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

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read job manifest {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("job manifest {path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The nearest job manifest for a run, searching [`crate::project::search_dirs`]
/// (the run directory, then up to `root`); the nearest file decides, an
/// invalid one is an error rather than a reason to look further up.
pub fn find_manifest(
    run_dir: &Path,
    root: &Path,
) -> Result<Option<(PathBuf, JobManifest)>, ManifestError> {
    use std::io::Read;
    for dir in crate::project::search_dirs(run_dir, root) {
        let path = dir.join(MANIFEST_FILE);
        let file = match crate::fs::open_regular(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(ManifestError::Read { path, source }),
        };
        let mut text = String::new();
        let read = file.take(MAX_MANIFEST_BYTES + 1).read_to_string(&mut text);
        if let Err(source) = read {
            return Err(if source.kind() == std::io::ErrorKind::InvalidData {
                ManifestError::Invalid {
                    path,
                    message: "not UTF-8".into(),
                }
            } else {
                ManifestError::Read { path, source }
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
pub fn read_manifest(run_dir: &Path, root: &Path) -> Option<JobManifest> {
    find_manifest(run_dir, root).ok().flatten().map(|(_, m)| m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `template` and renders it over `facts`.
    fn render(template: &str, facts: &NameFacts) -> Result<Option<String>, TemplateError> {
        Ok(Template::parse(template)?.render(facts))
    }
    use std::collections::BTreeMap;

    fn facts(pairs: &[(&str, &str)]) -> NameFacts {
        let mut f = NameFacts::default();
        for (k, v) in pairs {
            let slot = match Field::from_name(k).unwrap() {
                Field::Version => &mut f.version,
                Field::Experiment => &mut f.experiment,
                Field::JobId => &mut f.job_id,
                Field::ArrayJobId => &mut f.array_job_id,
                Field::ArrayTaskId => &mut f.array_task_id,
                Field::Restart => &mut f.restart,
                Field::RunId => &mut f.run_id,
                Field::Cluster => &mut f.cluster,
                Field::User => &mut f.user,
                Field::Date => &mut f.date,
                Field::Job => panic!("job is derived"),
            };
            *slot = Some(v.to_string());
        }
        f
    }

    fn name(template: &str, pairs: &[(&str, &str)]) -> Option<String> {
        render(template, &facts(pairs)).unwrap()
    }

    const ALL: &[(&str, &str)] = &[
        ("version", "3"),
        ("experiment", "train"),
        ("job_id", "4242"),
    ];

    #[test]
    fn default_template_all_present() {
        assert_eq!(name(DEFAULT_TEMPLATE, ALL).unwrap(), "v3-train_4242");
    }

    #[test]
    fn missing_fields_drop_their_part() {
        let t = DEFAULT_TEMPLATE;
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>);
        let cases: &[Case] = &[
            (
                &[("experiment", "train"), ("job_id", "4242")],
                Some("train_4242"),
            ),
            (
                &[("version", "3"), ("experiment", "train")],
                Some("v3-train"),
            ),
            (&[("version", "3"), ("job_id", "4242")], Some("v3_4242")),
            (&[("job_id", "4242")], Some("4242")),
            (&[("experiment", "train")], Some("train")),
            (&[("version", "3")], Some("v3")),
            (&[], None),
            // Blank values are missing values.
            (
                &[("version", " "), ("experiment", ""), ("job_id", "4242")],
                Some("4242"),
            ),
        ];
        for (pairs, want) in cases {
            assert_eq!(name(t, pairs).as_deref(), *want, "{pairs:?}");
        }
        // Never a dangling separator, whatever is missing.
        for mask in 0..8u8 {
            let pairs: Vec<_> = ALL
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, p)| *p)
                .collect();
            if let Some(n) = name(t, &pairs) {
                assert!(
                    !n.starts_with(['-', '_']) && !n.ends_with(['-', '_']),
                    "{n}"
                );
                assert!(!n.contains("v-") && !n.contains("-_"), "{n}");
            }
        }
    }

    #[test]
    fn arrays_name_the_task() {
        let pairs = [
            ("version", "3"),
            ("experiment", "train"),
            ("job_id", "4243"),
            ("array_job_id", "4240"),
            ("array_task_id", "2"),
        ];
        assert_eq!(name(DEFAULT_TEMPLATE, &pairs).unwrap(), "v3-train_4240_2");
        assert_eq!(name("{experiment}.{job_id}", &pairs).unwrap(), "train.4243");
        // Half an array id is no array: the job id is used.
        let half = [
            ("experiment", "train"),
            ("job_id", "4243"),
            ("array_job_id", "4240"),
        ];
        assert_eq!(name(DEFAULT_TEMPLATE, &half).unwrap(), "train_4243");
    }

    #[test]
    fn other_templates() {
        let all = [
            ("version", "3"),
            ("experiment", "train"),
            ("job_id", "4242"),
            ("restart", "1"),
            ("cluster", "hpc"),
            ("user", "alice"),
            ("date", "2026-11-23"),
            ("run_id", "abc"),
        ];
        let cases = [
            ("{experiment}_{job}-r{restart}", "train_4242-r1"),
            ("{cluster}/{user}/{experiment}", "hpc/alice/train"),
            ("{date} {experiment} ({run_id})", "2026-11-23 train (abc)"),
            ("{{{experiment}}}", "{train}"),
            ("exp-{experiment}", "exp-train"),
        ];
        for (t, want) in cases {
            assert_eq!(name(t, &all).unwrap(), want, "{t}");
        }
        let some = [("experiment", "train"), ("restart", "1"), ("run_id", "abc")];
        let cases = [
            // A label before a field goes with it.
            ("{experiment}_{job}-r{restart}", Some("train-r1")),
            ("{cluster}/{user}/{experiment}", Some("train")),
            // The tail goes with the last field.
            ("{experiment} (job {job})", Some("train")),
            ("{date} {experiment} ({run_id})", Some("train (abc)")),
            // The leading text goes with the first field.
            ("exp-{version}", None),
            ("v{version}.{job}", None),
        ];
        for (t, want) in cases {
            assert_eq!(name(t, &some).as_deref(), want, "{t}");
        }
    }

    #[test]
    fn template_errors_are_found_when_parsing() {
        let err = Template::parse("v{version}-{experimnet}").unwrap_err();
        assert!(matches!(&err, TemplateError::UnknownField { field, .. } if field == "experimnet"));
        let text = err.to_string();
        assert!(
            text.contains("{experimnet}") && text.contains("array_task_id"),
            "{text}"
        );
        assert!(matches!(
            Template::parse("v{version"),
            Err(TemplateError::Unclosed { at: 1, .. })
        ));
        assert!(matches!(
            Template::parse("a}b{job}"),
            Err(TemplateError::Unopened { at: 1, .. })
        ));
        assert!(matches!(
            Template::parse("fixed"),
            Err(TemplateError::NoField { .. })
        ));
        assert!(matches!(
            Template::parse(""),
            Err(TemplateError::NoField { .. })
        ));
        assert!(matches!(
            Template::parse("{}"),
            Err(TemplateError::UnknownField { .. })
        ));
        assert!(render("{nope}", &NameFacts::default()).is_err());
        // Config files carry templates as strings and are checked on load.
        #[derive(serde::Deserialize)]
        struct Config {
            #[allow(dead_code)]
            template: Template,
        }
        assert!(toml::from_str::<Config>("template = \"{experiment}_{job}\"").is_ok());
        let err = toml::from_str::<Config>("template = \"{experiment}_{jobid}\"")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("unknown field {jobid}"), "{err}");
        let t: Template = "é{job}ü".parse().unwrap();
        assert_eq!(t.to_string(), "é{job}ü");
        assert_eq!(t.fields().collect::<Vec<_>>(), [Field::Job]);
        assert_eq!(t.render(&facts(&[("job_id", "1")])).unwrap(), "é1ü");
    }

    fn identity(slurm: &[(&str, &str)]) -> RunIdentity {
        RunIdentity {
            run_id: Some("r1d".into()),
            start_time: Some(1_795_433_853.5), // 2026-11-23T08:17:33Z
            slurm: slurm
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            ..RunIdentity::default()
        }
    }

    fn config(text: &str) -> Map {
        match Value::parse(text).unwrap() {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn facts_from_the_environment_record() {
        let id = identity(&[
            ("job_id", "4243"),
            ("job_name", "train"),
            ("array_job_id", "4240"),
            ("array_task_id", "2"),
            ("restart_count", "1"),
            ("cluster_name", "hpc"),
            ("job_user", "alice"),
            ("procid", "0"),
        ]);
        let f = NameFacts::from_run(&id, &config(r#"{"version": 3, "lr": 0.1}"#), None);
        assert_eq!(
            f,
            NameFacts {
                version: Some("3".into()),
                experiment: Some("train".into()),
                job_id: Some("4243".into()),
                array_job_id: Some("4240".into()),
                array_task_id: Some("2".into()),
                restart: Some("1".into()),
                run_id: Some("r1d".into()),
                cluster: Some("hpc".into()),
                user: Some("alice".into()),
                date: Some("2026-11-23".into()),
            }
        );
        assert_eq!(f.get(Field::Job).unwrap(), "4240_2");
    }

    #[test]
    fn versions_from_config_or_manifest() {
        let id = identity(&[]);
        let version =
            |cfg: &str, m: Option<&JobManifest>| NameFacts::from_run(&id, &config(cfg), m).version;
        assert_eq!(version(r#"{"version": "v2"}"#, None).unwrap(), "2");
        assert_eq!(version(r#"{"version": "vision"}"#, None).unwrap(), "vision");
        assert_eq!(version(r#"{"version": 1.5}"#, None).unwrap(), "1.5");
        assert_eq!(version(r#"{"version": {"value": 7}}"#, None).unwrap(), "7");
        assert_eq!(version(r#"{"version": NaN}"#, None), None);
        assert_eq!(version(r#"{"version": [1]}"#, None), None);
        assert_eq!(version(r#"{"version": ""}"#, None), None);
        let manifest = JobManifest {
            version: Some("4".into()),
            ..JobManifest::default()
        };
        assert_eq!(version("{}", Some(&manifest)).unwrap(), "4");
        // The run's own config wins over the job's manifest.
        assert_eq!(version(r#"{"version": 5}"#, Some(&manifest)).unwrap(), "5");
    }

    #[test]
    fn manifest_fills_in_and_a_foreign_one_is_ignored() {
        let manifest = JobManifest::parse(
            r#"{"job_id": 4242, "job_name": "train", "version": "3", "restart_count": "0",
                "array_job_id": "", "array_task_id": null, "cluster": "hpc", "schema": 1}"#,
        )
        .unwrap();
        assert_eq!(manifest.job_id.as_deref(), Some("4242"));
        assert_eq!(manifest.array_job_id, None);
        let rule = NamingRule::default();
        // Nothing in the environment record: all from the manifest.
        let naming = name_run(&rule, &identity(&[]), &Map::new(), Some(&manifest));
        assert_eq!(naming.display_name.as_deref(), Some("v3-train_4242"));
        // The environment record wins where both know.
        let id = identity(&[("job_id", "4242"), ("job_name", "eval")]);
        let naming = name_run(&rule, &id, &Map::new(), Some(&manifest));
        assert_eq!(naming.display_name.as_deref(), Some("v3-eval_4242"));
        // Another job's manifest is not this run's.
        let id = identity(&[("job_id", "999"), ("job_name", "eval")]);
        let naming = name_run(&rule, &id, &Map::new(), Some(&manifest));
        assert_eq!(naming.display_name.as_deref(), Some("eval_999"));
        assert!(JobManifest::parse("[1]").is_err());
        assert!(JobManifest::parse(r#"{"job_id": true}"#).is_err());
        assert!(JobManifest::parse("{").is_err());
    }

    #[test]
    fn user_named_runs_keep_their_name_unless_overridden() {
        let mut id = identity(&[("job_id", "4242"), ("job_name", "train")]);
        id.display_name = Some("my-baseline".into());
        let cfg = config(r#"{"version": 3}"#);
        let kept = name_run(&NamingRule::default(), &id, &cfg, None);
        assert_eq!(kept.display_name, None);
        let rule = NamingRule::new(DEFAULT_TEMPLATE, true).unwrap();
        let renamed = name_run(&rule, &id, &cfg, None);
        assert_eq!(renamed.display_name.as_deref(), Some("v3-train_4242"));
        // A display name that is the run id is no name the user chose.
        id.display_name = Some("r1d".into());
        let named = name_run(&NamingRule::default(), &id, &cfg, None);
        assert_eq!(named.display_name.as_deref(), Some("v3-train_4242"));
        id.slurm.remove("job_name");
        let named = name_run(&NamingRule::default(), &id, &cfg, None);
        assert_eq!(named.display_name.as_deref(), Some("v3_4242"));
    }

    #[test]
    fn experiment_falls_back_to_the_runs_name() {
        let mut id = identity(&[("job_id", "4242")]);
        id.display_name = Some("baseline".into());
        let rule = NamingRule::new(DEFAULT_TEMPLATE, true).unwrap();
        let naming = name_run(&rule, &id, &config(r#"{"version": 2}"#), None);
        assert_eq!(naming.display_name.as_deref(), Some("v2-baseline_4242"));
        // Interactive allocations' job names are no experiment.
        let mut id = identity(&[("job_id", "4242"), ("job_name", "bash")]);
        let naming = name_run(&NamingRule::default(), &id, &Map::new(), None);
        assert_eq!(naming.display_name.as_deref(), Some("4242"));
        id.display_name = Some("baseline".into());
        let naming = name_run(&rule, &id, &Map::new(), None);
        assert_eq!(naming.display_name.as_deref(), Some("baseline_4242"));
    }

    #[test]
    fn nothing_to_name_with_leaves_the_run_alone() {
        let rule = NamingRule::default();
        // No Slurm, no version: the run keeps whatever it has.
        let mut id = identity(&[]);
        assert_eq!(name_run(&rule, &id, &Map::new(), None), Naming::default());
        // A version alone is not a name.
        let cfg = config(r#"{"version": 3}"#);
        assert_eq!(name_run(&rule, &id, &cfg, None), Naming::default());
        // A name equal to the run's own is not sent again.
        id.display_name = Some("v3-train_4242".into());
        id.slurm.insert("job_id".into(), "4242".into());
        id.slurm.insert("job_name".into(), "train".into());
        let rule = NamingRule::new(DEFAULT_TEMPLATE, true).unwrap();
        assert_eq!(name_run(&rule, &id, &cfg, None), Naming::default());
    }

    #[test]
    fn arrays_are_grouped_unless_the_run_has_a_group() {
        let mut id = identity(&[
            ("job_id", "4243"),
            ("job_name", "train"),
            ("array_job_id", "4240"),
            ("array_task_id", "2"),
        ]);
        let cfg = config(r#"{"version": 3}"#);
        let naming = name_run(&NamingRule::default(), &id, &cfg, None);
        assert_eq!(
            naming,
            Naming {
                display_name: Some("v3-train_4240_2".into()),
                group: Some("train_4240".into()),
            }
        );
        // No experiment: the array id alone.
        id.slurm.remove("job_name");
        let naming = name_run(&NamingRule::default(), &id, &cfg, None);
        assert_eq!(naming.group.as_deref(), Some("4240"));
        // The run's own group is kept, even with override.
        id.group = Some("sweep-7".into());
        let rule = NamingRule::new(DEFAULT_TEMPLATE, true).unwrap();
        assert_eq!(name_run(&rule, &id, &cfg, None).group, None);
        // Grouping can be turned off; a plain job has no group.
        id.group = None;
        let rule = NamingRule {
            array_group: None,
            ..NamingRule::default()
        };
        assert_eq!(name_run(&rule, &id, &cfg, None).group, None);
        let plain = identity(&[("job_id", "4242"), ("job_name", "train")]);
        assert_eq!(
            name_run(&NamingRule::default(), &plain, &cfg, None).group,
            None
        );
    }

    #[test]
    fn dates_are_utc_days() {
        assert_eq!(utc_date(0.0).unwrap(), "1970-01-01");
        assert_eq!(utc_date(1_795_433_853.9).unwrap(), "2026-11-23");
        assert_eq!(utc_date(-1.0), None);
        assert_eq!(utc_date(f64::NAN), None);
    }

    #[test]
    fn control_characters_do_not_reach_names() {
        let id = identity(&[("job_id", "42"), ("job_name", "tr\nain\t")]);
        let naming = name_run(&NamingRule::default(), &id, &Map::new(), None);
        assert_eq!(naming.display_name.as_deref(), Some("train_42"));
    }

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
