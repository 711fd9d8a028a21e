//! Moving runs to the server: the per-run worker (read → send → ack →
//! checkpoint) and, later, the daemon loop that schedules it.

pub mod worker;
