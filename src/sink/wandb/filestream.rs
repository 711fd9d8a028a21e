//! FileStream request bodies. Lines are placed by offset (the server stores
//! line `offset + i`), so sending the same lines at the same offsets again
//! overwrites instead of duplicating: that is what makes retries and resends
//! after a crash safe.

use crate::source::wandb::proto;

pub(crate) const HISTORY: &str = "wandb-history.jsonl";
pub(crate) const EVENTS: &str = "wandb-events.jsonl";
pub(crate) const SUMMARY: &str = "wandb-summary.json";
pub(crate) const OUTPUT: &str = "output.log";

/// The largest request body syncd sends (the server's limit is 10 MiB).
pub(crate) const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
/// A request is cut before its lines, as they are written in the body (JSON
/// string escapes included), exceed this; the rest of the body (names,
/// offsets, flags) fits in the difference.
pub(crate) const MAX_REQUEST_BYTES: usize = MAX_BODY_BYTES - 64 * 1024;
/// Longer lines (as written in the body) are refused by the server; wandb
/// drops them with a warning, and so does syncd.
pub(crate) const MAX_LINE_BYTES: usize = MAX_BODY_BYTES - 100 * 1024;

/// Bytes `s` takes as a JSON string in a request body, quotes included
/// (`"` and `\` double, control characters take up to six bytes): a
/// history line is JSON itself, so its quotes are escaped once more.
pub(crate) fn json_string_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..0x20 => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// Consecutive lines of one file starting at `offset`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Lines {
    pub offset: u64,
    pub lines: Vec<String>,
}

impl Lines {
    /// The lines' size in a request body.
    pub(crate) fn bytes(&self) -> usize {
        self.lines.iter().map(|l| json_string_len(l) + 1).sum()
    }
}

/// One FileStream request. Every part is optional; an empty request is a
/// heartbeat.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Request {
    pub history: Option<Lines>,
    pub events: Option<Lines>,
    /// The whole summary, sent as the single line of `wandb-summary.json`.
    pub summary: Option<String>,
    /// One consecutive range of console lines (the server takes one per request).
    pub output: Option<Lines>,
    pub uploaded: Vec<String>,
    pub preempting: bool,
    /// Marks the run finished with this exit code.
    pub complete: Option<i32>,
}

impl Request {
    pub(crate) fn bytes(&self) -> usize {
        [&self.history, &self.events, &self.output]
            .iter()
            .filter_map(|l| l.as_ref())
            .map(Lines::bytes)
            .sum::<usize>()
            + self.summary.as_deref().map_or(0, json_string_len)
            + self
                .uploaded
                .iter()
                .map(|u| json_string_len(u) + 1)
                .sum::<usize>()
    }

    pub(crate) fn is_empty(&self) -> bool {
        *self == Request::default()
    }

    /// The request's body. Written straight from the lines (no JSON tree
    /// of them is built first): a request is the biggest thing a step
    /// holds, and it is held once.
    pub(crate) fn to_json(&self) -> Encoded {
        let mut writer = PieceWriter::default();
        serde_json::to_writer(&mut writer, &BodyJson(self)).expect("strings and numbers serialize");
        writer.finish()
    }
}

/// Bytes of a request body in one piece of an [`Encoded`].
const PIECE_BYTES: usize = 64 * 1024;

/// A request body in pieces of [`PIECE_BYTES`]. A body is megabytes; one
/// block that big, once freed, has glibc's allocator keep as much memory
/// per thread from then on (its mmap threshold rises to the block's size,
/// and the trim threshold with it). Pieces come and go in the ordinary heap.
#[derive(Debug, Clone, Default)]
pub(crate) struct Encoded {
    pieces: Vec<bytes::Bytes>,
    len: usize,
}

impl Encoded {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn pieces(&self) -> &[bytes::Bytes] {
        &self.pieces
    }

    #[cfg(test)]
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        self.pieces.concat()
    }
}

/// Writes an [`Encoded`] piece by piece.
#[derive(Default)]
struct PieceWriter {
    done: Encoded,
    current: Vec<u8>,
}

impl PieceWriter {
    fn finish(mut self) -> Encoded {
        self.seal();
        self.done
    }

    fn seal(&mut self) {
        if !self.current.is_empty() {
            let piece = std::mem::take(&mut self.current);
            self.done.len += piece.len();
            self.done.pieces.push(piece.into());
        }
    }
}

impl std::io::Write for PieceWriter {
    fn write(&mut self, mut buf: &[u8]) -> std::io::Result<usize> {
        let written = buf.len();
        while !buf.is_empty() {
            if self.current.capacity() == 0 {
                self.current.reserve_exact(PIECE_BYTES);
            }
            let room = PIECE_BYTES - self.current.len();
            let (now, rest) = buf.split_at(room.min(buf.len()));
            self.current.extend_from_slice(now);
            buf = rest;
            if self.current.len() == PIECE_BYTES {
                self.seal();
            }
        }
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A [`Request`] as its JSON body: only what is set, in the order wandb
/// writes it.
struct BodyJson<'a>(&'a Request);

/// A request's `files` object.
struct Files<'a>(&'a Request);

/// One file's lines in a request.
struct Chunk<'a> {
    offset: u64,
    content: &'a [String],
}

impl Files<'_> {
    fn chunks(&self) -> impl Iterator<Item = (&'static str, Chunk<'_>)> {
        let request = self.0;
        [
            (HISTORY, &request.history),
            (EVENTS, &request.events),
            (OUTPUT, &request.output),
        ]
        .into_iter()
        .filter_map(|(name, lines)| {
            let lines = lines.as_ref().filter(|l| !l.lines.is_empty())?;
            Some((
                name,
                Chunk {
                    offset: lines.offset,
                    content: &lines.lines,
                },
            ))
        })
        .chain(request.summary.as_ref().map(|summary| {
            (
                SUMMARY,
                Chunk {
                    offset: 0,
                    content: std::slice::from_ref(summary),
                },
            )
        }))
    }
}

impl serde::Serialize for BodyJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let request = self.0;
        let mut map = serializer.serialize_map(None)?;
        let files = Files(request);
        if files.chunks().next().is_some() {
            map.serialize_entry("files", &files)?;
        }
        if !request.uploaded.is_empty() {
            map.serialize_entry("uploaded", &request.uploaded)?;
        }
        if request.preempting {
            map.serialize_entry("preempting", &true)?;
        }
        if let Some(code) = request.complete {
            map.serialize_entry("complete", &true)?;
            map.serialize_entry("exitcode", &code)?;
        }
        map.end()
    }
}

impl serde::Serialize for Files<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        for (name, chunk) in self.chunks() {
            map.serialize_entry(name, &chunk)?;
        }
        map.end()
    }
}

impl serde::Serialize for Chunk<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("offset", &self.offset)?;
        map.serialize_entry("content", self.content)?;
        map.end()
    }
}

/// Console lines as the server stores them: `<UTC time> <text>`, with
/// `ERROR ` in front of stderr lines.
pub(crate) fn console_line(text: &str, stderr: bool, now: std::time::SystemTime) -> String {
    let time = humantime::format_rfc3339_micros(now).to_string();
    // wandb writes the time without the zone designator.
    let time = time.trim_end_matches('Z');
    if stderr {
        format!("ERROR {time} {text}")
    } else {
        format!("{time} {text}")
    }
}

/// What a record may carry that no request can: a single value (history,
/// system metrics, summary or config) over the server's line limit. Such a
/// value is left out of the record, the rest of it is kept; each one left
/// out is described. Why here: the record is decoded but nothing is built
/// from it yet, so the value is never copied into a row, the summary or a
/// checkpoint.
pub(crate) fn leave_out_oversized_values(record: &mut proto::Record) -> Vec<String> {
    let too_big = |json: &str| json_string_len(json) > MAX_LINE_BYTES;
    let describe = |what: &str, key: &str, nested: &[String], bytes: usize| {
        let name = if nested.is_empty() {
            key.to_string()
        } else {
            nested.join(".")
        };
        format!(
            "the {what} value {name:?} ({bytes} bytes) is over the server's 10 MiB line limit and is left out (the rest of the record is uploaded)"
        )
    };
    let mut refused = Vec::new();
    match &mut record.record_type {
        Some(proto::RecordType::History(history)) => history.item.retain(|item| {
            let json = match &item.typed {
                Some(proto::TypedValue::Text(text) | proto::TypedValue::Json(text)) => text,
                _ => &item.value_json,
            };
            let keep = !too_big(json) && !too_big(&item.value_json);
            if !keep {
                let bytes = json.len().max(item.value_json.len());
                refused.push(describe("history", &item.key, &item.nested_key, bytes));
            }
            keep
        }),
        Some(proto::RecordType::Stats(stats)) => stats.item.retain(|item| {
            let keep = !too_big(&item.value_json);
            if !keep {
                let bytes = item.value_json.len();
                refused.push(describe("system metrics", &item.key, &[], bytes));
            }
            keep
        }),
        Some(proto::RecordType::Summary(proto::SummaryRecord { update, .. })) => {
            keep_small(update, "summary", &mut refused);
        }
        Some(proto::RecordType::Config(proto::ConfigRecord { update, .. })) => {
            keep_small(update, "config", &mut refused);
        }
        _ => {}
    }
    refused
}

fn keep_small(items: &mut Vec<proto::KeyedJson>, what: &str, refused: &mut Vec<String>) {
    items.retain(|item| {
        let size = json_string_len(&item.value_json);
        let keep = size <= MAX_LINE_BYTES;
        if !keep {
            let name = if item.nested_key.is_empty() {
                item.key.clone()
            } else {
                item.nested_key.join(".")
            };
            refused.push(format!(
                "the {what} value {name:?} ({} bytes) is over the server's 10 MiB line limit and is left out (the rest of the record is uploaded)",
                item.value_json.len()
            ));
        }
        keep
    });
}

#[cfg(test)]
mod tests {
    use serde_json::{Value as Json, json};

    use super::*;

    #[test]
    fn request_json_has_only_what_is_set() {
        assert_eq!(Request::default().to_json().to_vec(), b"{}");
        let request = Request {
            history: Some(Lines {
                offset: 5,
                lines: vec![r#"{"_step":5,"x":NaN}"#.into()],
            }),
            summary: Some(r#"{"x":1}"#.into()),
            uploaded: vec!["config.yaml".into()],
            complete: Some(3),
            ..Default::default()
        };
        let json: Json = serde_json::from_slice(&request.to_json().to_vec()).unwrap();
        assert_eq!(
            json,
            json!({
                "files": {
                    "wandb-history.jsonl": {"offset": 5, "content": ["{\"_step\":5,\"x\":NaN}"]},
                    "wandb-summary.json": {"offset": 0, "content": ["{\"x\":1}"]}
                },
                "uploaded": ["config.yaml"], "complete": true, "exitcode": 3
            })
        );
    }

    #[test]
    fn bodies_are_written_as_a_json_tree_of_them_would_be() {
        let request = Request {
            history: Some(Lines {
                offset: 1,
                lines: vec![r#"{"a":"b\\c\n"}"#.into(), "é\u{1}".into()],
            }),
            events: Some(Lines {
                offset: 0,
                lines: Vec::new(),
            }),
            output: Some(Lines {
                offset: 9,
                lines: vec!["ERROR 2026 x".into()],
            }),
            summary: Some("{}".into()),
            uploaded: vec!["a b.txt".into()],
            preempting: true,
            complete: Some(0),
        };
        let tree = json!({
            "files": {
                HISTORY: {"offset": 1, "content": request.history.as_ref().unwrap().lines},
                OUTPUT: {"offset": 9, "content": ["ERROR 2026 x"]},
                SUMMARY: {"offset": 0, "content": ["{}"]},
            },
            "uploaded": ["a b.txt"], "preempting": true, "complete": true, "exitcode": 0
        });
        assert_eq!(
            request.to_json().to_vec(),
            serde_json::to_vec(&tree).unwrap()
        );
    }

    #[test]
    fn a_big_body_is_held_in_pieces() {
        let request = Request {
            history: Some(Lines {
                offset: 0,
                lines: (0..20_000).map(|i| format!("{{\"x\":{i}}}")).collect(),
            }),
            ..Default::default()
        };
        let body = request.to_json();
        assert!(body.pieces().len() > 1);
        assert!(body.pieces().iter().all(|p| p.len() <= PIECE_BYTES));
        assert_eq!(body.len(), body.to_vec().len());
        let json: Json = serde_json::from_slice(&body.to_vec()).unwrap();
        assert_eq!(json["files"][HISTORY]["content"][19_999], "{\"x\":19999}");
    }

    #[test]
    fn json_string_lengths_count_escapes() {
        for s in [
            "",
            "abc",
            r#"{"a":"b\\c"}"#,
            "tab\there\n",
            "\u{1}\u{1f}",
            "é✓",
        ] {
            assert_eq!(
                json_string_len(s),
                serde_json::to_string(s).unwrap().len(),
                "{s:?}"
            );
        }
    }

    #[test]
    fn console_lines_carry_time_and_stream() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_790_000_000_123_456);
        assert_eq!(
            console_line("hi", false, t),
            "2026-09-21T14:13:20.123456 hi"
        );
        assert!(console_line("bad", true, t).starts_with("ERROR 2026-"));
    }
}
