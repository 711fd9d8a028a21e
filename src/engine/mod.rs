//! Moving runs to the server: the daemon loop, the scheduler that decides
//! which run uploads when (`schedule`), what an upload is asked and answers
//! (`job`; the steps themselves are the sink's), and the keeper thread that
//! keeps its lease, heartbeat and watchdog on time.
//!
//! - [`daemon`]: the loop: takes what discovery and the workers report,
//!   asks Slurm and probes servers as tasks, starts uploads, publishes the
//!   heartbeat; its steps are methods of one `Daemon`;
//! - [`schedule`]: one state per run (idle, queued, in flight, backing off,
//!   stopped) and the order runs go in; tested under a paused clock;
//! - [`settled`]: runs with nothing left to do, kept as paths and a stat stamp;
//!   [`settled_index`]: the file that lets the next start-up take them back
//!   with a few stats each;
//! - [`slurm`]: whether a run's job is still alive (`squeue`/`sacct`, batched
//!   and cached, digits-only ids);
//! - [`keeper`], [`heartbeat`], [`sd_notify`]: staying visibly alive.
//!
//! The engine decides *when*, never *how*: it does not speak a tracker's
//! protocol (the sink's upload does), read record formats (the source) or
//! write the ledger's JSON (the ledger). Its loop never waits on the outside
//! world: network, Slurm and child processes are tasks that report back.

pub(crate) mod daemon;
pub(crate) mod heartbeat;
pub(crate) mod job;
pub(crate) mod keeper;
pub(crate) mod schedule;
pub(crate) mod sd_notify;
pub(crate) mod settled;
pub(crate) mod settled_index;
pub(crate) mod slurm;

// What the Slurm tests judge job states with.
pub use slurm::JobState;
