//! Where a run goes: the server, API key, entity and project for each run,
//! and the clients that talk to each server. Credentials live here and
//! nowhere else.
//!
//! - [`resolve`]: the layered lookup: the nearest `.env` up to the watched
//!   root, the user's own `.env`, the environment and `~/.netrc`; a key is
//!   scoped to the server it was found with; its errors
//!   ([`DestinationError`], one `MissingKey`) say what to fix and never
//!   hold a key;
//! - [`key`]: [`ApiKey`], the one type that holds a key, redacted wherever
//!   it could be printed;
//! - [`netrc`]: reads `~/.netrc`, the fallback the official client also
//!   reads, and nothing else;
//! - [`clients`]: one shared client per (server, key), so runs bound for the
//!   same server share its connection pool and its 429 pause.
//!
//! This folder decides *where*; it never reads run files (that is
//! [`crate::source`]), never names runs (that is [`crate::naming`]), never
//! writes a file, and never speaks a tracker's protocol beyond building its
//! client (that is [`crate::sink`]). Which directories are searched for a
//! `.env` is [`crate::project`]'s; where the user's own files are is
//! [`crate::config`]'s.

pub(crate) mod clients;
pub(crate) mod key;
pub(crate) mod netrc;
pub(crate) mod resolve;

pub(crate) use key::ApiKey;
pub(crate) use resolve::{Destination, DestinationError, resolve_destination};
