//! Stage families: one `pipeline.yaml` entry with a `foreach:` matrix stands for one member stage per
//! combination of its values, so a sweep is written once instead of as copy-pasted blocks.
//!
//! ```yaml
//! - name: train
//!   kind: toy_map
//!   foreach: {salt: [x, y], fold: [0, 1, 2]}
//! ```
//!
//! expands into `train[fold=0,salt=x]`, `train[fold=0,salt=y]`, `train[fold=1,salt=x]`, … Keys are sorted
//! (byte order) and values taken in written order, the last key varying fastest, so neither the names nor
//! their order depend on how the matrix is laid out in the file: a `many` consumer listing the family
//! sees the same inputs in the same order, and keeps its key.
//!
//! A member is an ordinary stage from here on: its params are the entry's with its matrix values set, and
//! its key is computed like any stage's (the name is not in it). Expansion happens before the per-stage
//! validation in `dag.rs`; errors point at the family's lines.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::DATASET_PREFIX;
use crate::config::{ConfigError, Locator, Pipeline};
use crate::stage::DATASET;

/// More members than this is almost certainly a typo in a matrix (and would flood the store).
pub const MAX_MEMBERS: usize = 1024;

/// Characters that build member names, so a plain stage may not use them.
pub const RESERVED: [char; 4] = ['[', ']', '=', ','];

/// One stage after expansion: a plain entry as written, or a member of a family.
#[derive(Debug, Clone)]
pub struct Member {
    /// The full name: `train[fold=0,salt=x]` for a member, the written name for a plain stage.
    pub name: String,
    /// The family's name, for a member.
    pub family: Option<String>,
    pub kind: String,
    /// As written: a family name here is resolved with [`Expansion::resolve_inputs`].
    pub inputs: Vec<String>,
    /// The entry's params with this member's matrix values set.
    pub params: serde_yaml::Value,
    /// The family's matrix keys (empty for a plain stage).
    pub matrix_keys: Vec<String>,
    /// Run settings, shared by every member of a family.
    pub exec: crate::exec::ExecConfig,
}

impl Member {
    /// The name errors about the whole entry use: the family for a member, else the stage.
    pub fn entry_name(&self) -> &str {
        self.family.as_deref().unwrap_or(&self.name)
    }
}

/// The pipeline's stages with every family expanded.
#[derive(Debug, Default)]
pub struct Expansion {
    /// Plain stages and members, in file order; a family's members in expansion order.
    pub stages: Vec<Member>,
    /// Family name -> member names, in expansion order.
    pub families: BTreeMap<String, Vec<String>>,
    /// Names of entries dropped for an error reported here: a stage listing one as an input (or one of
    /// its would-be members) gets no further error about it, which would only repeat the first.
    pub dropped: BTreeSet<String>,
}

impl Expansion {
    /// `inputs` with every family name replaced by its members, in expansion order.
    pub fn resolve_inputs(&self, inputs: &[String]) -> Vec<String> {
        inputs
            .iter()
            .flat_map(|input| match self.families.get(input) {
                Some(members) => members.clone(),
                None => vec![input.clone()],
            })
            .collect()
    }

    /// Whether `input` names a dropped entry or a member of a dropped family.
    pub fn is_dropped(&self, input: &str) -> bool {
        let family = input
            .strip_suffix(']')
            .and_then(|s| s.split_once('['))
            .map_or(input, |(family, _)| family);
        self.dropped.contains(family)
    }
}

/// Expand every entry of `pipeline`, reporting malformed entries (duplicate or reserved names, bad
/// matrices) into `errors`; an entry in error contributes no stage.
pub fn expand(pipeline: &Pipeline, errors: &mut Vec<ConfigError>) -> Expansion {
    let loc = pipeline.locator();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut out = Expansion::default();
    for stage in &pipeline.stages {
        let nth = *seen.get(stage.name.as_str()).unwrap_or(&0);
        seen.insert(&stage.name, nth + 1);
        if nth > 0 {
            errors.push(loc.error(
                &stage.name,
                nth,
                None,
                format!("duplicate stage name `{}`", stage.name),
            ));
            continue;
        }
        if stage.name == DATASET {
            errors.push(loc.error(
                &stage.name,
                0,
                None,
                format!("`{DATASET}` is reserved for the raw dataset"),
            ));
            continue;
        }
        if stage.name.starts_with(DATASET_PREFIX) {
            errors.push(loc.error(
                &stage.name,
                0,
                None,
                format!(
                    "stage name `{}`: the prefix `{DATASET_PREFIX}` is reserved for named datasets",
                    stage.name
                ),
            ));
            continue;
        }
        if let Some(c) = stage.name.chars().find(|c| RESERVED.contains(c)) {
            errors.push(loc.error(
                &stage.name,
                0,
                None,
                format!(
                    "stage name `{}` contains `{c}`: `[`, `]`, `=` and `,` are reserved for the members of \
                     a stage family (`name[key=value,...]`); declare a family with `foreach:`",
                    stage.name
                ),
            ));
            out.dropped.insert(stage.name.clone());
            continue;
        }
        let Some(foreach) = &stage.foreach else {
            out.stages.push(Member {
                name: stage.name.clone(),
                family: None,
                kind: stage.kind.clone(),
                inputs: stage.inputs.clone(),
                params: stage.params.clone(),
                matrix_keys: Vec::new(),
                exec: stage.exec.clone(),
            });
            continue;
        };
        let Some(matrix) = parse_matrix(&loc, &stage.name, foreach, &stage.params, errors) else {
            out.dropped.insert(stage.name.clone());
            continue;
        };
        let keys: Vec<String> = matrix.keys().cloned().collect();
        let mut names = Vec::new();
        for combination in combinations(&matrix) {
            let name = format!(
                "{}[{}]",
                stage.name,
                combination
                    .iter()
                    .map(|(key, value)| format!("{key}={}", value.rendered))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let mut params = match &stage.params {
                serde_yaml::Value::Null => serde_yaml::Mapping::new(),
                serde_yaml::Value::Mapping(m) => m.clone(),
                // Not a mapping: canonical_params reports it, naming the kind's params type.
                other => {
                    out.stages.push(Member {
                        name: name.clone(),
                        family: Some(stage.name.clone()),
                        kind: stage.kind.clone(),
                        inputs: stage.inputs.clone(),
                        params: other.clone(),
                        matrix_keys: keys.clone(),
                        exec: stage.exec.clone(),
                    });
                    names.push(name);
                    continue;
                }
            };
            for (key, value) in &combination {
                params.insert(serde_yaml::Value::String(key.clone()), value.value.clone());
            }
            out.stages.push(Member {
                name: name.clone(),
                family: Some(stage.name.clone()),
                kind: stage.kind.clone(),
                inputs: stage.inputs.clone(),
                params: serde_yaml::Value::Mapping(params),
                matrix_keys: keys.clone(),
                exec: stage.exec.clone(),
            });
            names.push(name);
        }
        out.families.insert(stage.name.clone(), names);
    }
    out
}

/// One matrix value: as written, and as it appears in member names.
#[derive(Debug, Clone)]
struct MatrixValue {
    value: serde_yaml::Value,
    rendered: String,
}

/// Param name -> its values in written order; `None` (errors pushed) when the matrix is malformed.
fn parse_matrix(
    loc: &Locator,
    family: &str,
    foreach: &serde_yaml::Value,
    params: &serde_yaml::Value,
    errors: &mut Vec<ConfigError>,
) -> Option<BTreeMap<String, Vec<MatrixValue>>> {
    let at = |path: &[&str], message: String| {
        loc.nested_error(
            family,
            0,
            path,
            format!("stage `{family}`: foreach: {message}"),
        )
    };
    let serde_yaml::Value::Mapping(mapping) = foreach else {
        errors.push(at(
            &["foreach"],
            "expected a mapping of param names to lists of values, e.g. `foreach: {fold: [0, 1, 2]}`"
                .into(),
        ));
        return None;
    };
    if mapping.is_empty() {
        errors.push(at(
            &["foreach"],
            "names no param; list at least one, e.g. `foreach: {fold: [0, 1, 2]}`".into(),
        ));
        return None;
    }
    let before = errors.len();
    let mut matrix = BTreeMap::new();
    for (key, values) in mapping {
        let Some(key) = key.as_str().filter(|k| is_param_name(k)) else {
            let shown = serde_yaml::to_string(key).unwrap_or_default();
            errors.push(at(
                &["foreach"],
                format!("`{}` is not a param name", shown.trim()),
            ));
            continue;
        };
        if params.get(key).is_some() {
            errors.push(at(
                &["foreach", key],
                format!(
                    "`{key}` is also set under `params:`; a param takes its values from one place"
                ),
            ));
            continue;
        }
        let serde_yaml::Value::Sequence(list) = values else {
            errors.push(at(
                &["foreach", key],
                format!("`{key}` must be a list of values, e.g. `{key}: [a, b]`"),
            ));
            continue;
        };
        if list.is_empty() {
            errors.push(at(
                &["foreach", key],
                format!("`{key}` has no values, so the family would have no members"),
            ));
            continue;
        }
        let mut rendered_seen = BTreeSet::new();
        let mut parsed = Vec::new();
        for value in list {
            match render(value) {
                Ok(rendered) => {
                    if !rendered_seen.insert(rendered.clone()) {
                        errors.push(at(
                            &["foreach", key],
                            format!("`{key}` lists `{rendered}` twice"),
                        ));
                        continue;
                    }
                    parsed.push(MatrixValue {
                        value: value.clone(),
                        rendered,
                    });
                }
                Err(why) => errors.push(at(&["foreach", key], format!("`{key}`: {why}"))),
            }
        }
        matrix.insert(key.to_string(), parsed);
    }
    if errors.len() > before {
        return None;
    }
    // Checked before the product is built: a typo like `seed: [0..9999]` must not allocate first.
    let count = matrix
        .values()
        .try_fold(1usize, |n, v| n.checked_mul(v.len()))
        .filter(|&n| n <= MAX_MEMBERS);
    if count.is_none() {
        let sizes: Vec<String> = matrix
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.len()))
            .collect();
        errors.push(at(
            &["foreach"],
            format!(
                "expands into more than {MAX_MEMBERS} members ({})",
                sizes.join(" × ")
            ),
        ));
        return None;
    }
    Some(matrix)
}

/// Every combination of the matrix, keys in sorted order, the last key varying fastest.
fn combinations(matrix: &BTreeMap<String, Vec<MatrixValue>>) -> Vec<Vec<(String, MatrixValue)>> {
    let mut out: Vec<Vec<(String, MatrixValue)>> = vec![Vec::new()];
    for (key, values) in matrix {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                values.iter().map(move |v| {
                    let mut next = prefix.clone();
                    next.push((key.clone(), v.clone()));
                    next
                })
            })
            .collect();
    }
    out
}

/// A top-level param name as stage kinds spell them.
fn is_param_name(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// How a matrix value appears in member names: numbers, booleans and null as in canonical JSON (`3`,
/// `0.5`, `1.0`, `true`, `null`), strings bare. Strings are not quoted but restricted to characters that
/// need no quoting in a shell argument after `[`, in a block YAML list or in a lock file key, so a member
/// has exactly one spelling.
fn render(value: &serde_yaml::Value) -> Result<String, String> {
    use serde_yaml::Value;
    match value {
        Value::Null => Ok("null".into()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(i.to_string())
            } else if let Some(u) = n.as_u64() {
                Ok(u.to_string())
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map(|f| f.to_string())
                    .ok_or_else(|| format!("`{n}` is not a finite number"))
            }
        }
        Value::String(s) => {
            let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+');
            if !s.is_empty() && s.chars().all(ok) {
                Ok(s.clone())
            } else {
                Err(format!(
                    "{s:?} cannot be part of a member name: use a non-empty string of ASCII letters, \
                     digits, `_`, `-`, `.` and `+`"
                ))
            }
        }
        Value::Sequence(_) | Value::Mapping(_) | Value::Tagged(_) => Err(
            "values must be scalars (strings, numbers, booleans or null), not lists or mappings"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn expand_yaml(stages: &str) -> (Expansion, Vec<String>) {
        let yaml = format!("dataset:\n  root: data\nstages:\n{stages}");
        let p = Pipeline::parse(Path::new("p.yaml"), yaml).expect("parses");
        let mut errors = Vec::new();
        let e = expand(&p, &mut errors);
        (e, errors.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn members_are_named_by_sorted_keys_in_written_value_order() {
        let (e, errors) = expand_yaml(
            "  - name: train\n    kind: toy_map\n    foreach:\n      salt: [x, y]\n      fold: [2, 0]\n    params: {sleep_ms: 0}\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let names: Vec<&str> = e.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "train[fold=2,salt=x]",
                "train[fold=2,salt=y]",
                "train[fold=0,salt=x]",
                "train[fold=0,salt=y]",
            ]
        );
        assert_eq!(e.families["train"].len(), 4);
        let params = &e.stages[1].params;
        assert_eq!(params.get("salt").and_then(|v| v.as_str()), Some("y"));
        assert_eq!(params.get("fold").and_then(|v| v.as_u64()), Some(2));
        assert_eq!(params.get("sleep_ms").and_then(|v| v.as_u64()), Some(0));
        assert_eq!(e.stages[1].family.as_deref(), Some("train"));
    }

    #[test]
    fn values_render_canonically() {
        let v = |s: &str| render(&serde_yaml::from_str(s).expect("yaml"));
        assert_eq!(v("3").as_deref(), Ok("3"));
        assert_eq!(v("-3").as_deref(), Ok("-3"));
        assert_eq!(v("1.0").as_deref(), Ok("1.0"));
        assert_eq!(v("0.50").as_deref(), Ok("0.5"));
        assert_eq!(v("1e-10").as_deref(), Ok("1e-10"));
        assert_eq!(v("true").as_deref(), Ok("true"));
        assert_eq!(v("~").as_deref(), Ok("null"));
        assert_eq!(v("unet-v2.1").as_deref(), Ok("unet-v2.1"));
        assert!(v(".nan").is_err());
        assert!(v("'a b'").is_err());
        assert!(v("'a,b'").is_err());
        assert!(v("''").is_err());
        assert!(v("[1, 2]").is_err());
    }

    #[test]
    fn malformed_matrices_are_located_errors() {
        let stage = |foreach: &str| {
            format!("  - name: t\n    kind: toy_map\n    foreach:\n{foreach}    params:\n      salt: x\n")
        };
        let cases = [
            ("      fold: []\n", "p.yaml:7:7: stage `t`: foreach: `fold` has no values"),
            ("      fold: 3\n", "p.yaml:7:7: stage `t`: foreach: `fold` must be a list"),
            ("      salt: [y]\n", "p.yaml:7:7: stage `t`: foreach: `salt` is also set under `params:`"),
            ("      fold: [[1]]\n", "p.yaml:7:7: stage `t`: foreach: `fold`: values must be scalars"),
            ("      fold: [1, 1]\n", "p.yaml:7:7: stage `t`: foreach: `fold` lists `1` twice"),
            ("      fold: ['a b']\n", "p.yaml:7:7: stage `t`: foreach: `fold`: \"a b\" cannot be part"),
            ("      a b: [1]\n", "p.yaml:6:5: stage `t`: foreach: `a b` is not a param name"),
            (
                "      a: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n      b: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n      c: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n",
                "p.yaml:6:5: stage `t`: foreach: expands into more than 1024 members (a: 11 × b: 11 × c: 11)",
            ),
        ];
        for (foreach, expected) in cases {
            let (e, errors) = expand_yaml(&stage(foreach));
            assert!(e.stages.is_empty(), "{foreach}");
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(errors[0].starts_with(expected), "{foreach}: {}", errors[0]);
        }
        let (_, errors) = expand_yaml("  - name: t\n    kind: toy_map\n    foreach: {}\n");
        assert!(
            errors[0].starts_with("p.yaml:6:5: stage `t`: foreach: names no param"),
            "{errors:?}"
        );
        let (_, errors) = expand_yaml("  - name: t\n    kind: toy_map\n    foreach:\n");
        assert!(
            errors[0].starts_with("p.yaml:6:5: stage `t`: foreach: expected a mapping"),
            "{errors:?}"
        );
        let (_, errors) =
            expand_yaml("  - name: t\n    kind: toy_map\n    foreach: {salt: [x], fold: [0, 0]}\n");
        assert!(
            errors[0].starts_with("p.yaml:6:26: stage `t`: foreach: `fold` lists `0` twice"),
            "{errors:?}"
        );
    }

    #[test]
    fn plain_names_may_not_use_reserved_characters() {
        let (e, errors) = expand_yaml("  - name: a[1]\n    kind: toy_map\n");
        assert!(e.stages.is_empty());
        assert!(
            errors[0].starts_with("p.yaml:4:5: stage name `a[1]` contains `[`"),
            "{errors:?}"
        );
    }

    #[test]
    fn family_inputs_resolve_to_members_in_order() {
        let (e, _) = expand_yaml("  - name: t\n    kind: toy_map\n    foreach: {fold: [1, 0]}\n");
        assert_eq!(
            e.resolve_inputs(&["src".into(), "t".into()]),
            ["src", "t[fold=1]", "t[fold=0]"]
        );
    }
}
