//! What is in a run: readers for the offline formats trackers leave on disk.
//! Each turns files into typed records from a resumable cursor, tells
//! complete, growing, truncated and corrupt files apart, and groups the
//! fragments of one run.
//!
//! A source only reads: it never writes a user's file, never speaks to a
//! server and never knows where a run goes. Its views are in-memory state;
//! how they are stored between runs of syncd is the ledger's format
//! ([`crate::ledger`]), not theirs.

pub mod wandb;
