//! Where a run goes: the server, API key, entity and project for each run,
//! and the clients that talk to each server.
//!
//! - [`resolve`]: the layered lookup: the nearest `.env` up to the watched
//!   root, the user's own `.env`, the environment and `~/.netrc`; a key is
//!   scoped to the server it was found with, and redacted wherever it could
//!   be printed;
//! - [`netrc`]: the `~/.netrc` fallback the official client also reads;
//! - [`clients`]: one shared client per (server, key), so runs bound for the
//!   same server share its connection pool and its 429 pause.
//!
//! This folder decides *where*; it never reads run files (that is
//! [`crate::source`]) and never speaks a tracker's protocol beyond building
//! its client (that is [`crate::sink`]).

pub mod clients;
pub mod key;
pub mod netrc;
pub mod resolve;

pub use key::ApiKey;
pub use resolve::{Destination, DestinationError, Origin, resolve_destination};
