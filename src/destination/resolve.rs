//! Which server, key, entity and project a run is uploaded with.
//!
//! # Where each setting comes from
//!
//! `WANDB_BASE_URL`, `WANDB_API_KEY`, `WANDB_ENTITY` and `WANDB_PROJECT` are
//! looked up, each on its own, in these layers, nearest first:
//!
//! 1. the `.env` files from the run directory up to the watched root
//!    ([`crate::project::search_dirs`]), nearest first: a project's `.env` beats its
//!    parent's;
//! 2. the user's own file, `$XDG_CONFIG_HOME/syncd/.env`;
//! 3. the environment (the lookup function the caller passes: that is where
//!    a `--base-url` flag or config file setting goes);
//! 4. for the key only, the netrc entry of the server's host (`$NETRC`, else
//!    `~/.netrc`), as [`netrc`] reads it.
//!
//! A blank value counts as unset. The server is the nearest layer's
//! `WANDB_BASE_URL` (default `https://api.wandb.ai`).
//!
//! **A key is only sent to the server it was written next to.** Each layer
//! sees the server named by itself or, failing that, by the layers after it;
//! a key is used only from a layer that sees the run's server. So a project
//! `.env` that names a private server without a key never gets the user's
//! key for the public one: the key must be in that `.env` (or one that
//! names the same server), or in netrc under that server's host.
//!
//! # Safety of the files
//!
//! A `.env` is refused, and the run with it, unless it is owned by the user
//! and has no permission bits for group or others (`chmod 600`), as ssh
//! refuses a private key. Files are parsed with dotenvy's iterator over the
//! bytes of the file already opened and checked (no window between the
//! check and the read); nothing is put in the process environment, so no
//! child process inherits a key.
//!
//! # Redaction
//!
//! [`ApiKey`] prints as `[redacted]` (`Debug` and `Display`) and has no
//! `Serialize`; [`Destination`], [`Origin`] and [`DestinationError`] never hold key
//! text in what they print: a line of a `.env` that fails to parse is named
//! by its number, not shown.

use std::collections::HashMap;
use std::fmt;
use std::io::Read as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::key::ApiKey;
use super::netrc;
use crate::config::DEFAULT_WANDB_BASE_URL;

/// The file name looked for in each directory.
pub(crate) const DOTENV_FILE: &str = ".env";

/// The variables a `.env` can set for syncd; others in it are ignored.
pub(crate) const VARS: [&str; 4] = [
    "WANDB_API_KEY",
    "WANDB_BASE_URL",
    "WANDB_ENTITY",
    "WANDB_PROJECT",
];

/// A `.env` larger than this is refused as not one.
const MAX_DOTENV_BYTES: u64 = 1024 * 1024;

/// Where a setting came from. Prints as a path or a phrase, never a value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", content = "path", rename_all = "lowercase")]
pub(crate) enum Origin {
    /// A `.env` file: in the run's tree, or the user's own.
    DotEnv(#[serde(with = "crate::paths::serde_path")] PathBuf),
    /// The environment syncd was given.
    Environment,
    /// A netrc file.
    Netrc(#[serde(with = "crate::paths::serde_path")] PathBuf),
    /// syncd's built-in default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::DotEnv(path) | Origin::Netrc(path) => write!(f, "{}", path.display()),
            Origin::Environment => f.write_str("the environment"),
            Origin::Default => f.write_str("the default"),
        }
    }
}

/// Where each of a [`Destination`]'s settings came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Origins {
    pub base_url: Origin,
    pub api_key: Origin,
    pub entity: Option<Origin>,
    pub project: Option<Origin>,
}

/// Where a run goes: the server, the key for it, and the entity and project
/// to use when the run names none of its own. `Debug` and `Display` show no
/// key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Destination {
    /// Without a trailing `/`.
    pub base_url: String,
    pub api_key: ApiKey,
    pub entity: Option<String>,
    pub project: Option<String>,
    pub origins: Origins,
    /// Every `.env` read, nearest first (whether or not it set anything):
    /// what a cache of targets must watch.
    pub files: Vec<PathBuf>,
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.base_url)?;
        match (&self.entity, &self.project) {
            (Some(e), Some(p)) => write!(f, " {e}/{p}")?,
            (Some(e), None) => write!(f, " entity {e}")?,
            (None, Some(p)) => write!(f, " project {p}")?,
            (None, None) => {}
        }
        write!(
            f,
            " (key {} from {})",
            self.api_key.fingerprint(),
            self.origins.api_key
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum DestinationError {
    #[error(
        "refusing {path}: it is {access} (mode {mode:04o}) and may hold an API key; make it private with `chmod 600 {path}`"
    )]
    Exposed {
        path: PathBuf,
        mode: u32,
        /// "readable by group", "writable by others", …
        access: String,
    },
    #[error(
        "refusing {path}: it is owned by uid {owner}, not by you (uid {uid}), so someone else decides where your runs and your key go; remove it, or copy it to a file of your own with `chmod 600`"
    )]
    NotOwned { path: PathBuf, owner: u32, uid: u32 },
    #[error("refusing {path}: not a regular file")]
    NotAFile { path: PathBuf },
    /// The cause is in the text (this error is shown with `to_string`) and
    /// so is not also its `source()`.
    #[error("cannot read {}: {error}", .path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot parse {path}{}: {reason} (the line is not shown: it may hold a key)", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Parse {
        path: PathBuf,
        line: Option<usize>,
        reason: String,
    },
    #[error("WANDB_BASE_URL from {origin} is not an http:// or https:// URL")]
    BadBaseUrl { origin: Origin },
    #[error(transparent)]
    MissingKey(Box<MissingKey>),
    /// The settings were fine but no HTTP client could be made for them.
    #[error(transparent)]
    Client(#[from] crate::sink::wandb::client::SinkError),
}

/// No key for the run's server anywhere it may come from.
#[derive(Debug, thiserror::Error)]
#[error(
    "no W&B API key for {host} (the server from {server_origin}): add WANDB_API_KEY to {suggest} (private: `chmod 600`){}, set it in the environment, or add `machine {host} login user password <key>` to {netrc}{}",
    also_note(suggest, user_file),
    skipped_note(skipped)
)]
pub(crate) struct MissingKey {
    pub host: String,
    pub server_origin: Origin,
    /// Where a key would be picked up first: the nearest `.env`, else the
    /// one beside the run's `wandb/` directory (the project's).
    pub suggest: PathBuf,
    /// The user's own `.env`, for every project.
    pub user_file: PathBuf,
    pub netrc: String,
    /// Layers that hold a key for another server.
    pub skipped: Vec<Origin>,
}

fn also_note(suggest: &Path, user_file: &Path) -> String {
    if suggest == user_file {
        String::new()
    } else {
        format!(" or, for all your projects, to {}", user_file.display())
    }
}

fn skipped_note(skipped: &[Origin]) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let list: Vec<String> = skipped.iter().map(Origin::to_string).collect();
    format!(
        " (the key in {} is for another server and is not sent to this one)",
        list.join(", ")
    )
}

/// One layer of settings: a `.env` or the environment.
struct Layer {
    origin: Origin,
    vars: HashMap<String, String>,
}

impl Layer {
    fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }
}

/// The directory holding the run's `wandb/` directory (the quick start's
/// project directory, where its `.env` goes), else the farthest directory
/// searched.
fn project_dir(run_dir: &Path, root: &Path) -> PathBuf {
    let dirs = crate::project::search_dirs(run_dir, root);
    dirs.iter()
        .find(|d| d.file_name().is_some_and(|n| n == "wandb"))
        .and_then(|d| d.parent())
        .map(Path::to_path_buf)
        .or_else(|| dirs.last().cloned())
        .unwrap_or_else(|| run_dir.to_path_buf())
}

/// The target of the run in `run_dir`, watched under `root`; see the module
/// documentation for the order. `user_env_file` is the user's own `.env`
/// (`$XDG_CONFIG_HOME/syncd/.env`, [`user_env_file`]); `env` looks up the
/// environment (and `HOME`/`NETRC` for netrc); `uid` is whom the `.env`
/// files must belong to ([`crate::process::current_uid`]).
pub(crate) fn resolve_destination(
    run_dir: &Path,
    root: &Path,
    user_env_file: &Path,
    env: impl Fn(&str) -> Option<String>,
    uid: u32,
) -> Result<Destination, DestinationError> {
    let mut layers = Vec::new();
    let mut files = Vec::new();
    let dotenvs = crate::project::search_dirs(run_dir, root)
        .into_iter()
        .map(|dir| dir.join(DOTENV_FILE))
        .chain(std::iter::once(user_env_file.to_path_buf()));
    for path in dotenvs {
        if let Some(vars) = load_dotenv(&path, uid)? {
            files.push(path.clone());
            layers.push(Layer {
                origin: Origin::DotEnv(path),
                vars,
            });
        }
    }
    let nonblank = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    layers.push(Layer {
        origin: Origin::Environment,
        vars: VARS
            .iter()
            .filter_map(|name| Some((name.to_string(), nonblank(name)?.trim().to_string())))
            .collect(),
    });

    // The server each layer sees: its own, else the next layers'.
    let mut views = vec![None; layers.len()];
    let mut seen: Option<(String, &Origin)> = None;
    for (i, layer) in layers.iter().enumerate().rev() {
        if let Some(url) = layer.get("WANDB_BASE_URL") {
            seen = Some((normalize_url(url), &layer.origin));
        }
        views[i] = seen.clone();
    }
    let (base_url, base_origin) = match &views[0] {
        Some((url, origin)) => (url.clone(), (*origin).clone()),
        None => (DEFAULT_WANDB_BASE_URL.to_string(), Origin::Default),
    };
    if !(base_url.starts_with("https://") || base_url.starts_with("http://"))
        || base_url.len() <= "https://".len()
    {
        return Err(DestinationError::BadBaseUrl {
            origin: base_origin,
        });
    }
    let sees_server = |i: usize| {
        views[i]
            .as_ref()
            .map_or(DEFAULT_WANDB_BASE_URL, |(url, _)| url.as_str())
            == base_url
    };

    // The nearest `.env` key that is for this server, then the
    // environment's (only if it is for this server too), then netrc.
    let mut skipped = Vec::new();
    let mut api_key = None;
    for (i, layer) in layers.iter().enumerate() {
        if let Some(key) = layer.get("WANDB_API_KEY") {
            if sees_server(i) {
                api_key = Some((ApiKey::new(key), layer.origin.clone()));
                break;
            }
            skipped.push(layer.origin.clone());
        }
    }
    let (api_key, key_origin) = match api_key {
        Some(found) => found,
        None => {
            let host = netrc::host_of(&base_url);
            let netrc_file = netrc::path(&env);
            match netrc_file
                .as_deref()
                .and_then(|path| Some((netrc::key_for(path, &host)?, path)))
            {
                Some((key, path)) => (key, Origin::Netrc(path.to_path_buf())),
                None => {
                    return Err(DestinationError::MissingKey(Box::new(MissingKey {
                        host,
                        server_origin: base_origin,
                        suggest: files
                            .first()
                            .filter(|f| f.as_path() != user_env_file)
                            .cloned()
                            .unwrap_or_else(|| project_dir(run_dir, root).join(DOTENV_FILE)),
                        user_file: user_env_file.to_path_buf(),
                        netrc: netrc_file
                            .map_or_else(|| "~/.netrc".into(), |p| p.display().to_string()),
                        skipped,
                    })));
                }
            }
        }
    };
    let first = |name: &str| {
        layers
            .iter()
            .find_map(|l| Some((l.get(name)?.to_string(), l.origin.clone())))
    };
    let (entity, entity_origin) = first("WANDB_ENTITY").unzip();
    let (project, project_origin) = first("WANDB_PROJECT").unzip();
    Ok(Destination {
        base_url,
        api_key,
        entity,
        project,
        origins: Origins {
            base_url: base_origin,
            api_key: key_origin,
            entity: entity_origin,
            project: project_origin,
        },
        files,
    })
}

/// The user's own `.env`: `$XDG_CONFIG_HOME/syncd/.env`, else
/// `~/.config/syncd/.env` (next to [`crate::config::config_file`]).
pub(crate) fn user_env_file(
    env: impl crate::config::Env,
) -> Result<PathBuf, crate::config::DirsError> {
    Ok(crate::config::config_file(env)?.with_file_name(DOTENV_FILE))
}

fn normalize_url(url: &str) -> String {
    url.trim().trim_end_matches('/').to_string()
}

/// The syncd variables a `.env` sets (blank ones left out; the first
/// assignment of a name wins, as dotenvy's loader has it), or `None` if
/// there is no file. Refuses a file that is not the user's or that group or
/// others may read or write.
pub(crate) fn load_dotenv(
    path: &Path,
    uid: u32,
) -> Result<Option<HashMap<String, String>>, DestinationError> {
    // Never blocks: a named pipe or device here is refused, not waited on.
    let file = match crate::fs::open_regular(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if crate::fs::refusal(&e).is_some() => {
            return Err(DestinationError::NotAFile { path: path.into() });
        }
        Err(error) => {
            return Err(DestinationError::Read {
                path: path.into(),
                error,
            });
        }
    };
    // Checked on the open file: what is read is what was checked.
    let meta = file.metadata().map_err(|error| DestinationError::Read {
        path: path.into(),
        error,
    })?;
    if !meta.is_file() {
        return Err(DestinationError::NotAFile { path: path.into() });
    }
    if meta.uid() != uid {
        return Err(DestinationError::NotOwned {
            path: path.into(),
            owner: meta.uid(),
            uid,
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(DestinationError::Exposed {
            path: path.into(),
            mode,
            access: describe_access(mode),
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_DOTENV_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| DestinationError::Read {
            path: path.into(),
            error,
        })?;
    if bytes.len() as u64 > MAX_DOTENV_BYTES {
        return Err(DestinationError::Parse {
            path: path.into(),
            line: None,
            reason: format!("larger than {MAX_DOTENV_BYTES} bytes"),
        });
    }
    let text = String::from_utf8(bytes).map_err(|_| DestinationError::Parse {
        path: path.into(),
        line: None,
        reason: "not UTF-8".into(),
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut vars = HashMap::new();
    for item in dotenvy::from_read_iter(text.as_bytes()) {
        match item {
            Ok((name, value)) => {
                if VARS.contains(&name.as_str()) && !value.trim().is_empty() {
                    vars.entry(name).or_insert_with(|| value.trim().to_string());
                }
            }
            Err(dotenvy::Error::LineParse(line, _)) => {
                return Err(DestinationError::Parse {
                    path: path.into(),
                    line: line_number(text, &line),
                    reason: "not `NAME=value`".into(),
                });
            }
            Err(dotenvy::Error::Io(error)) => {
                return Err(DestinationError::Read {
                    path: path.into(),
                    error,
                });
            }
            // Never seen while iterating; its text has no value in it.
            Err(other) => {
                return Err(DestinationError::Parse {
                    path: path.into(),
                    line: None,
                    reason: other.to_string(),
                });
            }
        }
    }
    Ok(Some(vars))
}

/// "readable by group and others", "writable by others", …
fn describe_access(mode: u32) -> String {
    let who = |shift: u32| {
        let bits = (mode >> shift) & 0o7;
        let mut can = Vec::new();
        if bits & 0o4 != 0 {
            can.push("readable");
        }
        if bits & 0o2 != 0 {
            can.push("writable");
        }
        if bits & 0o1 != 0 {
            can.push("executable");
        }
        can.join(" and ")
    };
    let (group, others) = (who(3), who(0));
    match (group.is_empty(), others.is_empty()) {
        (false, true) => format!("{group} by group"),
        (true, false) => format!("{others} by others"),
        _ if group == others => format!("{group} by group and others"),
        _ => format!("{group} by group and {others} by others"),
    }
}

/// The 1-based line of `text` where the logical line `line` (as dotenvy
/// reports it) starts, if it can be found.
fn line_number(text: &str, line: &str) -> Option<usize> {
    let needle = line.trim();
    if needle.is_empty() {
        return None;
    }
    let at = text.find(needle)?;
    Some(text[..at].matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destination::key::REDACTED;

    const KEY: &str = "0123456789abcdef0123456789abcdef01234567";
    const KEY2: &str = "fedcba9876543210fedcba9876543210fedcba98";

    struct Tree {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        run: PathBuf,
        user_file: PathBuf,
    }

    /// `<tmp>/above/root/proj/job/wandb/offline-run-x`, root at `root`.
    fn tree() -> Tree {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("above/root");
        let run = root.join("proj/job/wandb/offline-run-x");
        std::fs::create_dir_all(&run).unwrap();
        let user_file = tmp.path().join("config/syncd/.env");
        std::fs::create_dir_all(user_file.parent().unwrap()).unwrap();
        Tree {
            _tmp: tmp,
            root,
            run,
            user_file,
        }
    }

    fn write(path: &Path, text: &str, mode: u32) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn env_of(pairs: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    }

    fn resolve(
        t: &Tree,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Destination, DestinationError> {
        resolve_destination(
            &t.run,
            &t.root,
            &t.user_file,
            env,
            crate::process::current_uid(),
        )
    }

    fn assert_no_key(text: &str) {
        for key in [KEY, KEY2] {
            assert!(!text.contains(key), "key leaked: {text}");
            assert!(!text.contains(&key[..16]), "key leaked: {text}");
        }
    }

    #[test]
    fn nearest_dotenv_wins_each_setting() {
        let t = tree();
        let proj = t.root.join("proj");
        write(
            &t.root.join(".env"),
            &format!("WANDB_API_KEY={KEY2}\nWANDB_ENTITY=lab\nWANDB_PROJECT=shared\n"),
            0o600,
        );
        write(
            &proj.join(".env"),
            &format!(
                "# project\nexport WANDB_API_KEY=\"{KEY}\"\nWANDB_PROJECT='vision'\nOTHER=1\n"
            ),
            0o600,
        );
        let target = resolve(&t, no_env).unwrap();
        assert_eq!(target.api_key.expose(), KEY);
        assert_eq!(target.base_url, DEFAULT_WANDB_BASE_URL);
        assert_eq!(target.entity.as_deref(), Some("lab"));
        assert_eq!(target.project.as_deref(), Some("vision"));
        assert_eq!(
            target.origins,
            Origins {
                base_url: Origin::Default,
                api_key: Origin::DotEnv(proj.join(".env")),
                entity: Some(Origin::DotEnv(t.root.join(".env"))),
                project: Some(Origin::DotEnv(proj.join(".env"))),
            }
        );
        assert_eq!(target.files, [proj.join(".env"), t.root.join(".env")]);
        // The run directory's own `.env` is nearest of all.
        write(&t.run.join(".env"), "WANDB_ENTITY=me\n", 0o600);
        let target = resolve(&t, no_env).unwrap();
        assert_eq!(target.entity.as_deref(), Some("me"));
        assert_eq!(target.api_key.expose(), KEY);
    }

    #[test]
    fn different_projects_go_to_different_servers() {
        let t = tree();
        let a = t.root.join("a/wandb/offline-run-1");
        let b = t.root.join("b/wandb/offline-run-2");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        write(
            &t.root.join("a/.env"),
            &format!(
                "WANDB_BASE_URL=https://wandb.lab.example/\nWANDB_API_KEY={KEY}\nWANDB_ENTITY=lab\n"
            ),
            0o600,
        );
        write(
            &t.root.join("b/.env"),
            &format!("WANDB_API_KEY={KEY2}\nWANDB_ENTITY=personal\n"),
            0o600,
        );
        let uid = crate::process::current_uid();
        let ta = resolve_destination(&a, &t.root, &t.user_file, no_env, uid).unwrap();
        let tb = resolve_destination(&b, &t.root, &t.user_file, no_env, uid).unwrap();
        assert_eq!(ta.base_url, "https://wandb.lab.example");
        assert_eq!(
            (ta.api_key.expose(), ta.entity.as_deref()),
            (KEY, Some("lab"))
        );
        assert_eq!(tb.base_url, DEFAULT_WANDB_BASE_URL);
        assert_eq!(
            (tb.api_key.expose(), tb.entity.as_deref()),
            (KEY2, Some("personal"))
        );
    }

    #[test]
    fn the_search_stops_at_the_root() {
        let t = tree();
        // Above the root: neither read nor checked (its mode would be refused).
        write(
            &t.root.parent().unwrap().join(".env"),
            &format!("WANDB_API_KEY={KEY2}\n"),
            0o644,
        );
        let env = env_of(vec![("WANDB_API_KEY", KEY.into())]);
        let target = resolve(&t, env).unwrap();
        assert_eq!(target.api_key.expose(), KEY);
        assert_eq!(target.origins.api_key, Origin::Environment);
        assert!(target.files.is_empty());
    }

    #[test]
    fn the_users_own_file_comes_after_the_tree() {
        let t = tree();
        write(
            &t.user_file,
            &format!("WANDB_API_KEY={KEY2}\nWANDB_ENTITY=me\n"),
            0o600,
        );
        let env = env_of(vec![
            ("WANDB_API_KEY", KEY.into()),
            ("WANDB_ENTITY", "env".into()),
        ]);
        let target = resolve(&t, &env).unwrap();
        assert_eq!(target.api_key.expose(), KEY2);
        assert_eq!(target.origins.api_key, Origin::DotEnv(t.user_file.clone()));
        assert_eq!(target.entity.as_deref(), Some("me"));
        write(&t.root.join(".env"), "WANDB_ENTITY=tree\n", 0o600);
        let target = resolve(&t, &env).unwrap();
        assert_eq!(target.entity.as_deref(), Some("tree"));
        assert_eq!(target.api_key.expose(), KEY2);
        assert_eq!(
            user_env_file(env_of(vec![
                ("XDG_CONFIG_HOME", "/x".into()),
                ("HOME", "/home/u".into())
            ]))
            .unwrap(),
            Path::new("/x/syncd/.env")
        );
        assert_eq!(
            user_env_file(env_of(vec![("HOME", "/home/u".into())])).unwrap(),
            Path::new("/home/u/.config/syncd/.env")
        );
    }

    #[test]
    fn environment_then_netrc() {
        let t = tree();
        let env = env_of(vec![
            ("WANDB_API_KEY", format!(" {KEY} ")),
            ("WANDB_PROJECT", "p".into()),
        ]);
        let target = resolve(&t, env).unwrap();
        assert_eq!(target.api_key.expose(), KEY);
        assert_eq!(target.project.as_deref(), Some("p"));
        assert_eq!(target.origins.project, Some(Origin::Environment));

        let netrc = t.root.parent().unwrap().join("netrc");
        std::fs::write(
            &netrc,
            format!("machine api.wandb.ai login user password {KEY2}\n"),
        )
        .unwrap();
        let env = env_of(vec![
            ("NETRC", netrc.display().to_string()),
            ("WANDB_API_KEY", "  ".into()),
        ]);
        let target = resolve(&t, env).unwrap();
        assert_eq!(target.api_key.expose(), KEY2);
        assert_eq!(target.origins.api_key, Origin::Netrc(netrc));

        let err = resolve(&t, no_env).unwrap_err();
        assert!(matches!(err, DestinationError::MissingKey(_)));
        let text = err.to_string();
        assert!(
            text.contains("api.wandb.ai") && text.contains(&t.user_file.display().to_string()),
            "{text}"
        );
    }

    #[test]
    fn a_key_goes_only_to_its_own_server() {
        let t = tree();
        // The project names a private server but holds no key; the
        // environment's key is for the public one.
        write(
            &t.root.join("proj/.env"),
            "WANDB_BASE_URL=https://wandb.lab.example\n",
            0o600,
        );
        write(&t.user_file, &format!("WANDB_API_KEY={KEY2}\n"), 0o600);
        let env = env_of(vec![("WANDB_API_KEY", KEY.into())]);
        let err = resolve(&t, &env).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("wandb.lab.example"), "{text}");
        assert!(
            text.contains("for another server") && text.contains("the environment"),
            "{text}"
        );
        assert!(
            text.contains(&t.root.join("proj/.env").display().to_string()),
            "{text}"
        );
        assert_no_key(&text);
        assert_no_key(&format!("{err:?}"));
        // netrc under the private host is fine.
        let netrc = t.root.parent().unwrap().join("netrc");
        std::fs::write(
            &netrc,
            format!("machine wandb.lab.example password {KEY}\n"),
        )
        .unwrap();
        let env = env_of(vec![
            ("WANDB_API_KEY", KEY2.into()),
            ("NETRC", netrc.display().to_string()),
        ]);
        let target = resolve(&t, env).unwrap();
        assert_eq!(target.api_key.expose(), KEY);
        assert_eq!(target.origins.api_key, Origin::Netrc(netrc));
        // A key further out that names the same server is used.
        write(
            &t.user_file,
            &format!("WANDB_BASE_URL=https://wandb.lab.example/\nWANDB_API_KEY={KEY2}\n"),
            0o600,
        );
        let target = resolve(&t, no_env).unwrap();
        assert_eq!(target.api_key.expose(), KEY2);
        assert_eq!(
            target.origins.base_url,
            Origin::DotEnv(t.root.join("proj/.env"))
        );
        // A key nearer than the server's `.env` sees that server.
        write(
            &t.run.join(".env"),
            &format!("WANDB_API_KEY={KEY}\n"),
            0o600,
        );
        let target = resolve(&t, no_env).unwrap();
        assert_eq!(target.api_key.expose(), KEY);
    }

    #[test]
    fn readable_by_others_is_refused_with_the_fix() {
        let t = tree();
        let path = t.root.join("proj/.env");
        for (mode, access) in [
            (0o644, "readable by group and others"),
            (0o640, "readable by group"),
            (0o604, "readable by others"),
            (0o602, "writable by others"),
            (0o660, "readable and writable by group"),
        ] {
            write(&path, &format!("WANDB_API_KEY={KEY}\n"), mode);
            let err = resolve(&t, no_env).unwrap_err();
            assert!(matches!(err, DestinationError::Exposed { .. }), "{err:?}");
            let text = err.to_string();
            assert!(
                text.contains(&format!("chmod 600 {}", path.display())),
                "{text}"
            );
            assert!(
                text.contains(access) && text.contains(&format!("{mode:04o}")),
                "{text}"
            );
            assert_no_key(&text);
        }
        write(&path, &format!("WANDB_API_KEY={KEY}\n"), 0o400);
        assert_eq!(resolve(&t, no_env).unwrap().api_key.expose(), KEY);
        // The user's own file is held to the same rule.
        std::fs::remove_file(&path).unwrap();
        write(&t.user_file, &format!("WANDB_API_KEY={KEY}\n"), 0o644);
        let text = resolve(&t, no_env).unwrap_err().to_string();
        assert!(text.contains("chmod 600"), "{text}");
    }

    #[test]
    fn someone_elses_file_is_refused() {
        let t = tree();
        write(
            &t.root.join(".env"),
            &format!("WANDB_API_KEY={KEY}\n"),
            0o600,
        );
        let me = crate::process::current_uid();
        let other = me.wrapping_add(1);
        let err = resolve_destination(&t.run, &t.root, &t.user_file, no_env, other).unwrap_err();
        match &err {
            DestinationError::NotOwned { owner, uid, .. } => {
                assert_eq!((*owner, *uid), (me, other))
            }
            e => panic!("{e:?}"),
        }
        let text = err.to_string();
        assert!(
            text.contains("not by you") && text.contains(".env"),
            "{text}"
        );
        assert_no_key(&text);
    }

    #[test]
    fn a_directory_named_dotenv_is_refused() {
        let t = tree();
        std::fs::create_dir(t.root.join(".env")).unwrap();
        let err = resolve(&t, no_env).unwrap_err();
        assert!(matches!(err, DestinationError::NotAFile { .. }), "{err:?}");
    }

    #[test]
    fn a_named_pipe_named_dotenv_is_refused_without_waiting() {
        let t = tree();
        let pipe = t.root.join(".env");
        let made = std::process::Command::new("mkfifo")
            .arg(&pipe)
            .status()
            .unwrap();
        assert!(made.success());
        let err = resolve(&t, no_env).unwrap_err();
        assert!(
            matches!(&err, DestinationError::NotAFile { path } if *path == pipe),
            "{err:?}"
        );
    }

    #[test]
    fn parse_errors_name_the_line_not_its_text() {
        let t = tree();
        let path = t.root.join(".env");
        write(
            &path,
            &format!("WANDB_ENTITY=lab\n\nWANDB_API_KEY {KEY}\n"),
            0o600,
        );
        let err = resolve(&t, no_env).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, DestinationError::Parse { line: Some(3), .. }),
            "{err:?}"
        );
        assert!(text.contains("line 3") && text.contains(".env"), "{text}");
        assert_no_key(&text);
        assert_no_key(&format!("{err:?}"));
        write(&path, &format!("WANDB_API_KEY='{KEY}\n"), 0o600);
        let err = resolve(&t, no_env).unwrap_err();
        assert_no_key(&err.to_string());
        assert_no_key(&format!("{err:?}"));
        std::fs::write(&path, b"WANDB_ENTITY=\xff\n").unwrap();
        let text = resolve(&t, no_env).unwrap_err().to_string();
        assert!(text.contains("not UTF-8"), "{text}");
    }

    #[test]
    fn dotenv_syntax() {
        let t = tree();
        let path = t.root.join(".env");
        write(
            &path,
            &format!(
                "\u{feff}# comment\nWANDB_ENTITY=first\nWANDB_ENTITY=second\nWANDB_PROJECT=\n\
                 export WANDB_API_KEY={KEY} # trailing comment\nWANDB_BASE_URL=\"http://127.0.0.1:8080/\"\n"
            ),
            0o600,
        );
        let target = resolve(&t, env_of(vec![("WANDB_PROJECT", "env".into())])).unwrap();
        assert_eq!(target.entity.as_deref(), Some("first"));
        // A blank value is unset: the next layer's applies.
        assert_eq!(target.project.as_deref(), Some("env"));
        assert_eq!(target.api_key.expose(), KEY);
        assert_eq!(target.base_url, "http://127.0.0.1:8080");
        // Nothing leaked into the process environment.
        assert!(std::env::var("WANDB_ENTITY").map_or(true, |v| v != "first"));
    }

    #[test]
    fn base_urls_must_be_http() {
        let t = tree();
        let path = t.root.join(".env");
        for url in ["wandb.example", "ftp://x", "https://"] {
            write(
                &path,
                &format!("WANDB_BASE_URL={url}\nWANDB_API_KEY={KEY}\n"),
                0o600,
            );
            let err = resolve(&t, no_env).unwrap_err();
            assert!(
                matches!(err, DestinationError::BadBaseUrl { .. }),
                "{url}: {err:?}"
            );
            assert!(err.to_string().contains(&path.display().to_string()));
        }
    }

    #[test]
    fn keys_are_redacted_wherever_printed() {
        let t = tree();
        write(
            &t.root.join(".env"),
            &format!("WANDB_API_KEY={KEY}\nWANDB_ENTITY=lab\n"),
            0o600,
        );
        let target = resolve(&t, no_env).unwrap();
        for text in [
            format!("{target:?}"),
            format!("{target:#?}"),
            target.to_string(),
            format!("{:?}", target.api_key),
            target.api_key.to_string(),
            serde_json::to_string(&target.origins).unwrap(),
        ] {
            assert_no_key(&text);
        }
        assert!(target.to_string().contains("entity lab"));
        assert!(target.to_string().contains(&target.api_key.fingerprint()));
        assert_eq!(target.api_key.to_string(), REDACTED);
        assert_ne!(
            ApiKey::new(KEY).fingerprint(),
            ApiKey::new(KEY2).fingerprint()
        );
    }
}
