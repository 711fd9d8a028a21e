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
//! - [`destination`]: where each run goes (`.env` credentials, clients);
//! - [`naming`]: a run's name and group there, from its Slurm job;
//! - [`project`]: the directories around a run searched for its `.env` and job manifest;
//! - [`cmd`]: the command-line subcommands built on them;
//! - [`telemetry`]: logging (`tracing`), set up once for every subcommand.

#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub mod cli;
pub mod cmd;
pub(crate) mod config;
pub(crate) mod destination;
pub mod discover;
pub mod engine;
pub(crate) mod errors;
pub(crate) mod fs;
pub mod ledger;
pub(crate) mod naming;
pub(crate) mod paths;
pub(crate) mod process;
pub(crate) mod project;
pub(crate) mod sink;
pub mod source;
pub mod telemetry;
