//! syncd finds offline experiment-tracking runs that training jobs write on a
//! cluster's shared filesystem and uploads them, incrementally and exactly
//! once.
//!
//! ```text
//! discover ──> source ──> ledger ──> sink ──> server
//!  (where)     (what)     (how far)  (send)
//!                   └──────> status (what is pending, why)
//! ```
//!
//! - [`discover`]: which run files exist under the paths and roots given;
//! - [`source`]: reads offline run formats into records and run views;
//! - [`ledger`]: how far each run has been uploaded, durably;
//! - [`sink`]: the trackers' HTTP protocols;
//! - [`engine`]: the per-run upload loop that ties them together;
//! - [`target`]: where each run goes (`.env` credentials) and its name there;
//! - [`cmd`]: the command-line subcommands built on them.

pub mod cli;
pub mod cmd;
pub mod config;
pub mod discover;
pub mod engine;
pub mod fs;
pub mod ledger;
pub mod paths;
pub mod process;
pub mod sink;
pub mod source;
pub mod target;
