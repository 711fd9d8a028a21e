//! What is in a run: readers for the offline formats trackers leave on disk.
//! Each turns files into typed records from a resumable cursor, tells
//! complete, growing, truncated and corrupt files apart, and groups the
//! fragments of one run.

pub mod wandb;
