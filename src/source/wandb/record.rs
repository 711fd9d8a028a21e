//! Cheap look at a record payload: its sequence number and type, found by
//! walking the top-level protobuf fields without decoding nested messages.
//! Counting and classifying a large run needs only this; the full prost decode
//! is done only for the records a view needs.

use super::proto::RecordKind;

/// Sequence number and type of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHead {
    pub num: i64,
    pub kind: RecordKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed protobuf in record payload at byte {at}")]
pub struct MalformedRecord {
    pub at: usize,
}

/// Reads `num` (field 1) and the `record_type` field number of a serialized
/// `wandb_internal.Record`. Unknown fields are skipped, as protobuf requires.
pub fn peek(payload: &[u8]) -> Result<RecordHead, MalformedRecord> {
    let mut at = 0;
    let mut num = 0;
    let mut kind = RecordKind::None;
    while at < payload.len() {
        let key = varint(payload, &mut at)?;
        let field = (key >> 3) as u32;
        match key & 7 {
            0 => {
                let v = varint(payload, &mut at)?;
                if field == 1 {
                    num = v as i64;
                }
            }
            1 => at = skip(payload, at, 8)?,
            2 => {
                let len = varint(payload, &mut at)?;
                let len = usize::try_from(len).map_err(|_| MalformedRecord { at })?;
                at = skip(payload, at, len)?;
                if let Some(k) = RecordKind::from_field(field) {
                    kind = k;
                }
            }
            5 => at = skip(payload, at, 4)?,
            _ => return Err(MalformedRecord { at }),
        }
    }
    Ok(RecordHead { num, kind })
}

fn skip(payload: &[u8], at: usize, len: usize) -> Result<usize, MalformedRecord> {
    let end = at.checked_add(len).ok_or(MalformedRecord { at })?;
    if end > payload.len() {
        return Err(MalformedRecord { at });
    }
    Ok(end)
}

fn varint(payload: &[u8], at: &mut usize) -> Result<u64, MalformedRecord> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let Some(&byte) = payload.get(*at) else {
            return Err(MalformedRecord { at: *at });
        };
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(MalformedRecord { at: *at })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::wandb::proto::{self, Record, RecordType};
    use prost::Message;

    #[test]
    fn peek_agrees_with_prost() {
        let record = Record {
            num: 42,
            record_type: Some(RecordType::Exit(proto::RunExitRecord {
                exit_code: -3,
                runtime: 9,
                not_complete: false,
            })),
            info: Some(proto::RecordInfo {
                stream_id: "abc".into(),
            }),
        };
        let head = peek(&record.encode_to_vec()).unwrap();
        assert_eq!(
            head,
            RecordHead {
                num: 42,
                kind: RecordKind::Exit
            }
        );
    }

    #[test]
    fn empty_payload_is_a_record_without_type() {
        assert_eq!(
            peek(&[]).unwrap(),
            RecordHead {
                num: 0,
                kind: RecordKind::None
            }
        );
    }

    #[test]
    fn truncated_varint_is_malformed() {
        assert!(peek(&[0x08, 0x80]).is_err());
        assert!(peek(&[0x12, 0x05, 0x01]).is_err());
    }
}
