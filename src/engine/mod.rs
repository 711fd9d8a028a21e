//! Moving runs to the server: the per-run worker (read → send → ack →
//! checkpoint), the daemon loop that schedules it, and the keeper thread
//! that keeps its lease, heartbeat and watchdog on time.

pub mod daemon;
pub mod heartbeat;
pub mod keeper;
pub mod sd_notify;
pub mod settled;
pub mod slurm;
pub mod worker;
