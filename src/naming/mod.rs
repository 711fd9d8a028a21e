//! A run's server-side name and group, from the Slurm job that wrote it.
//!
//! This folder owns how runs are named on the server: the template
//! language ([`template`]), the facts a name is made of ([`facts`]), the
//! job manifest the sbatch templates write ([`manifest`]), and the rule
//! that puts them together ([`NamingRule`], [`name_run`]). It only reads:
//! it never writes a file, never talks to a server and never decides where
//! a run goes (that is [`crate::destination`]); which directories are
//! searched for a manifest is [`crate::project`]'s.
//!
//! # The template
//!
//! See [`template`]: `{field}` placeholders, and a field without a value
//! drops its part (`v{version}-{experiment}_{job}` names a run without a
//! version `train_4242`).
//!
//! # Where the facts come from
//!
//! [`NameFacts::from_run`]: the `SLURM_*` variables the run's own
//! environment record holds first, then the [`JobManifest`] the sbatch
//! templates write (ignored when its job id is not the run's), then the
//! run's config and identity. See each [`NameFacts`] field.

pub(crate) mod facts;
pub(crate) mod manifest;
pub(crate) mod template;

pub(crate) use facts::NameFacts;
pub(crate) use manifest::{JobManifest, find_manifest, read_manifest};
pub(crate) use template::{DEFAULT_GROUP_TEMPLATE, Field, Template, TemplateError};

use crate::source::wandb::value::Map;
use crate::source::wandb::views::RunIdentity;

/// How runs are named: the lead's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NamingRule {
    /// The display name template, [`DEFAULT_TEMPLATE`](template::DEFAULT_TEMPLATE) by default.
    pub template: Template,
    /// Rename runs the user named explicitly too (`wandb.init(name=…)`,
    /// `WANDB_NAME`). Off by default: a name the user chose is kept.
    pub override_user_names: bool,
    /// The group of an array task whose run has no group of its own;
    /// [`DEFAULT_GROUP_TEMPLATE`] by default, `None` leaves arrays
    /// ungrouped. A run's own group is always kept.
    pub array_group: Option<Template>,
}

impl Default for NamingRule {
    fn default() -> Self {
        NamingRule {
            template: Template::default(),
            override_user_names: false,
            array_group: Some(
                Template::parse(DEFAULT_GROUP_TEMPLATE).expect("the default group template parses"),
            ),
        }
    }
}

impl NamingRule {
    /// A rule with `template` and the default array grouping.
    #[cfg(test)]
    pub(crate) fn new(
        template: &str,
        override_user_names: bool,
    ) -> Result<NamingRule, TemplateError> {
        Ok(NamingRule {
            template: Template::parse(template)?,
            override_user_names,
            ..NamingRule::default()
        })
    }

    /// What to send for a run with these facts.
    pub(crate) fn apply(&self, identity: &RunIdentity, facts: &NameFacts) -> Naming {
        let display_name = if user_named(identity) && !self.override_user_names {
            None
        } else {
            // A version alone is not a name ("v3"): some other field must
            // have a value too.
            let named =
                (self.template.fields()).any(|f| f != Field::Version && facts.get(f).is_some());
            named
                .then(|| self.template.render(facts))
                .flatten()
                .filter(|name| Some(name.as_str()) != identity.display_name.as_deref())
        };
        let group = match &self.array_group {
            Some(template)
                if identity.group.is_none() && facts.get(Field::ArrayJobId).is_some() =>
            {
                template.render(facts)
            }
            _ => None,
        };
        Naming {
            display_name,
            group,
        }
    }
}

/// The user gave the run a name: wandb writes none for an offline run
/// unless asked to (some versions write the run id, which is not a name).
fn user_named(identity: &RunIdentity) -> bool {
    identity
        .display_name
        .as_deref()
        .is_some_and(|n| !n.trim().is_empty() && Some(n) != identity.run_id.as_deref())
}

/// What to set on the server run; `None` leaves the run's own value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Naming {
    pub display_name: Option<String>,
    pub group: Option<String>,
}

/// The name and group `rule` gives a run: [`NameFacts::from_run`] then
/// [`NamingRule::apply`].
pub(crate) fn name_run(
    rule: &NamingRule,
    identity: &RunIdentity,
    config: &Map,
    manifest: Option<&JobManifest>,
) -> Naming {
    rule.apply(identity, &NameFacts::from_run(identity, config, manifest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::naming::template::DEFAULT_TEMPLATE;
    use crate::source::wandb::value::Value;
    use std::collections::BTreeMap;

    fn identity(slurm: &[(&str, &str)]) -> RunIdentity {
        RunIdentity {
            run_id: Some("r1d".into()),
            start_time: Some(1_795_433_853.5), // 2026-11-23T08:17:33Z
            slurm: slurm
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            ..RunIdentity::default()
        }
    }

    fn config(text: &str) -> Map {
        match Value::parse(text).unwrap() {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn facts_from_the_environment_record() {
        let id = identity(&[
            ("job_id", "4243"),
            ("job_name", "train"),
            ("array_job_id", "4240"),
            ("array_task_id", "2"),
            ("restart_count", "1"),
            ("cluster_name", "hpc"),
            ("job_user", "alice"),
            ("procid", "0"),
        ]);
        let f = NameFacts::from_run(&id, &config(r#"{"version": 3, "lr": 0.1}"#), None);
        assert_eq!(
            f,
            NameFacts {
                version: Some("3".into()),
                experiment: Some("train".into()),
                job_id: Some("4243".into()),
                array_job_id: Some("4240".into()),
                array_task_id: Some("2".into()),
                restart: Some("1".into()),
                run_id: Some("r1d".into()),
                cluster: Some("hpc".into()),
                user: Some("alice".into()),
                date: Some("2026-11-23".into()),
            }
        );
        assert_eq!(f.get(Field::Job).unwrap(), "4240_2");
    }

    #[test]
    fn versions_from_config_or_manifest() {
        let id = identity(&[]);
        let version =
            |cfg: &str, m: Option<&JobManifest>| NameFacts::from_run(&id, &config(cfg), m).version;
        assert_eq!(version(r#"{"version": "v2"}"#, None).unwrap(), "2");
        assert_eq!(version(r#"{"version": "vision"}"#, None).unwrap(), "vision");
        assert_eq!(version(r#"{"version": 1.5}"#, None).unwrap(), "1.5");
        assert_eq!(version(r#"{"version": {"value": 7}}"#, None).unwrap(), "7");
        assert_eq!(version(r#"{"version": NaN}"#, None), None);
        assert_eq!(version(r#"{"version": [1]}"#, None), None);
        assert_eq!(version(r#"{"version": ""}"#, None), None);
        let manifest = JobManifest {
            version: Some("4".into()),
            ..JobManifest::default()
        };
        assert_eq!(version("{}", Some(&manifest)).unwrap(), "4");
        // The run's own config wins over the job's manifest.
        assert_eq!(version(r#"{"version": 5}"#, Some(&manifest)).unwrap(), "5");
    }

    #[test]
    fn manifest_fills_in_and_a_foreign_one_is_ignored() {
        let manifest = JobManifest::parse(
            r#"{"job_id": 4242, "job_name": "train", "version": "3", "restart_count": "0",
                "array_job_id": "", "array_task_id": null, "cluster": "hpc", "schema": 1}"#,
        )
        .unwrap();
        assert_eq!(manifest.job_id.as_deref(), Some("4242"));
        assert_eq!(manifest.array_job_id, None);
        let rule = NamingRule::default();
        // Nothing in the environment record: all from the manifest.
        let naming = name_run(&rule, &identity(&[]), &Map::new(), Some(&manifest));
        assert_eq!(naming.display_name.as_deref(), Some("v3-train_4242"));
        // The environment record wins where both know.
        let id = identity(&[("job_id", "4242"), ("job_name", "eval")]);
        let naming = name_run(&rule, &id, &Map::new(), Some(&manifest));
        assert_eq!(naming.display_name.as_deref(), Some("v3-eval_4242"));
        // Another job's manifest is not this run's.
        let id = identity(&[("job_id", "999"), ("job_name", "eval")]);
        let naming = name_run(&rule, &id, &Map::new(), Some(&manifest));
        assert_eq!(naming.display_name.as_deref(), Some("eval_999"));
        assert!(JobManifest::parse("[1]").is_err());
        assert!(JobManifest::parse(r#"{"job_id": true}"#).is_err());
        assert!(JobManifest::parse("{").is_err());
    }

    #[test]
    fn user_named_runs_keep_their_name_unless_overridden() {
        let mut id = identity(&[("job_id", "4242"), ("job_name", "train")]);
        id.display_name = Some("my-baseline".into());
        let cfg = config(r#"{"version": 3}"#);
        let kept = name_run(&NamingRule::default(), &id, &cfg, None);
        assert_eq!(kept.display_name, None);
        let rule = NamingRule::new(DEFAULT_TEMPLATE, true).unwrap();
        let renamed = name_run(&rule, &id, &cfg, None);
        assert_eq!(renamed.display_name.as_deref(), Some("v3-train_4242"));
        // A display name that is the run id is no name the user chose.
        id.display_name = Some("r1d".into());
        let named = name_run(&NamingRule::default(), &id, &cfg, None);
        assert_eq!(named.display_name.as_deref(), Some("v3-train_4242"));
        id.slurm.remove("job_name");
        let named = name_run(&NamingRule::default(), &id, &cfg, None);
        assert_eq!(named.display_name.as_deref(), Some("v3_4242"));
    }

    #[test]
    fn experiment_falls_back_to_the_runs_name() {
        let mut id = identity(&[("job_id", "4242")]);
        id.display_name = Some("baseline".into());
        let rule = NamingRule::new(DEFAULT_TEMPLATE, true).unwrap();
        let naming = name_run(&rule, &id, &config(r#"{"version": 2}"#), None);
        assert_eq!(naming.display_name.as_deref(), Some("v2-baseline_4242"));
        // Interactive allocations' job names are no experiment.
        let mut id = identity(&[("job_id", "4242"), ("job_name", "bash")]);
        let naming = name_run(&NamingRule::default(), &id, &Map::new(), None);
        assert_eq!(naming.display_name.as_deref(), Some("4242"));
        id.display_name = Some("baseline".into());
        let naming = name_run(&rule, &id, &Map::new(), None);
        assert_eq!(naming.display_name.as_deref(), Some("baseline_4242"));
    }

    #[test]
    fn nothing_to_name_with_leaves_the_run_alone() {
        let rule = NamingRule::default();
        // No Slurm, no version: the run keeps whatever it has.
        let mut id = identity(&[]);
        assert_eq!(name_run(&rule, &id, &Map::new(), None), Naming::default());
        // A version alone is not a name.
        let cfg = config(r#"{"version": 3}"#);
        assert_eq!(name_run(&rule, &id, &cfg, None), Naming::default());
        // A name equal to the run's own is not sent again.
        id.display_name = Some("v3-train_4242".into());
        id.slurm.insert("job_id".into(), "4242".into());
        id.slurm.insert("job_name".into(), "train".into());
        let rule = NamingRule::new(DEFAULT_TEMPLATE, true).unwrap();
        assert_eq!(name_run(&rule, &id, &cfg, None), Naming::default());
    }

    #[test]
    fn arrays_are_grouped_unless_the_run_has_a_group() {
        let mut id = identity(&[
            ("job_id", "4243"),
            ("job_name", "train"),
            ("array_job_id", "4240"),
            ("array_task_id", "2"),
        ]);
        let cfg = config(r#"{"version": 3}"#);
        let naming = name_run(&NamingRule::default(), &id, &cfg, None);
        assert_eq!(
            naming,
            Naming {
                display_name: Some("v3-train_4240_2".into()),
                group: Some("train_4240".into()),
            }
        );
        // No experiment: the array id alone.
        id.slurm.remove("job_name");
        let naming = name_run(&NamingRule::default(), &id, &cfg, None);
        assert_eq!(naming.group.as_deref(), Some("4240"));
        // The run's own group is kept, even with override.
        id.group = Some("sweep-7".into());
        let rule = NamingRule::new(DEFAULT_TEMPLATE, true).unwrap();
        assert_eq!(name_run(&rule, &id, &cfg, None).group, None);
        // Grouping can be turned off; a plain job has no group.
        id.group = None;
        let rule = NamingRule {
            array_group: None,
            ..NamingRule::default()
        };
        assert_eq!(name_run(&rule, &id, &cfg, None).group, None);
        let plain = identity(&[("job_id", "4242"), ("job_name", "train")]);
        assert_eq!(
            name_run(&NamingRule::default(), &plain, &cfg, None).group,
            None
        );
    }

    #[test]
    fn control_characters_do_not_reach_names() {
        let id = identity(&[("job_id", "42"), ("job_name", "tr\nain\t")]);
        let naming = name_run(&NamingRule::default(), &id, &Map::new(), None);
        assert_eq!(naming.display_name.as_deref(), Some("train_42"));
    }
}
