//! The one place syncd reads files outside a run directory: an artifact's
//! staging copies (`…/artifacts/staging/…` under the writer's
//! `WANDB_DATA_DIR`), named by the `local_path` of the run's own `artifact`
//! record. The rule, checked on the open descriptor (so what is read is
//! what was checked):
//!
//! - the path is absolute, has no `..`, and its last component is not a
//!   symlink (opened with `O_NOFOLLOW`, without blocking);
//! - it is a regular file (no named pipe, device, socket or directory);
//! - it is owned by the run's user (the owner of the run directory);
//! - where the descriptor really leads stays within the staging tree: the
//!   `…/artifacts/staging` directory the path names, or, for a file the
//!   writer did not copy there (`policy="immutable"`), the file's own
//!   directory; a symlinked directory leading elsewhere is refused;
//! - its size and MD5 are the ones the record gives (the file the writer
//!   logged, not a later one by the same name).
//!
//! Anything else is reported (the artifact is not uploadable, with the
//! reason) and never read further.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use md5::{Digest, Md5};
use rustix::fs::{Mode, OFlags};

use crate::ledger::FileStamp;

/// How much of a file is read at a time (hashing and sending).
const CHUNK: usize = 256 * 1024;

/// A staging file that passed the rule, open.
#[derive(Debug)]
pub(crate) struct Staged {
    pub file: Arc<File>,
    pub size: u64,
    /// Its identity when opened: whether MD5s computed before still hold.
    pub stamp: FileStamp,
}

/// Why a staging file was not opened: the reason, and whether it may pass
/// (an I/O error of a network filesystem, say) or is final (missing, or
/// breaking the rule).
#[derive(Debug)]
pub(crate) struct Refused {
    pub why: String,
    pub transient: bool,
}

impl From<String> for Refused {
    /// A refusal by the rule: final.
    fn from(why: String) -> Refused {
        Refused {
            why,
            transient: false,
        }
    }
}

/// Whether an I/O error reading a staging file may pass: a network
/// filesystem's stale handle, timeout or I/O error, a permission of an
/// automount not set up yet. A missing file (ENOENT: its cache cleaned)
/// and a symlink (ELOOP) are final, as is whatever breaks the rule.
pub(crate) fn transient(error: &std::io::Error) -> bool {
    use rustix::io::Errno;
    let Some(code) = error.raw_os_error() else {
        return matches!(
            error.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted
        );
    };
    [
        Errno::STALE,
        Errno::IO,
        Errno::TIMEDOUT,
        Errno::ACCESS,
        Errno::PERM,
        Errno::AGAIN,
        Errno::INTR,
        Errno::NOTCONN,
        Errno::HOSTDOWN,
        Errno::HOSTUNREACH,
        Errno::NOLCK,
        Errno::NOMEM,
        Errno::NFILE,
        Errno::MFILE,
    ]
    .iter()
    .any(|e| e.raw_os_error() == code)
}

/// An I/O error on `local_path`, final or not as [`transient`] judges.
fn io_refusal(local_path: &str, error: std::io::Error) -> Refused {
    Refused {
        transient: transient(&error),
        why: format!("{local_path}: {error}"),
    }
}

/// Opens the staging file `local_path` under the rule of this module's
/// doc, owned by `owner`, of `size` bytes.
pub(crate) fn open(local_path: &str, owner: u32, size: i64) -> Result<Staged, Refused> {
    let path = Path::new(local_path);
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(format!("{local_path}: not an absolute path without '..'").into());
    }
    let root = staging_root(path);
    let fd = rustix::fs::open(
        path,
        // NOCTTY: a terminal that slipped past the checks below never
        // becomes syncd's controlling terminal.
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP => Refused::from(format!("{local_path}: is a symlink")),
        rustix::io::Errno::NOENT => Refused::from(format!(
            "{local_path}: missing (the staging copy is gone: its cache was cleaned?)"
        )),
        e => io_refusal(local_path, e.into()),
    })?;
    let file = File::from(fd);
    let meta = file.metadata().map_err(|e| io_refusal(local_path, e))?;
    if !meta.file_type().is_file() {
        return Err(format!(
            "{local_path}: not a regular file (a {})",
            crate::fs::kind_name(meta.file_type())
        )
        .into());
    }
    if meta.uid() != owner {
        return Err(format!(
            "{local_path}: owned by uid {}, not by the run's user (uid {owner})",
            meta.uid()
        )
        .into());
    }
    let opened = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|e| io_refusal(&format!("{local_path}: where it leads is unknown"), e))?;
    let root = root
        .canonicalize()
        .map_err(|e| io_refusal(&root.display().to_string(), e))?;
    if !opened.starts_with(&root) {
        return Err(format!(
            "{local_path}: leads outside the staging directory {} (to {})",
            root.display(),
            opened.display()
        )
        .into());
    }
    if i64::try_from(meta.len()).ok() != Some(size) {
        return Err(format!(
            "{local_path}: {} bytes, but the artifact logged {size}",
            meta.len()
        )
        .into());
    }
    // Regular files never block; reads after this behave as usual.
    let flags = rustix::fs::fcntl_getfl(&file).map_err(|e| io_refusal(local_path, e.into()))?;
    rustix::fs::fcntl_setfl(&file, flags - OFlags::NONBLOCK)
        .map_err(|e| io_refusal(local_path, e.into()))?;
    Ok(Staged {
        file: Arc::new(file),
        size: meta.len(),
        stamp: FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        },
    })
}

/// The staging tree a staging path lies in: its `…/artifacts/staging`
/// ancestor, else (a file the writer did not copy) its own directory.
fn staging_root(path: &Path) -> PathBuf {
    let mut at = path.parent();
    while let Some(dir) = at {
        if dir.file_name().is_some_and(|n| n == "staging")
            && dir
                .parent()
                .and_then(Path::file_name)
                .is_some_and(|n| n == "artifacts")
        {
            return dir.to_path_buf();
        }
        at = dir.parent();
    }
    path.parent().unwrap_or(Path::new("/")).to_path_buf()
}

/// The MD5 of the whole file and, when `part_size` is given, of each part
/// of that size (a multipart upload's), read once, a chunk at a time.
pub(crate) fn md5s(
    staged: &Staged,
    part_size: Option<u64>,
) -> std::io::Result<(String, Vec<[u8; 16]>)> {
    let mut whole = Md5::new();
    let mut part = Md5::new();
    let mut parts = Vec::new();
    let mut in_part = 0u64;
    let mut buf = vec![0u8; CHUNK];
    let mut file = &*staged.file;
    let mut at = 0u64;
    loop {
        let want = match part_size {
            Some(size) => (size - in_part).min(CHUNK as u64) as usize,
            None => CHUNK,
        };
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        whole.update(&buf[..n]);
        at += n as u64;
        if let Some(size) = part_size {
            part.update(&buf[..n]);
            in_part += n as u64;
            if in_part == size {
                parts.push(part.finalize_reset().into());
                in_part = 0;
            }
        }
    }
    if part_size.is_some() && in_part > 0 {
        parts.push(part.finalize().into());
    }
    debug_assert!(at <= staged.size || staged.size == 0);
    Ok((BASE64.encode(whole.finalize()), parts))
}

/// The MD5 of `bytes`, standard base64 (W&B's digests and `Content-MD5`).
pub(crate) fn md5_base64(bytes: &[u8]) -> String {
    BASE64.encode(Md5::digest(bytes))
}

/// `len` bytes of a file from `start`, as an HTTP body read a chunk at a
/// time: a file of any size is sent in bounded memory.
pub(crate) struct FileBody {
    file: Arc<File>,
    at: u64,
    end: u64,
}

impl FileBody {
    pub(crate) fn new(file: Arc<File>, start: u64, len: u64) -> FileBody {
        FileBody {
            file,
            at: start,
            end: start + len,
        }
    }
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        if self.at >= self.end {
            return Poll::Ready(None);
        }
        let want = (self.end - self.at).min(CHUNK as u64) as usize;
        let mut buf = vec![0u8; want];
        // A read of a local or network file; the body is polled from a
        // worker thread, as the run's own files are read.
        let result = self.file.read_at(&mut buf, self.at);
        Poll::Ready(Some(match result {
            Ok(0) => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file became shorter while it was sent",
            )),
            Ok(n) => {
                buf.truncate(n);
                self.at += n as u64;
                Ok(http_body::Frame::data(Bytes::from(buf)))
            }
            Err(e) => Err(e),
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.at >= self.end
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.end - self.at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn uid() -> u32 {
        crate::process::current_uid()
    }

    fn staging() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data/artifacts/staging");
        std::fs::create_dir_all(&dir).unwrap();
        (tmp, dir)
    }

    #[test]
    fn a_regular_staging_file_of_the_runs_user_opens_and_hashes() {
        let (_tmp, dir) = staging();
        let path = dir.join("tmpabc");
        std::fs::write(&path, "a,b\n1,2\n3,4\n").unwrap();
        let staged = open(path.to_str().unwrap(), uid(), 12).unwrap();
        let (md5, parts) = md5s(&staged, Some(5)).unwrap();
        assert_eq!(md5, "w8a8Kujs5L0lENyiEiXAQQ==");
        assert_eq!(parts.len(), 3);
        assert_eq!(BASE64.encode(parts[2]), md5_base64(b"4\n"));
    }

    #[test]
    fn symlinks_out_of_the_tree_pipes_foreign_and_missing_files_are_refused() {
        let (tmp, dir) = staging();
        let outside = tmp.path().join("secret");
        std::fs::write(&outside, "x").unwrap();
        let link = dir.join("tmplink");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        let err = open(link.to_str().unwrap(), uid(), 1).unwrap_err().why;
        assert!(err.contains("is a symlink"), "{err}");

        // A directory symlink inside the path that leads out.
        let other = tmp.path().join("elsewhere");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("f"), "x").unwrap();
        std::os::unix::fs::symlink(&other, dir.join("sub")).unwrap();
        let err = open(dir.join("sub/f").to_str().unwrap(), uid(), 1)
            .unwrap_err()
            .why;
        assert!(err.contains("leads outside the staging directory"), "{err}");

        let fifo = dir.join("tmpfifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let err = open(fifo.to_str().unwrap(), uid(), 0).unwrap_err().why;
        assert!(err.contains("named pipe"), "{err}");

        let file = dir.join("tmpfile");
        std::fs::write(&file, "x").unwrap();
        let err = open(file.to_str().unwrap(), uid() + 1, 1).unwrap_err().why;
        assert!(err.contains("not by the run's user"), "{err}");
        let err = open(file.to_str().unwrap(), uid(), 2).unwrap_err().why;
        assert!(err.contains("1 bytes, but the artifact logged 2"), "{err}");

        let err = open(dir.join("gone").to_str().unwrap(), uid(), 1)
            .unwrap_err()
            .why;
        assert!(err.contains("missing"), "{err}");
        let err = open("relative/tmpfile", uid(), 1).unwrap_err().why;
        assert!(err.contains("absolute"), "{err}");
        let err = open(&format!("{}/../staging/tmpfile", dir.display()), uid(), 1)
            .unwrap_err()
            .why;
        assert!(err.contains("'..'"), "{err}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    #[test]
    fn network_filesystem_errors_may_pass_a_missing_file_or_a_symlink_does_not() {
        use rustix::io::Errno;
        for errno in [Errno::STALE, Errno::IO, Errno::TIMEDOUT, Errno::ACCESS] {
            assert!(transient(&errno.into()), "{errno:?}");
        }
        for errno in [Errno::NOENT, Errno::LOOP, Errno::NOTDIR, Errno::ISDIR] {
            assert!(!transient(&errno.into()), "{errno:?}");
        }
        let (_tmp, dir) = staging();
        let refused = open(dir.join("gone").to_str().unwrap(), uid(), 1).unwrap_err();
        assert!(!refused.transient, "{}", refused.why);
    }

    #[test]
    fn a_file_outside_any_staging_tree_is_bounded_by_its_own_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("model.bin");
        std::fs::write(&path, "abc").unwrap();
        assert_eq!(staging_root(&path), tmp.path());
        assert!(open(path.to_str().unwrap(), uid(), 3).is_ok());
    }
}
