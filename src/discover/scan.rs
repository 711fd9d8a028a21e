//! Polling the configured roots: the source of truth, because writes made on
//! compute nodes to NFS, Lustre or GPFS are invisible to inotify on the login
//! node. The cost of a poll grows with the number of *active* runs:
//!
//! - a root (wandb directory) is listed again only when its mtime changed
//!   (a new run directory was created) or on the slow schedule;
//! - a run directory is listed until its `.wandb` file is found, then never
//!   again (wandb writes one per directory; a resumed or requeued run gets a
//!   new directory);
//! - a run's `.wandb` files are stat'ed every fast poll while the run is
//!   active, and only on the slow schedule once it is settled (synced): the
//!   daemon then keeps it apart (`engine::settled`) and the scanner forgets
//!   the file ([`Scanner::forget_file`]);
//! - the first scan of a big root can be taken in batches
//!   ([`Scanner::scan_roots_limited`]);
//! - nothing is ever walked recursively: a root and its run directories, one
//!   level each.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A root as configured: a wandb directory, a directory holding `wandb/`,
/// or a glob pattern of either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootSpec(pub String);

impl RootSpec {
    /// The directory every match of the root lies under: the root itself,
    /// or for a glob pattern its components before the first wildcard.
    pub fn base(&self) -> PathBuf {
        Path::new(&self.0)
            .components()
            .take_while(|c| !c.as_os_str().to_string_lossy().contains(['*', '?', '[']))
            .collect()
    }
}

/// Size and modification time: the cheap "did it change" check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub size: u64,
    pub mtime_ns: i128,
}

impl Stamp {
    pub(crate) fn of(meta: &fs::Metadata) -> Stamp {
        Stamp {
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }

    /// The mtime as a time (`None` before 1970).
    pub(crate) fn modified(&self) -> Option<std::time::SystemTime> {
        let ns = u64::try_from(self.mtime_ns).ok()?;
        std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_nanos(ns))
    }
}

/// What one scan found.
#[derive(Debug, Default)]
pub struct ScanReport {
    /// `.wandb` files seen for the first time.
    pub new_files: Vec<PathBuf>,
    /// Known files whose size or mtime changed.
    pub changed_files: Vec<PathBuf>,
    /// Run directories skipped because another user owns them (reported once).
    pub foreign: Vec<PathBuf>,
    /// Roots that do not exist or cannot be read, run directories that
    /// cannot be read, `.wandb` files whose header is damaged (reported once
    /// per cause).
    pub problems: Vec<String>,
    /// System calls made, roughly (directory reads + stats), for the benchmark.
    pub syscalls: u64,
}

#[derive(Debug)]
struct WandbDir {
    mtime_ns: Option<i128>,
    /// Its run directories, by a 64-bit hash of their names: only "seen
    /// before?" is asked, and 100,000 names would cost 8 MB kept as names
    /// (two of 100,000 names sharing a hash: about 1 in 3 billion).
    run_dirs: HashSet<u64>,
}

/// The hash a run directory's name is known by ([`WandbDir::run_dirs`]):
/// SipHash with fixed keys, the same for the life of the process.
fn name_hash(name: &OsStr) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut hasher);
    hasher.finish()
}

/// Remembers what it has seen so a scan only looks at what may have changed.
#[derive(Debug)]
pub struct Scanner {
    roots: Vec<RootSpec>,
    uid: u32,
    wandb_dirs: BTreeMap<PathBuf, WandbDir>,
    /// Hashed, not ordered: a `Path` compares component by component; with
    /// 10,000 files a full poll took 37 ms of CPU ordered, 22 ms hashed.
    files: HashMap<PathBuf, Stamp>,
    /// Run directories whose `.wandb` file did not exist yet when listed
    /// (wandb creates the directory first): looked at again every scan.
    empty_run_dirs: BTreeSet<PathBuf>,
    /// Run directories listed but not looked at yet, by wandb directory
    /// (names): a scan with a limit leaves the rest for the next one, so
    /// that the first scan of 100,000 runs is taken in batches.
    unvisited: Vec<(PathBuf, Vec<OsString>)>,
    reported_foreign: HashSet<PathBuf>,
    reported_problems: HashSet<String>,
    /// Run directories the daemon vouches for before the first listing
    /// (its settled-run index): by wandb directory, name hashes as in
    /// [`WandbDir::run_dirs`]. The first listing of that directory takes
    /// them as seen, so they are not looked at; dropped after a full
    /// listing.
    known_before: HashMap<PathBuf, HashSet<u64>>,
}

impl Scanner {
    /// `uid`: only run directories owned by this user are synced.
    pub fn new(roots: Vec<RootSpec>, uid: u32) -> Scanner {
        Scanner {
            roots,
            uid,
            wandb_dirs: BTreeMap::new(),
            files: HashMap::new(),
            empty_run_dirs: BTreeSet::new(),
            unvisited: Vec::new(),
            reported_foreign: HashSet::new(),
            reported_problems: HashSet::new(),
            known_before: HashMap::new(),
        }
    }

    /// Takes the run directory `name` of `wandb_dir` as already looked at
    /// when `wandb_dir` is first listed: its run is settled and the daemon
    /// stats its files itself. Only before that first listing.
    pub(crate) fn know_run_dir(&mut self, wandb_dir: &Path, name: &OsStr) {
        if self.wandb_dirs.contains_key(wandb_dir) {
            return;
        }
        let hash = name_hash(name);
        match self.known_before.get_mut(wandb_dir) {
            Some(known) => known.insert(hash),
            None => (self.known_before.entry(wandb_dir.to_path_buf()))
                .or_default()
                .insert(hash),
        };
    }

    pub fn known_files(&self) -> usize {
        self.files.len()
    }

    /// Stats a known file again, so that [`Scanner::stamp`] says what it
    /// is now (a file reported by other means than a scan: a trigger).
    pub(crate) fn refresh_stamp(&mut self, path: &Path) {
        if let Some(stamp) = self.files.get_mut(path)
            && let Ok(meta) = fs::metadata(path)
        {
            *stamp = Stamp::of(&meta);
        }
    }

    /// A known file's stamp as last seen (by the scan that reported it).
    pub(crate) fn stamp(&self, path: &Path) -> Option<Stamp> {
        self.files.get(path).copied()
    }

    /// Drops what is known of a file (its run settled: the daemon stats it
    /// itself on the slow schedule, and holds no copy of its path here);
    /// its stamp as last seen, if known. Should its run directory be looked
    /// at again, the file is reported as new.
    pub(crate) fn forget_file(&mut self, path: &Path) -> Option<Stamp> {
        let stamp = self.files.remove(path);
        // A table sized for every run of the first scan is given back once
        // most of them settled.
        if self.files.capacity() > 64 && self.files.len() < self.files.capacity() / 4 {
            self.files.shrink_to_fit();
        }
        stamp
    }

    /// Replaces the configured roots (on reload); what was seen is kept.
    pub fn set_roots(&mut self, roots: Vec<RootSpec>) {
        self.roots = roots;
    }

    /// The wandb directories found so far.
    pub fn wandb_dirs(&self) -> impl Iterator<Item = &PathBuf> {
        self.wandb_dirs.keys()
    }

    /// Run directories listed before their `.wandb` file existed: looked
    /// at again every scan until it does.
    pub fn run_dirs_without_file(&self) -> impl Iterator<Item = &PathBuf> {
        self.empty_run_dirs.iter()
    }

    /// Finds wandb directories (expanding globs) and lists those whose mtime
    /// changed, or all of them when `full`. New `.wandb` files are reported.
    pub fn scan_roots(&mut self, full: bool) -> ScanReport {
        self.scan_roots_limited(full, usize::MAX)
    }

    /// [`Scanner::scan_roots`], looking at no more than `limit` new run
    /// directories: the rest are left for the next scans
    /// ([`Scanner::has_unvisited`]), which look at them before listing
    /// anything again.
    pub(crate) fn scan_roots_limited(&mut self, full: bool, limit: usize) -> ScanReport {
        let mut report = ScanReport::default();
        if self.unvisited.is_empty() {
            self.list_roots(full, &mut report);
        }
        let mut looked = 0;
        while looked < limit
            && let Some((dir, names)) = self.unvisited.last_mut()
        {
            let Some(name) = names.pop() else {
                self.unvisited.pop();
                continue;
            };
            let run_dir = dir.join(name);
            self.look_at_run_dir(&run_dir, &mut report);
            looked += 1;
        }
        if self
            .unvisited
            .last()
            .is_some_and(|(_, names)| names.is_empty())
        {
            self.unvisited.pop();
        }
        report
    }

    /// Run directories listed are waiting to be looked at.
    pub(crate) fn has_unvisited(&self) -> bool {
        !self.unvisited.is_empty()
    }

    /// Looks again at run directories that had no file, lists the wandb
    /// directories that changed (all when `full`) and leaves their new run
    /// directories in `unvisited`.
    fn list_roots(&mut self, full: bool, report: &mut ScanReport) {
        for run_dir in std::mem::take(&mut self.empty_run_dirs) {
            self.look_at_run_dir(&run_dir, report);
        }
        let mut dirs = Vec::new();
        for root in self.roots.clone() {
            match expand_root(&root.0, &mut report.syscalls) {
                Ok(found) if found.is_empty() => {
                    self.problem(report, format!("{}: no such directory yet", root.0))
                }
                Ok(found) => dirs.extend(found),
                Err(e) => self.problem(report, format!("{}: {e}", root.0)),
            }
        }
        for dir in dirs {
            report.syscalls += 1;
            let mtime = fs::metadata(&dir).ok().map(|m| Stamp::of(&m).mtime_ns);
            let known = self.wandb_dirs.get(&dir).and_then(|d| d.mtime_ns);
            if !full && known.is_some() && known == mtime {
                continue;
            }
            let names = match list_run_dirs(&dir, &mut report.syscalls) {
                Ok(names) => names,
                Err(e) => {
                    self.problem(report, format!("{}: {e}", crate::paths::display(&dir)));
                    continue;
                }
            };
            let previous = self.wandb_dirs.remove(&dir);
            let previous_runs = match previous {
                Some(previous) => previous.run_dirs,
                None => self.known_before.remove(&dir).unwrap_or_default(),
            };
            let mut run_dirs = HashSet::with_capacity(names.len());
            let mut new = Vec::new();
            for name in names {
                let hash = name_hash(&name);
                run_dirs.insert(hash);
                // Seen before: its file was found then, or it is in
                // `empty_run_dirs` and was looked at above.
                if !previous_runs.contains(&hash) {
                    new.push(name);
                }
            }
            if !new.is_empty() {
                // Looked at in name order (`pop` takes the last).
                new.sort_unstable_by(|a, b| b.cmp(a));
                self.unvisited.push((dir.clone(), new));
            }
            self.wandb_dirs.insert(
                dir,
                WandbDir {
                    mtime_ns: mtime,
                    run_dirs,
                },
            );
        }
        if full {
            // Whatever was vouched for in a directory no root names now is
            // found as new if it is ever listed.
            self.known_before = HashMap::new();
        }
    }

    /// Adds the `.wandb` files of one run directory (new ones are reported).
    pub fn look_at_run_dir(&mut self, run_dir: &Path, report: &mut ScanReport) {
        // A directory that cannot be read now is looked at again next scan
        // (it will not be listed again otherwise); one that is gone is not.
        let retry_unless_gone = |scanner: &mut Scanner, e: std::io::Error| {
            if e.kind() != std::io::ErrorKind::NotFound {
                scanner.empty_run_dirs.insert(run_dir.to_path_buf());
            }
        };
        report.syscalls += 1;
        let meta = match fs::metadata(run_dir) {
            Ok(meta) => meta,
            Err(e) => return retry_unless_gone(self, e),
        };
        if meta.uid() != self.uid {
            if self.reported_foreign.insert(run_dir.to_path_buf()) {
                report.foreign.push(run_dir.to_path_buf());
            }
            return;
        }
        report.syscalls += 1;
        let entries = match fs::read_dir(run_dir) {
            Ok(entries) => entries,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    self.problem(
                        report,
                        format!(
                            "{}: cannot be read ({e}); no run in it is synced",
                            crate::paths::display(run_dir)
                        ),
                    );
                }
                return retry_unless_gone(self, e);
            }
        };
        let mut found = false;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "wandb") {
                continue;
            }
            report.syscalls += 1;
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            found = true;
            if self.files.contains_key(&path) {
                continue;
            }
            self.files.insert(path.clone(), Stamp::of(&meta));
            self.check_header(&path, report);
            report.new_files.push(path);
        }
        if !found {
            self.empty_run_dirs.insert(run_dir.to_path_buf());
        }
    }

    /// Stats `files` (the ones the caller considers worth a look) and
    /// reports those that changed since last seen.
    pub fn check_files<'a>(
        &mut self,
        files: impl IntoIterator<Item = &'a PathBuf>,
        report: &mut ScanReport,
    ) {
        for path in files {
            report.syscalls += 1;
            let Ok(meta) = fs::metadata(path) else {
                continue;
            };
            let stamp = Stamp::of(&meta);
            match self.files.get_mut(path) {
                Some(old) if *old == stamp => {}
                Some(old) => {
                    *old = stamp;
                    report.changed_files.push(path.clone());
                }
                None => {
                    self.files.insert(path.clone(), stamp);
                    self.check_header(path, report);
                    report.new_files.push(path.clone());
                }
            }
        }
    }

    /// A new `.wandb` file whose header is damaged (or that cannot be
    /// opened) is never a run: said once, rather than passed over in
    /// silence. A header still being written is not damage.
    fn check_header(&mut self, path: &Path, report: &mut ScanReport) {
        use crate::source::wandb::framing::{LogReader, ReadError};
        let problem = match crate::fs::open_regular(path) {
            Ok(file) => match LogReader::open(file, 0) {
                Ok(_) => return,
                Err(ReadError::Corrupt(c)) => format!("{c}; not a W&B run file, not synced"),
                Err(e) => format!("cannot be read ({e}); not synced"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => format!("cannot be read ({e}); not synced"),
        };
        report.syscalls += 1;
        self.problem(
            report,
            format!("{}: {problem}", crate::paths::display(path)),
        );
    }

    fn problem(&mut self, report: &mut ScanReport, message: String) {
        if self.reported_problems.insert(message.clone()) {
            report.problems.push(message);
        }
    }
}

/// The wandb directories a root names: itself, its `wandb/` or `.wandb/`,
/// for each match of a glob pattern. Directories only.
fn expand_root(root: &str, syscalls: &mut u64) -> Result<Vec<PathBuf>, String> {
    let candidates: Vec<PathBuf> = if root.contains(['*', '?', '[']) {
        let paths = glob::glob(root).map_err(|e| format!("bad glob pattern: {e}"))?;
        paths.filter_map(Result::ok).collect()
    } else {
        vec![PathBuf::from(root)]
    };
    let mut dirs = Vec::new();
    for candidate in candidates {
        *syscalls += 1;
        if !candidate.is_dir() {
            continue;
        }
        let inner = ["wandb", ".wandb"]
            .iter()
            .map(|n| candidate.join(n))
            .find(|p| {
                *syscalls += 1;
                p.is_dir()
            });
        dirs.push(inner.unwrap_or(candidate));
    }
    Ok(dirs)
}

/// Run directories (`offline-run-*`, and `run-*` for online runs' logs are
/// not ours) directly inside a wandb directory.
fn list_run_dirs(dir: &Path, syscalls: &mut u64) -> std::io::Result<Vec<OsString>> {
    *syscalls += 1;
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("offline-run-") {
            continue;
        }
        // `file_type` comes with the directory entry on most filesystems: no
        // extra stat per entry.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(name);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid() -> u32 {
        fs::metadata(".").unwrap().uid()
    }

    fn make_run(wandb: &Path, name: &str) -> PathBuf {
        let dir = wandb.join(name);
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("run-{}.wandb", name.rsplit('-').next().unwrap()));
        fs::write(&file, b":W&B\xe1\xbe\x00").unwrap();
        file
    }

    #[test]
    fn finds_new_runs_and_changes_without_relisting() {
        let tmp = tempfile::tempdir().unwrap();
        let wandb = tmp.path().join("proj/wandb");
        fs::create_dir_all(&wandb).unwrap();
        let first = make_run(&wandb, "offline-run-20260101_000000-aaa");
        let mut scanner = Scanner::new(
            vec![RootSpec(tmp.path().join("proj").display().to_string())],
            uid(),
        );
        let report = scanner.scan_roots(false);
        assert_eq!(report.new_files, std::slice::from_ref(&first));
        // Nothing changed: the root is not listed again.
        let report = scanner.scan_roots(false);
        assert!(report.new_files.is_empty());
        assert!(report.syscalls <= 4, "{}", report.syscalls);

        std::thread::sleep(std::time::Duration::from_millis(20));
        let second = make_run(&wandb, "offline-run-20260101_000100-bbb");
        let report = scanner.scan_roots(false);
        assert_eq!(report.new_files, [second]);

        fs::write(&first, b":W&B\xe1\xbe\x00more").unwrap();
        let mut report = ScanReport::default();
        scanner.check_files([&first], &mut report);
        assert_eq!(report.changed_files, [first]);
    }

    #[test]
    fn a_damaged_header_is_a_problem_said_once_and_a_short_one_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let wandb = tmp.path().join("wandb");
        make_run(&wandb, "offline-run-20260101_000000-good");
        let bad = make_run(&wandb, "offline-run-20260101_000000-bad");
        fs::write(&bad, b"PK\x03\x04 not a run").unwrap();
        let short = make_run(&wandb, "offline-run-20260101_000000-short");
        fs::write(&short, b":W&B").unwrap();
        let mut scanner = Scanner::new(vec![RootSpec(wandb.display().to_string())], uid());
        let report = scanner.scan_roots(true);
        assert_eq!(report.new_files.len(), 3);
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert!(
            report.problems[0].starts_with(&format!("{}: ", bad.display()))
                && report.problems[0].contains("file header"),
            "{:?}",
            report.problems
        );
        let mut report = scanner.scan_roots(true);
        scanner.check_files([&bad], &mut report);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }

    #[test]
    fn a_full_poll_lists_the_root_but_not_the_run_directories_it_knows() {
        let tmp = tempfile::tempdir().unwrap();
        let wandb = tmp.path().join("wandb");
        for i in 0..20 {
            make_run(&wandb, &format!("offline-run-20260101_000000-r{i:02}"));
        }
        let mut scanner = Scanner::new(vec![RootSpec(wandb.display().to_string())], uid());
        assert_eq!(scanner.scan_roots(true).new_files.len(), 20);
        let report = scanner.scan_roots(true);
        assert!(report.new_files.is_empty());
        // The root's stat and listing, no run directory's.
        assert!(report.syscalls <= 6, "{}", report.syscalls);
    }

    #[test]
    fn a_limited_scan_leaves_the_rest_of_a_listing_for_the_next_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let wandb = tmp.path().join("wandb");
        let files: Vec<PathBuf> = (0..25)
            .map(|i| make_run(&wandb, &format!("offline-run-20260101_000000-r{i:02}")))
            .collect();
        let mut scanner = Scanner::new(vec![RootSpec(wandb.display().to_string())], uid());
        let mut found = Vec::new();
        let mut scans = 0;
        loop {
            found.extend(scanner.scan_roots_limited(scans == 0, 10).new_files);
            scans += 1;
            if !scanner.has_unvisited() {
                break;
            }
        }
        assert_eq!(scans, 3);
        assert_eq!(found, files, "each once, in name order");
        assert!(scanner.scan_roots(true).new_files.is_empty());
        let late = make_run(&wandb, "offline-run-20260101_000000-r99");
        assert_eq!(scanner.scan_roots_limited(true, 10).new_files, [late]);
    }

    #[test]
    fn a_run_directory_is_looked_at_until_its_file_appears() {
        let tmp = tempfile::tempdir().unwrap();
        let wandb = tmp.path().join("wandb");
        let run_dir = wandb.join("offline-run-20260101_000000-late");
        fs::create_dir_all(&run_dir).unwrap();
        let mut scanner = Scanner::new(vec![RootSpec(wandb.display().to_string())], uid());
        assert!(scanner.scan_roots(false).new_files.is_empty());
        assert_eq!(
            scanner.run_dirs_without_file().collect::<Vec<_>>(),
            [&run_dir]
        );
        // Creating a file in the run directory leaves the root's mtime alone.
        let file = run_dir.join("run-late.wandb");
        fs::write(&file, b":W&B").unwrap();
        assert_eq!(scanner.scan_roots(false).new_files, [file]);
        assert_eq!(scanner.run_dirs_without_file().count(), 0);
    }

    #[test]
    fn a_roots_base_is_what_precedes_its_first_wildcard() {
        for (root, base) in [
            ("/scratch/u/wandb", "/scratch/u/wandb"),
            ("/scratch/*/wandb", "/scratch"),
            ("/home/u/projects/exp-[0-9]*/", "/home/u/projects"),
            ("rel/dir", "rel/dir"),
        ] {
            assert_eq!(RootSpec(root.into()).base(), PathBuf::from(base), "{root}");
        }
    }

    #[test]
    fn globs_and_missing_roots() {
        let tmp = tempfile::tempdir().unwrap();
        for p in ["a", "b"] {
            make_run(
                &tmp.path().join(p).join("wandb"),
                "offline-run-20260101_000000-x",
            );
        }
        let pattern = format!("{}/*", tmp.path().display());
        let missing = tmp.path().join("nope").display().to_string();
        let mut scanner = Scanner::new(vec![RootSpec(pattern), RootSpec(missing.clone())], uid());
        let report = scanner.scan_roots(false);
        assert_eq!(report.new_files.len(), 2);
        assert_eq!(report.problems.len(), 1);
        assert!(report.problems[0].contains(&missing));
        assert!(
            scanner.scan_roots(false).problems.is_empty(),
            "a problem is reported once"
        );
    }

    #[test]
    fn foreign_run_dirs_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let wandb = tmp.path().join("wandb");
        let file = make_run(&wandb, "offline-run-20260101_000000-ccc");
        let mut scanner = Scanner::new(vec![RootSpec(wandb.display().to_string())], uid() + 1);
        let report = scanner.scan_roots(false);
        assert!(report.new_files.is_empty());
        assert_eq!(report.foreign, [file.parent().unwrap().to_path_buf()]);
    }
}
