//! History and system-metrics rows: one JSON object per `history` and per
//! `stats` record, the lines of `wandb-history.jsonl` and `wandb-events.jsonl`.

use super::tree::{item_path, set_path};
use crate::source::wandb::proto::{HistoryItem, HistoryRecord, StatsRecord, Timestamp, TypedValue};
use crate::source::wandb::value::{Map, ParseError, Value};

/// A history item's value: 0.31's typed value when present, else `value_json`.
pub(crate) fn history_value(item: &HistoryItem) -> Result<Value, ParseError> {
    Ok(match &item.typed {
        None => Value::parse(&item.value_json)?,
        Some(TypedValue::None(_)) => Value::Null,
        Some(TypedValue::Boolean(b)) => Value::Bool(*b),
        Some(TypedValue::Integer(i)) => Value::from_i64(*i),
        Some(TypedValue::Number(f)) => Value::from_f64(*f),
        Some(TypedValue::Text(s)) => Value::String(s.clone()),
        Some(TypedValue::Json(j)) => Value::parse(j)?,
    })
}

/// The row of one history record, and its `_step`. Items whose value does
/// not parse are kept as strings and reported in `errors`.
pub(crate) fn history_row(
    record: &HistoryRecord,
    errors: &mut Vec<ParseError>,
) -> (Map, Option<i64>) {
    let mut row = Map::new();
    for item in &record.item {
        let value = history_value(item).unwrap_or_else(|e| {
            errors.push(e);
            Value::String(item.value_json.clone())
        });
        set_path(&mut row, &item_path(&item.key, &item.nested_key), value);
    }
    let step = match row.get("_step") {
        Some(v) => v.as_i64(),
        None => {
            // Very old writers put the step only in `step.num`.
            let num = record.step.as_ref().map(|s| s.num);
            if let Some(num) = num {
                row.insert("_step".into(), Value::from_i64(num));
            }
            num
        }
    };
    (row, step)
}

/// The `wandb-events.jsonl` row of one `stats` record: system metrics under
/// `system.<key>`, plus `_wandb`, `_timestamp` and `_runtime` (seconds since
/// the run started), as wandb's sender builds it.
pub(crate) fn events_row(
    record: &StatsRecord,
    start_time: Option<Timestamp>,
    errors: &mut Vec<ParseError>,
) -> Map {
    let mut row = Map::new();
    row.insert("_wandb".into(), Value::Bool(true));
    if let Some(ts) = record.timestamp {
        row.insert("_timestamp".into(), Value::from_f64(ts.as_secs_f64()));
        if let Some(start) = start_time {
            // Whole seconds and nanoseconds apart, so the difference keeps
            // nanosecond precision (an f64 of Unix time has ~0.2 µs).
            let nanos =
                (ts.seconds - start.seconds) as f64 * 1e9 + f64::from(ts.nanos - start.nanos);
            row.insert("_runtime".into(), Value::from_f64(nanos / 1e9));
        }
    }
    for item in &record.item {
        let value = Value::parse(&item.value_json).unwrap_or_else(|e| {
            errors.push(e);
            Value::String(item.value_json.clone())
        });
        row.insert(format!("system.{}", item.key), value);
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::wandb::proto::{HistoryStep, StatsItem};

    fn item(path: &[&str], json: &str) -> HistoryItem {
        HistoryItem {
            key: String::new(),
            nested_key: path.iter().map(|s| s.to_string()).collect(),
            typed: None,
            value_json: json.into(),
        }
    }

    #[test]
    fn history_row_nests_and_reads_typed_values() {
        let mut rec = HistoryRecord {
            item: vec![item(&["_step"], "7"), item(&["train", "loss"], "NaN")],
            step: Some(HistoryStep { num: 7 }),
        };
        rec.item.push(HistoryItem {
            typed: Some(TypedValue::Integer(-5)),
            ..item(&["n"], "")
        });
        rec.item.push(HistoryItem {
            typed: Some(TypedValue::Number(0.5)),
            ..item(&["f"], "")
        });
        rec.item.push(HistoryItem {
            typed: Some(TypedValue::Json("{\"a\":[1]}".into())),
            ..item(&["j"], "")
        });
        let mut errors = vec![];
        let (row, step) = history_row(&rec, &mut errors);
        assert!(errors.is_empty());
        assert_eq!(step, Some(7));
        assert_eq!(
            Value::Object(row).to_extended_json(),
            r#"{"_step":7,"train":{"loss":NaN},"n":-5,"f":0.5,"j":{"a":[1]}}"#
        );
    }

    #[test]
    fn step_falls_back_to_step_num() {
        let rec = HistoryRecord {
            item: vec![item(&["x"], "1")],
            step: Some(HistoryStep { num: 3 }),
        };
        let (row, step) = history_row(&rec, &mut vec![]);
        assert_eq!(step, Some(3));
        assert_eq!(row["_step"], Value::from_i64(3));
    }

    #[test]
    fn events_row_prefixes_and_times() {
        let rec = StatsRecord {
            stats_type: 0,
            timestamp: Some(Timestamp {
                seconds: 110,
                nanos: 500_000_000,
            }),
            item: vec![StatsItem {
                key: "cpu".into(),
                value_json: "12.5".into(),
            }],
        };
        let start = Timestamp {
            seconds: 100,
            nanos: 0,
        };
        let row = events_row(&rec, Some(start), &mut vec![]);
        assert_eq!(
            Value::Object(row).to_extended_json(),
            r#"{"_wandb":true,"_timestamp":110.5,"_runtime":10.5,"system.cpu":12.5}"#
        );
    }
}
