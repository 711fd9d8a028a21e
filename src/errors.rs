//! How an error is said in one line where only a string is kept (a run's
//! last error in the ledger, `status`, `--json`): the message and each
//! cause under it, so "cannot write ledger X" keeps its "No space left on
//! device".

use std::error::Error;

/// `error`'s message followed by each of its sources, `: `-separated. A
/// source whose text the line already holds (a message that prints its own
/// cause) is not repeated.
pub(crate) fn one_line(error: &dyn Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot write ledger {path}")]
    struct Quiet {
        path: String,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("{path}: {source}")]
    struct Loud {
        path: String,
        source: std::io::Error,
    }

    #[test]
    fn each_cause_is_said_once() {
        let full = std::io::Error::other("No space left on device");
        let quiet = Quiet {
            path: "/s/wandb-a.json".into(),
            source: full,
        };
        assert_eq!(
            one_line(&quiet),
            "cannot write ledger /s/wandb-a.json: No space left on device"
        );
        let loud = Loud {
            path: "/r/run-a.wandb".into(),
            source: std::io::Error::other("Input/output error"),
        };
        assert_eq!(one_line(&loud), "/r/run-a.wandb: Input/output error");
    }
}
