//! Moving runs to the server: the per-run worker (read → send → ack →
//! checkpoint) and, later, the daemon loop that schedules it.

pub mod daemon;
pub mod heartbeat;
pub mod sd_notify;
pub mod slurm;
pub mod targets;
pub mod worker;
