//! How runs are sent: native clients for tracking servers' HTTP protocols,
//! with retries that honour the server's pacing.

pub mod retry;
pub mod wandb;
