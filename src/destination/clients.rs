//! Where each run goes, and one HTTP client per server and key however many
//! runs share them. Callers keep a run's [`RunClient`] once resolved (the
//! daemon in its run table), so nothing per run is cached here.
//!
//! The environment is read once, when the resolver is made (at start and on
//! SIGHUP), so a `.env` edited while the daemon runs takes effect on SIGHUP,
//! as the service documentation says.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::config::DirsError;
use crate::destination::resolve;
use crate::destination::{ApiKey, Destination, DestinationError, netrc, resolve_destination};
use crate::project;
use crate::sink::retry::RetryPolicy;
use crate::sink::wandb::client::Client;

/// The environment variables [`resolve_destination`] reads.
const ENV_VARS: [&str; 7] = [
    "WANDB_API_KEY",
    "WANDB_BASE_URL",
    "WANDB_ENTITY",
    "WANDB_PROJECT",
    "HOME",
    "NETRC",
    "XDG_CONFIG_HOME",
];

/// What a run is uploaded with: the client for its server and key, and the
/// entity and project to use when neither the command line nor the run
/// names one.
#[derive(Clone)]
pub(crate) struct RunClient {
    pub client: Arc<Client>,
    pub entity: Option<String>,
    pub project: Option<String>,
}

/// Resolves each run's [`Destination`] and keeps one client per server and
/// key; cheap to share between tasks.
pub(crate) struct Clients {
    env: HashMap<String, String>,
    user_env_file: PathBuf,
    uid: u32,
    retry: RetryPolicy,
    clients: Mutex<HashMap<(String, ApiKey), Arc<Client>>>,
}

impl Clients {
    /// From the process environment; `base_url` (a `--base-url` flag or the
    /// config file's `base_url`) stands in for `WANDB_BASE_URL`.
    pub(crate) fn from_process(
        base_url: Option<String>,
        retry: RetryPolicy,
    ) -> Result<Clients, DirsError> {
        let mut env: HashMap<String, String> = ENV_VARS
            .iter()
            .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
            .collect();
        if let Some(url) = base_url.filter(|u| !u.trim().is_empty()) {
            env.insert("WANDB_BASE_URL".into(), url);
        }
        Clients::new(env, retry)
    }

    /// From the variables `env` (only [`ENV_VARS`] are read); an error
    /// when they give no home for the user's own `.env`.
    pub(crate) fn new(
        env: HashMap<String, String>,
        retry: RetryPolicy,
    ) -> Result<Clients, DirsError> {
        let lookup = |name: &str| env.get(name).cloned();
        let user_env_file = resolve::user_env_file(lookup)?;
        Ok(Clients {
            env,
            user_env_file,
            uid: crate::process::current_uid(),
            retry,
            clients: Mutex::new(HashMap::new()),
        })
    }

    fn lookup(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned().filter(|v| !v.is_empty())
    }

    /// The server a run with no `.env` of its own goes to.
    pub(crate) fn default_base_url(&self) -> String {
        crate::config::wandb_base_url(None, |k| self.lookup(k))
    }

    /// The settings for the run in `run_dir`, found under `root`.
    pub(crate) fn settings(
        &self,
        run_dir: &Path,
        root: &Path,
    ) -> Result<Destination, DestinationError> {
        resolve_destination(
            run_dir,
            root,
            &self.user_env_file,
            |k| self.lookup(k),
            self.uid,
        )
    }

    /// The client and defaults of the run in `run_dir`; the error says
    /// what to fix, with no key in it.
    pub(crate) fn resolve(
        &self,
        run_dir: &Path,
        root: &Path,
    ) -> Result<RunClient, DestinationError> {
        let settings = self.settings(run_dir, root)?;
        let client = self.client(&settings)?;
        Ok(RunClient {
            client,
            entity: settings.entity.clone(),
            project: settings.project.clone(),
        })
    }

    fn client(
        &self,
        settings: &Destination,
    ) -> Result<Arc<Client>, crate::sink::wandb::client::SinkError> {
        let key = (settings.base_url.clone(), settings.api_key.clone());
        let mut clients = lock(&self.clients);
        if let Some(client) = clients.get(&key) {
            return Ok(Arc::clone(client));
        }
        let client = Arc::new(Client::new(
            &settings.base_url,
            settings.api_key.expose(),
            self.retry,
        )?);
        clients.insert(key, Arc::clone(&client));
        Ok(client)
    }

    /// The files a run's destination and key can come from: the `.env`
    /// files searched for it, the user's, and netrc. Whether each exists
    /// is part of the answer's meaning (one created later counts).
    pub(crate) fn settings_files(&self, run_dir: &Path, root: &Path) -> Vec<PathBuf> {
        let netrc = netrc::path(|k| self.lookup(k));
        project::search_dirs(run_dir, root)
            .into_iter()
            .map(|dir| dir.join(resolve::DOTENV_FILE))
            .chain(std::iter::once(self.user_env_file.clone()))
            .chain(netrc)
            .collect()
    }

    /// Feeds what resolving depends on besides the settings files (the
    /// variables read, the user's `.env` path, the user) to `state`: the
    /// daemon's settled-run index is not used when it changed.
    pub(crate) fn hash_setup(&self, state: &mut impl std::hash::Hasher) {
        use std::hash::Hash;
        let env: std::collections::BTreeMap<_, _> = self.env.iter().collect();
        env.hash(state);
        self.user_env_file.hash(state);
        self.uid.hash(state);
    }

    /// Every distinct client made so far (for the offline probe).
    pub(crate) fn clients(&self) -> Vec<Arc<Client>> {
        lock(&self.clients).values().cloned().collect()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves a map that is still valid.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write_env(dir: &Path, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join(".env");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    #[test]
    fn runs_share_a_client_per_server_and_key_and_get_their_own_entity() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        write_env(
            &root.join("a"),
            "WANDB_API_KEY=ka\nWANDB_BASE_URL=http://127.0.0.1:1\nWANDB_ENTITY=lab-a\n",
        );
        write_env(
            &root.join("b"),
            "WANDB_API_KEY=ka\nWANDB_BASE_URL=http://127.0.0.1:1\nWANDB_ENTITY=lab-b\n",
        );
        write_env(
            &root.join("c"),
            "WANDB_API_KEY=kc\nWANDB_BASE_URL=http://127.0.0.1:2\n",
        );
        let env = HashMap::from([("HOME".to_string(), tmp.path().display().to_string())]);
        let targets = Clients::new(env, RetryPolicy::default()).unwrap();
        let a = targets.resolve(&root.join("a/wandb/offline-run-1"), &root);
        let b = targets.resolve(&root.join("b/wandb/offline-run-2"), &root);
        let c = targets.resolve(&root.join("c/wandb/offline-run-3"), &root);
        let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
        assert!(Arc::ptr_eq(&a.client, &b.client));
        assert!(!Arc::ptr_eq(&a.client, &c.client));
        assert_eq!(a.entity.as_deref(), Some("lab-a"));
        assert_eq!(b.entity.as_deref(), Some("lab-b"));
        assert_eq!(c.client.base_url(), "http://127.0.0.1:2");
        assert_eq!(targets.clients().len(), 2);
    }

    #[test]
    fn without_a_home_there_is_no_user_file_and_an_error_says_so() {
        let err = Clients::new(HashMap::new(), RetryPolicy::default())
            .err()
            .unwrap();
        assert_eq!(err, DirsError::NoHome);
        let env = HashMap::from([
            ("HOME".to_string(), "/h".to_string()),
            ("XDG_CONFIG_HOME".to_string(), "relative".to_string()),
        ]);
        let clients = Clients::new(env, RetryPolicy::default()).unwrap();
        assert_eq!(clients.user_env_file, Path::new("/h/.config/syncd/.env"));
    }

    #[test]
    fn a_refused_env_is_an_error_without_the_key() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        write_env(&root, "WANDB_API_KEY=sekrit-key-123\n");
        std::fs::set_permissions(root.join(".env"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let env = HashMap::from([("HOME".to_string(), tmp.path().display().to_string())]);
        let targets = Clients::new(env, RetryPolicy::default()).unwrap();
        let run = root.join("wandb/offline-run-1");
        let error = targets.resolve(&run, &root).err().unwrap();
        assert!(
            matches!(error, DestinationError::Exposed { .. }),
            "{error:?}"
        );
        let error = error.to_string();
        assert!(error.contains("chmod 600"), "{error}");
        assert!(!error.contains("sekrit"), "{error}");
        // Fixed: found at the next attempt, no restart needed.
        std::fs::set_permissions(root.join(".env"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        assert!(targets.resolve(&run, &root).is_ok());
    }
}
