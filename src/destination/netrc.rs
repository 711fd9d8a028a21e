//! The `~/.netrc` fallback for a server's key, as wandb itself reads it:
//! the file (`$NETRC`, else `~/.netrc`), the machine name of a server
//! (`host[:port]`), and the password of that machine's entry (or of a
//! `default` entry). Which layer wins, and every message about a missing
//! key, is [`super::resolve`]'s; nothing here prints a key.

use std::path::{Path, PathBuf};

use super::key::ApiKey;

/// A netrc larger than this is not read.
const MAX_NETRC_BYTES: u64 = 1 << 20;

/// The netrc file of the environment `env`: `$NETRC`, else `$HOME/.netrc`;
/// `None` with neither set.
pub(crate) fn path(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    env("NETRC")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".netrc")))
}

/// The key `path` holds for `machine` (see [`host_of`]), else its
/// `default` entry's; `None` when the file is missing, unreadable or not a
/// regular file (never waited on), or has no such entry.
pub(crate) fn key_for(path: &Path, machine: &str) -> Option<ApiKey> {
    let file = crate::fs::open_regular(path).ok()?;
    let text = std::io::read_to_string(std::io::Read::take(file, MAX_NETRC_BYTES)).ok()?;
    netrc_password(&text, machine).map(ApiKey::new)
}

/// `host[:port]` of a URL, the netrc machine name wandb uses (the port only
/// when it is not the scheme's default); the text as given if it is not a
/// URL.
pub(crate) fn host_of(url: &str) -> String {
    let Ok(url) = reqwest::Url::parse(url) else {
        return url.to_string();
    };
    match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_string(),
        (None, _) => url.to_string(),
    }
}

/// The password of `machine` (or of a `default` entry) in netrc text.
fn netrc_password(text: &str, machine: &str) -> Option<String> {
    enum Entry {
        Outside,
        Machine { matches: bool },
        Default,
    }
    let mut entry = Entry::Outside;
    let mut default = None;
    let mut tokens = text.split_whitespace();
    while let Some(token) = tokens.next() {
        match token {
            "machine" => {
                entry = Entry::Machine {
                    matches: tokens.next() == Some(machine),
                }
            }
            "default" => entry = Entry::Default,
            "password" => {
                let value = tokens.next()?.to_string();
                match entry {
                    Entry::Machine { matches: true } => return Some(value),
                    Entry::Default => default = Some(value),
                    _ => {}
                }
            }
            "login" | "account" => {
                tokens.next();
            }
            "macdef" => break, // a macro runs to the end of the file here
            _ => {}
        }
    }
    default
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netrc_entry_for_the_host_and_port() {
        let tmp = tempfile::tempdir().unwrap();
        let netrc = tmp.path().join("netrc");
        std::fs::write(
            &netrc,
            "machine api.wandb.ai login user password wrong\nmachine 127.0.0.1:8080\n  login user\n  password right\n",
        )
        .unwrap();
        let key = key_for(&netrc, &host_of("http://127.0.0.1:8080/")).unwrap();
        assert_eq!(key.expose(), "right");
        assert!(!format!("{key:?}").contains("right"));
        assert_eq!(key_for(&netrc, "other.example"), None);
        std::fs::write(&netrc, "machine a password x\ndefault login u password d\n").unwrap();
        assert_eq!(key_for(&netrc, "b").unwrap().expose(), "d");
        assert_eq!(key_for(&tmp.path().join("missing"), "a"), None);
    }

    #[test]
    fn the_file_is_netrc_else_home() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            path(env(&[("NETRC", "/n"), ("HOME", "/h")])),
            Some(PathBuf::from("/n"))
        );
        assert_eq!(
            path(env(&[("HOME", "/h")])),
            Some(PathBuf::from("/h/.netrc"))
        );
        assert_eq!(path(env(&[])), None);
    }

    #[test]
    fn hosts_of_urls() {
        assert_eq!(host_of("https://api.wandb.ai"), "api.wandb.ai");
        assert_eq!(
            host_of("http://user:pw@127.0.0.1:18080/path?q"),
            "127.0.0.1:18080"
        );
        assert_eq!(
            host_of("https://user@wandb.lab.example/x#y"),
            "wandb.lab.example"
        );
        assert_eq!(host_of("http://[::1]:8080"), "[::1]:8080");
        assert_eq!(host_of("https://WANDB.Example:443/"), "wandb.example");
    }
}
