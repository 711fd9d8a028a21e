//! The `.wandb` transaction-log framing: a 7-byte W&B header followed by the
//! LevelDB log format (32 KiB blocks, 7-byte chunk headers, FULL/FIRST/MIDDLE/LAST
//! chunks, IEEE CRC-32 over the type byte and the payload).
//!
//! [`LogReader`] streams complete records from a byte offset that is always a
//! record boundary and reports where the next read must start, so a caller can
//! persist that offset and later read only what was appended. It holds one
//! block and one reassembly buffer, so memory does not grow with file size
//! (only with the largest single record).
//!
//! The reader never guesses about liveness: an incomplete record at the end of
//! the file is reported as [`Tail::Incomplete`]; whether the writer is gone is
//! decided elsewhere.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

/// `:W&B`, magic 0xBEE1 (little endian), version 0.
pub const FILE_HEADER: [u8; 7] = [b':', b'W', b'&', b'B', 0xe1, 0xbe, 0x00];
pub const FILE_HEADER_LEN: u64 = FILE_HEADER.len() as u64;
pub const BLOCK_SIZE: u64 = 32 * 1024;
pub const CHUNK_HEADER_LEN: u64 = 7;

const FULL: u8 = 1;
const FIRST: u8 = 2;
const MIDDLE: u8 = 3;
const LAST: u8 = 4;

/// Why a byte range cannot be read as records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorruptKind {
    #[error("file header is not `:W&B` version 0 (found {found:02x?})")]
    BadHeader { found: Vec<u8> },
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("chunk of {len} bytes crosses the 32 KiB block boundary")]
    CrossesBlock { len: u16 },
    #[error("unknown chunk type {0}")]
    UnknownType(u8),
    #[error("{kind} chunk without a preceding FIRST chunk")]
    Orphan { kind: &'static str },
    #[error("{kind} chunk while a record was still open (missing LAST chunk)")]
    Unterminated { kind: &'static str },
    #[error("zeroed chunk header inside a record")]
    ZeroInsideRecord,
    #[error("non-zero bytes in block padding")]
    DirtyPadding,
}

/// A corruption found at `offset` (the start of the bad chunk or header).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt data at byte {offset}: {kind}")]
pub struct Corruption {
    pub offset: u64,
    pub kind: CorruptKind,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Corrupt(#[from] Corruption),
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
    #[error("start offset {0} is not a record boundary of this file")]
    BadStart(u64),
}

/// What follows the last complete record once the reader has reached the end
/// of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Tail {
    /// The file ends exactly after a record (or after zero padding).
    Clean,
    /// A record was started but not finished: `bytes` bytes from `at` belong
    /// to it. Appending more data may complete it.
    Incomplete { at: u64, bytes: u64 },
    /// The very last chunk of the file fails its checksum. This is what a
    /// write in flight looks like on a shared filesystem (length visible,
    /// data not yet), so it is treated as an unfinished tail rather than as
    /// corruption; a later read may see the settled bytes.
    Torn { at: u64, bytes: u64 },
}

impl Tail {
    pub fn is_clean(&self) -> bool {
        matches!(self, Tail::Clean)
    }
}

/// One complete record as it lies in the file.
#[derive(Debug, Clone, Copy)]
pub struct RawRecord<'a> {
    /// Offset of the record's first chunk header.
    pub start: u64,
    /// Offset just after the record's last chunk.
    pub end: u64,
    pub payload: &'a [u8],
}

/// Streams records out of a `.wandb` file from a record boundary.
pub struct LogReader {
    file: File,
    /// File length observed when the reader was opened (or last refreshed).
    len: u64,
    block: Vec<u8>,
    block_start: u64,
    block_valid: usize,
    /// Offset of the next chunk header to look at.
    pos: u64,
    /// Offset just after the last complete record: the resume cursor.
    cursor: u64,
    assembling: Vec<u8>,
    record_start: Option<u64>,
    tail: Option<Tail>,
    /// Set by `recover`: continuation chunks of a record whose start was lost
    /// are skipped silently until the next record begins.
    resyncing: bool,
}

impl LogReader {
    /// Opens `file` and positions it at `start`. Offset 0 means "from the
    /// beginning": the file header is verified and reading starts after it.
    /// Any other offset must be one this reader returned from [`cursor`].
    ///
    /// [`cursor`]: LogReader::cursor
    pub fn open(mut file: File, start: u64) -> Result<Self, ReadError> {
        let len = file.seek(SeekFrom::End(0))?;
        let mut reader = LogReader {
            file,
            len,
            block: vec![0; BLOCK_SIZE as usize],
            block_start: u64::MAX,
            block_valid: 0,
            pos: start,
            cursor: start,
            assembling: Vec::new(),
            record_start: None,
            tail: None,
            resyncing: false,
        };
        if start == 0 {
            reader.check_header()?;
            if reader.tail.is_none() {
                reader.pos = FILE_HEADER_LEN;
                reader.cursor = FILE_HEADER_LEN;
            }
        } else if start < FILE_HEADER_LEN || start > len {
            return Err(ReadError::BadStart(start));
        }
        Ok(reader)
    }

    fn check_header(&mut self) -> Result<(), ReadError> {
        let mut found = [0u8; FILE_HEADER.len()];
        let n = read_at_most(&self.file, &mut found, 0)?;
        if n < found.len() {
            // A header still being written is only a short file, not corruption,
            // unless the bytes present already disagree with the header.
            if found[..n] != FILE_HEADER[..n] {
                return Err(bad_header(&found[..n]));
            }
            self.tail = Some(if n == 0 {
                Tail::Clean
            } else {
                Tail::Incomplete {
                    at: 0,
                    bytes: n as u64,
                }
            });
            return Ok(());
        }
        if found != FILE_HEADER {
            return Err(bad_header(&found));
        }
        Ok(())
    }

    /// Length of the file as seen by this reader.
    pub fn file_len(&self) -> u64 {
        self.len
    }

    /// Offset just after the last complete record returned so far. Persist this
    /// and pass it to [`LogReader::open`] to continue later.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// How the file ends; `None` until [`next_record`] has returned `Ok(None)`.
    ///
    /// [`next_record`]: LogReader::next_record
    pub fn tail(&self) -> Option<Tail> {
        self.tail
    }

    /// After a [`Corruption`], skips the rest of the damaged block and
    /// continues with the next record that starts in a later block (what
    /// wandb's Go reader does in `Recover`). Returns the offset reading resumes
    /// from.
    pub fn recover(&mut self) -> u64 {
        let next_block = (self.pos / BLOCK_SIZE + 1) * BLOCK_SIZE;
        self.pos = next_block.max(FILE_HEADER_LEN);
        self.assembling.clear();
        self.record_start = None;
        self.tail = None;
        self.resyncing = true;
        self.pos
    }

    /// Frees the reassembly buffer once a large record has been consumed,
    /// so one big record does not keep its size allocated for the rest of
    /// the file (call it when the last [`RawRecord`] is no longer used).
    pub fn release_large_buffer(&mut self) {
        if self.record_start.is_none() && self.assembling.capacity() > 1 << 20 {
            self.assembling = Vec::new();
        }
    }

    /// Returns the next complete record, or `Ok(None)` at the end of the
    /// readable data (see [`LogReader::tail`] for what follows it).
    pub fn next_record(&mut self) -> Result<Option<RawRecord<'_>>, ReadError> {
        if self.tail.is_some() {
            return Ok(None);
        }
        loop {
            let in_block = self.pos % BLOCK_SIZE;
            let left_in_block = BLOCK_SIZE - in_block;
            if left_in_block < CHUNK_HEADER_LEN {
                // Trailer padding: must be zeros, then the next block starts.
                let pad_end = (self.pos + left_in_block).min(self.len);
                self.load_block(self.pos)?;
                let from = (self.pos - self.block_start) as usize;
                let to = (pad_end - self.block_start) as usize;
                if self.block[from..to].iter().any(|&b| b != 0) {
                    return Err(self.corrupt(self.pos, CorruptKind::DirtyPadding));
                }
                if pad_end < self.pos + left_in_block {
                    return self.finish_at_eof();
                }
                self.pos += left_in_block;
                if self.record_start.is_none() {
                    self.cursor = self.cursor.max(self.pos);
                }
                continue;
            }
            if self.pos + CHUNK_HEADER_LEN > self.len {
                return self.finish_at_eof();
            }
            self.load_block(self.pos)?;
            let at = (self.pos - self.block_start) as usize;
            let header = &self.block[at..at + CHUNK_HEADER_LEN as usize];
            let stored = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
            let len = u16::from_le_bytes([header[4], header[5]]);
            let kind = header[6];

            if stored == 0 && len == 0 && kind == 0 {
                // A zeroed region (preallocated or never written): skip the rest
                // of the block, like wandb's reader does.
                if self.record_start.is_some() {
                    return Err(self.corrupt(self.pos, CorruptKind::ZeroInsideRecord));
                }
                let next_block = self.block_start + BLOCK_SIZE;
                if next_block >= self.len {
                    // Zeros up to the end of the file: nothing more to read yet.
                    if self.rest_of_file_is_zero()? {
                        self.tail = Some(Tail::Clean);
                        return Ok(None);
                    }
                }
                self.pos = next_block;
                continue;
            }
            let chunk_end = self.pos + CHUNK_HEADER_LEN + u64::from(len);
            if u64::from(len) > left_in_block - CHUNK_HEADER_LEN {
                return Err(self.corrupt(self.pos, CorruptKind::CrossesBlock { len }));
            }
            if chunk_end > self.len {
                return self.finish_at_eof();
            }
            let payload_at = at + CHUNK_HEADER_LEN as usize;
            let payload_end = payload_at + usize::from(len);
            let computed = chunk_crc(kind, &self.block[payload_at..payload_end]);
            if computed != stored {
                if chunk_end == self.len {
                    let at = self.record_start.unwrap_or(self.pos);
                    self.tail = Some(Tail::Torn {
                        at,
                        bytes: self.len - at,
                    });
                    return Ok(None);
                }
                let kind = CorruptKind::Checksum { stored, computed };
                return Err(self.corrupt(self.pos, kind));
            }
            let chunk_start = self.pos;
            self.pos = chunk_end;
            if self.resyncing {
                if kind == MIDDLE || kind == LAST {
                    continue;
                }
                self.resyncing = false;
            }
            match kind {
                FULL => {
                    if self.record_start.is_some() {
                        let kind = CorruptKind::Unterminated { kind: "FULL" };
                        return Err(self.corrupt(chunk_start, kind));
                    }
                    self.cursor = chunk_end;
                    return Ok(Some(RawRecord {
                        start: chunk_start,
                        end: chunk_end,
                        payload: &self.block[payload_at..payload_end],
                    }));
                }
                FIRST => {
                    if self.record_start.is_some() {
                        let kind = CorruptKind::Unterminated { kind: "FIRST" };
                        return Err(self.corrupt(chunk_start, kind));
                    }
                    self.record_start = Some(chunk_start);
                    self.assembling.clear();
                    self.assembling
                        .extend_from_slice(&self.block[payload_at..payload_end]);
                }
                MIDDLE | LAST => {
                    let name = if kind == MIDDLE { "MIDDLE" } else { "LAST" };
                    let Some(start) = self.record_start else {
                        let kind = CorruptKind::Orphan { kind: name };
                        return Err(self.corrupt(chunk_start, kind));
                    };
                    self.assembling
                        .extend_from_slice(&self.block[payload_at..payload_end]);
                    if kind == LAST {
                        self.record_start = None;
                        self.cursor = chunk_end;
                        return Ok(Some(RawRecord {
                            start,
                            end: chunk_end,
                            payload: &self.assembling,
                        }));
                    }
                }
                other => {
                    return Err(self.corrupt(chunk_start, CorruptKind::UnknownType(other)));
                }
            }
        }
    }

    fn corrupt(&mut self, offset: u64, kind: CorruptKind) -> ReadError {
        // Leave `pos` on the bad chunk so `recover` skips its block.
        self.pos = offset;
        ReadError::Corrupt(Corruption { offset, kind })
    }

    fn finish_at_eof(&mut self) -> Result<Option<RawRecord<'_>>, ReadError> {
        let tail = match self.record_start {
            Some(at) => Tail::Incomplete {
                at,
                bytes: self.len - at,
            },
            None if self.pos >= self.len => Tail::Clean,
            None => {
                // Fewer bytes than a chunk header, or a chunk whose payload is
                // not all there yet. Zeros only are padding written ahead.
                if self.rest_of_file_is_zero()? {
                    Tail::Clean
                } else {
                    Tail::Incomplete {
                        at: self.pos,
                        bytes: self.len - self.pos,
                    }
                }
            }
        };
        self.tail = Some(tail);
        Ok(None)
    }

    fn rest_of_file_is_zero(&mut self) -> io::Result<bool> {
        let mut at = self.pos;
        let mut buf = [0u8; 4096];
        while at < self.len {
            let n = read_at_most(&self.file, &mut buf, at)?;
            if n == 0 {
                break;
            }
            if buf[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
            at += n as u64;
        }
        Ok(true)
    }

    /// Makes sure the block containing `offset` is in the buffer.
    fn load_block(&mut self, offset: u64) -> io::Result<()> {
        let block_start = offset - offset % BLOCK_SIZE;
        let wanted = (self.len - block_start).min(BLOCK_SIZE) as usize;
        if block_start == self.block_start && self.block_valid >= wanted {
            return Ok(());
        }
        let n = read_at_most(&self.file, &mut self.block[..wanted], block_start)?;
        self.block_start = block_start;
        self.block_valid = n;
        if n < wanted {
            // The file shrank under us; see only what is really there.
            self.len = block_start + n as u64;
        }
        Ok(())
    }
}

fn bad_header(found: &[u8]) -> ReadError {
    ReadError::Corrupt(Corruption {
        offset: 0,
        kind: CorruptKind::BadHeader {
            found: found.to_vec(),
        },
    })
}

fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// CRC-32 (IEEE) of the chunk type byte followed by the payload.
pub fn chunk_crc(kind: u8, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[kind]);
    hasher.update(payload);
    hasher.finalize()
}

/// Writes `.wandb` framing the way wandb-core does. Used by tests, fuzz seeds
/// and the benchmark to build files with exact layouts; syncd never writes
/// into a run directory.
pub struct LogWriter<W: Write> {
    out: W,
    pos: u64,
}

impl<W: Write> LogWriter<W> {
    pub fn new(mut out: W) -> io::Result<Self> {
        out.write_all(&FILE_HEADER)?;
        Ok(LogWriter {
            out,
            pos: FILE_HEADER_LEN,
        })
    }

    /// Offset at which the next record will start (after any padding).
    pub fn position(&self) -> u64 {
        self.pos
    }

    pub fn append(&mut self, mut payload: &[u8]) -> io::Result<()> {
        let mut first = true;
        loop {
            let left = BLOCK_SIZE - self.pos % BLOCK_SIZE;
            if left < CHUNK_HEADER_LEN {
                self.out
                    .write_all(&[0u8; CHUNK_HEADER_LEN as usize][..left as usize])?;
                self.pos += left;
                continue;
            }
            let room = (left - CHUNK_HEADER_LEN) as usize;
            let take = payload.len().min(room);
            let last = take == payload.len();
            let kind = match (first, last) {
                (true, true) => FULL,
                (true, false) => FIRST,
                (false, false) => MIDDLE,
                (false, true) => LAST,
            };
            let (chunk, rest) = payload.split_at(take);
            let mut header = [0u8; CHUNK_HEADER_LEN as usize];
            header[..4].copy_from_slice(&chunk_crc(kind, chunk).to_le_bytes());
            header[4..6].copy_from_slice(&(take as u16).to_le_bytes());
            header[6] = kind;
            self.out.write_all(&header)?;
            self.out.write_all(chunk)?;
            self.pos += CHUNK_HEADER_LEN + take as u64;
            payload = rest;
            first = false;
            if last {
                return Ok(());
            }
        }
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Reads `path` from `start` to the end, calling `each` with every complete
/// record. Convenience for callers that do not need recovery.
pub fn for_each_record(
    path: &std::path::Path,
    start: u64,
    mut each: impl FnMut(RawRecord<'_>),
) -> Result<(u64, Tail), ReadError> {
    let mut reader = LogReader::open(crate::fs::open_regular(path)?, start)?;
    while let Some(record) = reader.next_record()? {
        each(record);
    }
    let tail = reader.tail().unwrap_or(Tail::Clean);
    Ok((reader.cursor(), tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(records: &[Vec<u8>]) -> (tempfile::NamedTempFile, Vec<u8>) {
        let mut writer = LogWriter::new(Vec::new()).unwrap();
        for r in records {
            writer.append(r).unwrap();
        }
        let bytes = writer.into_inner();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&bytes).unwrap();
        (file, bytes)
    }

    fn read_all(path: &std::path::Path, start: u64) -> (Vec<Vec<u8>>, u64, Option<Tail>) {
        let mut reader = LogReader::open(File::open(path).unwrap(), start).unwrap();
        let mut out = Vec::new();
        while let Some(r) = reader.next_record().unwrap() {
            out.push(r.payload.to_vec());
        }
        (out, reader.cursor(), reader.tail())
    }

    #[test]
    fn zero_length_first_chunk_when_exactly_a_header_fits() {
        // 7 (file header) + 7 + 32747 = 32761: exactly 7 bytes left in block 0.
        let records = vec![vec![1u8; 32747], b"next record".to_vec()];
        let (file, bytes) = file_with(&records);
        assert_eq!(
            &bytes[32761 + 4..32761 + 7],
            &[0, 0, FIRST],
            "zero-length FIRST at 32761"
        );
        assert_eq!(bytes[32768 + 6], LAST);
        let (got, cursor, tail) = read_all(file.path(), 0);
        assert_eq!(got, records);
        assert_eq!(cursor, bytes.len() as u64);
        assert_eq!(tail, Some(Tail::Clean));
    }

    #[test]
    fn padding_is_skipped_and_resuming_inside_it_works() {
        // Leaves 3 bytes of padding at the end of block 0.
        let records = vec![vec![2u8; 32751], vec![3u8; 100_000], b"x".to_vec()];
        let (file, bytes) = file_with(&records);
        assert_eq!(&bytes[32765..32768], &[0, 0, 0]);
        let (got, _, _) = read_all(file.path(), 0);
        assert_eq!(got, records);
        // The cursor after the first record points into the padding.
        let (_, cursor_after_first, _) = {
            let mut reader = LogReader::open(File::open(file.path()).unwrap(), 0).unwrap();
            reader.next_record().unwrap();
            (0, reader.cursor(), 0)
        };
        assert_eq!(cursor_after_first, 32765);
        let (rest, _, _) = read_all(file.path(), cursor_after_first);
        assert_eq!(rest, records[1..]);
    }

    #[test]
    fn orphan_continuation_is_corruption_and_recovery_resyncs() {
        let records = vec![
            vec![4u8; 40_000],
            b"after".to_vec(),
            vec![5u8; 40_000],
            b"tail".to_vec(),
        ];
        let (_, mut bytes) = file_with(&records);
        // Break the FIRST chunk of record 0: its MIDDLE/LAST become orphans.
        bytes[7 + 6] = 0x09;
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&bytes).unwrap();
        let mut reader = LogReader::open(File::open(file.path()).unwrap(), 0).unwrap();
        let err = reader.next_record().unwrap_err();
        assert!(
            matches!(err, ReadError::Corrupt(Corruption { offset: 7, .. })),
            "{err}"
        );
        reader.recover();
        let mut rest = Vec::new();
        while let Some(r) = reader.next_record().unwrap() {
            rest.push(r.payload.to_vec());
        }
        assert_eq!(
            rest,
            records[1..],
            "the orphaned LAST chunk is skipped, later records read"
        );
    }

    #[test]
    fn start_offsets_outside_the_file_are_refused() {
        let (file, bytes) = file_with(&[b"a".to_vec()]);
        for start in [3, bytes.len() as u64 + 1] {
            let err = LogReader::open(File::open(file.path()).unwrap(), start)
                .err()
                .unwrap();
            assert!(matches!(err, ReadError::BadStart(s) if s == start));
        }
    }

    #[test]
    fn chunk_crossing_a_block_is_impossible() {
        let (_, mut bytes) = file_with(&[b"abc".to_vec(), b"def".to_vec()]);
        bytes[7 + 4..7 + 6].copy_from_slice(&40_000u16.to_le_bytes());
        bytes.resize(100_000, 0);
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&bytes).unwrap();
        let mut reader = LogReader::open(File::open(file.path()).unwrap(), 0).unwrap();
        let err = reader.next_record().unwrap_err();
        assert!(
            err.to_string()
                .contains("crosses the 32 KiB block boundary"),
            "{err}"
        );
    }
}
