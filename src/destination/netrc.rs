//! Where the API key comes from: `WANDB_API_KEY`, else the netrc entry for
//! the server's host (`$NETRC`, else `~/.netrc`), as wandb itself looks.
//! The key is returned to the caller only; nothing here prints or stores it.

use std::path::PathBuf;

/// Where a key was found, for messages (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Env,
    Netrc(PathBuf),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Env => f.write_str("WANDB_API_KEY"),
            KeySource::Netrc(path) => write!(f, "{}", path.display()),
        }
    }
}

/// An API key with its origin. `Debug` does not show the key.
#[derive(Clone)]
pub struct ApiKey {
    pub key: String,
    pub source: KeySource,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKey(from {}, redacted)", self.source)
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "no W&B API key for {host}: set WANDB_API_KEY, or add `machine {host} login user password <key>` to {netrc}"
)]
pub struct MissingKey {
    pub host: String,
    pub netrc: String,
}

/// The key for `base_url` from the environment `env` (a lookup function so
/// tests need not change the process environment).
pub fn find_api_key(
    base_url: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<ApiKey, MissingKey> {
    if let Some(key) = env("WANDB_API_KEY").filter(|k| !k.trim().is_empty()) {
        return Ok(ApiKey {
            key: key.trim().to_string(),
            source: KeySource::Env,
        });
    }
    let host = host_of(base_url);
    let netrc = env("NETRC")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".netrc")));
    if let Some(path) = &netrc
        && let Ok(text) = crate::fs::open_regular(path)
            .and_then(|f| std::io::read_to_string(std::io::Read::take(f, 1 << 20)))
        && let Some(key) = netrc_password(&text, &host)
    {
        return Ok(ApiKey {
            key,
            source: KeySource::Netrc(path.clone()),
        });
    }
    Err(MissingKey {
        host,
        netrc: netrc.map_or_else(|| "~/.netrc".into(), |p| p.display().to_string()),
    })
}

/// `host[:port]` of a URL, the netrc machine name wandb uses.
pub fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, h)| h)
        .to_string()
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

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn env_key_wins_and_is_not_shown_in_debug() {
        let key =
            find_api_key("https://api.wandb.ai", env_of(&[("WANDB_API_KEY", "k123")])).unwrap();
        assert_eq!(key.key, "k123");
        assert!(!format!("{key:?}").contains("k123"));
    }

    #[test]
    fn netrc_entry_for_the_host_and_port() {
        let tmp = tempfile::tempdir().unwrap();
        let netrc = tmp.path().join("netrc");
        std::fs::write(
            &netrc,
            "machine api.wandb.ai login user password wrong\nmachine 127.0.0.1:8080\n  login user\n  password right\n",
        )
        .unwrap();
        let path = netrc.to_str().unwrap().to_string();
        let env = move |k: &str| (k == "NETRC").then(|| path.clone());
        let key = find_api_key("http://127.0.0.1:8080/", env).unwrap();
        assert_eq!(key.key, "right");
        assert!(matches!(key.source, KeySource::Netrc(_)));
    }

    #[test]
    fn missing_key_says_how_to_fix_it() {
        let err = find_api_key("http://localhost:9", |_| None).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("WANDB_API_KEY") && text.contains("machine localhost:9"),
            "{text}"
        );
    }

    #[test]
    fn hosts_of_urls() {
        assert_eq!(host_of("https://api.wandb.ai"), "api.wandb.ai");
        assert_eq!(
            host_of("http://user@127.0.0.1:18080/path?q"),
            "127.0.0.1:18080"
        );
    }
}
