//! The naming template language: parsing a template and rendering it over
//! a run's [`NameFacts`].
//!
//! # The template
//!
//! A naming template is literal text with `{field}` placeholders; `{{` and
//! `}}` stand for literal braces. The fields are [`Field`]'s: `version`,
//! `experiment`, `job`, `job_id`, `array_job_id`, `array_task_id`,
//! `restart`, `run_id`, `cluster`, `user`, `date`. An unknown field, an
//! unclosed `{` or a template with no field at all is a [`TemplateError`]
//! when the template is parsed, i.e. when the config is loaded.
//!
//! # Missing fields drop their part
//!
//! The template is cut into parts: each placeholder together with the
//! literal text right before it (its *lead*), and the text after the last
//! placeholder (the *tail*), which belongs to the last placeholder. So
//! `v{version}-{experiment}_{job}` is `v{version}`, `-{experiment}`,
//! `_{job}`. Rendering keeps the parts whose field has a value and:
//!
//! 1. drops every part whose field is missing (or empty), lead included;
//!    the tail goes with the last placeholder;
//! 2. drops the lead of the first part kept when that part is not the
//!    template's first: it joined the part to text that is gone;
//! 3. renders nothing when no field has a value (the run keeps its own
//!    name).
//!
//! | version | experiment | job    | `v{version}-{experiment}_{job}` |
//! |---------|------------|--------|---------------------------------|
//! | 3       | train      | 4242   | `v3-train_4242`                 |
//! | -       | train      | 4242   | `train_4242`                    |
//! | 3       | train      | 4240_2 | `v3-train_4240_2` (array)       |
//! | 3       | train      | -      | `v3-train`                      |
//! | 3       | -          | 4242   | `v3_4242`                       |
//! | -       | -          | 4242   | `4242`                          |
//! | -       | -          | -      | nothing                         |
//!
//! Text that labels a field belongs before it (`-r{restart}`, not
//! `{restart}r`), and a pair of brackets around the last field is dropped
//! with it (`{experiment} (job {job})`).

use std::borrow::Cow;
use std::fmt;

use super::facts::NameFacts;

/// The default naming template.
pub(crate) const DEFAULT_TEMPLATE: &str = "v{version}-{experiment}_{job}";
/// The default group of array jobs: the experiment and the array job id.
pub(crate) const DEFAULT_GROUP_TEMPLATE: &str = "{experiment}_{array_job_id}";

/// A placeholder of a naming template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    Version,
    Experiment,
    Job,
    JobId,
    ArrayJobId,
    ArrayTaskId,
    Restart,
    RunId,
    Cluster,
    User,
    Date,
}

impl Field {
    pub const ALL: [Field; 11] = [
        Field::Version,
        Field::Experiment,
        Field::Job,
        Field::JobId,
        Field::ArrayJobId,
        Field::ArrayTaskId,
        Field::Restart,
        Field::RunId,
        Field::Cluster,
        Field::User,
        Field::Date,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Field::Version => "version",
            Field::Experiment => "experiment",
            Field::Job => "job",
            Field::JobId => "job_id",
            Field::ArrayJobId => "array_job_id",
            Field::ArrayTaskId => "array_task_id",
            Field::Restart => "restart",
            Field::RunId => "run_id",
            Field::Cluster => "cluster",
            Field::User => "user",
            Field::Date => "date",
        }
    }

    pub fn from_name(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name() == name)
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("naming template {template:?}: unknown field {{{field}}} (fields: {known})")]
    UnknownField {
        template: String,
        field: String,
        known: String,
    },
    #[error(
        "naming template {template:?}: `{{` at byte {at} is not closed (write `{{{{` for a literal brace)"
    )]
    Unclosed { template: String, at: usize },
    #[error(
        "naming template {template:?}: `}}` at byte {at} has no `{{` (write `}}}}` for a literal brace)"
    )]
    Unopened { template: String, at: usize },
    #[error("naming template {template:?} has no {{field}}: every run would get the same name")]
    NoField { template: String },
}

/// A parsed naming template; see the module documentation for how it
/// renders. Parsing is where mistakes are reported, so a config holds this
/// rather than the text (it deserializes from a string).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Template {
    text: String,
    /// Each placeholder with the literal text before it.
    parts: Vec<(String, Field)>,
    /// The literal text after the last placeholder.
    tail: String,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|&(_, c)| c) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|&(_, c)| c) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let rest = &text[at + 1..];
                    let Some(len) = rest.find('}') else {
                        return Err(TemplateError::Unclosed {
                            template: text.into(),
                            at,
                        });
                    };
                    let name = &rest[..len];
                    let field =
                        Field::from_name(name).ok_or_else(|| TemplateError::UnknownField {
                            template: text.into(),
                            field: name.into(),
                            known: Field::ALL.map(Field::name).join(", "),
                        })?;
                    parts.push((std::mem::take(&mut literal), field));
                    // Skip the name and the closing brace.
                    for _ in 0..name.chars().count() + 1 {
                        chars.next();
                    }
                }
                '}' => {
                    return Err(TemplateError::Unopened {
                        template: text.into(),
                        at,
                    });
                }
                c => literal.push(c),
            }
        }
        if parts.is_empty() {
            return Err(TemplateError::NoField {
                template: text.into(),
            });
        }
        Ok(Template {
            text: text.into(),
            parts,
            tail: literal,
        })
    }

    /// The fields the template uses, in order.
    pub fn fields(&self) -> impl Iterator<Item = Field> + '_ {
        self.parts.iter().map(|(_, f)| *f)
    }

    /// The name for `facts`; `None` when none of the template's fields has a
    /// value.
    pub fn render(&self, facts: &NameFacts) -> Option<String> {
        let values: Vec<Option<Cow<str>>> = self.parts.iter().map(|(_, f)| facts.get(*f)).collect();
        let kept: Vec<usize> = (0..values.len()).filter(|&i| values[i].is_some()).collect();
        let (&first, &last) = (kept.first()?, kept.last()?);
        let mut out = String::new();
        for &i in &kept {
            if i == 0 || i != first {
                out.push_str(&self.parts[i].0);
            }
            out.push_str(values[i].as_deref().unwrap_or_default());
        }
        if last == self.parts.len() - 1 {
            out.push_str(&self.tail);
        }
        let out = out.trim();
        (!out.is_empty()).then(|| out.to_string())
    }
}

impl Default for Template {
    fn default() -> Self {
        Template::parse(DEFAULT_TEMPLATE).expect("the default template parses")
    }
}

impl std::str::FromStr for Template {
    type Err = TemplateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Template::parse(s)
    }
}

impl TryFrom<String> for Template {
    type Error = TemplateError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Template::parse(&s)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `template` and renders it over `facts`.
    fn render(template: &str, facts: &NameFacts) -> Result<Option<String>, TemplateError> {
        Ok(Template::parse(template)?.render(facts))
    }

    fn facts(pairs: &[(&str, &str)]) -> NameFacts {
        let mut f = NameFacts::default();
        for (k, v) in pairs {
            let slot = match Field::from_name(k).unwrap() {
                Field::Version => &mut f.version,
                Field::Experiment => &mut f.experiment,
                Field::JobId => &mut f.job_id,
                Field::ArrayJobId => &mut f.array_job_id,
                Field::ArrayTaskId => &mut f.array_task_id,
                Field::Restart => &mut f.restart,
                Field::RunId => &mut f.run_id,
                Field::Cluster => &mut f.cluster,
                Field::User => &mut f.user,
                Field::Date => &mut f.date,
                Field::Job => panic!("job is derived"),
            };
            *slot = Some(v.to_string());
        }
        f
    }

    fn name(template: &str, pairs: &[(&str, &str)]) -> Option<String> {
        render(template, &facts(pairs)).unwrap()
    }

    const ALL: &[(&str, &str)] = &[
        ("version", "3"),
        ("experiment", "train"),
        ("job_id", "4242"),
    ];

    #[test]
    fn default_template_all_present() {
        assert_eq!(name(DEFAULT_TEMPLATE, ALL).unwrap(), "v3-train_4242");
    }

    #[test]
    fn missing_fields_drop_their_part() {
        let t = DEFAULT_TEMPLATE;
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>);
        let cases: &[Case] = &[
            (
                &[("experiment", "train"), ("job_id", "4242")],
                Some("train_4242"),
            ),
            (
                &[("version", "3"), ("experiment", "train")],
                Some("v3-train"),
            ),
            (&[("version", "3"), ("job_id", "4242")], Some("v3_4242")),
            (&[("job_id", "4242")], Some("4242")),
            (&[("experiment", "train")], Some("train")),
            (&[("version", "3")], Some("v3")),
            (&[], None),
            // Blank values are missing values.
            (
                &[("version", " "), ("experiment", ""), ("job_id", "4242")],
                Some("4242"),
            ),
        ];
        for (pairs, want) in cases {
            assert_eq!(name(t, pairs).as_deref(), *want, "{pairs:?}");
        }
        // Never a dangling separator, whatever is missing.
        for mask in 0..8u8 {
            let pairs: Vec<_> = ALL
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, p)| *p)
                .collect();
            if let Some(n) = name(t, &pairs) {
                assert!(
                    !n.starts_with(['-', '_']) && !n.ends_with(['-', '_']),
                    "{n}"
                );
                assert!(!n.contains("v-") && !n.contains("-_"), "{n}");
            }
        }
    }

    #[test]
    fn arrays_name_the_task() {
        let pairs = [
            ("version", "3"),
            ("experiment", "train"),
            ("job_id", "4243"),
            ("array_job_id", "4240"),
            ("array_task_id", "2"),
        ];
        assert_eq!(name(DEFAULT_TEMPLATE, &pairs).unwrap(), "v3-train_4240_2");
        assert_eq!(name("{experiment}.{job_id}", &pairs).unwrap(), "train.4243");
        // Half an array id is no array: the job id is used.
        let half = [
            ("experiment", "train"),
            ("job_id", "4243"),
            ("array_job_id", "4240"),
        ];
        assert_eq!(name(DEFAULT_TEMPLATE, &half).unwrap(), "train_4243");
    }

    #[test]
    fn other_templates() {
        let all = [
            ("version", "3"),
            ("experiment", "train"),
            ("job_id", "4242"),
            ("restart", "1"),
            ("cluster", "hpc"),
            ("user", "alice"),
            ("date", "2026-11-23"),
            ("run_id", "abc"),
        ];
        let cases = [
            ("{experiment}_{job}-r{restart}", "train_4242-r1"),
            ("{cluster}/{user}/{experiment}", "hpc/alice/train"),
            ("{date} {experiment} ({run_id})", "2026-11-23 train (abc)"),
            ("{{{experiment}}}", "{train}"),
            ("exp-{experiment}", "exp-train"),
        ];
        for (t, want) in cases {
            assert_eq!(name(t, &all).unwrap(), want, "{t}");
        }
        let some = [("experiment", "train"), ("restart", "1"), ("run_id", "abc")];
        let cases = [
            // A label before a field goes with it.
            ("{experiment}_{job}-r{restart}", Some("train-r1")),
            ("{cluster}/{user}/{experiment}", Some("train")),
            // The tail goes with the last field.
            ("{experiment} (job {job})", Some("train")),
            ("{date} {experiment} ({run_id})", Some("train (abc)")),
            // The leading text goes with the first field.
            ("exp-{version}", None),
            ("v{version}.{job}", None),
        ];
        for (t, want) in cases {
            assert_eq!(name(t, &some).as_deref(), want, "{t}");
        }
    }

    #[test]
    fn template_errors_are_found_when_parsing() {
        let err = Template::parse("v{version}-{experimnet}").unwrap_err();
        assert!(matches!(&err, TemplateError::UnknownField { field, .. } if field == "experimnet"));
        let text = err.to_string();
        assert!(
            text.contains("{experimnet}") && text.contains("array_task_id"),
            "{text}"
        );
        assert!(matches!(
            Template::parse("v{version"),
            Err(TemplateError::Unclosed { at: 1, .. })
        ));
        assert!(matches!(
            Template::parse("a}b{job}"),
            Err(TemplateError::Unopened { at: 1, .. })
        ));
        assert!(matches!(
            Template::parse("fixed"),
            Err(TemplateError::NoField { .. })
        ));
        assert!(matches!(
            Template::parse(""),
            Err(TemplateError::NoField { .. })
        ));
        assert!(matches!(
            Template::parse("{}"),
            Err(TemplateError::UnknownField { .. })
        ));
        assert!(render("{nope}", &NameFacts::default()).is_err());
        // Config files carry templates as strings and are checked on load.
        #[derive(serde::Deserialize)]
        struct Config {
            #[allow(dead_code)]
            template: Template,
        }
        assert!(toml::from_str::<Config>("template = \"{experiment}_{job}\"").is_ok());
        let err = toml::from_str::<Config>("template = \"{experiment}_{jobid}\"")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("unknown field {jobid}"), "{err}");
        let t: Template = "é{job}ü".parse().unwrap();
        assert_eq!(t.to_string(), "é{job}ü");
        assert_eq!(t.fields().collect::<Vec<_>>(), [Field::Job]);
        assert_eq!(t.render(&facts(&[("job_id", "1")])).unwrap(), "é1ü");
    }
}
