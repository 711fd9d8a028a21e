//! syncd finds offline experiment-tracking runs that training jobs write on a
//! cluster's shared filesystem and uploads them, incrementally and exactly
//! once.
//!
//! ```text
//! discover ──> source ──> engine ──> sink ──> server
//!  (where)     (what)     (when)     (send)
//!                          │  └─> ledger (how far; durable)
//!                          └────> destination, naming (where to, called what)
//! ```
//!
//! - [`discover`]: which run files exist under the paths and roots given;
//! - [`source`]: reads offline run formats into records and run views;
//! - [`engine`]: the daemon loop and scheduler: which run is sent when;
//! - [`sink`]: the trackers' protocols, and one run's upload;
//! - [`ledger`]: how far each run has been uploaded, durably, in a frozen format;
//! - [`destination`]: where each run goes (`.env` credentials, clients);
//! - [`naming`]: a run's name and group there, from its Slurm job;
//! - [`project`]: the directories around a run searched for its `.env` and job manifest;
//! - [`config`]: the config file, state and config directories, defaults;
//! - [`fs`], [`paths`], [`process`], [`errors`]: opening user files safely and
//!   writing durably, paths as bytes, child programs, errors in one line;
//! - [`cmd`]: the command-line subcommands built on them;
//! - [`telemetry`]: logging (`tracing`), set up once for every subcommand.

#![forbid(unsafe_code)]
#![warn(unreachable_pub)]
// The docs are read with --document-private-items: the modules are the
// crate's design, and most of them are private.
#![allow(rustdoc::private_intra_doc_links)]

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
