//! `syncd notify [PATH]`: run by a job (e.g. from an sbatch script) to ask
//! the daemon for an upload now. It only writes a small file into the spool
//! directory on the shared filesystem: no network, exit 0 fast.

use std::path::PathBuf;

use super::Outcome;
use crate::cli::NotifyArgs;
use crate::config;
use crate::discover::trigger;

pub(crate) fn run(args: NotifyArgs) -> anyhow::Result<Outcome> {
    let env = crate::config::ProcessEnv;
    let target = args.path.clone().unwrap_or_else(super::default_wandb_dir);
    // Absolute, so the daemon on another node finds it; not canonicalized:
    // the run directory may not exist yet when a job starts.
    let target = if target.is_absolute() {
        target
    } else {
        std::env::current_dir()?.join(target)
    };
    let state_dir = config::state_dir(args.state_dir.clone(), env)?;
    let spool: PathBuf = state_dir.join(trigger::SPOOL_DIR);
    match trigger::write_trigger(&spool, &target) {
        Ok(_) => Ok(Outcome::Ok),
        Err(e) => {
            eprintln!(
                "syncd notify: cannot write a trigger into {}: {e}",
                spool.display()
            );
            Ok(Outcome::SomeFailed)
        }
    }
}
