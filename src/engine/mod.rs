//! Moving runs to the server: the daemon loop, the scheduler that decides
//! which run uploads when (`schedule`), what an upload is asked and answers
//! (`job`; the steps themselves are the sink's), and the keeper thread that
//! keeps its lease, heartbeat and watchdog on time.

pub(crate) mod daemon;
pub(crate) mod heartbeat;
pub(crate) mod job;
pub(crate) mod keeper;
pub(crate) mod schedule;
pub(crate) mod sd_notify;
pub(crate) mod slurm;

// What the Slurm tests judge job states with.
pub use slurm::JobState;
