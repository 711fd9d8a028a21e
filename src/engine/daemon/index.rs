//! What the daemon's settled-run index (`engine::settled_index`) vouches
//! with: the digest of the daemon's own settings, the digest of what one
//! run's settled state was decided on, and the start-up check that takes a
//! run back from the index only when that digest, worked out again from
//! fresh stats, is the same.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::DaemonConfig;
use crate::discover::scan::RootSpec;
use crate::engine::settled::{FileStamp, Vouch};
use crate::engine::settled_index::{self, IndexedRun};
use crate::ledger::Ledger;

/// What is known of a file a digest covers: inode, size, mtime (s, ns),
/// mode and owner, or why it could not be stat'ed (absent, mostly).
pub(super) type Mark = Result<(u64, u64, i64, i64, u32, u32), std::io::ErrorKind>;

pub(super) fn mark(path: &Path) -> Mark {
    match std::fs::metadata(path) {
        Ok(m) => Ok((
            m.ino(),
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.mode(),
            m.uid(),
        )),
        Err(e) => Err(e.kind()),
    }
}

/// A digest of the files a run's destination and key come from (written,
/// created, removed, chmod'ed: it changes).
pub(super) fn settings_digest(files: &[PathBuf], mut mark: impl FnMut(&Path) -> Mark) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for path in files {
        path.hash(&mut hasher);
        match mark(path) {
            Ok(known) => known.hash(&mut hasher),
            Err(kind) => kind.hash(&mut hasher),
        }
    }
    hasher.finish()
}

/// The settings the daemon resolves every run with (its environment, its
/// roots, this syncd): an index written with others is not used.
pub(super) fn setup_digest(config: &DaemonConfig) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    env!("CARGO_PKG_VERSION").hash(&mut hasher);
    for root in &config.roots {
        root.0.hash(&mut hasher);
    }
    config.targets.hash_setup(&mut hasher);
    hasher.finish()
}

/// The digest of a settled run's state: its fragments' stamps (oldest
/// first), its ledger entry's file, and its settings files' digest when
/// its destination was resolved.
fn vouch_digest(fragments: &[FileStamp], ledger_entry: Mark, settings: u64) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for stamp in fragments {
        (stamp.size, stamp.mtime_ns).hash(&mut hasher);
    }
    match ledger_entry {
        Ok(known) => known.hash(&mut hasher),
        Err(kind) => kind.hash(&mut hasher),
    }
    settings.hash(&mut hasher);
    hasher.finish()
}

/// What the index may vouch for a run settling now: `None` when it cannot
/// (no key or settings digest, a fragment outside a run directory of
/// `wandb_dir`, no ledger entry on disk).
pub(super) fn vouch(
    run_id: &str,
    key: Option<&str>,
    resolved_with: Option<u64>,
    wandb_dir: &Path,
    fragments: &[PathBuf],
    stamps: &[FileStamp],
    ledger: &Ledger,
) -> Option<Vouch> {
    let key = key?;
    let key_digest = crate::ledger::key_digest(run_id, key)?;
    let all_in_run_dirs = fragments.iter().all(|f| {
        f.strip_prefix(wandb_dir)
            .is_ok_and(settled_index::in_run_dir)
    });
    if !all_in_run_dirs || stamps.len() != fragments.len() {
        return None;
    }
    // Gone, or not readable: the run is looked at again at start-up.
    let entry = mark(&ledger.path_of(key)).ok()?;
    Some(Vouch {
        key: key_digest,
        digest: vouch_digest(stamps, Ok(entry), resolved_with?),
    })
}

/// The start-up check of the runs the index names.
pub(super) struct TakeBack<'a> {
    config: &'a DaemonConfig,
    ledger: &'a Ledger,
    /// Settings files above run directories (a project's `.env`, the
    /// user's, netrc), shared by many runs: stat'ed once.
    shared: HashMap<PathBuf, Mark>,
    /// By wandb directory: the settings files of its runs after the run
    /// directory's own `.env`, when they are the same for all of them (as
    /// found for its first run); worked out once, not per run.
    layers: HashMap<PathBuf, Option<Vec<PathBuf>>>,
}

impl<'a> TakeBack<'a> {
    pub(super) fn new(config: &'a DaemonConfig, ledger: &'a Ledger) -> TakeBack<'a> {
        TakeBack {
            config,
            ledger,
            shared: HashMap::new(),
            layers: HashMap::new(),
        }
    }

    /// Whether `run` is still as the index says: every fragment's stamp,
    /// its ledger entry and its settings files unchanged.
    pub(super) fn still_settled(&mut self, run: &IndexedRun) -> bool {
        let paths: Vec<PathBuf> = run
            .fragments
            .iter()
            .map(|f| run.wandb_dir.join(f))
            .collect();
        let mut stamps = Vec::with_capacity(paths.len());
        for path in &paths {
            match std::fs::metadata(path) {
                Ok(meta) => stamps.push(FileStamp::of(&meta)),
                Err(_) => return false,
            }
        }
        if stamps.last() != Some(&run.newest) {
            return false;
        }
        let key = crate::ledger::key_with_digest(run.run_id, run.vouch.key);
        let entry = mark(&self.ledger.path_of(&key));
        if entry.is_err() {
            return false;
        }
        let Some(run_dir) = paths[0].parent() else {
            return false;
        };
        let own = run_dir.join(crate::destination::resolve::DOTENV_FILE);
        let config = self.config;
        let layers = (self.layers)
            .entry(run.wandb_dir.to_path_buf())
            .or_insert_with(|| {
                let files = settings_files(config, &paths[0], run_dir);
                (files.first() == Some(&own)).then(|| files[1..].to_vec())
            });
        let files = match layers {
            Some(layers) => std::iter::once(own).chain(layers.iter().cloned()).collect(),
            None => settings_files(config, &paths[0], run_dir),
        };
        let shared = &mut self.shared;
        let settings = settings_digest(&files, |path| {
            // A run directory's own `.env` is one run's: not kept.
            if path.parent() == Some(run_dir) {
                return mark(path);
            }
            if let Some(known) = shared.get(path) {
                return *known;
            }
            *shared
                .entry(path.to_path_buf())
                .or_insert_with(|| mark(path))
        });
        vouch_digest(&stamps, entry, settings) == run.vouch.digest
    }
}

/// The settings files of the run whose first fragment is `first`, in
/// `run_dir`, as `add_file` and `RunJob::search_root` have them.
fn settings_files(config: &DaemonConfig, first: &Path, run_dir: &Path) -> Vec<PathBuf> {
    let found_under = (config.roots.iter())
        .map(RootSpec::base)
        .find(|base| first.starts_with(base));
    let root = crate::project::search_root(run_dir, found_under.as_deref());
    config.targets.settings_files(run_dir, &root)
}
