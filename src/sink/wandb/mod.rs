//! The W&B protocol: GraphQL (`UpsertBucket`, `RunResumeStatus`,
//! `CreateRunFiles`, alerts), FileStream for history, system metrics,
//! summary and console lines, file uploads, and artifacts (`artifact/`).

pub(crate) mod artifact;
pub(crate) mod client;
pub(crate) mod filestream;
pub(crate) mod ops;
pub(crate) mod protojson;
pub(crate) mod run_config;
pub(crate) mod schema;
pub(crate) mod upload;
