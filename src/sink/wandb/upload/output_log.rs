//! `output.log`, made from the run's console records when the run finishes,
//! as the official `wandb sync` makes it: one line of text per console line,
//! after `\r`, cursor movements and erasures (the same terminal the
//! FileStream console lines come from), without timestamps.
//!
//! Why from the records and never the writer's `files/output.log`: wandb
//! before 0.18 and the 0.2x writers leave none offline, and a killed writer
//! leaves a stale one (a few bytes it never flushed); the console records
//! are the truth.
//!
//! Memory stays bounded by the console's window, not by the run's output:
//! the run's fragments are read again, and each line is written to a spool
//! file in the state directory as soon as no cursor can reach it any more;
//! the spool is hashed and uploaded a piece at a time. It is removed once
//! uploaded, or found the same as uploaded before (a crash leaves it to be
//! rebuilt by the next finish).

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use prost::Message;

use crate::source::wandb::framing::LogReader;
use crate::source::wandb::proto::{Record, RecordKind, RecordType};
use crate::source::wandb::record;
use crate::source::wandb::views::console::{Console, Stream};

/// Spools of `output.log` files being made, below the state directory.
const SPOOL_DIR: &str = "output-log";

/// Where the spool of the run with ledger key `key` goes: beside the
/// ledger's `runs/`, in the state directory.
pub(super) fn spool_path(ledger_dir: &Path, key: &str) -> PathBuf {
    ledger_dir
        .parent()
        .unwrap_or(ledger_dir)
        .join(SPOOL_DIR)
        .join(format!("{key}.log"))
}

/// Reads the console records of `fragments` (in order, from their start)
/// and writes the console's lines to `spool`; gives the spool's path. A fragment that cannot be
/// read ends the console where it ends (as the upload of its records does);
/// `None` when the run printed nothing (the official client then uploads no
/// `output.log` either).
pub(super) fn rebuild(fragments: &[PathBuf], spool: &Path) -> std::io::Result<Option<PathBuf>> {
    if let Some(dir) = spool.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut writer = SpoolWriter {
        out: BufWriter::new(std::fs::File::create(spool)?),
        written: 0,
        pending: BTreeMap::new(),
    };
    let mut console = Console::new();
    for path in fragments {
        let Ok(file) = crate::fs::open_regular(path) else {
            break;
        };
        let Ok(mut reader) = LogReader::open(file, 0) else {
            break;
        };
        while let Ok(Some(raw)) = reader.next_record() {
            // Only console records are decoded: the second reading of a
            // run costs its framing, not the decoding of its history.
            let console_kind = record::peek(raw.payload).is_ok_and(|head| {
                matches!(head.kind, RecordKind::OutputRaw | RecordKind::OutputLogger)
            });
            if !console_kind {
                continue;
            }
            let decoded = Record::decode(raw.payload);
            reader.release_large_buffer();
            let (stream, text) = match decoded.map(|r| r.record_type) {
                Ok(Some(RecordType::OutputRaw(out))) => (
                    if out.output_type == 0 {
                        Stream::Stderr
                    } else {
                        Stream::Stdout
                    },
                    out.line,
                ),
                Ok(Some(RecordType::OutputLogger(out))) => (Stream::Stdout, out.line),
                _ => continue,
            };
            // In pieces, taking the lines after each: a record of a hundred
            // megabytes of output is not held twice, as text and as lines.
            let mut at = 0;
            while at < text.len() {
                let mut end = (at + PIECE).min(text.len());
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                console.write(stream, &text[at..end]);
                writer.take(&mut console)?;
                at = end;
            }
        }
    }
    writer.take(&mut console)?;
    writer.finish(console.line_count())?;
    let SpoolWriter { out, written, .. } = writer;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    if written == 0 {
        drop(file);
        let _ = std::fs::remove_file(spool);
        return Ok(None);
    }
    Ok(Some(spool.to_path_buf()))
}

/// The spool's size and SHA-256, read a piece at a time.
pub(super) fn digest(path: &Path) -> std::io::Result<(u64, String)> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; PIECE];
    let mut size = 0;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, crate::fs::hex(&hasher.finalize())))
}

/// How much of the spool is read at once (hashing, uploading).
const PIECE: usize = 64 * 1024;

/// The spool as a request body, read a piece at a time as it is sent, so
/// the upload holds one piece and never the whole log.
pub(super) struct FileBody {
    file: std::io::Result<std::fs::File>,
    left: u64,
}

impl FileBody {
    /// The body of `size` bytes at `path` (opened now; a failure to open
    /// fails the request).
    pub(super) fn open(path: &Path, size: u64) -> FileBody {
        FileBody {
            file: std::fs::File::open(path),
            left: size,
        }
    }
}

impl http_body::Body for FileBody {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>> {
        use std::io::Read;
        use std::task::Poll;
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let want = PIECE.min(self.left as usize);
        let file = match &mut self.file {
            Ok(file) => file,
            Err(e) => return Poll::Ready(Some(Err(std::io::Error::new(e.kind(), e.to_string())))),
        };
        // A local file in the state directory: a short blocking read.
        let mut buf = vec![0; want];
        let read = file.read(&mut buf);
        Poll::Ready(Some(match read {
            Ok(0) => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the output.log spool shrank while it was uploaded",
            )),
            Ok(n) => {
                self.left -= n as u64;
                buf.truncate(n);
                Ok(http_body::Frame::data(bytes::Bytes::from(buf)))
            }
            Err(e) => Err(e),
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

/// Writes console lines in line order as they become final.
struct SpoolWriter {
    out: BufWriter<std::fs::File>,
    /// Lines written so far: every line below this index is in the file.
    written: u64,
    /// The newest text of lines at or after `written` (the console's
    /// window, at most).
    pending: BTreeMap<u64, String>,
}

impl SpoolWriter {
    /// Takes the console's changed lines; writes those no cursor can reach
    /// any more (every line before the first one the console still holds).
    fn take(&mut self, console: &mut Console) -> std::io::Result<()> {
        for line in console.take_changed() {
            if line.index >= self.written {
                self.pending.insert(line.index, line.text);
            }
        }
        let held_from = console
            .recent()
            .next()
            .map_or(console.line_count(), |line| line.index);
        self.finish(held_from)
    }

    /// Writes every line before `until`; a line never written to is empty
    /// (two newlines in a row).
    fn finish(&mut self, until: u64) -> std::io::Result<()> {
        while self.written < until {
            let text = self.pending.remove(&self.written).unwrap_or_default();
            self.out.write_all(text.as_bytes())?;
            self.out.write_all(b"\n")?;
            self.written += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console_text(fragments: &[(Stream, &str)]) -> String {
        let mut console = Console::new();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let mut writer = SpoolWriter {
            out: BufWriter::new(std::fs::File::create(&path).unwrap()),
            written: 0,
            pending: BTreeMap::new(),
        };
        for (stream, text) in fragments {
            console.write(*stream, text);
            writer.take(&mut console).unwrap();
        }
        writer.finish(console.line_count()).unwrap();
        writer.out.flush().unwrap();
        drop(writer);
        std::fs::read_to_string(&path).unwrap()
    }

    #[test]
    fn a_finished_runs_log_is_what_its_writer_made_of_the_same_records() {
        // wandb 0.31.0 wrote files/output.log itself from the console it
        // recorded: the rebuild from the records is the same, byte for byte,
        // and holds its file only until the upload says so.
        let run = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/wandb/committed/0.31.0/finished/wandb/offline-run-20261123_112321-fxfinish");
        let state = tempfile::tempdir().unwrap();
        let spool = spool_path(&state.path().join("runs"), "wandb-fxfinish");
        let path = rebuild(&[run.join("run-fxfinish.wandb")], &spool)
            .unwrap()
            .expect("the run printed");
        assert_eq!(path, spool);
        assert!(spool.starts_with(state.path().join(SPOOL_DIR)));
        let written = std::fs::read(run.join("files/output.log")).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&std::fs::read(&spool).unwrap()),
            String::from_utf8_lossy(&written)
        );
        let (size, sha256) = digest(&spool).unwrap();
        assert_eq!(size, written.len() as u64);
        assert_eq!(sha256, crate::fs::sha256_hex(&written));
    }

    #[test]
    fn the_body_streams_the_spool_in_pieces() {
        use http_body::Body as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        let bytes: Vec<u8> = (0..PIECE * 2 + 10).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let mut body = FileBody::open(&path, bytes.len() as u64);
        let mut got = Vec::new();
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        while let std::task::Poll::Ready(Some(frame)) =
            std::pin::Pin::new(&mut body).poll_frame(&mut cx)
        {
            let data = frame.unwrap().into_data().unwrap();
            assert!(data.len() <= PIECE);
            got.extend_from_slice(&data);
        }
        assert!(body.is_end_stream());
        assert_eq!(got, bytes);
    }

    #[test]
    fn a_huge_console_record_is_the_same_fed_in_pieces() {
        // Multi-byte characters straddle the piece boundaries.
        let text: String = (0..PIECE / 3)
            .map(|i| format!("é{i}\rline {i} ✓\n"))
            .collect();
        let whole = console_text(&[(Stream::Stdout, &text)]);
        let record = crate::source::wandb::proto::OutputRecord {
            output_type: 1,
            line: text,
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("run.wandb");
        let mut writer =
            crate::source::wandb::framing::LogWriter::new(std::fs::File::create(&log).unwrap())
                .unwrap();
        let record = Record {
            record_type: Some(RecordType::OutputRaw(record)),
            ..Default::default()
        };
        writer.append(&record.encode_to_vec()).unwrap();
        drop(writer);
        let spool = dir.path().join("spool");
        rebuild(&[log], &spool).unwrap().unwrap();
        assert_eq!(std::fs::read_to_string(&spool).unwrap(), whole);
        assert!(whole.starts_with("line 0 ✓\nline 1 ✓\n"));
    }

    #[test]
    fn lines_are_written_in_order_with_their_final_text() {
        let text = console_text(&[
            (Stream::Stdout, "starting\n"),
            (Stream::Stdout, "\rprogress 10%"),
            (Stream::Stderr, "a warning\n"),
            (Stream::Stdout, "\rprogress 100%\n"),
            (Stream::Stdout, "\n"),
            (Stream::Stdout, "done\n"),
        ]);
        assert_eq!(
            text, "starting\nprogress 100%\na warning\n\ndone\n",
            "{text:?}"
        );
    }

    #[test]
    fn a_line_rewritten_after_many_others_keeps_its_place() {
        // stderr's one line stays reachable while stdout prints far more
        // than its window; its final text is the one written.
        let mut fragments = vec![(Stream::Stderr, "err 0%".to_string())];
        for i in 0..200 {
            fragments.push((Stream::Stdout, format!("out {i}\n")));
        }
        fragments.push((Stream::Stderr, "\rerr 100%\n".to_string()));
        let borrowed: Vec<(Stream, &str)> =
            fragments.iter().map(|(s, t)| (*s, t.as_str())).collect();
        let text = console_text(&borrowed);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 201);
        assert_eq!(lines[0], "err 100%");
        assert_eq!(lines[200], "out 199");
    }
}
