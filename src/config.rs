//! Settings that come from the environment: where syncd keeps its state,
//! which server it talks to.

use std::path::PathBuf;

/// The public W&B API, used when `WANDB_BASE_URL` is not set.
pub const DEFAULT_WANDB_BASE_URL: &str = "https://api.wandb.ai";

/// `--state-dir`, else `$SYNCD_STATE_DIR`, else `$XDG_STATE_HOME/syncd`,
/// else `~/.local/state/syncd`.
pub fn state_dir(flag: Option<PathBuf>, env: impl Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(dir) = flag {
        return dir;
    }
    let set = |k: &str| env(k).filter(|v| !v.is_empty());
    if let Some(dir) = set("SYNCD_STATE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = set("XDG_STATE_HOME") {
        return PathBuf::from(dir).join("syncd");
    }
    let home = set("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".local/state/syncd")
}

/// `--base-url`, else `$WANDB_BASE_URL`, else the public API; no trailing `/`.
pub fn wandb_base_url(flag: Option<String>, env: impl Fn(&str) -> Option<String>) -> String {
    let url = flag.or_else(|| env("WANDB_BASE_URL").filter(|v| !v.is_empty()));
    url.unwrap_or_else(|| DEFAULT_WANDB_BASE_URL.into())
        .trim_end_matches('/')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dir_precedence() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            state_dir(Some("/f".into()), env(&[("SYNCD_STATE_DIR", "/s")])),
            PathBuf::from("/f")
        );
        assert_eq!(
            state_dir(
                None,
                env(&[("SYNCD_STATE_DIR", "/s"), ("XDG_STATE_HOME", "/x")])
            ),
            PathBuf::from("/s")
        );
        assert_eq!(
            state_dir(None, env(&[("XDG_STATE_HOME", "/x"), ("HOME", "/h")])),
            PathBuf::from("/x/syncd")
        );
        assert_eq!(
            state_dir(None, env(&[("HOME", "/h")])),
            PathBuf::from("/h/.local/state/syncd")
        );
        assert_eq!(
            wandb_base_url(None, env(&[("WANDB_BASE_URL", "http://x:1/")])),
            "http://x:1"
        );
        assert_eq!(wandb_base_url(None, env(&[])), DEFAULT_WANDB_BASE_URL);
    }
}
