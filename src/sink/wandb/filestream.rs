//! FileStream request bodies. Lines are placed by offset (the server stores
//! line `offset + i`), so sending the same lines at the same offsets again
//! overwrites instead of duplicating: that is what makes retries and resends
//! after a crash safe.

use serde_json::{Map as JsonMap, Value as Json, json};

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

    pub(crate) fn to_json(&self) -> Vec<u8> {
        let mut files = JsonMap::new();
        let mut put = |name: &str, lines: &Lines| {
            files.insert(
                name.to_string(),
                json!({"offset": lines.offset, "content": lines.lines}),
            );
        };
        for (name, lines) in [
            (HISTORY, &self.history),
            (EVENTS, &self.events),
            (OUTPUT, &self.output),
        ] {
            if let Some(lines) = lines.as_ref().filter(|l| !l.lines.is_empty()) {
                put(name, lines);
            }
        }
        if let Some(summary) = &self.summary {
            put(
                SUMMARY,
                &Lines {
                    offset: 0,
                    lines: vec![summary.clone()],
                },
            );
        }
        let mut body = JsonMap::new();
        if !files.is_empty() {
            body.insert("files".into(), Json::Object(files));
        }
        if !self.uploaded.is_empty() {
            body.insert("uploaded".into(), json!(self.uploaded));
        }
        if self.preempting {
            body.insert("preempting".into(), Json::Bool(true));
        }
        if let Some(code) = self.complete {
            body.insert("complete".into(), Json::Bool(true));
            body.insert("exitcode".into(), json!(code));
        }
        serde_json::to_vec(&Json::Object(body)).expect("JSON values serialize")
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
    use super::*;

    #[test]
    fn request_json_has_only_what_is_set() {
        assert_eq!(Request::default().to_json(), b"{}");
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
        let json: Json = serde_json::from_slice(&request.to_json()).unwrap();
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
