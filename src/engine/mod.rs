//! Moving runs to the server: the daemon loop, the scheduler that decides
//! which run uploads when (`schedule`), what an upload is asked and answers
//! (`job`; the steps themselves are the sink's), and the keeper thread that
//! keeps its lease, heartbeat and watchdog on time.

pub mod daemon;
pub mod heartbeat;
pub mod job;
pub mod keeper;
pub mod schedule;
pub mod sd_notify;
pub mod slurm;
