//! Settings that come from the environment: where syncd keeps its state,
//! which server it talks to.

use std::path::PathBuf;

use crate::naming::{NamingRule, Template};

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

/// `$XDG_CONFIG_HOME` when absolute (the XDG rule: a relative one is
/// ignored), else `~/.config`; `None` without either.
pub fn config_home(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| env("HOME").map(|home| PathBuf::from(home).join(".config")))
}

/// `<config home>/syncd/config.toml` (`./.config/…` without a home).
pub fn config_file(env: impl Fn(&str) -> Option<String>) -> PathBuf {
    config_home(env)
        .unwrap_or_else(|| PathBuf::from(".config"))
        .join("syncd/config.toml")
}

/// The config file's contents. Every field is optional; flags override it,
/// and it overrides the built-in defaults.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub roots: Option<Vec<String>>,
    pub state_dir: Option<PathBuf>,
    pub base_url: Option<String>,
    pub poll: Option<String>,
    pub idle_poll: Option<String>,
    pub jobs: Option<usize>,
    pub grace: Option<String>,
    pub quiescence: Option<String>,
    /// wandb-osh's command directory; `""` turns reading it off.
    pub osh_command_dir: Option<String>,
    pub slurm: Option<bool>,
    pub nice: Option<i32>,
    /// How runs are named on the server (`[naming]`).
    pub naming: Option<NamingSection>,
}

/// The `[naming]` table:
///
/// ```toml
/// [naming]
/// template = "v{version}-{experiment}_{job}"
/// override_user_names = false
/// array_group = "{experiment}_{array_job_id}"   # "" leaves arrays ungrouped
/// ```
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamingSection {
    pub template: Option<Template>,
    pub override_user_names: Option<bool>,
    pub array_group: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl FileConfig {
    /// The file at `path`; a missing file is an empty config unless it was
    /// named explicitly.
    pub fn load(path: &std::path::Path, explicit: bool) -> Result<FileConfig, ConfigError> {
        // A named pipe here is refused, not waited on.
        let text = match crate::fs::open_regular(path).and_then(std::io::read_to_string) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(FileConfig::default());
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let config: FileConfig = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        for (name, value) in [
            ("poll", &config.poll),
            ("idle_poll", &config.idle_poll),
            ("grace", &config.grace),
            ("quiescence", &config.quiescence),
        ] {
            if let Some(v) = value {
                humantime::parse_duration(v).map_err(|e| ConfigError::Invalid {
                    path: path.to_path_buf(),
                    message: format!("{name} = {v:?}: {e} (examples: 5s, 2m, 1h)"),
                })?;
            }
        }
        config.naming_rule(None).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: format!("[naming] {e}"),
        })?;
        Ok(config)
    }

    /// The naming rule: `flag_template` (a `--name-template`) over the
    /// `[naming]` table over the defaults.
    pub fn naming_rule(
        &self,
        flag_template: Option<&Template>,
    ) -> Result<NamingRule, crate::naming::TemplateError> {
        let mut rule = NamingRule::default();
        let section = self.naming.clone().unwrap_or_default();
        if let Some(template) = flag_template.cloned().or(section.template) {
            rule.template = template;
        }
        if let Some(override_user_names) = section.override_user_names {
            rule.override_user_names = override_user_names;
        }
        match section.array_group.as_deref() {
            None => {}
            Some("") => rule.array_group = None,
            Some(group) => rule.array_group = Some(Template::parse(group)?),
        }
        Ok(rule)
    }

    pub fn duration(value: &Option<String>) -> Option<std::time::Duration> {
        value
            .as_deref()
            .and_then(|v| humantime::parse_duration(v).ok())
    }
}

/// The naming rule of a command that has no `--config`: the default config
/// file's `[naming]` under `--name-template`. `Err` is for the user.
pub fn naming_rule(
    flag_template: Option<&Template>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<NamingRule, String> {
    let file = FileConfig::load(&config_file(env), false).map_err(|e| e.to_string())?;
    file.naming_rule(flag_template).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_home_follows_xdg() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            config_home(env(&[("XDG_CONFIG_HOME", "/x"), ("HOME", "/h")])),
            Some(PathBuf::from("/x"))
        );
        assert_eq!(
            config_home(env(&[("XDG_CONFIG_HOME", "rel"), ("HOME", "/h")])),
            Some(PathBuf::from("/h/.config"))
        );
        assert_eq!(config_home(env(&[])), None);
    }

    #[test]
    fn config_file_parses_and_rejects_typos() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("config.toml");
        std::fs::write(
            &path,
            "roots = [\"/scratch/*/wandb\"]\npoll = \"3s\"\njobs = 2\n",
        )
        .unwrap();
        let config = FileConfig::load(&path, true).unwrap();
        assert_eq!(config.roots.unwrap(), ["/scratch/*/wandb"]);
        assert_eq!(
            FileConfig::duration(&config.poll),
            Some(std::time::Duration::from_secs(3))
        );
        std::fs::write(&path, "rots = []\n").unwrap();
        assert!(
            FileConfig::load(&path, true)
                .unwrap_err()
                .to_string()
                .contains("rots")
        );
        std::fs::write(&path, "poll = \"soon\"\n").unwrap();
        assert!(
            FileConfig::load(&path, true)
                .unwrap_err()
                .to_string()
                .contains("poll")
        );
        std::fs::write(&path, "[naming]\ntemplate = \"{experimnt}\"\n").unwrap();
        let error = FileConfig::load(&path, true).unwrap_err().to_string();
        assert!(error.contains("experimnt"), "{error}");
        std::fs::write(&path, "[naming]\narray_group = \"{nope}\"\n").unwrap();
        let error = FileConfig::load(&path, true).unwrap_err().to_string();
        assert!(
            error.contains("[naming]") && error.contains("nope"),
            "{error}"
        );
        std::fs::write(
            &path,
            "[naming]\ntemplate = \"{experiment}-{job}\"\noverride_user_names = true\narray_group = \"\"\n",
        )
        .unwrap();
        let rule = FileConfig::load(&path, true)
            .unwrap()
            .naming_rule(None)
            .unwrap();
        assert_eq!(rule.template.to_string(), "{experiment}-{job}");
        assert!(rule.override_user_names && rule.array_group.is_none());
        assert!(FileConfig::load(&tmp.path().join("missing.toml"), false).is_ok());
        assert!(FileConfig::load(&tmp.path().join("missing.toml"), true).is_err());
    }

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
