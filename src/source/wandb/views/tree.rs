//! Config and summary trees: `update`/`remove` items addressed by `key` or by
//! a `nested_key` path. Slashes are not separators (`"val/acc"` is one key);
//! only `nested_key` nests.

use crate::source::wandb::proto::KeyedJson;
use crate::source::wandb::value::{Map, ParseError, Value};

/// The path an item addresses: its `nested_key` if set, else `[key]`.
pub(crate) fn item_path(key: &str, nested_key: &[String]) -> Vec<String> {
    if nested_key.is_empty() {
        vec![key.to_string()]
    } else {
        nested_key.to_vec()
    }
}

/// Sets `path` in `map`, creating (or replacing non-object) intermediate levels.
pub(crate) fn set_path(map: &mut Map, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut level = map;
    for key in parents {
        let slot = level
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !matches!(slot, Value::Object(_)) {
            *slot = Value::Object(Map::new());
        }
        let Value::Object(next) = slot else {
            unreachable!("just made an object")
        };
        level = next;
    }
    level.insert(last.clone(), value);
}

/// Sets every leaf of `leaves` below `path`, keeping what is already there
/// and not overwritten.
pub(crate) fn merge_path(map: &mut Map, path: &[String], leaves: Map) {
    if leaves.is_empty() {
        // An empty object is a value of its own.
        set_path(map, path, Value::Object(leaves));
        return;
    }
    for (key, value) in leaves {
        let mut child = path.to_vec();
        child.push(key);
        match value {
            Value::Object(inner) => merge_path(map, &child, inner),
            value => set_path(map, &child, value),
        }
    }
}

/// Removes `path` from `map`; a missing path is not an error.
pub(crate) fn remove_path(map: &mut Map, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut level = map;
    for key in parents {
        match level.get_mut(key) {
            Some(Value::Object(next)) => level = next,
            _ => return,
        }
    }
    level.shift_remove(last);
}

/// How an update meets an object already at its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Objects {
    /// The new value replaces the old one (summary).
    Replace,
    /// Object values merge leaf by leaf into the existing subtree, as wandb
    /// applies `config.update({"model": {"a": 5}})` (config).
    Merge,
}

/// Applies one `ConfigRecord`/`SummaryRecord` to `tree`. A value that does
/// not parse is kept as its raw text in a string, so nothing is dropped
/// silently; the error is returned for the caller to report.
pub(crate) fn apply(
    tree: &mut Map,
    update: &[KeyedJson],
    remove: &[KeyedJson],
    objects: Objects,
) -> Vec<ParseError> {
    let mut errors = Vec::new();
    for item in update {
        let value = Value::parse(&item.value_json).unwrap_or_else(|e| {
            errors.push(e);
            Value::String(item.value_json.clone())
        });
        let path = item_path(&item.key, &item.nested_key);
        match (objects, value) {
            (Objects::Merge, Value::Object(leaves)) => merge_path(tree, &path, leaves),
            (_, value) => set_path(tree, &path, value),
        }
    }
    for item in remove {
        remove_path(tree, &item_path(&item.key, &item.nested_key));
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(path: &[&str], json: &str) -> KeyedJson {
        KeyedJson {
            key: String::new(),
            nested_key: path.iter().map(|s| s.to_string()).collect(),
            value_json: json.into(),
        }
    }

    #[test]
    fn nested_keys_build_objects_and_slashes_do_not() {
        let mut tree = Map::new();
        let errors = apply(
            &mut tree,
            &[
                item(&["opt", "lr"], "0.1"),
                item(&["opt", "betas"], "[0.9,0.99]"),
                item(&["val/acc"], "NaN"),
            ],
            &[],
            Objects::Replace,
        );
        assert!(errors.is_empty());
        let v = Value::Object(tree.clone());
        assert_eq!(
            v.to_extended_json(),
            r#"{"opt":{"lr":0.1,"betas":[0.9,0.99]},"val/acc":NaN}"#
        );
        apply(
            &mut tree,
            &[],
            &[item(&["opt", "lr"], ""), item(&["missing", "x"], "")],
            Objects::Replace,
        );
        assert_eq!(
            Value::Object(tree).to_extended_json(),
            r#"{"opt":{"betas":[0.9,0.99]},"val/acc":NaN}"#
        );
    }

    #[test]
    fn plain_key_and_leaf_replaced_by_object() {
        let mut tree = Map::new();
        let plain = KeyedJson {
            key: "a".into(),
            nested_key: vec![],
            value_json: "1".into(),
        };
        apply(
            &mut tree,
            &[plain, item(&["a", "b"], "2")],
            &[],
            Objects::Replace,
        );
        assert_eq!(Value::Object(tree).to_extended_json(), r#"{"a":{"b":2}}"#);
    }

    #[test]
    fn config_objects_merge_leaf_by_leaf() {
        let mut tree = Map::new();
        apply(
            &mut tree,
            &[item(&["model"], r#"{"a":1,"b":{"c":2}}"#)],
            &[],
            Objects::Merge,
        );
        apply(
            &mut tree,
            &[item(&["model"], r#"{"a":5,"b":{"d":3}}"#)],
            &[],
            Objects::Merge,
        );
        assert_eq!(
            Value::Object(tree.clone()).to_extended_json(),
            r#"{"model":{"a":5,"b":{"c":2,"d":3}}}"#
        );
        apply(
            &mut tree,
            &[item(&["model"], r#"{"a":6}"#)],
            &[],
            Objects::Replace,
        );
        assert_eq!(
            Value::Object(tree).to_extended_json(),
            r#"{"model":{"a":6}}"#
        );
    }

    #[test]
    fn unparsable_values_are_kept_and_reported() {
        let mut tree = Map::new();
        let errors = apply(&mut tree, &[item(&["x"], "{bad")], &[], Objects::Replace);
        assert_eq!(errors.len(), 1);
        assert_eq!(tree["x"], Value::String("{bad".into()));
    }
}
