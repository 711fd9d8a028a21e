//! A protobuf wire-format decoder driven by the generated tables in
//! [`super::schema`], for the records syncd keeps raw (telemetry, metric,
//! environment) and forwards the way wandb-core does:
//!
//! - [`to_protojson`]: Go `protojson.Marshal` with default options (JSON
//!   names, 64-bit integers as strings, enums by name, maps as objects with
//!   sorted keys, proto3 zero values left out, `Timestamp` as RFC 3339), the
//!   form of `wandb-metadata.json` and of `_wandb.e` in the run config;
//! - [`to_field_dict`]: wandb-core's `corelib.ProtoEncodeToDict`, the form of
//!   `_wandb.t` and `_wandb.m`: keys are field numbers, only `int32`, enum,
//!   string and message fields count, a message whose fields are all bools
//!   becomes the list of the numbers of its true fields, any other message a
//!   dict of its string fields, and fields named `_…` are skipped.
//!
//! Decoding follows protobuf merge semantics, so the concatenation of several
//! encoded messages decodes to their merge: the last occurrence of a
//! non-repeated scalar wins, occurrences of a non-repeated message merge,
//! repeated fields append, and map entries replace earlier ones with the same
//! key. Unknown fields, and known fields with an unexpected wire type, are
//! skipped (as Go does); malformed input is an error, never a panic.

use base64::Engine as _;
use serde_json::{Map as JsonMap, Value as Json};

/// A message type: its fields in declaration order.
// The schema tables are generated from wandb's .proto files and describe
// them whole; the decoder does not need every part of every description.
#[allow(dead_code)]
#[derive(Debug)]
pub(crate) struct Message {
    /// Full protobuf name (`wandb_internal.EnvironmentRecord`).
    pub name: &'static str,
    /// A synthetic `map<k, v>` entry (key is field 1, value field 2).
    pub map_entry: bool,
    pub well_known: Option<WellKnown>,
    pub fields: &'static [Field],
}

#[derive(Debug)]
pub(crate) struct Field {
    pub number: u32,
    pub name: &'static str,
    /// The protojson key.
    pub json_name: &'static str,
    pub kind: Kind,
    pub repeated: bool,
    /// Explicit presence (a message, or a proto3 `optional` scalar): written
    /// by protojson even when it holds the zero value.
    pub presence: bool,
}

// Every protobuf scalar kind: which ones the generated schema uses changes
// with wandb's .proto files.
#[allow(dead_code)]
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    String,
    Bytes,
    Bool,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Fixed32,
    Fixed64,
    Sfixed32,
    Sfixed64,
    Double,
    Float,
    Enum(&'static Enum),
    Message(&'static Message),
    /// `map<k, v>`, stored as repeated entries of this message.
    Map(&'static Message),
}

#[allow(dead_code)] // see `Message`
#[derive(Debug)]
pub(crate) struct Enum {
    pub name: &'static str,
    pub values: &'static [(i32, &'static str)],
}

/// Well-known types whose JSON form is a string, not an object.
#[allow(dead_code)] // see `Kind`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WellKnown {
    Timestamp,
    Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("truncated protobuf at byte {0}")]
    Truncated(usize),
    #[error("varint longer than 10 bytes at byte {0}")]
    VarintTooLong(usize),
    #[error("invalid field number 0 at byte {0}")]
    ZeroField(usize),
    #[error("invalid wire type {wire_type} at byte {at}")]
    WireType { wire_type: u8, at: usize },
    #[error("unbalanced group at byte {0}")]
    Group(usize),
    #[error("messages nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("{what} out of range in {message}")]
    OutOfRange {
        message: &'static str,
        what: &'static str,
    },
}

/// Nesting deeper than this is refused (the generated schemas are at most a
/// few levels deep; only hostile input on a recursive type gets here).
const MAX_DEPTH: usize = 64;

/// Decodes `bytes` as `msg` and renders it as Go's protojson would.
pub(crate) fn to_protojson(msg: &'static Message, bytes: &[u8]) -> Result<Json, DecodeError> {
    let fields = Fields::decode(msg, &[bytes], 0)?;
    fields.protojson(0)
}

/// Decodes `bytes` as `msg` and renders it as wandb-core's
/// `ProtoEncodeToDict` (`_wandb.t`, `_wandb.m` entries).
pub(crate) fn to_field_dict(msg: &'static Message, bytes: &[u8]) -> Result<Json, DecodeError> {
    let fields = Fields::decode(msg, &[bytes], 0)?;
    fields.field_dict()
}

// ---------------------------------------------------------------------------
// Wire format

/// One value as it sits on the wire.
#[derive(Debug, Clone, Copy)]
enum Raw<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Len(&'a [u8]),
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let start = self.at;
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.at) else {
                return Err(DecodeError::Truncated(self.at));
            };
            self.at += 1;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::VarintTooLong(start))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or(DecodeError::Truncated(self.at))?;
        let slice = &self.buf[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn fixed64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn fixed32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    /// Reads one field's value; `None` for a group (skipped whole).
    fn value(
        &mut self,
        number: u64,
        wire_type: u8,
        depth: usize,
    ) -> Result<Option<Raw<'a>>, DecodeError> {
        Ok(Some(match wire_type {
            0 => Raw::Varint(self.varint()?),
            1 => Raw::Fixed64(self.fixed64()?),
            2 => {
                let len = self.varint()?;
                let len = usize::try_from(len).map_err(|_| DecodeError::Truncated(self.at))?;
                Raw::Len(self.take(len)?)
            }
            5 => Raw::Fixed32(self.fixed32()?),
            3 => {
                self.skip_group(number, depth + 1)?;
                return Ok(None);
            }
            4 => return Err(DecodeError::Group(self.at)),
            _ => {
                return Err(DecodeError::WireType {
                    wire_type,
                    at: self.at,
                });
            }
        }))
    }

    fn skip_group(&mut self, number: u64, depth: usize) -> Result<(), DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        loop {
            if self.at >= self.buf.len() {
                return Err(DecodeError::Truncated(self.at));
            }
            let tag = self.varint()?;
            let (inner, wire_type) = (tag >> 3, (tag & 7) as u8);
            if wire_type == 4 {
                return if inner == number {
                    Ok(())
                } else {
                    Err(DecodeError::Group(self.at))
                };
            }
            self.value(inner, wire_type, depth)?;
        }
    }
}

/// The wire type a field's values normally use.
fn wire_type_of(kind: Kind) -> u8 {
    match kind {
        Kind::Bool
        | Kind::Int32
        | Kind::Int64
        | Kind::Uint32
        | Kind::Uint64
        | Kind::Sint32
        | Kind::Sint64
        | Kind::Enum(_) => 0,
        Kind::Fixed64 | Kind::Sfixed64 | Kind::Double => 1,
        Kind::Fixed32 | Kind::Sfixed32 | Kind::Float => 5,
        Kind::String | Kind::Bytes | Kind::Message(_) | Kind::Map(_) => 2,
    }
}

/// A message's fields, decoded to their wire values (in schema order).
struct Fields<'a> {
    msg: &'static Message,
    values: Vec<Vec<Raw<'a>>>,
}

impl<'a> Fields<'a> {
    /// Decodes the merge of `parts` (each one encoded `msg`).
    fn decode(
        msg: &'static Message,
        parts: &[&'a [u8]],
        depth: usize,
    ) -> Result<Self, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        let mut values = vec![Vec::new(); msg.fields.len()];
        for part in parts {
            let mut r = Reader { buf: part, at: 0 };
            while r.at < r.buf.len() {
                let tag_at = r.at;
                let tag = r.varint()?;
                let (number, wire_type) = (tag >> 3, (tag & 7) as u8);
                if number == 0 {
                    return Err(DecodeError::ZeroField(tag_at));
                }
                let Some(raw) = r.value(number, wire_type, depth)? else {
                    continue;
                };
                let Some(index) = msg
                    .fields
                    .iter()
                    .position(|f| u64::from(f.number) == number)
                else {
                    continue; // unknown field
                };
                let field = &msg.fields[index];
                let expected = wire_type_of(field.kind);
                if wire_type == expected {
                    values[index].push(raw);
                } else if let (true, 2, Raw::Len(packed)) = (field.repeated, wire_type, raw)
                    && expected != 2
                {
                    unpack(packed, expected, &mut values[index])?;
                }
                // Any other mismatch: an unknown field to Go, skipped.
            }
        }
        Ok(Fields { msg, values })
    }

    fn last(&self, index: usize) -> Option<Raw<'a>> {
        self.values[index].last().copied()
    }

    /// The merged sub-message of a non-repeated message field.
    fn sub(
        &self,
        index: usize,
        sub: &'static Message,
        depth: usize,
    ) -> Result<Fields<'a>, DecodeError> {
        let parts: Vec<&[u8]> = self.values[index].iter().filter_map(len_bytes).collect();
        Fields::decode(sub, &parts, depth + 1)
    }

    fn protojson(&self, depth: usize) -> Result<Json, DecodeError> {
        if let Some(wkt) = self.msg.well_known {
            return self.well_known(wkt);
        }
        let mut out = JsonMap::new();
        for (index, field) in self.msg.fields.iter().enumerate() {
            let values = &self.values[index];
            if values.is_empty() {
                continue;
            }
            let json = match field.kind {
                Kind::Map(entry) => {
                    let mut entries: Vec<(MapKey, Json)> = Vec::new();
                    for raw in values {
                        let fields = Fields::decode(
                            entry,
                            &[len_bytes(raw).unwrap_or_default()],
                            depth + 1,
                        )?;
                        let (key, value) = fields.map_entry(depth + 1)?;
                        match entries.iter_mut().find(|(k, _)| *k == key) {
                            Some(slot) => slot.1 = value,
                            None => entries.push((key, value)),
                        }
                    }
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                    Json::Object(
                        entries
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), v))
                            .collect(),
                    )
                }
                Kind::Message(sub) if !field.repeated => {
                    self.sub(index, sub, depth)?.protojson(depth + 1)?
                }
                Kind::Message(sub) => {
                    let mut items = Vec::with_capacity(values.len());
                    for raw in values {
                        let part = len_bytes(raw).unwrap_or_default();
                        items.push(Fields::decode(sub, &[part], depth + 1)?.protojson(depth + 1)?);
                    }
                    Json::Array(items)
                }
                kind if field.repeated => {
                    Json::Array(values.iter().map(|raw| scalar_json(kind, *raw)).collect())
                }
                kind => {
                    let raw = *values.last().expect("not empty");
                    if !field.presence && is_zero(raw) {
                        continue;
                    }
                    scalar_json(kind, raw)
                }
            };
            out.insert(field.json_name.to_string(), json);
        }
        Ok(Json::Object(out))
    }

    /// A map entry's key and protojson value (defaults when absent).
    fn map_entry(&self, depth: usize) -> Result<(MapKey, Json), DecodeError> {
        let (mut key, mut value) = (MapKey::String(String::new()), Json::Null);
        for (index, field) in self.msg.fields.iter().enumerate() {
            match (field.number, field.kind) {
                (1, kind) => {
                    key = map_key(kind, self.last(index));
                }
                (2, Kind::Message(sub)) => {
                    value = self.sub(index, sub, depth)?.protojson(depth + 1)?
                }
                (2, kind) => {
                    value = match self.last(index) {
                        Some(raw) => scalar_json(kind, raw),
                        None => zero_json(kind),
                    }
                }
                _ => {}
            }
        }
        Ok((key, value))
    }

    fn well_known(&self, wkt: WellKnown) -> Result<Json, DecodeError> {
        let int_field = |number: u32| -> i64 {
            self.msg
                .fields
                .iter()
                .position(|f| f.number == number)
                .and_then(|i| self.last(i))
                .map_or(0, raw_u64) as i64
        };
        let (seconds, nanos) = (int_field(1), int_field(2) as i32);
        let text = match wkt {
            WellKnown::Timestamp => format_timestamp(seconds, nanos),
            WellKnown::Duration => format_duration(seconds, nanos),
        };
        text.map(Json::String).ok_or(DecodeError::OutOfRange {
            message: self.msg.name,
            what: "seconds or nanos",
        })
    }

    fn field_dict(&self) -> Result<Json, DecodeError> {
        let mut out = JsonMap::new();
        for index in range_order(self.msg) {
            let field = &self.msg.fields[index];
            if field.name.starts_with('_') || field.repeated || self.values[index].is_empty() {
                continue;
            }
            let raw = self.last(index).expect("not empty");
            let json = match field.kind {
                Kind::Int32 | Kind::Enum(_) => {
                    if !field.presence && is_zero(raw) {
                        continue;
                    }
                    Json::from(raw_u64(raw) as i32)
                }
                Kind::String => {
                    if !field.presence && is_zero(raw) {
                        continue;
                    }
                    Json::String(string_of(raw))
                }
                Kind::Message(sub) => {
                    let fields = self.sub(index, sub, 0)?;
                    fields.populated_dict()
                }
                // Everything else is left out by wandb-core.
                _ => continue,
            };
            out.insert(field.number.to_string(), json);
        }
        Ok(Json::Object(out))
    }

    /// A nested message in `ProtoEncodeToDict`: the numbers of its set
    /// fields if all its fields are bools, else a dict of its string fields.
    fn populated_dict(&self) -> Json {
        let populated = |index: usize, field: &Field| {
            self.last(index)
                .is_some_and(|raw| field.presence || !is_zero(raw))
        };
        let fields = range_order(self.msg)
            .into_iter()
            .map(|i| (i, &self.msg.fields[i]));
        if self
            .msg
            .fields
            .iter()
            .all(|f| matches!(f.kind, Kind::Bool) && !f.repeated)
        {
            let numbers = fields
                .filter(|(i, f)| populated(*i, f))
                .map(|(_, f)| Json::from(f.number))
                .collect();
            Json::Array(numbers)
        } else {
            let strings = fields
                .filter(|(i, f)| matches!(f.kind, Kind::String) && !f.repeated && populated(*i, f))
                .map(|(i, f)| {
                    (
                        f.number.to_string(),
                        Json::String(string_of(self.last(i).expect("populated"))),
                    )
                })
                .collect();
            Json::Object(strings)
        }
    }
}

/// The detrand seed of wandb-core 0.31.0 for linux-x86_64 (protobuf-go's
/// `internal/detrand`: an FNV-64 hash of the executable's size and eight
/// 64-byte samples). protobuf-go makes `Message.Range` order unstable on
/// purpose: with an odd seed, each message type visits the fields at
/// positions `seed % (n - 1)` and the next one swapped. That order shows in
/// `ProtoEncodeToDict`'s lists (`MetricOptions` hidden+defined is `[3, 2]`),
/// so syncd reproduces the reference binary's; other platforms' binaries
/// have other seeds and the server treats the lists as sets.
pub(crate) const GO_RANGE_SEED: u64 = 1_061_189_224_923_752_333;

/// The order Go's `protoreflect.Message.Range` visits `msg`'s fields in (as
/// indices into `msg.fields`): declaration order, one adjacent pair swapped.
fn range_order(msg: &Message) -> Vec<usize> {
    let n = msg.fields.len();
    let mut order: Vec<usize> = (0..n).collect();
    if n > 1 && GO_RANGE_SEED % 2 == 1 {
        let i = (GO_RANGE_SEED % (n as u64 - 1)) as usize;
        order.swap(i, i + 1);
    }
    order
}

fn unpack<'a>(packed: &'a [u8], wire_type: u8, out: &mut Vec<Raw<'a>>) -> Result<(), DecodeError> {
    let mut r = Reader { buf: packed, at: 0 };
    while r.at < r.buf.len() {
        out.push(match wire_type {
            0 => Raw::Varint(r.varint()?),
            1 => Raw::Fixed64(r.fixed64()?),
            _ => Raw::Fixed32(r.fixed32()?),
        });
    }
    Ok(())
}

fn len_bytes<'a>(raw: &Raw<'a>) -> Option<&'a [u8]> {
    match raw {
        Raw::Len(b) => Some(b),
        _ => None,
    }
}

fn raw_u64(raw: Raw) -> u64 {
    match raw {
        Raw::Varint(v) | Raw::Fixed64(v) => v,
        Raw::Fixed32(v) => u64::from(v),
        Raw::Len(_) => 0,
    }
}

fn is_zero(raw: Raw) -> bool {
    match raw {
        Raw::Varint(v) | Raw::Fixed64(v) => v == 0,
        Raw::Fixed32(v) => v == 0,
        Raw::Len(b) => b.is_empty(),
    }
}

fn string_of(raw: Raw) -> String {
    match raw {
        Raw::Len(b) => String::from_utf8_lossy(b).into_owned(),
        _ => String::new(),
    }
}

fn zigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn float_json(v: f64) -> Json {
    if v.is_nan() {
        Json::from("NaN")
    } else if v.is_infinite() {
        Json::from(if v > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number)
    }
}

/// One scalar's protojson form.
fn scalar_json(kind: Kind, raw: Raw) -> Json {
    let v = raw_u64(raw);
    match kind {
        Kind::String => Json::String(string_of(raw)),
        Kind::Bytes => Json::String(
            base64::engine::general_purpose::STANDARD.encode(len_bytes(&raw).unwrap_or_default()),
        ),
        Kind::Bool => Json::Bool(v != 0),
        Kind::Int32 | Kind::Sfixed32 => Json::from(v as i32),
        Kind::Sint32 => Json::from(zigzag(u64::from(v as u32)) as i32),
        Kind::Uint32 | Kind::Fixed32 => Json::from(v as u32),
        Kind::Int64 | Kind::Sfixed64 => Json::String((v as i64).to_string()),
        Kind::Sint64 => Json::String(zigzag(v).to_string()),
        Kind::Uint64 | Kind::Fixed64 => Json::String(v.to_string()),
        Kind::Double => float_json(f64::from_bits(v)),
        // The shortest text of the f32, read back as f64: 0.1f32 is 0.1.
        Kind::Float => float_json(
            f32::from_bits(v as u32)
                .to_string()
                .parse()
                .unwrap_or(f64::NAN),
        ),
        Kind::Enum(e) => {
            let n = v as i32;
            match e.values.iter().find(|(num, _)| *num == n) {
                Some((_, name)) => Json::from(*name),
                None => Json::from(n),
            }
        }
        Kind::Message(_) | Kind::Map(_) => Json::Null,
    }
}

fn zero_json(kind: Kind) -> Json {
    match kind {
        Kind::Map(_) | Kind::Message(_) => Json::Object(JsonMap::new()),
        Kind::String | Kind::Bytes => Json::from(""),
        kind => scalar_json(kind, Raw::Varint(0)),
    }
}

/// A map key, ordered as protojson orders them (bools false first, integers
/// numerically, strings by bytes).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum MapKey {
    Bool(bool),
    Signed(i64),
    Unsigned(u64),
    String(String),
}

impl std::fmt::Display for MapKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MapKey::Bool(b) => write!(f, "{b}"),
            MapKey::Signed(n) => write!(f, "{n}"),
            MapKey::Unsigned(n) => write!(f, "{n}"),
            MapKey::String(s) => f.write_str(s),
        }
    }
}

fn map_key(kind: Kind, raw: Option<Raw>) -> MapKey {
    let raw = raw.unwrap_or(Raw::Varint(0));
    let v = raw_u64(raw);
    match kind {
        Kind::Bool => MapKey::Bool(v != 0),
        Kind::Int32 | Kind::Sfixed32 => MapKey::Signed(i64::from(v as i32)),
        Kind::Sint32 => MapKey::Signed(zigzag(u64::from(v as u32))),
        Kind::Int64 | Kind::Sfixed64 => MapKey::Signed(v as i64),
        Kind::Sint64 => MapKey::Signed(zigzag(v)),
        Kind::Uint32 | Kind::Fixed32 => MapKey::Unsigned(u64::from(v as u32)),
        Kind::Uint64 | Kind::Fixed64 => MapKey::Unsigned(v),
        _ => MapKey::String(string_of(raw)),
    }
}

// ---------------------------------------------------------------------------
// Well-known types

/// Go's protojson `Timestamp`: RFC 3339 in UTC with 0, 3, 6 or 9 fractional
/// digits; `None` outside years 1..=9999 or for invalid nanos.
fn format_timestamp(seconds: i64, nanos: i32) -> Option<String> {
    const MIN: i64 = -62_135_596_800; // 0001-01-01T00:00:00Z
    const MAX: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    if !(MIN..=MAX).contains(&seconds) || !(0..1_000_000_000).contains(&nanos) {
        return None;
    }
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let mut text = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    text.push_str(&fraction(nanos as u32));
    text.push('Z');
    Some(text)
}

/// Go's protojson `Duration`: `"1.5s"`, `"-0.000001s"`; `None` out of range.
fn format_duration(seconds: i64, nanos: i32) -> Option<String> {
    const MAX: i64 = 315_576_000_000;
    let mixed_signs = (seconds < 0 && nanos > 0) || (seconds > 0 && nanos < 0);
    if !(-MAX..=MAX).contains(&seconds) || nanos.unsigned_abs() >= 1_000_000_000 || mixed_signs {
        return None;
    }
    let sign = if seconds < 0 || nanos < 0 { "-" } else { "" };
    Some(format!(
        "{sign}{}{}s",
        seconds.unsigned_abs(),
        fraction(nanos.unsigned_abs())
    ))
}

/// `.123`, `.123456`, `.123456789` or nothing, as Go trims nanoseconds.
fn fraction(nanos: u32) -> String {
    if nanos == 0 {
        String::new()
    } else if nanos.is_multiple_of(1_000_000) {
        format!(".{:03}", nanos / 1_000_000)
    } else if nanos.is_multiple_of(1_000) {
        format!(".{:06}", nanos / 1_000)
    } else {
        format!(".{nanos:09}")
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

// ---------------------------------------------------------------------------
// Encoding (for messages syncd builds itself, and for tests)

/// A minimal protobuf writer.
#[derive(Debug, Default, Clone)]
pub(crate) struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    fn raw_varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    fn tag(&mut self, field: u32, wire_type: u8) {
        self.raw_varint((u64::from(field) << 3) | u64::from(wire_type));
    }

    /// A varint field (int32/int64/uint*/bool/enum; negative int32 as Go
    /// writes it, sign-extended to 10 bytes).
    pub(crate) fn varint(&mut self, field: u32, v: u64) -> &mut Self {
        self.tag(field, 0);
        self.raw_varint(v);
        self
    }

    #[cfg(test)]
    pub(crate) fn fixed64(&mut self, field: u32, v: u64) -> &mut Self {
        self.tag(field, 1);
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    #[cfg(test)]
    pub(crate) fn fixed32(&mut self, field: u32, v: u32) -> &mut Self {
        self.tag(field, 5);
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A length-delimited field: string, bytes, sub-message, packed values.
    pub(crate) fn bytes(&mut self, field: u32, b: &[u8]) -> &mut Self {
        self.tag(field, 2);
        self.raw_varint(b.len() as u64);
        self.buf.extend_from_slice(b);
        self
    }

    pub(crate) fn string(&mut self, field: u32, s: &str) -> &mut Self {
        self.bytes(field, s.as_bytes())
    }

    pub(crate) fn message(&mut self, field: u32, m: &Encoder) -> &mut Self {
        self.bytes(field, &m.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::wandb::schema;
    use serde_json::json;

    fn enc() -> Encoder {
        Encoder::new()
    }

    static COLOR: Enum = Enum {
        name: "t.Color",
        values: &[(0, "RED"), (1, "GREEN")],
    };
    static FLAGS: Message = Message {
        name: "t.Flags",
        map_entry: false,
        well_known: None,
        fields: &[
            Field {
                number: 2,
                name: "b",
                json_name: "b",
                kind: Kind::Bool,
                repeated: false,
                presence: false,
            },
            Field {
                number: 1,
                name: "a",
                json_name: "a",
                kind: Kind::Bool,
                repeated: false,
                presence: false,
            },
        ],
    };
    static DURATION: Message = Message {
        name: "google.protobuf.Duration",
        map_entry: false,
        well_known: Some(WellKnown::Duration),
        fields: &[
            Field {
                number: 1,
                name: "seconds",
                json_name: "seconds",
                kind: Kind::Int64,
                repeated: false,
                presence: false,
            },
            Field {
                number: 2,
                name: "nanos",
                json_name: "nanos",
                kind: Kind::Int32,
                repeated: false,
                presence: false,
            },
        ],
    };
    static ENTRY: Message = Message {
        name: "t.All.CountsEntry",
        map_entry: true,
        well_known: None,
        fields: &[
            Field {
                number: 1,
                name: "key",
                json_name: "key",
                kind: Kind::Sint32,
                repeated: false,
                presence: false,
            },
            Field {
                number: 2,
                name: "value",
                json_name: "value",
                kind: Kind::Fixed64,
                repeated: false,
                presence: false,
            },
        ],
    };
    static ALL: Message = Message {
        name: "t.All",
        map_entry: false,
        well_known: None,
        fields: &[
            Field {
                number: 1,
                name: "s",
                json_name: "s",
                kind: Kind::String,
                repeated: false,
                presence: false,
            },
            Field {
                number: 2,
                name: "raw",
                json_name: "raw",
                kind: Kind::Bytes,
                repeated: false,
                presence: false,
            },
            Field {
                number: 3,
                name: "i32",
                json_name: "i32",
                kind: Kind::Int32,
                repeated: false,
                presence: false,
            },
            Field {
                number: 4,
                name: "i64",
                json_name: "i64",
                kind: Kind::Int64,
                repeated: false,
                presence: false,
            },
            Field {
                number: 5,
                name: "u64",
                json_name: "u64",
                kind: Kind::Uint64,
                repeated: false,
                presence: false,
            },
            Field {
                number: 6,
                name: "s64",
                json_name: "s64",
                kind: Kind::Sint64,
                repeated: false,
                presence: false,
            },
            Field {
                number: 7,
                name: "d",
                json_name: "d",
                kind: Kind::Double,
                repeated: false,
                presence: false,
            },
            Field {
                number: 8,
                name: "f",
                json_name: "f",
                kind: Kind::Float,
                repeated: false,
                presence: false,
            },
            Field {
                number: 9,
                name: "color",
                json_name: "color",
                kind: Kind::Enum(&COLOR),
                repeated: false,
                presence: false,
            },
            Field {
                number: 10,
                name: "flags",
                json_name: "flags",
                kind: Kind::Message(&FLAGS),
                repeated: false,
                presence: true,
            },
            Field {
                number: 11,
                name: "nums",
                json_name: "nums",
                kind: Kind::Uint32,
                repeated: true,
                presence: false,
            },
            Field {
                number: 12,
                name: "counts",
                json_name: "counts",
                kind: Kind::Map(&ENTRY),
                repeated: true,
                presence: false,
            },
            Field {
                number: 13,
                name: "opt",
                json_name: "opt",
                kind: Kind::Int32,
                repeated: false,
                presence: true,
            },
            Field {
                number: 14,
                name: "took",
                json_name: "took",
                kind: Kind::Message(&DURATION),
                repeated: false,
                presence: true,
            },
            Field {
                number: 15,
                name: "_hidden",
                json_name: "Hidden",
                kind: Kind::String,
                repeated: false,
                presence: false,
            },
            Field {
                number: 16,
                name: "items",
                json_name: "items",
                kind: Kind::Message(&FLAGS),
                repeated: true,
                presence: false,
            },
        ],
    };

    #[test]
    fn scalars_follow_protojson() {
        let mut e = enc();
        e.string(1, "hé")
            .bytes(2, b"\x00\xff")
            .varint(3, (-5i64) as u64)
            .varint(4, (-7i64) as u64)
            .varint(5, u64::MAX)
            .varint(6, 3) // zigzag -2
            .fixed64(7, f64::NAN.to_bits())
            .fixed32(8, 0.1f32.to_bits())
            .varint(9, 1)
            .varint(13, 0)
            .string(15, "x");
        let json = to_protojson(&ALL, &e.into_bytes()).unwrap();
        assert_eq!(
            json,
            json!({"s": "hé", "raw": "AP8=", "i32": -5, "i64": "-7", "u64": "18446744073709551615",
                   "s64": "-2", "d": "NaN", "f": 0.1, "color": "GREEN", "opt": 0, "Hidden": "x"})
        );
    }

    #[test]
    fn zero_values_are_left_out_and_last_scalar_wins() {
        let mut e = enc();
        e.varint(3, 9)
            .varint(3, 0)
            .string(1, "a")
            .string(1, "")
            .varint(9, 7);
        // An unknown enum number is written as a number.
        assert_eq!(
            to_protojson(&ALL, &e.into_bytes()).unwrap(),
            json!({"color": 7})
        );
    }

    #[test]
    fn messages_merge_and_repeated_append() {
        let mut a = enc();
        a.varint(1, 1);
        let mut b = enc();
        b.varint(2, 1);
        let mut e = enc();
        e.message(10, &a)
            .message(10, &b)
            .varint(11, 1)
            .bytes(11, &[2, 3])
            .message(16, &a)
            .message(16, &Encoder::new());
        let json = to_protojson(&ALL, &e.into_bytes()).unwrap();
        // Declaration order: b before a.
        assert_eq!(json["flags"], json!({"b": true, "a": true}));
        assert_eq!(json["nums"], json!([1, 2, 3]));
        assert_eq!(json["items"], json!([{"a": true}, {}]));
        assert_eq!(
            serde_json::to_string(&json["flags"]).unwrap(),
            r#"{"b":true,"a":true}"#
        );
    }

    #[test]
    fn concatenation_is_a_merge() {
        let mut first = enc();
        first.string(1, "old").varint(11, 1);
        let mut second = enc();
        second.string(1, "new").varint(11, 2);
        let mut both = first.into_bytes();
        both.extend(second.into_bytes());
        assert_eq!(
            to_protojson(&ALL, &both).unwrap(),
            json!({"s": "new", "nums": [1, 2]})
        );
    }

    #[test]
    fn maps_are_sorted_objects_and_later_entries_win() {
        let entry = |k: i32, v: u64| {
            let mut e = enc();
            e.varint(1, ((k << 1) ^ (k >> 31)) as u32 as u64)
                .fixed64(2, v);
            e
        };
        let mut e = enc();
        e.message(12, &entry(10, 1))
            .message(12, &entry(-3, 2))
            .message(12, &entry(10, 3))
            .message(12, &Encoder::new());
        let json = to_protojson(&ALL, &e.into_bytes()).unwrap();
        assert_eq!(
            serde_json::to_string(&json).unwrap(),
            r#"{"counts":{"-3":"2","0":"0","10":"3"}}"#
        );
    }

    #[test]
    fn durations_and_timestamps() {
        let mut d = enc();
        d.varint(1, (-1i64) as u64)
            .varint(2, (-500_000_000i64) as u64);
        let mut e = enc();
        e.message(14, &d);
        assert_eq!(
            to_protojson(&ALL, &e.into_bytes()).unwrap(),
            json!({"took": "-1.500s"})
        );
        assert_eq!(format_duration(3, 0).as_deref(), Some("3s"));
        assert_eq!(format_duration(0, 1000).as_deref(), Some("0.000001s"));
        assert_eq!(format_duration(1, -1), None);

        assert_eq!(
            format_timestamp(0, 0).as_deref(),
            Some("1970-01-01T00:00:00Z")
        );
        assert_eq!(
            format_timestamp(1_795_432_908, 747_273_000).as_deref(),
            Some("2026-11-23T11:21:48.747273Z")
        );
        assert_eq!(
            format_timestamp(951_782_400, 1).as_deref(),
            Some("2000-02-29T00:00:00.000000001Z")
        );
        assert_eq!(
            format_timestamp(-62_135_596_800, 0).as_deref(),
            Some("0001-01-01T00:00:00Z")
        );
        assert_eq!(format_timestamp(253_402_300_800, 0), None);
        assert_eq!(format_timestamp(0, -1), None);

        let mut ts = enc();
        ts.varint(1, 1_795_432_908).varint(2, 747_273_000);
        let mut env = enc();
        env.message(3, &ts);
        assert_eq!(
            to_protojson(&schema::ENVIRONMENT_RECORD, &env.into_bytes()).unwrap(),
            json!({"startedAt": "2026-11-23T11:21:48.747273Z"})
        );
        let mut bad = enc();
        bad.varint(1, u64::MAX >> 1);
        let mut env = enc();
        env.message(3, &bad);
        assert!(to_protojson(&schema::ENVIRONMENT_RECORD, &env.into_bytes()).is_err());
    }

    #[test]
    fn field_dict_follows_proto_encode_to_dict() {
        let mut flags = enc();
        flags.varint(1, 1).varint(2, 1);
        let mut e = enc();
        e.string(1, "name")
            .varint(3, (-2i64) as u64)
            .varint(4, 5) // int64: left out
            .fixed64(7, 1.5f64.to_bits()) // double: left out
            .varint(9, 1)
            .message(10, &flags)
            .varint(11, 4) // repeated: left out
            .string(15, "hidden"); // leading underscore: left out
        let json = to_field_dict(&ALL, &e.into_bytes()).unwrap();
        // Bool messages list their true fields in Go's range order: here
        // declaration order with the pair swapped.
        assert_eq!(json, json!({"1": "name", "3": -2, "9": 1, "10": [1, 2]}));
        assert_eq!(
            serde_json::to_string(&json).unwrap(),
            r#"{"1":"name","3":-2,"10":[1,2],"9":1}"#
        );
    }

    #[test]
    fn field_dict_of_real_telemetry() {
        let mut feature = enc();
        feature
            .varint(42, 1)
            .varint(41, 1)
            .varint(63, 1)
            .varint(76, 1)
            .varint(2, 1);
        let mut labels = enc();
        labels.string(1, "code").string(2, "");
        let mut t = enc();
        t.message(1, &Encoder::new())
            .message(3, &feature)
            .string(4, "3.11.7")
            .message(9, &labels)
            .string(12, "0.31.0")
            .message(200, &Encoder::new());
        let json = to_field_dict(&schema::TELEMETRY_RECORD, &t.into_bytes()).unwrap();
        // Feature 76 is declared before 63 in wandb_telemetry.proto, and the
        // reference wandb-core visits 42 before 41 (observed).
        assert_eq!(
            json,
            json!({"1": [], "3": [2, 42, 41, 76, 63], "4": "3.11.7", "9": {"1": "code"}, "12": "0.31.0"})
        );
    }

    #[test]
    fn unknown_fields_and_mismatched_wire_types_are_skipped() {
        let mut e = enc();
        e.string(99, "unknown")
            .fixed32(1, 7)
            .varint(3, 4)
            .fixed64(1000, 1);
        // A group (wire types 3/4) is skipped whole.
        let mut bytes = e.into_bytes();
        bytes.extend([0xab, 0x02, 0x08, 0x01, 0xac, 0x02]);
        assert_eq!(to_protojson(&ALL, &bytes).unwrap(), json!({"i32": 4}));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let cases: &[&[u8]] = &[
            &[0x0a, 0x05, b'a'], // truncated string
            &[0x18],             // missing varint
            &[
                0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ], // 11-byte varint
            &[0x00, 0x01],       // field 0
            &[0x0e],             // wire type 6
            &[0x0c],             // end group without start
            &[0x0b, 0x10, 0x01], // unterminated group
            &[0x5a, 0x02, 0x80, 0x80], // bad packed varints
            &[0x52, 0x03, 0x08, 0x01, 0x0d], // bad sub-message
            &[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f], // huge length
        ];
        for case in cases {
            assert!(to_protojson(&ALL, case).is_err(), "{case:?}");
            assert!(to_field_dict(&ALL, case).is_err(), "{case:?}");
        }
    }

    #[test]
    fn deep_nesting_is_refused() {
        static NODE: Message = Message {
            name: "t.Node",
            map_entry: false,
            well_known: None,
            fields: &[Field {
                number: 1,
                name: "child",
                json_name: "child",
                kind: Kind::Message(&NODE),
                repeated: false,
                presence: true,
            }],
        };
        let mut bytes = Vec::new();
        for _ in 0..100 {
            let mut e = enc();
            e.bytes(1, &bytes);
            bytes = e.into_bytes();
        }
        assert_eq!(to_protojson(&NODE, &bytes), Err(DecodeError::TooDeep));
        let mut shallow = Vec::new();
        for _ in 0..10 {
            let mut e = enc();
            e.bytes(1, &shallow);
            shallow = e.into_bytes();
        }
        assert!(to_protojson(&NODE, &shallow).is_ok());
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let len = rng.usize(0..40);
            let bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            for msg in [
                &schema::ENVIRONMENT_RECORD,
                &schema::TELEMETRY_RECORD,
                &schema::METRIC_RECORD,
                &ALL,
            ] {
                let _ = to_protojson(msg, &bytes);
                let _ = to_field_dict(msg, &bytes);
            }
        }
    }
}
