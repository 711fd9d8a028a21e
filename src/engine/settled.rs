//! What the daemon keeps of a settled run: a run that is complete on the
//! server, fully acknowledged, with nothing queued, running or stopped.
//! Such a run costs its place in the ledger (on disk) and a stat of its
//! newest file on the slow schedule, nothing else: no `Tracked`, no ledger
//! entry, no run state, no naming, no client. Users keep years of sweeps
//! (100,000 run directories) under the roots the daemon watches, and the
//! daemon's memory must follow the runs that are live, not that history.
//!
//! Per run it holds one allocation: the run id and its fragments' paths
//! (relative to their wandb directory, shared by all its runs), plus the
//! size and mtime of the newest fragment when the run settled. When that
//! stamp changes (the file grew, was rewritten or replaced), or a new
//! fragment of the run appears, the run is woken: taken out of here and
//! tracked again from its files and ledger entry, as at start-up. The ledger
//! cursor decides what is sent, so a woken run that did not really change
//! sends nothing and settles again. Each run also keeps what the settled-run
//! index (`engine::settled_index`) needs to take it back at the next
//! start-up without reading it ([`Vouch`]), when it has that.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::hash::{Hash, Hasher};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::{Equivalent, IndexMap};

/// Separates the run id and the fragments in [`Packed::bytes`]: a path
/// cannot hold a NUL byte.
const SEP: u8 = 0;

/// Size and mtime (ns) of a file: 16 bytes, not the scanner's 32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    pub size: u64,
    pub mtime_ns: i64,
}

impl FileStamp {
    pub(crate) fn of(meta: &std::fs::Metadata) -> FileStamp {
        FileStamp {
            size: meta.len(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        }
    }

    pub(crate) fn from_scan(stamp: crate::discover::scan::Stamp) -> FileStamp {
        FileStamp {
            size: stamp.size,
            mtime_ns: i64::try_from(stamp.mtime_ns).unwrap_or(i64::MAX),
        }
    }
}

/// One settled run: its wandb directory (an index into
/// [`SettledRuns::dirs`]) and `run id NUL fragment NUL fragment...`, the
/// fragments oldest first, relative to that directory. Hashed and compared
/// by directory and run id only, which is what identifies a run.
#[derive(Debug)]
struct Packed {
    dir: u32,
    bytes: Box<[u8]>,
}

impl Packed {
    fn run_id(&self) -> &[u8] {
        let end = (self.bytes.iter().position(|b| *b == SEP)).unwrap_or(self.bytes.len());
        &self.bytes[..end]
    }

    fn fragments(&self) -> impl Iterator<Item = &OsStr> {
        self.bytes
            .split(|b| *b == SEP)
            .skip(1)
            .map(OsStr::from_bytes)
    }
}

impl Hash for Packed {
    fn hash<H: Hasher>(&self, state: &mut H) {
        RunName {
            dir: self.dir,
            run_id: self.run_id(),
        }
        .hash(state)
    }
}

impl PartialEq for Packed {
    fn eq(&self, other: &Packed) -> bool {
        self.dir == other.dir && self.run_id() == other.run_id()
    }
}

impl Eq for Packed {}

/// What a run is looked up by: its wandb directory and run id.
#[derive(Hash)]
struct RunName<'a> {
    dir: u32,
    run_id: &'a [u8],
}

impl Equivalent<Packed> for RunName<'_> {
    fn equivalent(&self, key: &Packed) -> bool {
        self.dir == key.dir && self.run_id == key.run_id()
    }
}

/// What the daemon's settled-run index (`engine::settled_index`) needs to
/// vouch for a settled run at the next start-up without reading it: its
/// ledger key (as the key's digest, spelled again from the run id) and a
/// digest of every stamp its settled state was decided on (each
/// fragment's, its ledger entry's, its settings files').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Vouch {
    pub key: [u8; crate::ledger::KEY_DIGEST_LEN],
    pub digest: u64,
}

/// A settled run's newest fragment's stamp and, when the index may vouch
/// for it, its [`Vouch`].
#[derive(Debug)]
struct Kept {
    newest: FileStamp,
    vouch: Option<Vouch>,
}

/// A settled run as the index writes it.
pub(crate) struct SettledRecord<'a> {
    pub dir: u32,
    /// `run id NUL fragment NUL fragment...`, fragments relative to the
    /// run's wandb directory.
    pub packed: &'a [u8],
    pub newest: FileStamp,
    pub vouch: Vouch,
}

/// The settled runs, by wandb directory and run id.
#[derive(Debug, Default)]
pub(crate) struct SettledRuns {
    /// The wandb directories the runs are in, each once, and where each
    /// is in `dirs` (a glob root can match thousands).
    dirs: Vec<Arc<Path>>,
    dir_index: HashMap<Arc<Path>, u32>,
    runs: IndexMap<Packed, Kept>,
    /// A run was settled with a vouch since the index was last written.
    changed: bool,
    /// Where the next [`SettledRuns::check`] starts in `runs`.
    next_check: usize,
}

/// At most this many settled runs are stat'ed per look of the slow
/// schedule; with more, each is looked at every few looks, in turn. Why: a
/// stat costs about 4 µs of CPU, so 100,000 settled runs every two minutes
/// would be a third of a percent of a core for runs that almost never
/// change (a run continued later gets a new directory, found by the root
/// scan); 10,000 are still all looked at every time.
const SETTLED_CHECKS_PER_LOOK: usize = 20_000;

impl SettledRuns {
    pub(crate) fn len(&self) -> usize {
        self.runs.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Keeps a run as settled: `fragments` oldest first (all in
    /// `wandb_dir`'s run directories), `newest` the last one's stamp;
    /// `vouch` when the index may vouch for it at the next start-up.
    pub(crate) fn settle(
        &mut self,
        wandb_dir: &Path,
        run_id: &str,
        fragments: &[PathBuf],
        newest: FileStamp,
        vouch: Option<Vouch>,
    ) {
        let dir = self.dir_index(wandb_dir);
        let mut bytes = run_id.as_bytes().to_vec();
        for fragment in fragments {
            bytes.push(SEP);
            // Relative to the wandb directory, which `fragment` is normally
            // under; else as it is (joining an absolute path replaces).
            let rel = fragment.strip_prefix(wandb_dir).unwrap_or(fragment);
            bytes.extend_from_slice(rel.as_os_str().as_bytes());
        }
        let packed = Packed {
            dir,
            bytes: bytes.into_boxed_slice(),
        };
        self.keep(packed, newest, vouch);
    }

    fn keep(&mut self, packed: Packed, newest: FileStamp, vouch: Option<Vouch>) {
        // Only what is vouched for is written to the index.
        self.changed |= vouch.is_some();
        let kept = Kept { newest, vouch };
        // Replaces an older entry of the same run (a run is woken before it
        // is tracked again, but the newer fragments win if it were not).
        self.runs.swap_remove(&packed);
        self.runs.insert(packed, kept);
    }

    /// Keeps a run the index vouched for (`packed` as
    /// [`SettledRecord::packed`], in `wandb_dir`), as it was when the index
    /// was written: the index need not be written again for it.
    pub(crate) fn settle_vouched(
        &mut self,
        wandb_dir: &Path,
        packed: &[u8],
        newest: FileStamp,
        vouch: Vouch,
    ) {
        let dir = self.dir_index(wandb_dir);
        let changed = self.changed;
        let packed = Packed {
            dir,
            bytes: packed.into(),
        };
        self.keep(packed, newest, Some(vouch));
        self.changed = changed;
    }

    /// A run was settled (with a vouch) since [`SettledRuns::written`].
    pub(crate) fn changed(&self) -> bool {
        self.changed
    }

    /// The index now holds every vouched-for run.
    pub(crate) fn written(&mut self) {
        self.changed = false;
    }

    /// Settled runs seen since a change of settings no longer have their
    /// vouch: they were resolved with the old settings (SIGHUP leaves
    /// settled runs as they are), which a later start-up must not take
    /// as the new ones'.
    pub(crate) fn drop_vouches(&mut self) {
        for kept in self.runs.values_mut() {
            self.changed |= kept.vouch.take().is_some();
        }
    }

    /// The wandb directories, by their place in [`SettledRecord::dir`].
    pub(crate) fn dirs(&self) -> &[Arc<Path>] {
        &self.dirs
    }

    /// Every settled run the index may vouch for.
    pub(crate) fn records(&self) -> impl Iterator<Item = SettledRecord<'_>> {
        (self.runs.iter()).filter_map(|(packed, kept)| {
            Some(SettledRecord {
                dir: packed.dir,
                packed: &packed.bytes,
                newest: kept.newest,
                vouch: kept.vouch?,
            })
        })
    }

    /// Whether the run is kept here.
    #[cfg(test)]
    pub(crate) fn contains(&self, wandb_dir: &Path, run_id: &str) -> bool {
        let Some(dir) = self.find_dir(wandb_dir) else {
            return false;
        };
        let name = RunName {
            dir,
            run_id: run_id.as_bytes(),
        };
        self.runs.contains_key(&name)
    }

    /// Takes the run out (it is to be tracked again): its fragments' paths,
    /// oldest first, or `None` when it is not here.
    pub(crate) fn wake(&mut self, wandb_dir: &Path, run_id: &str) -> Option<Vec<PathBuf>> {
        let dir = self.find_dir(wandb_dir)?;
        let name = RunName {
            dir,
            run_id: run_id.as_bytes(),
        };
        let (packed, _) = self.runs.swap_remove_entry(&name)?;
        Some(self.paths(&packed))
    }

    /// The slow schedule's look at the settled runs (every one, or the next
    /// [`SETTLED_CHECKS_PER_LOOK`] of them in turn): one stat of its newest
    /// fragment. The newest fragment of each run whose stamp changed
    /// is returned, to be looked at (waking the run brings its other
    /// fragments along): the run
    /// leaves when it is woken by its id ([`SettledRuns::wake`]), so that
    /// one whose file cannot be read as a run now stays here (with the new
    /// stamp, not read again until it changes again). A file that cannot
    /// be stat'ed (gone, or a mount not answering) leaves its run as it
    /// is. `syscalls` counts the stats.
    pub(crate) fn check(&mut self, syscalls: &mut u64) -> Vec<PathBuf> {
        self.check_at_most(SETTLED_CHECKS_PER_LOOK, syscalls)
    }

    fn check_at_most(&mut self, limit: usize, syscalls: &mut u64) -> Vec<PathBuf> {
        let mut changed = Vec::new();
        let count = self.runs.len();
        let take = count.min(limit);
        let start = if self.next_check < count {
            self.next_check
        } else {
            0
        };
        self.next_check = if count == 0 {
            0
        } else {
            (start + take) % count
        };
        for at in (start..start + take).map(|i| i % count) {
            let Some((packed, kept)) = self.runs.get_index_mut(at) else {
                continue;
            };
            let Some(newest) = packed.fragments().last() else {
                continue;
            };
            let dir = &self.dirs[packed.dir as usize];
            *syscalls += 1;
            let Ok(meta) = std::fs::metadata(dir.join(newest)) else {
                continue;
            };
            let now = FileStamp::of(&meta);
            if now != kept.newest {
                kept.newest = now;
                // What it vouched for is no longer so.
                kept.vouch = None;
                changed.push(dir.join(newest));
            }
        }
        changed
    }

    fn paths(&self, packed: &Packed) -> Vec<PathBuf> {
        let dir = &self.dirs[packed.dir as usize];
        packed.fragments().map(|f| dir.join(f)).collect()
    }

    fn find_dir(&self, wandb_dir: &Path) -> Option<u32> {
        self.dir_index.get(wandb_dir).copied()
    }

    fn dir_index(&mut self, wandb_dir: &Path) -> u32 {
        if let Some(at) = self.find_dir(wandb_dir) {
            return at;
        }
        let dir: Arc<Path> = Arc::from(wandb_dir);
        let at = u32::try_from(self.dirs.len()).expect("fewer than 4 billion wandb directories");
        self.dirs.push(Arc::clone(&dir));
        self.dir_index.insert(dir, at);
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp_of(path: &Path) -> FileStamp {
        FileStamp::of(&std::fs::metadata(path).unwrap())
    }

    fn fragment(wandb: &Path, dir: &str, id: &str, bytes: &[u8]) -> PathBuf {
        let run_dir = wandb.join(dir);
        std::fs::create_dir_all(&run_dir).unwrap();
        let file = run_dir.join(format!("run-{id}.wandb"));
        std::fs::write(&file, bytes).unwrap();
        file
    }

    #[test]
    fn a_settled_run_is_found_by_directory_and_id_and_woken_with_all_its_fragments() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a/wandb"), tmp.path().join("b/wandb"));
        let first = fragment(&a, "offline-run-20260101_000000-x", "x", b"one");
        let second = fragment(&a, "offline-run-20260102_000000-x", "x", b"two");
        let other = fragment(&b, "offline-run-20260101_000000-x", "x", b"three");
        let mut settled = SettledRuns::default();
        let fragments = [first.clone(), second.clone()];
        settled.settle(&a, "x", &fragments, stamp_of(&second), None);
        settled.settle(
            &b,
            "x",
            std::slice::from_ref(&other),
            stamp_of(&other),
            None,
        );
        assert_eq!(settled.len(), 2);
        assert!(settled.contains(&a, "x") && settled.contains(&b, "x"));
        assert!(!settled.contains(&a, "y"));
        assert!(!settled.contains(&tmp.path().join("c/wandb"), "x"));

        assert_eq!(settled.wake(&a, "x"), Some(vec![first, second]));
        assert!(!settled.contains(&a, "x"));
        assert_eq!(settled.wake(&a, "x"), None);
        assert_eq!(settled.wake(&b, "x"), Some(vec![other]));
        assert!(settled.is_empty());
    }

    #[test]
    fn only_runs_whose_newest_file_changed_are_woken_by_a_check() {
        let tmp = tempfile::tempdir().unwrap();
        let wandb = tmp.path().join("wandb");
        let mut files = Vec::new();
        let mut settled = SettledRuns::default();
        for i in 0..5 {
            let id = format!("r{i}");
            let file = fragment(
                &wandb,
                &format!("offline-run-20260101_000000-{id}"),
                &id,
                b"x",
            );
            settled.settle(
                &wandb,
                &id,
                std::slice::from_ref(&file),
                stamp_of(&file),
                None,
            );
            files.push(file);
        }
        let mut syscalls = 0;
        assert!(settled.check(&mut syscalls).is_empty());
        assert_eq!(syscalls, 5);

        // r1 grew, r3's file is gone (it stays settled: nothing to send).
        std::fs::write(&files[1], b"xy").unwrap();
        std::fs::remove_file(&files[3]).unwrap();
        assert_eq!(settled.check(&mut syscalls), [files[1].clone()]);
        // Said once: it leaves when woken (its file read as a run).
        assert!(settled.check(&mut syscalls).is_empty());
        assert!(settled.contains(&wandb, "r1") && settled.contains(&wandb, "r3"));
        assert_eq!(settled.wake(&wandb, "r1"), Some(vec![files[1].clone()]));
        assert_eq!(settled.len(), 4);
    }

    #[test]
    fn many_settled_runs_are_looked_at_in_turns() {
        let tmp = tempfile::tempdir().unwrap();
        let wandb = tmp.path().join("wandb");
        let mut settled = SettledRuns::default();
        let mut files = Vec::new();
        for i in 0..5 {
            let id = format!("t{i}");
            let file = fragment(&wandb, &format!("offline-run-x-{id}"), &id, b"x");
            settled.settle(
                &wandb,
                &id,
                std::slice::from_ref(&file),
                stamp_of(&file),
                None,
            );
            files.push(file);
        }
        for file in &files {
            std::fs::write(file, b"grown").unwrap();
        }
        // Two a look: every run is seen within three looks, each once.
        let mut syscalls = 0;
        let mut seen: Vec<PathBuf> = (0..3)
            .flat_map(|_| settled.check_at_most(2, &mut syscalls))
            .collect();
        assert_eq!(syscalls, 6);
        seen.sort();
        assert_eq!(seen, files);
        assert!(settled.check_at_most(2, &mut syscalls).is_empty());
    }

    #[test]
    fn a_fragment_outside_the_wandb_directory_keeps_its_whole_path() {
        let tmp = tempfile::tempdir().unwrap();
        let elsewhere = fragment(tmp.path(), "moved", "z", b"z");
        let mut settled = SettledRuns::default();
        let wandb = tmp.path().join("wandb");
        let stamp = stamp_of(&elsewhere);
        settled.settle(&wandb, "z", std::slice::from_ref(&elsewhere), stamp, None);
        assert_eq!(settled.wake(&wandb, "z"), Some(vec![elsewhere]));
    }

    #[test]
    fn a_run_settled_again_replaces_its_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let wandb = tmp.path().join("wandb");
        let first = fragment(&wandb, "offline-run-20260101_000000-q", "q", b"1");
        let second = fragment(&wandb, "offline-run-20260102_000000-q", "q", b"2");
        let mut settled = SettledRuns::default();
        let stamp = stamp_of(&first);
        settled.settle(&wandb, "q", std::slice::from_ref(&first), stamp, None);
        let both = [first, second.clone()];
        settled.settle(&wandb, "q", &both, stamp_of(&second), None);
        assert_eq!(settled.len(), 1);
        assert_eq!(settled.wake(&wandb, "q"), Some(both.to_vec()));
    }
}
