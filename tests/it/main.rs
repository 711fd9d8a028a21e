//! Integration tests: one binary, one module per area.

/// Fixture locations, running the `syncd` binary, the Python oracle.
mod support;

/// `syncd inspect` exit codes, messages and output forms.
mod cli;
/// Damaged files: bit flips, zeroed blocks, truncation at every offset, noise.
mod corruption;
/// A file that grows while it is read: every record exactly once.
mod growing;
/// `inspect --json` against an independent reader, for every real fixture run.
mod oracle;
