//! Durable small files (run ledgers, the service unit, the heartbeat):
//! write to a temporary name, fsync, rename over the target, fsync the
//! directory. A reader sees the old content or the new,
//! never a mix, and a crash at any point leaves one of the two. Plain
//! read/write/rename only (no mmap, no locks), which NFS honours.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// The directory of `path` and a temporary name in it, unique per host and
/// process so two writers never share one.
fn temp_beside(path: &Path) -> io::Result<(&Path, std::path::PathBuf)> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("path has no parent"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{}",
        name.to_string_lossy(),
        hostname_tag(),
        std::process::id()
    ));
    Ok((dir, tmp))
}

/// Replaces `path` with `bytes` atomically and durably.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |file| file.write_all(bytes))
}

/// [`write_atomic`] of what `write` writes, for a file too big to be
/// built in memory first (the daemon's settled-run index); buffered.
pub(crate) fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let (dir, tmp) = temp_beside(path)?;
    let result = (|| {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        let mut buffered = io::BufWriter::new(file);
        write(&mut buffered)?;
        let file = buffered
            .into_inner()
            .map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Replaces `path` with `bytes` atomically but without fsync: for files
/// that are rewritten every few seconds and worthless after a crash (the
/// daemon's heartbeat), where an fsync each time would load a shared
/// filesystem for nothing.
pub(crate) fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let (_, tmp) = temp_beside(path)?;
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    match File::open(dir)?.sync_all() {
        // Some network filesystems refuse fsync on a directory; the rename
        // is still atomic there.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => Ok(()),
        other => other,
    }
}

fn hostname_tag() -> String {
    crate::process::hostname()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(32)
        .collect()
}

/// Reads `path`, `None` if it does not exist.
pub(crate) fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The first line of an in-place file: its name, the body's length and
/// CRC-32, so a write cut short is recognised.
const IN_PLACE_MAGIC: &str = "syncd-in-place";

/// Rewrites `path` in place, with one positioned write of a header and
/// `bytes`: no new inode, no rename, no fsync. Creating a temp file per
/// write is what a daemon checkpointing live runs spends most of its time
/// on (the filesystem looking for a free inode among recently deleted
/// ones). A write cut short (a fatal signal between two pages, a power
/// loss) leaves a body whose length or CRC does not match, which
/// [`read_in_place`] reports: callers must have an older consistent copy to
/// fall back on. Old bytes past the new body are left and ignored.
pub(crate) fn write_in_place(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let header = format!(
        "{IN_PLACE_MAGIC} {} {:08x}\n",
        bytes.len(),
        crc32fast::hash(bytes)
    );
    let mut buf = Vec::with_capacity(header.len() + bytes.len());
    buf.extend_from_slice(header.as_bytes());
    buf.extend_from_slice(bytes);
    // No truncation: the header says where the body ends, and one write
    // (not truncate then write) is what keeps a cut-short write detectable.
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    file.write_all_at(&buf, 0)
}

/// The body [`write_in_place`] last wrote completely: `Ok(None)` when there
/// is no file, `Ok(Some(Err(reason)))` when the last write was cut short.
pub(crate) fn read_in_place(path: &Path) -> io::Result<Option<Result<Vec<u8>, String>>> {
    let Some(bytes) = read_optional(path)? else {
        return Ok(None);
    };
    let parsed = (|| {
        let end = bytes.iter().position(|&b| b == b'\n').ok_or("no header")?;
        let header = std::str::from_utf8(&bytes[..end]).map_err(|_| "bad header")?;
        let mut parts = header.split(' ');
        if parts.next() != Some(IN_PLACE_MAGIC) {
            return Err("bad header");
        }
        let len: usize = parts
            .next()
            .and_then(|l| l.parse().ok())
            .ok_or("bad length")?;
        let crc = parts
            .next()
            .and_then(|c| u32::from_str_radix(c, 16).ok())
            .ok_or("bad checksum")?;
        let body = bytes.get(end + 1..end + 1 + len).ok_or("cut short")?;
        if crc32fast::hash(body) != crc {
            return Err("checksum mismatch: the last write was cut short");
        }
        Ok(body.to_vec())
    })();
    Ok(Some(parsed.map_err(str::to_string)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_place_writes_read_back_and_torn_ones_are_recognised() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("run.live");
        assert_eq!(read_in_place(&path).unwrap(), None);
        write_in_place(&path, b"a longer first body").unwrap();
        write_in_place(&path, b"short").unwrap();
        assert_eq!(read_in_place(&path).unwrap(), Some(Ok(b"short".to_vec())));
        let inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).unwrap());
        write_in_place(&path, b"third").unwrap();
        let again = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&path).unwrap());
        assert_eq!(inode, again, "rewritten in place");
        // A write cut after its first bytes: old body, new header.
        let mut bytes = fs::read(&path).unwrap();
        let at = bytes.iter().position(|&b| b == b'\n').unwrap() + 2;
        bytes[at] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        assert!(read_in_place(&path).unwrap().unwrap().is_err());
        fs::write(&path, b"garbage").unwrap();
        assert!(read_in_place(&path).unwrap().unwrap().is_err());
    }

    #[test]
    fn replaces_content_and_leaves_no_temp_files() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("run.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(read_optional(&path).unwrap().unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["run.json"]);
        assert!(
            read_optional(&tmp.path().join("missing"))
                .unwrap()
                .is_none()
        );
    }
}
