//! The W&B protocol: GraphQL (`UpsertBucket`, `RunResumeStatus`,
//! `CreateRunFiles`, alerts), FileStream for history, system metrics,
//! summary and console lines, and file uploads.

pub mod client;
pub mod filestream;
pub mod ops;
pub mod protojson;
pub mod run_config;
pub mod schema;
pub mod upload;
