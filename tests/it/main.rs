//! Integration tests: one binary, one module per area.

/// Fixture locations, running the `syncd` binary, the Python oracle.
mod support;

/// `inspect --json` against an independent reader, for every real fixture run.
mod oracle;
/// Damaged files: bit flips, zeroed blocks, truncation at every offset, noise.
mod corruption;
/// A file that grows while it is read: every record exactly once.
mod growing;
/// `syncd inspect` exit codes, messages and output forms.
mod cli;
