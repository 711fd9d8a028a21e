use std::fs::{File, OpenOptions};
use std::io::Write;

use proptest::prelude::*;
use syncd::source::wandb::framing::{LogReader, Tail};

use crate::support::committed_log;

type Seen = (Vec<(u64, u64, Vec<u8>)>, u64, Option<Tail>);

/// Appends `bytes` to a file in pieces of the given sizes; after every
/// append, reads from the saved cursor. Returns every record seen (start,
/// end, payload) in order, the final cursor and how the file ends.
fn read_while_growing(bytes: &[u8], pieces: &[usize]) -> Seen {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("run-grow.wandb");
    File::create(&path).unwrap();
    let mut written = 0;
    let mut cursor = 0;
    let mut seen = Vec::new();
    let mut tail = None;
    let mut sizes = pieces.iter().cycle();
    while written < bytes.len() {
        let n = (*sizes.next().unwrap()).max(1).min(bytes.len() - written);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&bytes[written..written + n]).unwrap();
        written += n;
        let mut reader = match LogReader::open(File::open(&path).unwrap(), cursor) {
            Ok(r) => r,
            Err(e) => panic!("reopen at cursor {cursor} (file {written} bytes): {e}"),
        };
        while let Some(r) = reader.next_record().unwrap() {
            seen.push((r.start, r.end, r.payload.to_vec()));
        }
        assert!(reader.cursor() >= cursor, "the cursor never moves back");
        cursor = reader.cursor();
        tail = reader.tail();
    }
    (seen, cursor, tail)
}

fn one_shot(bytes: &[u8]) -> Seen {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("run-whole.wandb");
    std::fs::write(&path, bytes).unwrap();
    let mut reader = LogReader::open(File::open(&path).unwrap(), 0).unwrap();
    let mut out = Vec::new();
    while let Some(r) = reader.next_record().unwrap() {
        out.push((r.start, r.end, r.payload.to_vec()));
    }
    (out, reader.cursor(), reader.tail())
}

#[test]
fn whole_blocks_like_wandb_core_writes_them() {
    for case in ["finished", "big_record"] {
        let bytes = std::fs::read(committed_log("0.31.0", case)).unwrap();
        let grown = read_while_growing(&bytes, &[7, 32768 - 7, 32768]);
        assert!(grown == one_shot(&bytes), "{case}");
        assert_eq!(grown.1, bytes.len() as u64);
        assert_eq!(grown.2, Some(Tail::Clean));
    }
}

#[test]
fn byte_by_byte_growth_of_the_legacy_writer() {
    // The legacy Python writer flushes at arbitrary offsets.
    let bytes = std::fs::read(committed_log("0.17.9", "finished")).unwrap();
    let bytes = &bytes[..bytes.len().min(40_000)];
    let grown = read_while_growing(bytes, &[1, 2, 3, 5, 8, 13, 21, 34, 55, 89]);
    assert!(grown == one_shot(bytes));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_append_pattern_yields_each_record_once(pieces in prop::collection::vec(1usize..20_000, 1..12), which in 0usize..3) {
        let case = ["finished", "sigkill", "big_record"][which];
        let bytes = std::fs::read(committed_log("0.31.0", case)).unwrap();
        prop_assert!(read_while_growing(&bytes, &pieces) == one_shot(&bytes));
    }
}
