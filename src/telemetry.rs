//! Logging: the one place that sets up `tracing` for every subcommand.
//!
//! Events go to stderr (stdout is for a command's own output: tables, JSON
//! documents). Two formats:
//!
//! - `text`, for a terminal or a log file: time, level, the span a line
//!   belongs to (`upload{run=…}`) and the event's fields; colours only
//!   when stderr is a terminal.
//! - `json`, for journald and log collectors: one object per line with
//!   `timestamp`, `level`, `target`, `message`, the event's fields at the
//!   top level, and the current span's fields under `span`.
//!
//! Which events are shown: `$SYNCD_LOG` (EnvFilter syntax, e.g. `debug` or
//! `syncd::sink=debug,info`), else `$RUST_LOG`, else the `-v`/`-q` flags:
//! syncd's own events from `info` (`-v` debug, `-vv` trace, `-q` warn,
//! `-qq` error), other libraries' from `warn`. A filter that does not
//! parse is an error, not silently ignored: a user who asked for debug logs
//! and got none would look in the wrong place.

use std::io::IsTerminal as _;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Readable lines.
    #[default]
    Text,
    /// One JSON object per line (for journald).
    Json,
}

/// The variables a filter is read from, first one set wins.
const FILTER_VARS: [&str; 2] = ["SYNCD_LOG", "RUST_LOG"];

/// A log filter from the environment that does not parse.
#[derive(Debug, thiserror::Error)]
#[error(
    "${var}={value:?} is not a log filter: {source} (examples: `debug`, `syncd::sink=debug,info`)"
)]
pub struct FilterError {
    var: &'static str,
    value: String,
    source: tracing_subscriber::filter::ParseError,
}

/// The filter in force and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FilterChoice {
    /// `SYNCD_LOG`, `RUST_LOG`, or `None` for the flags.
    pub from: Option<&'static str>,
    /// EnvFilter directives.
    pub directives: String,
}

/// The level of syncd's own events for `-v` and `-q` counts; each `-q`
/// takes back a `-v` (a `-v` in an alias and a `-q` typed after it).
pub(crate) fn level(verbose: u8, quiet: u8) -> LevelFilter {
    match i16::from(verbose) - i16::from(quiet) {
        2.. => LevelFilter::TRACE,
        1 => LevelFilter::DEBUG,
        0 => LevelFilter::INFO,
        -1 => LevelFilter::WARN,
        _ => LevelFilter::ERROR,
    }
}

/// Chooses the filter: `SYNCD_LOG`, else `RUST_LOG` (empty counts as
/// unset), else `level` for syncd and warnings for other crates (whose
/// debug output is their internals, not what syncd does). `env` looks a
/// variable up, so tests need not change the process's environment.
pub(crate) fn choose_filter(
    level: LevelFilter,
    env: impl Fn(&str) -> Option<String>,
) -> FilterChoice {
    for var in FILTER_VARS {
        if let Some(value) = env(var).filter(|v| !v.trim().is_empty()) {
            return FilterChoice {
                from: Some(var),
                directives: value,
            };
        }
    }
    let directives = if level <= LevelFilter::WARN {
        level.to_string()
    } else {
        format!("warn,syncd={level}")
    };
    FilterChoice {
        from: None,
        directives,
    }
}

/// The choice as an EnvFilter; an unparsable variable is an error naming it.
pub(crate) fn build_filter(choice: &FilterChoice) -> Result<EnvFilter, FilterError> {
    EnvFilter::builder()
        .parse(&choice.directives)
        .map_err(|source| FilterError {
            // The flags' own directives always parse (a unit test checks).
            var: choice.from.unwrap_or("SYNCD_LOG"),
            value: choice.directives.clone(),
            source,
        })
}

/// Installs the process's subscriber. Called once, before any subcommand
/// runs; a second call (tests) leaves the first in place.
pub fn init(format: LogFormat, verbose: u8, quiet: u8) -> Result<(), FilterError> {
    let env = |k: &str| std::env::var(k).ok();
    let filter = build_filter(&choose_filter(level(verbose, quiet), env))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Only a subscriber already set can fail this, which keeps the first.
    let _already_set = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    Ok(())
}

/// Log lines of one test: what a module logs is checked where it is logged.
#[cfg(test)]
pub(crate) mod capture {
    use std::sync::{Arc, Mutex};

    /// The text lines written on this thread while the guard lives.
    #[derive(Clone, Default)]
    pub(crate) struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Captured {
        pub(crate) fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }

        /// Lines that contain `needle`.
        pub(crate) fn lines_with(&self, needle: &str) -> Vec<String> {
            self.text()
                .lines()
                .filter(|l| l.contains(needle))
                .map(str::to_string)
                .collect()
        }
    }

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Captures every event (all levels) on the calling thread; a
    /// current-thread tokio test stays on it.
    pub(crate) fn start() -> (tracing::subscriber::DefaultGuard, Captured) {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (tracing::subscriber::set_default(subscriber), captured)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn flags_set_syncds_level_and_keep_other_crates_at_warnings() {
        let none = env_of(&[]);
        let chosen = |v, q| choose_filter(level(v, q), &none).directives;
        assert_eq!(chosen(0, 0), "warn,syncd=info");
        assert_eq!(chosen(1, 0), "warn,syncd=debug");
        assert_eq!(chosen(2, 0), "warn,syncd=trace");
        assert_eq!(chosen(5, 0), "warn,syncd=trace");
        assert_eq!(chosen(0, 1), "warn");
        assert_eq!(chosen(0, 2), "error");
        assert_eq!(chosen(0, 7), "error");
        assert_eq!(chosen(1, 1), "warn,syncd=info");
        assert_eq!(chosen(2, 1), "warn,syncd=debug");
        assert_eq!(choose_filter(level(0, 0), &none).from, None);
    }

    #[test]
    fn syncd_log_wins_over_rust_log_which_wins_over_the_flags() {
        let both = env_of(&[("SYNCD_LOG", "syncd::sink=trace"), ("RUST_LOG", "error")]);
        let choice = choose_filter(LevelFilter::ERROR, both);
        assert_eq!(choice.from, Some("SYNCD_LOG"));
        assert_eq!(choice.directives, "syncd::sink=trace");

        let rust = env_of(&[("RUST_LOG", "debug")]);
        let choice = choose_filter(LevelFilter::ERROR, rust);
        assert_eq!(choice.from, Some("RUST_LOG"));
        assert_eq!(choice.directives, "debug");

        // Set but empty, as `SYNCD_LOG= syncd run` leaves it: not a choice.
        let empty = env_of(&[("SYNCD_LOG", " "), ("RUST_LOG", "warn")]);
        assert_eq!(
            choose_filter(LevelFilter::INFO, empty).from,
            Some("RUST_LOG")
        );
    }

    #[test]
    fn every_flag_choice_parses() {
        for v in 0..3 {
            for q in 0..3 {
                build_filter(&choose_filter(level(v, q), env_of(&[]))).unwrap();
            }
        }
    }

    #[test]
    fn a_bad_filter_is_an_error_that_names_its_variable() {
        let bad = env_of(&[("SYNCD_LOG", "syncd=loud")]);
        let error = build_filter(&choose_filter(LevelFilter::INFO, bad))
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("$SYNCD_LOG=\"syncd=loud\" is not a log filter"),
            "{error}"
        );
        let bad = env_of(&[("RUST_LOG", "[{")]);
        let error = build_filter(&choose_filter(LevelFilter::INFO, bad))
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("$RUST_LOG="), "{error}");
    }
}
