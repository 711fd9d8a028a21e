//! A run as the server sees it: every fragment (`offline-run-*-<id>`
//! directory) with the same run id, in the order they were written. A
//! requeued or resumed job leaves several fragments of one run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::framing::{LogReader, ReadError};
use super::proto::{Record, RecordType};

use super::fragment::{FileClass, Fragment, Writer};
use super::views::RunIdentity;

/// The id a fragment belongs to: from its run record, else from its
/// directory name (`offline-run-20261123_085953-<id>`) or file name
/// (`run-<id>.wandb`), so even an empty or header-only file groups correctly.
pub(crate) fn fragment_run_id(fragment: &Fragment) -> Option<String> {
    if let Some(id) = &fragment.state.identity.run_id {
        return Some(id.clone());
    }
    let stem = fragment.path.file_stem()?.to_str()?;
    if let Some(id) = stem.strip_prefix("run-") {
        return Some(id.to_string());
    }
    dir_name_parts(fragment.path.parent()?).map(|(_, id)| id)
}

/// `(timespec, run id)` from an `offline-run-YYYYMMDD_HHMMSS-<id>` (or
/// `run-…`) directory name.
pub(crate) fn dir_name_parts(dir: &Path) -> Option<(String, String)> {
    let name = dir.file_name()?.to_str()?;
    let rest = name
        .strip_prefix("offline-run-")
        .or_else(|| name.strip_prefix("run-"))?;
    let (time, id) = rest.split_once('-')?;
    let valid_time = time.len() == 15 && time.as_bytes()[8] == b'_';
    valid_time.then(|| {
        (
            time.to_string(),
            id.split('-').next().unwrap_or(id).to_string(),
        )
    })
}

#[derive(Debug)]
pub(crate) struct Run {
    pub id: String,
    /// Oldest first.
    pub fragments: Vec<Fragment>,
}

impl Run {
    /// Identity of the run: the newest fragment's view (names and tags can be
    /// changed by a resumed run), with the first fragment's start time.
    pub(crate) fn identity(&self) -> RunIdentity {
        let mut identity = RunIdentity::default();
        for fragment in &self.fragments {
            let id = &fragment.state.identity;
            let start = identity.start_time;
            let slurm = std::mem::take(&mut identity.slurm);
            identity = merge(identity, id);
            identity.start_time = start.or(id.start_time);
            identity.slurm = slurm;
            identity.slurm.extend(id.slurm.clone());
        }
        identity.run_id.get_or_insert_with(|| self.id.clone());
        identity
    }

    /// Class of the run: corrupt if any fragment is, else that of the newest
    /// fragment (earlier ones are followed by it, so their writers are gone).
    pub(crate) fn class(&self, newest_writer: Writer) -> FileClass {
        if self
            .fragments
            .iter()
            .any(|f| f.classify(Writer::Gone) == FileClass::Corrupt)
        {
            return FileClass::Corrupt;
        }
        self.fragments
            .last()
            .map_or(FileClass::Empty, |f| f.classify(newest_writer))
    }

    pub(crate) fn history_rows(&self) -> u64 {
        self.fragments.iter().map(|f| f.state.history_rows).sum()
    }
}

fn merge(base: RunIdentity, newer: &RunIdentity) -> RunIdentity {
    let pick = |a: Option<String>, b: &Option<String>| b.clone().or(a);
    RunIdentity {
        run_id: pick(base.run_id, &newer.run_id),
        entity: pick(base.entity, &newer.entity),
        project: pick(base.project, &newer.project),
        display_name: pick(base.display_name, &newer.display_name),
        group: pick(base.group, &newer.group),
        job_type: pick(base.job_type, &newer.job_type),
        tags: if newer.tags.is_empty() {
            base.tags
        } else {
            newer.tags.clone()
        },
        notes: pick(base.notes, &newer.notes),
        start_time: newer.start_time.or(base.start_time),
        resumed: base.resumed || newer.resumed,
        host: pick(base.host, &newer.host),
        program: pick(base.program, &newer.program),
        git: newer.git.clone().or(base.git),
        slurm: base.slurm,
        producer: pick(base.producer, &newer.producer),
    }
}

/// Groups fragments by run id; each group is ordered by start time (from the
/// run record, else the directory's timestamp, else the path).
pub(crate) fn group(fragments: Vec<Fragment>) -> Vec<Run> {
    group_by_run(
        fragments,
        |f| fragment_run_id(f).unwrap_or_else(|| f.path.display().to_string()),
        |f| order_key(&f.path, f.state.identity.start_time),
    )
    .into_iter()
    .map(|(id, fragments)| Run { id, fragments })
    .collect()
}

/// What identifies a fragment, read from its first records only.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FragmentHead {
    pub path: PathBuf,
    pub run_id: String,
    pub start_time: Option<f64>,
    /// The entity and project the run record names (empty: none).
    pub entity: String,
    pub project: String,
}

/// How many records to look through for the run record (it is the second
/// in files written by every wandb version).
const HEAD_RECORDS: usize = 64;

/// Reads a fragment's run id and start time without reading the whole file.
pub(crate) fn head(path: &Path) -> Result<FragmentHead, ReadError> {
    let mut reader = LogReader::open(crate::fs::open_regular(path)?, 0)?;
    let mut head = FragmentHead {
        path: path.to_path_buf(),
        run_id: String::new(),
        start_time: None,
        entity: String::new(),
        project: String::new(),
    };
    for _ in 0..HEAD_RECORDS {
        let Some(raw) = reader.next_record()? else {
            break;
        };
        if let Ok(Record {
            record_type: Some(RecordType::Run(run)),
            ..
        }) = Record::decode_payload(raw.payload)
        {
            head.run_id = run.run_id;
            head.start_time = run.start_time.map(|t| t.as_secs_f64());
            head.entity = run.entity;
            head.project = run.project;
            break;
        }
    }
    if head.run_id.is_empty() {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        head.run_id = match stem.strip_prefix("run-") {
            Some(id) => id.to_string(),
            None => path
                .parent()
                .and_then(dir_name_parts)
                .map(|(_, id)| id)
                .unwrap_or_else(|| path.display().to_string()),
        };
    }
    Ok(head)
}

/// Groups fragment heads into runs (see [`group`]).
pub(crate) fn group_heads(heads: Vec<FragmentHead>) -> Vec<(String, Vec<FragmentHead>)> {
    group_by_run(
        heads,
        |h| h.run_id.clone(),
        |h| order_key(&h.path, h.start_time),
    )
}

fn group_by_run<T>(
    items: Vec<T>,
    id: impl Fn(&T) -> String,
    key: impl Fn(&T) -> OrderKey,
) -> Vec<(String, Vec<T>)> {
    let mut by_id: BTreeMap<String, Vec<T>> = BTreeMap::new();
    for item in items {
        by_id.entry(id(&item)).or_default().push(item);
    }
    let cmp = |a: &OrderKey, b: &OrderKey| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal);
    let mut runs: Vec<(String, Vec<T>)> = by_id
        .into_iter()
        .map(|(id, mut items)| {
            items.sort_by(|a, b| cmp(&key(a), &key(b)));
            (id, items)
        })
        .collect();
    runs.sort_by(|a, b| match (a.1.first(), b.1.first()) {
        (Some(x), Some(y)) => cmp(&key(x), &key(y)),
        _ => std::cmp::Ordering::Equal,
    });
    runs
}

pub(crate) type OrderKey = (String, f64, String);

/// The order of a run's fragments: by the time in their directory name
/// (`offline-run-YYYYMMDD_HHMMSS-id`, which every fragment has, even an
/// empty or header-only one left by a job killed at start-up), then by the
/// exact start time of their run record, then by path. Ordering by start
/// time alone would put a header-only fragment of a requeued job after a
/// later, finished one.
pub(crate) fn order_key(path: &Path, start_time: Option<f64>) -> OrderKey {
    let dir_time = path.parent().and_then(dir_name_parts).map(|(time, _)| time);
    (
        dir_time.unwrap_or_default(),
        start_time.unwrap_or(f64::MAX),
        path.display().to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_only_fragment_keeps_its_place_by_directory_time() {
        // A requeued job killed at start-up left a header-only fragment (no
        // start time) before the attempt that finished.
        let early = order_key(
            Path::new("/w/wandb/offline-run-20261123_100000-abc/run-abc.wandb"),
            None,
        );
        let late = order_key(
            Path::new("/w/wandb/offline-run-20261123_101500-abc/run-abc.wandb"),
            Some(1_795_400_000.0),
        );
        assert!(early < late);
        // Within one second, the start time decides.
        let a = order_key(
            Path::new("/w/wandb/offline-run-20261123_100000-abc/run-x.wandb"),
            Some(2.0),
        );
        let b = order_key(
            Path::new("/w/wandb/offline-run-20261123_100000-abc/run-y.wandb"),
            Some(1.0),
        );
        assert!(b < a);
    }
}
