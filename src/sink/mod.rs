//! How runs are sent: native clients for tracking servers' HTTP protocols,
//! with retries that honour the server's pacing.
//!
//! - [`retry`]: the one backoff policy (exponential with jitter, capped,
//!   `Retry-After` honoured) every retry and re-probe in syncd uses;
//! - [`wandb`]: the W&B protocol, and the upload of one W&B run.
//!
//! A sink never decides *when* a run is sent (that is [`crate::engine`]),
//! never finds or parses files itself (it is handed records by
//! [`crate::source`]) and never writes the ledger's format (it reports what
//! the server acknowledged and the engine checkpoints it).

pub(crate) mod retry;
pub(crate) mod wandb;
