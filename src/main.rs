#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match syncd::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout with exit 0, usage errors with 2.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if let Err(e) = syncd::telemetry::init(cli.log.log_format, cli.log.verbose, cli.log.quiet) {
        eprintln!("syncd: error: {e}");
        return ExitCode::from(2);
    }
    match syncd::cmd::dispatch(cli) {
        Ok(code) => code.into(),
        Err(e) => {
            eprintln!("syncd: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
