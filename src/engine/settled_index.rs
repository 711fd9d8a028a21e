//! The daemon's settled-run index: the settled runs it knew when it last
//! wrote the file, so that the next start-up takes each of them back with a
//! few stats instead of reading its run, its settings and its ledger entry
//! (about 35 system calls a run; a user's years of sweeps are 100,000 runs).
//!
//! The index is a cache, never an authority. A run it names is taken back
//! as settled only when everything its settled state was decided on is
//! still as it was (its [`Vouch`] digest, worked out again from fresh
//! stats): each fragment's size and mtime, its ledger entry's file (a user
//! who deletes or edits an entry expects the run to be looked at again),
//! and its settings files (the `.env` of each project layer, the user's
//! `.env`, netrc: their inode, size, mtime, mode and owner, or that they are
//! absent). The settings the daemon itself was given (the environment it
//! resolves destinations with, its roots, syncd's version) are one digest
//! in the header: when they differ, the whole index is ignored. Anything
//! else (a run whose stamps changed, a damaged or unknown file) is looked
//! at as if there were no index, and the index is written again. What is
//! sent is still decided by the ledger cursor alone: a run wrongly taken
//! back would only be late to be looked at, and one wrongly dropped is read
//! and found done.
//!
//! # Format, version 1
//!
//! Little-endian integers; `bytes` is a `u32` length and that many bytes.
//!
//! ```text
//! magic "SYNCDSRI"        8 bytes
//! version                 u32 (1)
//! setup digest            u64
//! wandb directories       u32 count, then each: bytes (its path)
//! runs                    u32 count, then each:
//!     directory           u32 (its place in the list above)
//!     run                 bytes: run id NUL fragment NUL fragment...,
//!                         fragments oldest first, each `run-dir/file`
//!                         relative to the wandb directory
//!     newest stamp        u64 size, i64 mtime (ns)
//!     ledger key digest   6 bytes (the key is spelled again from the run id)
//!     vouch digest        u64
//! checksum                u32: CRC-32 of everything before it
//! ```
//!
//! A file whose magic, version, setup digest, structure or checksum is not
//! right is ignored whole (and replaced at the next write); it is read
//! twice (checked, then used) rather than held in memory. Written through
//! [`durable::write_atomic_with`]: a reader sees the old file or the new.
//! The digests are `DefaultHasher`'s (fixed keys): a Rust that hashes
//! differently only makes them differ, which ignores the index once.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use crate::engine::settled::{FileStamp, SettledRuns, Vouch};
use crate::fs::durable;
use crate::ledger::KEY_DIGEST_LEN;

/// The index's file name in the state directory.
pub(crate) const FILE_NAME: &str = "settled-runs.index";

const MAGIC: &[u8; 8] = b"SYNCDSRI";
const VERSION: u32 = 1;
/// No path or run is longer: a bigger length is damage, not an allocation.
const MAX_BYTES: u32 = 1 << 20;

/// One run the index names, as [`load`] hands it over.
pub(crate) struct IndexedRun<'a> {
    pub wandb_dir: &'a Path,
    /// As [`crate::engine::settled::SettledRecord::packed`].
    pub packed: &'a [u8],
    pub run_id: &'a str,
    /// Relative to `wandb_dir`, each `run-dir/file`, oldest first.
    pub fragments: Vec<&'a Path>,
    pub newest: FileStamp,
    pub vouch: Vouch,
}

/// What [`load`] made of the file.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Loaded {
    /// No index yet.
    Missing,
    /// Not used, and why (damaged, another version, other settings).
    Ignored(String),
    /// How many runs it named, and how many of them were kept.
    Read { runs: usize, kept: usize },
}

/// Writes the index of `settled`'s vouched-for runs, for the settings
/// whose digest is `setup`.
pub(crate) fn write(path: &Path, setup: u64, settled: &SettledRuns) -> io::Result<()> {
    durable::write_atomic_with(path, |out| {
        let mut out = Checksummed {
            inner: out,
            crc: crc32fast::Hasher::new(),
        };
        out.put(MAGIC)?;
        out.put(&VERSION.to_le_bytes())?;
        out.put(&setup.to_le_bytes())?;
        let dirs = settled.dirs();
        out.put(&count(dirs.len())?.to_le_bytes())?;
        for dir in dirs {
            out.put_bytes(dir.as_os_str().as_bytes())?;
        }
        let runs = settled.records().count();
        out.put(&count(runs)?.to_le_bytes())?;
        for record in settled.records() {
            out.put(&record.dir.to_le_bytes())?;
            out.put_bytes(record.packed)?;
            out.put(&record.newest.size.to_le_bytes())?;
            out.put(&record.newest.mtime_ns.to_le_bytes())?;
            out.put(&record.vouch.key)?;
            out.put(&record.vouch.digest.to_le_bytes())?;
        }
        let crc = out.crc.clone().finalize();
        out.inner.write_all(&crc.to_le_bytes())
    })
}

fn count(n: usize) -> io::Result<u32> {
    u32::try_from(n).map_err(|_| io::Error::other("too many settled runs for the index"))
}

/// Reads the index at `path` written for the settings `setup`, handing
/// each run it names to `keep`, which says whether it was taken back. The
/// whole file is checked before the first run is handed over.
pub(crate) fn load(path: &Path, setup: u64, mut keep: impl FnMut(&IndexedRun) -> bool) -> Loaded {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Loaded::Missing,
        Err(e) => return Loaded::Ignored(format!("cannot be read: {e}")),
    };
    // First the whole file, for its structure and checksum only.
    if let Err(why) = read_index(&mut file, setup, &mut |_| true) {
        return Loaded::Ignored(why);
    }
    if let Err(e) = file.rewind() {
        return Loaded::Ignored(format!("cannot be read: {e}"));
    }
    let (mut runs, mut kept) = (0, 0);
    let read = read_index(&mut file, setup, &mut |run| {
        runs += 1;
        let taken = keep(run);
        kept += usize::from(taken);
        taken
    });
    match read {
        Ok(()) => Loaded::Read { runs, kept },
        // Changed between the two reads: only this daemon writes it.
        Err(why) => Loaded::Ignored(why),
    }
}

fn read_index(
    file: &mut File,
    setup: u64,
    keep: &mut dyn FnMut(&IndexedRun) -> bool,
) -> Result<(), String> {
    let mut input = Checksummed {
        inner: BufReader::with_capacity(64 * 1024, file),
        crc: crc32fast::Hasher::new(),
    };
    let eof = |e: io::Error| match e.kind() {
        io::ErrorKind::UnexpectedEof => "cut short".to_string(),
        _ => format!("cannot be read: {e}"),
    };
    let mut magic = [0; 8];
    input.take(&mut magic).map_err(eof)?;
    if &magic != MAGIC {
        return Err("not a settled-run index".into());
    }
    let version = input.u32().map_err(eof)?;
    if version != VERSION {
        return Err(format!("format {version}, this syncd reads {VERSION}"));
    }
    if input.u64().map_err(eof)? != setup {
        return Err("written with other settings".into());
    }
    let dir_count = input.u32().map_err(eof)?;
    let mut dirs = Vec::new();
    for _ in 0..dir_count {
        let bytes = input.bytes().map_err(eof)??;
        dirs.push(std::path::PathBuf::from(std::ffi::OsStr::from_bytes(
            &bytes,
        )));
    }
    let run_count = input.u32().map_err(eof)?;
    let mut packed = Vec::new();
    for _ in 0..run_count {
        let dir = input.u32().map_err(eof)?;
        let Some(wandb_dir) = dirs.get(dir as usize) else {
            return Err("a run names no directory".into());
        };
        packed.clear();
        input.bytes_into(&mut packed).map_err(eof)??;
        let newest = FileStamp {
            size: input.u64().map_err(eof)?,
            mtime_ns: input.u64().map_err(eof)? as i64,
        };
        let mut key = [0; KEY_DIGEST_LEN];
        input.take(&mut key).map_err(eof)?;
        let digest = input.u64().map_err(eof)?;
        let mut fields = packed.split(|b| *b == 0);
        let run_id = fields.next().and_then(|id| std::str::from_utf8(id).ok());
        let fragments: Option<Vec<&Path>> = fields
            .map(|f| Some(Path::new(std::ffi::OsStr::from_bytes(f))))
            .map(|f| f.filter(|f| in_run_dir(f)))
            .collect();
        let (Some(run_id), Some(fragments)) = (run_id, fragments) else {
            return Err("a run is damaged".into());
        };
        if run_id.is_empty() || fragments.is_empty() {
            return Err("a run is damaged".into());
        }
        keep(&IndexedRun {
            wandb_dir,
            packed: &packed,
            run_id,
            fragments,
            newest,
            vouch: Vouch { key, digest },
        });
    }
    let expected = input.crc.clone().finalize();
    let mut crc = [0; 4];
    input.inner.read_exact(&mut crc).map_err(eof)?;
    if u32::from_le_bytes(crc) != expected {
        return Err("its checksum does not match".into());
    }
    match input.inner.read(&mut [0]) {
        Ok(0) => Ok(()),
        Ok(_) => Err("bytes after its end".into()),
        Err(e) => Err(format!("cannot be read: {e}")),
    }
}

/// `run-dir/file`: a fragment the index can name (and the scanner can be
/// told its run directory of).
pub(crate) fn in_run_dir(fragment: &Path) -> bool {
    let mut parts = fragment.components();
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(Component::Normal(_)), Some(Component::Normal(_)), None)
    )
}

/// A reader or writer that keeps the CRC-32 of what went through it.
struct Checksummed<T> {
    inner: T,
    crc: crc32fast::Hasher,
}

impl<W: Write + ?Sized> Checksummed<&mut W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        self.inner.write_all(bytes)
    }

    fn put_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        let len = u32::try_from(bytes.len())
            .ok()
            .filter(|len| *len <= MAX_BYTES)
            .ok_or_else(|| io::Error::other("a path too long for the index"))?;
        self.put(&len.to_le_bytes())?;
        self.put(bytes)
    }
}

impl<R: Read> Checksummed<R> {
    fn take(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_exact(buf)?;
        self.crc.update(buf);
        Ok(())
    }

    fn u32(&mut self) -> io::Result<u32> {
        let mut buf = [0; 4];
        self.take(&mut buf)?;
        Ok(u32::from_le_bytes(buf))
    }

    fn u64(&mut self) -> io::Result<u64> {
        let mut buf = [0; 8];
        self.take(&mut buf)?;
        Ok(u64::from_le_bytes(buf))
    }

    /// A length and that many bytes; the inner error is a length no
    /// index holds.
    fn bytes(&mut self) -> io::Result<Result<Vec<u8>, String>> {
        let mut out = Vec::new();
        Ok(self.bytes_into(&mut out)?.map(|()| out))
    }

    fn bytes_into(&mut self, out: &mut Vec<u8>) -> io::Result<Result<(), String>> {
        let len = self.u32()?;
        if len > MAX_BYTES {
            return Ok(Err(format!("a length of {len} bytes")));
        }
        out.resize(len as usize, 0);
        self.take(out)?;
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settled_with(wandb: &Path, n: usize) -> SettledRuns {
        let mut settled = SettledRuns::default();
        for i in 0..n {
            let id = format!("r{i}");
            let fragment = wandb.join(format!("offline-run-20260101_000000-{id}/run-{id}.wandb"));
            let stamp = FileStamp {
                size: i as u64,
                mtime_ns: 7,
            };
            let vouch = Vouch {
                key: [i as u8; KEY_DIGEST_LEN],
                digest: 40 + i as u64,
            };
            settled.settle(wandb, &id, &[fragment], stamp, Some(vouch));
        }
        settled
    }

    fn names(path: &Path, setup: u64) -> (Loaded, Vec<(String, u64)>) {
        let mut seen = Vec::new();
        let loaded = load(path, setup, |run| {
            seen.push((run.run_id.to_string(), run.vouch.digest));
            assert_eq!(run.fragments.len(), 1);
            true
        });
        (loaded, seen)
    }

    #[test]
    fn written_runs_are_read_back_for_the_same_settings_only() {
        let tmp = tempfile::tempdir().unwrap();
        let wandb = tmp.path().join("wandb");
        let path = tmp.path().join(FILE_NAME);
        assert_eq!(names(&path, 1).0, Loaded::Missing);
        write(&path, 1, &settled_with(&wandb, 3)).unwrap();
        let (loaded, seen) = names(&path, 1);
        assert_eq!(loaded, Loaded::Read { runs: 3, kept: 3 });
        let ids: Vec<&str> = seen.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["r0", "r1", "r2"]);
        assert_eq!(seen[2].1, 42);
        assert!(matches!(names(&path, 2), (Loaded::Ignored(_), seen) if seen.is_empty()));
    }

    #[test]
    fn a_damaged_index_hands_over_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(FILE_NAME);
        write(&path, 1, &settled_with(&tmp.path().join("wandb"), 3)).unwrap();
        let good = std::fs::read(&path).unwrap();
        // Every byte flipped in turn, and cut short at every length.
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            std::fs::write(&path, &bad).unwrap();
            let (loaded, seen) = names(&path, 1);
            assert!(
                matches!(loaded, Loaded::Ignored(_)),
                "byte {at}: {loaded:?}"
            );
            assert!(seen.is_empty(), "byte {at}");
            std::fs::write(&path, &good[..at]).unwrap();
            assert!(names(&path, 1).1.is_empty(), "cut at {at}");
        }
        let mut longer = good.clone();
        longer.push(0);
        std::fs::write(&path, &longer).unwrap();
        assert!(matches!(names(&path, 1).0, Loaded::Ignored(_)));
    }

    #[test]
    fn runs_not_vouched_for_are_not_written() {
        let tmp = tempfile::tempdir().unwrap();
        let wandb = tmp.path().join("wandb");
        let mut settled = settled_with(&wandb, 2);
        let file = wandb.join("offline-run-20260101_000000-x/run-x.wandb");
        let stamp = FileStamp {
            size: 1,
            mtime_ns: 1,
        };
        settled.settle(&wandb, "x", &[file], stamp, None);
        let path = tmp.path().join(FILE_NAME);
        write(&path, 1, &settled).unwrap();
        assert_eq!(names(&path, 1).0, Loaded::Read { runs: 2, kept: 2 });
        settled.drop_vouches();
        write(&path, 1, &settled).unwrap();
        assert_eq!(names(&path, 1).0, Loaded::Read { runs: 0, kept: 0 });
    }
}
