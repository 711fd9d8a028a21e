//! Settings that come from the environment and the config file: where syncd
//! keeps its state and reads its config, which server it talks to.
//!
//! The XDG base directories of the process come from the `directories`
//! crate ([`ProcessEnv`]); the same rules read from a lookup function serve
//! an environment that is not the process's (a service unit's, a test's).
//! Either way a relative `XDG_*_HOME` is ignored, as the XDG specification
//! says, and a `HOME` that is unset or relative is an error, never a path
//! relative to wherever syncd happens to run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::naming::{NamingRule, Template, TemplateError};

/// The public W&B API, used when `WANDB_BASE_URL` is not set.
pub(crate) const DEFAULT_WANDB_BASE_URL: &str = "https://api.wandb.ai";

/// The environment paths are read from: [`ProcessEnv`], or any lookup
/// function `Fn(&str) -> Option<String>`.
pub(crate) trait Env {
    /// The variable's value; unset and empty are alike.
    fn var(&self, name: &str) -> Option<String>;

    /// This environment's XDG base directories.
    fn base_dirs(&self) -> Result<BaseDirs, DirsError> {
        BaseDirs::from_vars(|name| self.var(name))
    }
}

/// The process's own environment, its base directories found by the
/// `directories` crate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }

    fn base_dirs(&self) -> Result<BaseDirs, DirsError> {
        BaseDirs::from_process()
    }
}

impl<F: Fn(&str) -> Option<String>> Env for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name).filter(|v| !v.is_empty())
    }
}

/// The user's XDG base directories (syncd's own are `syncd/` in them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BaseDirs {
    /// `$XDG_CONFIG_HOME` when absolute, else `$HOME/.config`.
    pub config_home: PathBuf,
    /// `$XDG_STATE_HOME` when absolute, else `$HOME/.local/state`.
    pub state_home: PathBuf,
}

/// Why there are no base directories.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DirsError {
    #[error(
        "HOME is not set, so syncd cannot tell where the files it keeps under your home \
         directory are (its state directory, config file, `.env`): set HOME"
    )]
    NoHome,
    #[error(
        "HOME is {0:?}, not an absolute path, so syncd cannot tell where the files it keeps \
         under your home directory are (its state directory, config file, `.env`): set HOME \
         to your home directory"
    )]
    RelativeHome(String),
}

impl BaseDirs {
    /// The process's, through the `directories` crate.
    pub(crate) fn from_process() -> Result<BaseDirs, DirsError> {
        // `directories` would fall back to the password database for an
        // unset HOME and take a relative one as it is; syncd refuses both,
        // whichever environment it reads.
        check_home(std::env::var_os("HOME").map(PathBuf::from))?;
        let dirs = directories::BaseDirs::new().ok_or(DirsError::NoHome)?;
        Ok(BaseDirs {
            config_home: dirs.config_dir().to_path_buf(),
            state_home: dirs
                .state_dir()
                .map_or_else(|| dirs.home_dir().join(".local/state"), Path::to_path_buf),
        })
    }

    /// The same rules as [`BaseDirs::from_process`], over the variables
    /// `var` looks up.
    pub(crate) fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<BaseDirs, DirsError> {
        let home = check_home(var("HOME").map(PathBuf::from))?;
        let xdg = |name: &str, default: &str| {
            var(name)
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .unwrap_or_else(|| home.join(default))
        };
        Ok(BaseDirs {
            config_home: xdg("XDG_CONFIG_HOME", ".config"),
            state_home: xdg("XDG_STATE_HOME", ".local/state"),
        })
    }
}

/// `$HOME`, which must be set and absolute.
pub(crate) fn home_dir(env: impl Env) -> Result<PathBuf, DirsError> {
    check_home(env.var("HOME").map(PathBuf::from))
}

/// A path from the config file with a leading `~/` (or a lone `~`) taken
/// as `$HOME`; a `~` anywhere else is part of a name.
pub(crate) fn expand_home(path: &str, env: impl Env) -> Result<PathBuf, DirsError> {
    if path == "~" {
        return home_dir(env);
    }
    match path.strip_prefix("~/") {
        Some(rest) => Ok(home_dir(env)?.join(rest)),
        None => Ok(PathBuf::from(path)),
    }
}

fn check_home(home: Option<PathBuf>) -> Result<PathBuf, DirsError> {
    match home {
        None => Err(DirsError::NoHome),
        Some(home) if home.as_os_str().is_empty() => Err(DirsError::NoHome),
        Some(home) if !home.is_absolute() => {
            Err(DirsError::RelativeHome(home.display().to_string()))
        }
        Some(home) => Ok(home),
    }
}

/// `--state-dir`, else `$SYNCD_STATE_DIR`, else `<state home>/syncd`
/// (`~/.local/state/syncd` by default).
pub(crate) fn state_dir(flag: Option<PathBuf>, env: impl Env) -> Result<PathBuf, DirsError> {
    if let Some(dir) = flag {
        return Ok(dir);
    }
    if let Some(dir) = env.var("SYNCD_STATE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    Ok(env.base_dirs()?.state_home.join("syncd"))
}

/// `--base-url`, else `$WANDB_BASE_URL`, else the public API; no trailing `/`.
pub(crate) fn wandb_base_url(flag: Option<String>, env: impl Fn(&str) -> Option<String>) -> String {
    let url = flag.or_else(|| env("WANDB_BASE_URL").filter(|v| !v.is_empty()));
    url.unwrap_or_else(|| DEFAULT_WANDB_BASE_URL.into())
        .trim_end_matches('/')
        .to_string()
}

/// The config home: `$XDG_CONFIG_HOME` when absolute, else `~/.config`.
pub(crate) fn config_home(env: impl Env) -> Result<PathBuf, DirsError> {
    Ok(env.base_dirs()?.config_home)
}

/// `<config home>/syncd/config.toml`.
pub(crate) fn config_file(env: impl Env) -> Result<PathBuf, DirsError> {
    Ok(config_home(env)?.join("syncd/config.toml"))
}

/// The config file's contents. Every field is optional; flags override it,
/// and it overrides the built-in defaults.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub roots: Option<Vec<String>>,
    pub state_dir: Option<PathBuf>,
    pub base_url: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub poll: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub idle_poll: Option<Duration>,
    pub jobs: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub grace: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub quiescence: Option<Duration>,
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
pub(crate) struct NamingSection {
    pub template: Option<Template>,
    pub override_user_names: Option<bool>,
    pub array_group: Option<String>,
}

/// Why the settings cannot be used: said to the user, who fixes them.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("cannot read config file {}: {error}", .path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config file {} is not valid: {message}", .path.display())]
    Invalid { path: PathBuf, message: String },
    #[error(
        "no roots to watch and no {} here: name them (`syncd run $SCRATCH/wandb`), set `roots` in {}, or set SYNCD_ROOTS",
        .default_root.display(),
        .config_file.display()
    )]
    NoRoots {
        default_root: PathBuf,
        config_file: PathBuf,
    },
    #[error(transparent)]
    Naming(#[from] TemplateError),
    #[error(transparent)]
    Dirs(#[from] DirsError),
}

impl FileConfig {
    /// The file at `path`; a missing file is an empty config unless it was
    /// named explicitly.
    pub(crate) fn load(path: &std::path::Path, explicit: bool) -> Result<FileConfig, ConfigError> {
        // A named pipe here is refused, not waited on.
        let text = match crate::fs::open_regular(path).and_then(std::io::read_to_string) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(FileConfig::default());
            }
            Err(error) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    error,
                });
            }
        };
        let config: FileConfig = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.naming_rule(None).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: format!("[naming] {e}"),
        })?;
        Ok(config)
    }

    /// The naming rule: `flag_template` (a `--name-template`) over the
    /// `[naming]` table over the defaults.
    pub(crate) fn naming_rule(
        &self,
        flag_template: Option<&Template>,
    ) -> Result<NamingRule, TemplateError> {
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
}

/// The naming rule of a command that has no `--config`: the default config
/// file's `[naming]` under `--name-template`.
pub(crate) fn naming_rule(
    flag_template: Option<&Template>,
    env: impl Env,
) -> Result<NamingRule, ConfigError> {
    let file = FileConfig::load(&config_file(env)?, false)?;
    Ok(file.naming_rule(flag_template)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(
        pairs: &'static [(&'static str, &'static str)],
    ) -> impl Fn(&str) -> Option<String> + Copy {
        move |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn config_home_follows_xdg() {
        assert_eq!(
            config_home(env(&[("XDG_CONFIG_HOME", "/x"), ("HOME", "/h")])),
            Ok(PathBuf::from("/x"))
        );
        // A relative XDG_CONFIG_HOME does not count.
        assert_eq!(
            config_home(env(&[("XDG_CONFIG_HOME", "rel"), ("HOME", "/h")])),
            Ok(PathBuf::from("/h/.config"))
        );
        assert_eq!(
            config_file(env(&[("HOME", "/h")])),
            Ok(PathBuf::from("/h/.config/syncd/config.toml"))
        );
    }

    #[test]
    fn an_unset_or_relative_home_is_an_error_not_a_relative_path() {
        for vars in [&[][..], &[("HOME", "")], &[("XDG_CONFIG_HOME", "/x")]] {
            assert_eq!(config_file(env(vars)), Err(DirsError::NoHome), "{vars:?}");
            let err = state_dir(None, env(vars)).unwrap_err();
            assert_eq!(err, DirsError::NoHome);
            assert!(err.to_string().contains("HOME is not set"), "{err}");
        }
        let err = state_dir(None, env(&[("HOME", "home/u")])).unwrap_err();
        assert_eq!(err, DirsError::RelativeHome("home/u".into()));
        // Named directories need no home.
        assert_eq!(
            state_dir(None, env(&[("SYNCD_STATE_DIR", "/s")])),
            Ok(PathBuf::from("/s"))
        );
        assert_eq!(
            state_dir(Some("/f".into()), env(&[])),
            Ok(PathBuf::from("/f"))
        );
    }

    /// The base directories a child process (this test binary, run again
    /// with `vars` as its whole environment) finds through `directories`
    /// ([`ProcessEnv`]) and through [`BaseDirs::from_vars`] over the same
    /// environment, as `Debug` text.
    fn base_dirs_in_child(vars: &[(&str, &str)]) -> (String, String) {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "config::tests::print_base_dirs",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env_clear()
            .env("SYNCD_PRINT_BASE_DIRS", "1")
            .envs(vars.iter().copied())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}");
        let line = |tag: &str| {
            stdout
                .lines()
                // The harness may print the test's name on the same line.
                .find_map(|l| Some(l.split_once(tag)?.1))
                .unwrap_or_else(|| panic!("no {tag} in {stdout}"))
                .to_string()
        };
        (line("process: "), line("vars: "))
    }

    /// Run by [`base_dirs_in_child`]; does nothing when run on its own.
    #[test]
    #[ignore = "a child process of the_process_dirs_come_from_directories_with_the_same_rules"]
    fn print_base_dirs() {
        if std::env::var_os("SYNCD_PRINT_BASE_DIRS").is_none() {
            return;
        }
        println!("process: {:?}", ProcessEnv.base_dirs());
        let vars = |k: &str| std::env::var(k).ok();
        println!("vars: {:?}", vars.base_dirs());
    }

    #[test]
    fn the_process_dirs_come_from_directories_with_the_same_rules() {
        let dirs = |config: &str, state: &str| {
            format!(
                "{:?}",
                Ok::<_, DirsError>(BaseDirs {
                    config_home: config.into(),
                    state_home: state.into(),
                })
            )
        };
        for (vars, expected) in [
            (&[("HOME", "/h")][..], dirs("/h/.config", "/h/.local/state")),
            (
                &[
                    ("HOME", "/h"),
                    ("XDG_CONFIG_HOME", "/c"),
                    ("XDG_STATE_HOME", "/s"),
                ],
                dirs("/c", "/s"),
            ),
            // Relative XDG directories do not count.
            (
                &[
                    ("HOME", "/h"),
                    ("XDG_CONFIG_HOME", "c"),
                    ("XDG_STATE_HOME", "./s"),
                ],
                dirs("/h/.config", "/h/.local/state"),
            ),
            // No HOME: an error, though the password database has one.
            (
                &[("XDG_STATE_HOME", "/s")],
                format!("{:?}", Err::<BaseDirs, _>(DirsError::NoHome)),
            ),
            (
                &[("HOME", "h")],
                format!(
                    "{:?}",
                    Err::<BaseDirs, _>(DirsError::RelativeHome("h".into()))
                ),
            ),
        ] {
            let (process, from_vars) = base_dirs_in_child(vars);
            assert_eq!(process, expected, "{vars:?}");
            assert_eq!(from_vars, expected, "{vars:?}");
        }
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
        assert_eq!(config.poll, Some(Duration::from_secs(3)));
        std::fs::write(&path, "rots = []\n").unwrap();
        assert!(
            FileConfig::load(&path, true)
                .unwrap_err()
                .to_string()
                .contains("rots")
        );
        std::fs::write(&path, "poll = \"soon\"\n").unwrap();
        let error = FileConfig::load(&path, true).unwrap_err().to_string();
        assert!(error.contains("poll") && error.contains("soon"), "{error}");
        std::fs::write(&path, "idle_poll = \"2m\"\nquiescence = \"1h 30m\"\n").unwrap();
        let config = FileConfig::load(&path, true).unwrap();
        assert_eq!(config.idle_poll, Some(Duration::from_secs(120)));
        assert_eq!(config.quiescence, Some(Duration::from_secs(5400)));
        assert_eq!(config.grace, None);
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
    fn only_a_leading_tilde_is_the_home_directory() {
        let env = |k: &str| (k == "HOME").then(|| "/home/u".to_string());
        for (path, expanded) in [
            ("~/osh", "/home/u/osh"),
            ("~", "/home/u"),
            ("/scratch/~/osh", "/scratch/~/osh"),
            ("/scratch/a~b", "/scratch/a~b"),
            ("~other/osh", "~other/osh"),
            ("osh~", "osh~"),
        ] {
            assert_eq!(
                expand_home(path, env).unwrap(),
                PathBuf::from(expanded),
                "{path}"
            );
        }
        // No home: an error for `~/`, never a path relative to the
        // working directory; other paths need none.
        let no_home = |_: &str| None;
        assert_eq!(expand_home("~/osh", no_home), Err(DirsError::NoHome));
        assert_eq!(
            expand_home("/abs/osh", no_home).unwrap(),
            PathBuf::from("/abs/osh")
        );
        let relative = |k: &str| (k == "HOME").then(|| "home/u".to_string());
        assert!(expand_home("~/osh", relative).is_err());
    }

    #[test]
    fn state_dir_precedence() {
        assert_eq!(
            state_dir(Some("/f".into()), env(&[("SYNCD_STATE_DIR", "/s")])),
            Ok(PathBuf::from("/f"))
        );
        assert_eq!(
            state_dir(
                None,
                env(&[("SYNCD_STATE_DIR", "/s"), ("XDG_STATE_HOME", "/x")])
            ),
            Ok(PathBuf::from("/s"))
        );
        assert_eq!(
            state_dir(None, env(&[("XDG_STATE_HOME", "/x"), ("HOME", "/h")])),
            Ok(PathBuf::from("/x/syncd"))
        );
        // A relative XDG_STATE_HOME does not count.
        assert_eq!(
            state_dir(None, env(&[("XDG_STATE_HOME", "x"), ("HOME", "/h")])),
            Ok(PathBuf::from("/h/.local/state/syncd"))
        );
        assert_eq!(
            state_dir(None, env(&[("HOME", "/h")])),
            Ok(PathBuf::from("/h/.local/state/syncd"))
        );
        assert_eq!(
            wandb_base_url(None, env(&[("WANDB_BASE_URL", "http://x:1/")])),
            "http://x:1"
        );
        assert_eq!(wandb_base_url(None, env(&[])), DEFAULT_WANDB_BASE_URL);
    }
}
