#!/usr/bin/env python3
"""Independent test oracle for .wandb files (stdlib only; no wandb, no syncd code).

    python tests/oracle/wandb_facts.py FILE.wandb [FILE...]

prints {"<path>": facts} as JSON. Framing: LevelDB log format with a 7-byte W&B
header, 32 KiB blocks counted from offset 0, chunk header crc32 u32 LE | len u16 LE |
type u8, crc = zlib.crc32(type byte + payload); < 7 bytes left in a block = zero
padding; an all-zero chunk header at a record start = skip the rest of the block.

facts: header_ok, file_size, records (complete records), record_types (Record oneof
name -> count, "none" if unset), history_rows, last_step (max `_step` item, typed or
value_json, else HistoryRecord.step.num), exit_code (last exit record), run_id (first
run record), slurm_job_id (last EnvironmentRecord.slurm["job_id"]; without one, the
"slurm" of the run dir's files/wandb-metadata.json, where wandb 0.19 records it), complete_offset
(end of the last complete record, padding excluded), tail_incomplete (any non-zero
byte after complete_offset), first_error ({offset, reason} or null).
Reading stops at the first error (CRC mismatch, impossible chunk, bad header):
records after it are not counted, as in the official wandb-core sync. A record cut
off by the end of the file is not an error, only tail_incomplete.
"""
import json
import os
import struct
import sys
import zlib

HEADER = b":W&B" + struct.pack("<H", 0xBEE1) + b"\x00"
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4

# wandb_internal.Record oneof `record_type`: field number -> name.
RECORD_TYPES = {
    2: "history", 3: "summary", 4: "output", 5: "config", 6: "files", 7: "stats",
    8: "artifact", 9: "tbrecord", 10: "alert", 11: "telemetry", 12: "metric",
    13: "output_raw", 17: "run", 18: "exit", 20: "final", 21: "header", 22: "footer",
    23: "preempting", 24: "noop_link_artifact", 25: "use_artifact", 26: "environment",
    27: "output_logger", 100: "request",
}


# --- protobuf wire format -------------------------------------------------------

def varint(buf, i):
    shift = result = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift >= 70:
            raise ValueError("varint too long")


def fields(buf):
    """Decode one message into {field_number: [values]} (ints or bytes)."""
    out, i = {}, 0
    while i < len(buf):
        key, i = varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, i = varint(buf, i)
        elif wt == 1:
            val, i = struct.unpack_from("<Q", buf, i)[0], i + 8
        elif wt == 2:
            n, i = varint(buf, i)
            val, i = bytes(buf[i:i + n]), i + n
            if i > len(buf):
                raise ValueError("truncated length-delimited field")
        elif wt == 5:
            val, i = struct.unpack_from("<I", buf, i)[0], i + 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        out.setdefault(num, []).append(val)
    return out


def first(f, num, default=None):
    return f[num][-1] if num in f else default  # proto3: last occurrence wins


def signed(v, bits=64):
    v &= (1 << 64) - 1
    if v >= 1 << 63:
        v -= 1 << 64
    return v if bits == 64 else ((v + (1 << (bits - 1))) % (1 << bits)) - (1 << (bits - 1))


# --- record semantics -----------------------------------------------------------

def history_step(hist):
    """The `_step` of a HistoryRecord: from its `_step` item, else step.num."""
    for item in hist.get(1, []):
        it = fields(item)
        key = first(it, 1, b"").decode() or ".".join(k.decode() for k in it.get(2, []))
        if key != "_step":
            continue
        if 5 in it:  # typed sint64 (zigzag)
            z = first(it, 5)
            return (z >> 1) ^ -(z & 1)
        if 6 in it:  # typed double
            return int(struct.unpack("<d", struct.pack("<Q", first(it, 6)))[0])
        if 16 in it:  # value_json
            return int(json.loads(first(it, 16).decode()))
    if 2 in hist:
        return signed(first(fields(first(hist, 2)), 1, 0))
    return None


def facts(path):
    data = open(path, "rb").read()
    f = {"file_size": len(data), "header_ok": data[:7] == HEADER, "records": 0,
         "record_types": {}, "history_rows": 0, "last_step": None, "exit_code": None,
         "run_id": None, "slurm_job_id": None, "complete_offset": 0,
         "tail_incomplete": False, "first_error": None}
    if not f["header_ok"]:  # a prefix of the header (incl. 0 bytes) is just "not written yet"
        f["tail_incomplete"] = len(data) > 0
        if not HEADER.startswith(data[:7]):
            f["first_error"] = {"offset": 0, "reason": "bad file header"}
        return f

    def on_record(payload):  # decode fully first, so a bad record changes nothing
        rec = fields(payload)
        kinds = [n for n in rec if n in RECORD_TYPES]
        kind = RECORD_TYPES[kinds[-1]] if kinds else "none"  # oneof: last one wins
        body = fields(first(rec, kinds[-1])) if kinds else {}
        step = history_step(body) if kind == "history" else None
        job_ids = [first(fields(e), 2, b"").decode() for e in body.get(27, [])
                   if first(fields(e), 1, b"") == b"job_id"] if kind == "environment" else []
        run_id = first(body, 1, b"").decode() if kind == "run" else None
        f["records"] += 1
        f["record_types"][kind] = f["record_types"].get(kind, 0) + 1
        if kind == "history":
            f["history_rows"] += 1
            if step is not None and (f["last_step"] is None or step > f["last_step"]):
                f["last_step"] = step
        elif kind == "exit":
            f["exit_code"] = signed(first(body, 1, 0), 32)
        elif kind == "run" and f["run_id"] is None:
            f["run_id"] = run_id
        if job_ids:
            f["slurm_job_id"] = job_ids[-1]

    pos, pending, complete = 7, None, 7
    while True:
        left = BLOCK - pos % BLOCK
        if left < 7:  # trailer: must be zero padding
            if any(data[pos:pos + left]):
                f["first_error"] = {"offset": pos, "reason": "non-zero block padding"}
                break
            pos += left
            continue
        if pos + 7 > len(data):
            break  # clean EOF, or a partial chunk header
        crc, length, typ = struct.unpack_from("<IHB", data, pos)
        if crc == 0 and length == 0 and typ == 0:
            if pending is not None:
                f["first_error"] = {"offset": pos, "reason": "zero chunk inside a record"}
                break
            pos += left  # zeroed block: skip its rest
            continue
        err = None
        if typ not in (FULL, FIRST, MIDDLE, LAST):
            err = f"bad chunk type {typ}"
        elif 7 + length > left:
            err = "chunk crosses block boundary"
        elif pos + 7 + length > len(data):
            break  # truncated payload: incomplete tail
        elif zlib.crc32(data[pos + 6:pos + 7 + length]) != crc:
            err = "checksum mismatch"
        elif (typ in (FULL, FIRST)) != (pending is None):
            err = f"unexpected chunk type {typ}"
        if err:
            f["first_error"] = {"offset": pos, "reason": err}
            break
        payload = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        pending = payload if typ in (FULL, FIRST) else pending + payload
        if typ in (FULL, LAST):
            try:
                on_record(pending)
            except (ValueError, UnicodeDecodeError, IndexError, struct.error) as e:
                f["first_error"] = {"offset": complete, "reason": f"bad protobuf: {e}"}
                break
            pending, complete = None, pos
    f["complete_offset"] = complete
    f["tail_incomplete"] = any(data[complete:])
    return f


def metadata_slurm_job_id(path):
    """wandb 0.19's wandb-core writes no EnvironmentRecord; its Slurm variables
    are only in files/wandb-metadata.json beside the .wandb file."""
    meta = os.path.join(os.path.dirname(path), "files", "wandb-metadata.json")
    try:
        with open(meta) as fh:
            return (json.load(fh).get("slurm") or {}).get("job_id")
    except (OSError, ValueError, AttributeError):
        return None


def all_facts(path):
    f = facts(path)
    if f["slurm_job_id"] is None:
        f["slurm_job_id"] = metadata_slurm_job_id(path)
    return f


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print(json.dumps({p: all_facts(p) for p in sys.argv[1:]}, indent=2, sort_keys=True))
