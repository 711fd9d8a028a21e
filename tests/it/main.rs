//! Integration tests: one binary, one module per area.

/// Fixture locations, running the `syncd` binary, the Python oracle.
mod support;

/// Artifacts: uploaded as the official client does, exactly once through
/// faults and kill -9; staging files that break the rule are refused.
mod artifacts;
/// Bad input in one run (odd names, pipes, symlinks out, unreadable or
/// corrupt files) is handled or reported, and the others are uploaded.
mod bad_input;
/// `syncd inspect` exit codes, messages and output forms.
mod cli;
/// Damaged files: bit flips, zeroed blocks, truncation at every offset, noise.
mod corruption;
/// `syncd run` end to end: live runs, Slurm verdicts, chaos, outage, triggers.
mod daemon;
/// The first ten minutes: relative paths from the project directory, one
/// run by any spelling, unreachable servers, dry runs, help, piped tables.
mod first_run;
/// A file that grows while it is read: every record exactly once.
mod growing;
/// Ledger format v1 is frozen: golden entries continue without re-sending;
/// an entry damaged or from a newer syncd stops its run and is kept.
mod ledger_format;
/// The daemon stays live while a server hangs or black-holes and while
/// `squeue` sleeps; then everything converges.
mod liveness;
/// The daemon's JSON log: levels, fields, spans; log filters and flags.
mod logging;
/// The official `wandb sync` against the test server, for every fixture case.
mod official_sync;
/// `inspect --json` against an independent reader, for every real fixture run.
mod oracle;
/// A run's steps overlap (reading with sending, files with lines) and stay
/// in order; checkpoints follow acknowledgements.
mod pipelining;
/// Bad answers from the server: GraphQL errors, a huge Retry-After, lost
/// alert answers, records too big for one request.
mod server_faults;
/// The systemd user unit and service install.
mod service;
/// A real Slurm cluster: sbatch templates, live uploads, TIMEOUT, USR1,
/// requeue, arrays, scancel.
mod slurm;
/// `syncd sync`: exactly once while a run grows, crashes, faults, keys.
mod sync;
/// `syncd sync` leaves the same server state as the official `wandb sync`.
mod sync_oracle;
/// `.env` targets per directory, refusals, redaction, run names.
mod targets;
/// The W&B-protocol test server: GraphQL, FileStream, uploads, faults, state.
mod wandb_server;
