//! Weights & Biases offline runs (`offline-run-*/run-<id>.wandb`).
//!
//! - [`framing`]: the LevelDB-style block/chunk format and its resumable cursor;
//! - [`record`]: a record's type and number without a full decode;
//! - [`proto`]: the protobuf messages;
//! - [`value`]: W&B's extended JSON (`NaN`, `Infinity`), kept losslessly;
//! - [`views`]: config, summary, history, system metrics, console, files, exit;
//! - [`metadata`]: `wandb-metadata.json` of writers older than 0.21;
//! - [`fragment`]: one file read end to end and classified;
//! - [`run`]: fragments grouped into runs.
//!
//! Memory is bounded by one 32 KiB block and one record, never by the size
//! of the file: a reader continues from any cursor it returned before.

pub mod fragment;
pub mod framing;
pub(crate) mod metadata;
pub mod proto;
pub mod record;
pub(crate) mod run;
pub(crate) mod value;
pub(crate) mod views;
