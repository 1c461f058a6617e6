//! `pipeline.yaml`: parsed with serde_yaml into typed structs, every error located by file, line and column.
//!
//! The file has two sections: `dataset` (where the raw audio is, and optionally how to synthesise it), or
//! `datasets` (several such, by name), and `stages` (a list of `{name, kind, inputs, params, foreach}`). Params stay untyped here; each stage kind
//! validates its own (see `dag.rs`), an entry with `foreach:` is expanded into its members by `family.rs`,
//! and errors are pointed back at their line with [`Locator`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::stage::DATASET;

/// A located configuration error. `line` and `column` are 1-based; both are 0 for an error about the whole
/// file (it cannot be read), which is printed without a position.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl ConfigError {
    /// An error about the file as a whole.
    pub fn whole_file(file: &Path, message: String) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            message,
        }
    }

    /// Whether the error points at a place in the file.
    pub fn has_position(&self) -> bool {
        self.line > 0
    }

    fn render(&self) -> String {
        if self.has_position() {
            format!(
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        } else {
            format!("{}: {}", self.file.display(), self.message)
        }
    }
}

/// Several configuration errors, reported together, sorted by position.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    #[serde(default)]
    dataset: Option<RawDataset>,
    /// Named datasets, in file order (a map would lose it, and `dataset:NAME` inputs name them).
    #[serde(default)]
    datasets: Option<serde_yaml::Mapping>,
    #[serde(default)]
    exec: crate::exec::ExecConfig,
    #[serde(default)]
    remote: Option<crate::remote::RemoteConfig>,
    #[serde(default)]
    stages: Vec<RawStage>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataset {
    root: String,
    #[serde(default)]
    synthetic: Option<serde_yaml::Value>,
    #[serde(default)]
    follow_external_symlinks: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    name: String,
    kind: String,
    #[serde(default)]
    inputs: Vec<String>,
    #[serde(default)]
    params: serde_yaml::Value,
    #[serde(default)]
    exec: crate::exec::ExecConfig,
    #[serde(default, deserialize_with = "present")]
    foreach: Option<serde_yaml::Value>,
}

/// `Some` whenever the key is written, even as `foreach:` with nothing after it: an empty matrix is a
/// mistake to report, not a plain stage.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_yaml::Value>, D::Error> {
    serde_yaml::Value::deserialize(d).map(Some)
}

/// A dataset section, with `root` resolved against the config file's folder.
#[derive(Debug, Clone)]
pub struct DatasetConfig {
    /// `None` for the unnamed `dataset:` section, the key under `datasets:` otherwise.
    pub name: Option<String>,
    /// As written in the file (recorded in lineage; never part of a key).
    pub root_as_written: String,
    pub root: PathBuf,
    /// Parameters of the embedded synthetic corpus; when present the corpus is generated into `root`.
    pub synthetic: Option<serde_yaml::Value>,
    /// Follow symlinks whose target lies outside `root` (off by default: a dataset is what its folder holds,
    /// and a stray link to `/` would otherwise pull in the whole machine).
    pub follow_external_symlinks: bool,
}

impl DatasetConfig {
    /// The input name stages list this dataset under.
    pub fn input(&self) -> String {
        dataset_input(self.name.as_deref())
    }

    /// Its section's path of keys in pipeline.yaml (`["dataset"]` or `["datasets", "gtzan"]`), for locating
    /// errors.
    pub fn section(&self) -> Vec<&str> {
        match &self.name {
            None => vec![DATASET],
            Some(name) => vec!["datasets", name.as_str()],
        }
    }

    /// Its section as written in messages: `dataset` or `datasets.gtzan`.
    pub fn label(&self) -> String {
        self.section().join(".")
    }
}

/// How a stage lists a named dataset (declared under `datasets:`) among its inputs: `dataset:NAME`. The
/// prefix is reserved: no stage name may start with it. (Kept here, not in `stage.rs`: that file's bytes are
/// the stage contract digest in every key, and naming datasets changes no stage's contract.)
pub const DATASET_PREFIX: &str = "dataset:";

/// The input name of a dataset: `dataset` for the unnamed one, `dataset:NAME` for a named one.
pub fn dataset_input(name: Option<&str>) -> String {
    match name {
        None => DATASET.to_string(),
        Some(name) => format!("{DATASET_PREFIX}{name}"),
    }
}

/// Whether an input name stands for a dataset (unnamed or named) rather than a stage.
pub fn is_dataset_input(input: &str) -> bool {
    input == DATASET || input.starts_with(DATASET_PREFIX)
}

/// The field serde names in backticks ("unknown field `rot`", "missing field `root`"), to locate it.
fn serde_field(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("missing field `"))?;
    rest.split('`').next().map(str::to_string)
}

/// Whether `name` may name a dataset: it becomes part of an input name (`dataset:NAME`) and of lock keys,
/// so it is kept to what needs no quoting anywhere.
fn valid_dataset_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
}

/// The `dataset:` and `datasets:` sections as one map keyed by input name, every error located.
fn datasets(
    path: &Path,
    source: &str,
    base: &Path,
    unnamed: Option<RawDataset>,
    named: Option<serde_yaml::Mapping>,
) -> Result<BTreeMap<String, DatasetConfig>, ConfigErrors> {
    let loc = Locator { file: path, source };
    let config = |name: Option<String>, raw: RawDataset| DatasetConfig {
        name,
        root: base.join(&raw.root),
        root_as_written: raw.root,
        synthetic: raw.synthetic,
        follow_external_symlinks: raw.follow_external_symlinks,
    };
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    match (unnamed, named) {
        (Some(_), Some(_)) => errors.push(loc.key_error(
            &["datasets"],
            "both `dataset:` and `datasets:` are set; keep one: name the unnamed dataset under \
             `datasets:` (stages then list it as `dataset:NAME`), or drop `datasets:`"
                .to_string(),
        )),
        (None, None) => errors.push(ConfigError {
            file: path.to_path_buf(),
            line: 1,
            column: 1,
            message: "missing field `dataset` (or `datasets`, a map of named datasets)".to_string(),
        }),
        (Some(raw), None) => {
            out.insert(DATASET.to_string(), config(None, raw));
        }
        (None, Some(map)) => {
            if map.is_empty() {
                errors.push(loc.key_error(
                    &["datasets"],
                    "`datasets:` is empty; name at least one dataset".to_string(),
                ));
            }
            for (key, value) in map {
                let Some(name) = key.as_str().map(str::to_string) else {
                    errors.push(loc.key_error(
                        &["datasets"],
                        format!("datasets: a dataset name must be a string, not {key:?}"),
                    ));
                    continue;
                };
                if !valid_dataset_name(&name) {
                    errors.push(loc.key_error(
                        &["datasets", &name],
                        format!(
                            "datasets: name `{name}` may only use letters, digits, `_` and `-`"
                        ),
                    ));
                    continue;
                }
                match serde_yaml::from_value::<RawDataset>(value) {
                    Ok(raw) => {
                        let ds = config(Some(name), raw);
                        out.insert(ds.input(), ds);
                    }
                    Err(e) => {
                        let text = e.to_string();
                        let message = text.split(" at line ").next().unwrap_or(&text);
                        let field = serde_field(message);
                        let mut at = vec!["datasets", name.as_str()];
                        at.extend(field.as_deref());
                        errors.push(
                            loc.key_error(&at, format!("datasets.{name}: {message}")),
                        );
                    }
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigErrors(errors))
    }
}

#[derive(Debug, Clone)]
pub struct StageConfig {
    pub name: String,
    pub kind: String,
    pub inputs: Vec<String>,
    pub params: serde_yaml::Value,
    /// This stage's `exec:` block over the global one (see `exec.rs`): run settings, never in a key.
    pub exec: crate::exec::ExecConfig,
    /// The matrix of a stage family (param name -> values), as written; `None` for a plain stage.
    pub foreach: Option<serde_yaml::Value>,
}

#[derive(Debug, Clone)]
pub struct Pipeline {
    pub path: PathBuf,
    pub source: String,
    /// Every dataset, keyed by the input name stages list it under: `dataset` for the unnamed one,
    /// `dataset:NAME` for a named one (see [`dataset_input`]).
    pub datasets: BTreeMap<String, DatasetConfig>,
    /// The global `exec:` block.
    pub exec: crate::exec::ExecConfig,
    /// The shared cache (`remote:`): a run setting like `exec:`, never in a key.
    pub remote: Option<crate::remote::RemoteConfig>,
    pub stages: Vec<StageConfig>,
}

impl Pipeline {
    pub fn load(path: &Path) -> Result<Pipeline, ConfigErrors> {
        let source = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError::whole_file(
                path,
                format!("cannot read: {e}"),
            )])
        })?;
        Self::parse(path, source)
    }

    pub fn parse(path: &Path, source: String) -> Result<Pipeline, ConfigErrors> {
        let raw: RawPipeline = serde_yaml::from_str(&source).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            // serde_yaml appends " at line L column C"; the prefix already says where.
            let text = e.to_string();
            let message = text.split(" at line ").next().unwrap_or(&text).to_string();
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line,
                column,
                message,
            }])
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        if let Some(stage) = raw.stages.iter().find(|s| s.exec.executor.is_some()) {
            return Err(ConfigErrors(vec![ConfigError::whole_file(
                path,
                format!(
                    "stage `{}`: exec.executor chooses where the whole run goes, so it belongs in the \
                     global `exec:` block (or `run --executor`), not a stage's",
                    stage.name
                ),
            )]));
        }
        let datasets = datasets(path, &source, base, raw.dataset, raw.datasets)?;
        let global_exec = raw.exec.clone();
        Ok(Pipeline {
            exec: raw.exec,
            remote: raw.remote,
            path: path.to_path_buf(),
            datasets,
            stages: raw
                .stages
                .into_iter()
                .map(|s| StageConfig {
                    name: s.name,
                    kind: s.kind,
                    inputs: s.inputs,
                    params: s.params,
                    exec: s.exec.over(&global_exec),
                    foreach: s.foreach,
                })
                .collect(),
            source,
        })
    }

    /// The unnamed dataset (the `dataset:` section), if the file has one.
    pub fn dataset(&self) -> Option<&DatasetConfig> {
        self.datasets.get(DATASET)
    }

    /// The dataset a stage input names (`dataset` or `dataset:NAME`), if it is one of this pipeline's.
    pub fn dataset_for_input(&self, input: &str) -> Option<&DatasetConfig> {
        self.datasets.get(input)
    }

    /// The folder files named by params are resolved against: the unnamed dataset's root, as always; a
    /// pipeline with named datasets only has no such default, so its project folder (beside pipeline.yaml).
    pub fn param_file_root(&self) -> PathBuf {
        match self.dataset() {
            Some(d) => d.root.clone(),
            None => self.path.parent().unwrap_or(Path::new(".")).to_path_buf(),
        }
    }

    /// How [`Pipeline::param_file_root`] is written in messages.
    pub fn param_file_root_as_written(&self) -> String {
        match self.dataset() {
            Some(d) => format!("dataset root {}", d.root_as_written),
            None => "folder of pipeline.yaml".to_string(),
        }
    }

    pub fn locator(&self) -> Locator<'_> {
        Locator {
            file: &self.path,
            source: &self.source,
        }
    }
}

/// Finds where a stage, or a key inside one, is written, to point errors at their line.
///
/// serde_yaml keeps no positions once a document is parsed into values, so this scans the text: a stage
/// is found by its `name:` line, a key by the first `key:` after it and before the next stage.
pub struct Locator<'a> {
    file: &'a Path,
    source: &'a str,
}

impl Locator<'_> {
    fn stage_lines(&self) -> Vec<(usize, String)> {
        self.source
            .lines()
            .enumerate()
            .filter_map(|(i, line)| {
                let t = line.trim_start().trim_start_matches('-').trim_start();
                let rest = t.strip_prefix("name:")?;
                let name = rest.split('#').next()?.trim().trim_matches(['"', '\'']);
                Some((i, name.to_string()))
            })
            .collect()
    }

    /// Lines (0-based, end exclusive) of the `nth` stage called `name`, from its `name:` line. A family
    /// member (`train[fold=0]`) is found at its family's entry, since only the family is written.
    fn stage_line(&self, name: &str, nth: usize) -> Option<(usize, usize)> {
        self.entry_lines(name, nth).or_else(|| {
            let family = name.strip_suffix(']')?.split_once('[')?.0;
            self.entry_lines(family, nth)
        })
    }

    fn entry_lines(&self, name: &str, nth: usize) -> Option<(usize, usize)> {
        let lines = self.stage_lines();
        let pos = lines
            .iter()
            .enumerate()
            .filter(|(_, (_, n))| n == name)
            .nth(nth)?
            .0;
        let start = lines[pos].0;
        let end = lines.get(pos + 1).map(|l| l.0).unwrap_or(usize::MAX);
        Some((start, end))
    }

    /// An error at the stage `name` (its `nth` occurrence), at `key` inside it when given and found.
    pub fn error(
        &self,
        stage: &str,
        nth: usize,
        key: Option<&str>,
        message: String,
    ) -> ConfigError {
        let lines: Vec<&str> = self.source.lines().collect();
        let (mut line, mut column) = (0, 0);
        if let Some((start, end)) = self.stage_line(stage, nth) {
            line = start;
            column = lines[start].find("name:").unwrap_or(0);
            if let Some(key) = key {
                // The key's own `key:` line, or a name in a list inside the stage (`inputs: [a, b]` or
                // `- b` items), whichever comes first.
                for (i, text) in lines
                    .iter()
                    .enumerate()
                    .take(end.min(lines.len()))
                    .skip(start)
                {
                    let body = text.trim_start();
                    let item = body.strip_prefix('-').map(str::trim_start);
                    let is_key = item
                        .unwrap_or(body)
                        .strip_prefix(key)
                        .is_some_and(|r| r.trim_start().starts_with(':'));
                    let in_list = i > start && (item.is_some() || body.starts_with("inputs"));
                    if let (true, Some(col)) = (is_key || in_list, token_column(text, key)) {
                        line = i;
                        column = col;
                        break;
                    }
                }
            }
        }
        ConfigError {
            file: self.file.to_path_buf(),
            line: line + 1,
            column: column + 1,
            message,
        }
    }
}

impl Locator<'_> {
    /// An error at a nested key of the stage `name` (its `nth` occurrence), given by its path of keys from
    /// the stage (`["foreach", "fold"]`): at the deepest key of the path that is found, block or flow style,
    /// else at the stage's `name:` line. [`Locator::error`] finds the first line mentioning a key anywhere
    /// in the stage, which is ambiguous for a key that may be written both under `params:` and `foreach:`.
    pub fn nested_error(
        &self,
        stage: &str,
        nth: usize,
        path: &[&str],
        message: String,
    ) -> ConfigError {
        let lines: Vec<&str> = self.source.lines().collect();
        let indent = |text: &str| text.len() - text.trim_start().len();
        let Some((start, end)) = self.stage_line(stage, nth) else {
            return self.error(stage, nth, None, message);
        };
        let end = end.min(lines.len());
        // The stage's own keys sit at the column of its `name:` key.
        let name_column = lines[start].find("name:").unwrap_or(0);
        // (line, column) of the deepest key found so far.
        let mut at = (start, name_column);
        for (depth, key) in path.iter().enumerate() {
            let is_key_line = |text: &str| {
                let body = text.trim_start().trim_start_matches('-').trim_start();
                body.strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with(':'))
            };
            let mut hit = None;
            for (i, text) in lines.iter().enumerate().take(end).skip(at.0) {
                let body = text.trim_start();
                if body.is_empty() || body.starts_with('#') {
                    continue;
                }
                let column = text.len() - body.trim_start_matches('-').trim_start().len();
                if depth == 0 {
                    if column == name_column && is_key_line(text) {
                        hit = Some((i, column));
                        break;
                    }
                    continue;
                }
                if i > at.0 && indent(text) <= at.1 {
                    break;
                }
                if i > at.0 && is_key_line(text) {
                    hit = Some((i, column));
                    break;
                }
            }
            // Flow style (`foreach: {fold: [0, 1]}`): the key is on its parent's line.
            if hit.is_none() && depth > 0 {
                let text = lines[at.0];
                let tail = &text[at.1..];
                hit = tail
                    .match_indices(key)
                    .map(|(i, _)| at.1 + i)
                    .find(|&i| {
                        token_column(&text[i..], key) == Some(0)
                            && text[..i].ends_with(['{', ' ', ','])
                            && text[i + key.len()..].trim_start().starts_with(':')
                    })
                    .map(|i| (at.0, i));
            }
            match hit {
                Some(h) => at = h,
                None => break,
            }
        }
        ConfigError {
            file: self.file.to_path_buf(),
            line: at.0 + 1,
            column: at.1 + 1,
            message,
        }
    }

    /// An error at a key outside the stages, given by its path of block-style keys (`["dataset",
    /// "synthetic", "seed"]`): at the deepest key of the path that is found, or without a position when not
    /// even the first one is.
    pub fn key_error(&self, path: &[&str], message: String) -> ConfigError {
        let lines: Vec<&str> = self.source.lines().collect();
        let indent = |text: &str| text.len() - text.trim_start().len();
        let is_content = |text: &str| {
            let body = text.trim_start();
            !body.is_empty() && !body.starts_with('#')
        };
        // (line, indent) of the key found so far; the block below it ends at the first content line that is
        // not indented deeper.
        let mut found: Option<(usize, usize)> = None;
        for key in path {
            let (from, parent_indent) = match found {
                Some((line, ind)) => (line + 1, Some(ind)),
                None => (0, None),
            };
            let mut hit = None;
            for (i, text) in lines.iter().enumerate().skip(from) {
                if !is_content(text) {
                    continue;
                }
                if parent_indent.is_some_and(|p| indent(text) <= p) {
                    break;
                }
                let body = text.trim_start();
                let is_key = body
                    .strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with(':'));
                if is_key && (parent_indent.is_some() || indent(text) == 0) {
                    hit = Some((i, indent(text)));
                    break;
                }
            }
            match hit {
                Some(h) => found = Some(h),
                None => break,
            }
        }
        match found {
            Some((line, column)) => ConfigError {
                file: self.file.to_path_buf(),
                line: line + 1,
                column: column + 1,
                message,
            },
            None => ConfigError::whole_file(self.file, message),
        }
    }
}

/// Byte column of `word` in `text` as a whole name: not inside a longer name such as `data` for `a`.
fn token_column(text: &str, word: &str) -> Option<usize> {
    let is_name = |c: char| c.is_alphanumeric() || matches!(c, '_' | '-' | '.');
    text.match_indices(word).map(|(at, _)| at).find(|&at| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(is_name) && !after.is_some_and(is_name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "dataset:\n  root: data\nstages:\n  - name: a\n    kind: toy_source\n    params:\n      size: 3\n  - name: b\n    kind: toy_map\n    inputs: [a]\n    params:\n      salt: x\n";

    #[test]
    fn parses_and_resolves_root_against_the_config_folder() {
        let p = Pipeline::parse(Path::new("/proj/pipeline.yaml"), YAML.into()).unwrap();
        assert_eq!(
            p.dataset().map(|d| &d.root),
            Some(&PathBuf::from("/proj/data"))
        );
        assert_eq!(p.stages.len(), 2);
        assert_eq!(p.stages[1].inputs, vec!["a"]);
    }

    #[test]
    fn the_unnamed_dataset_is_input_dataset_and_named_ones_dataset_colon_name() {
        let p = Pipeline::parse(Path::new("/proj/pipeline.yaml"), YAML.into()).unwrap();
        assert_eq!(p.datasets.keys().collect::<Vec<_>>(), ["dataset"]);
        let named = YAML.replace(
            "dataset:\n  root: data\n",
            "datasets:\n  gtzan:\n    root: g\n  transfer: {root: t}\n",
        );
        let p = Pipeline::parse(Path::new("/proj/pipeline.yaml"), named).unwrap();
        assert!(p.dataset().is_none());
        let gtzan = p.dataset_for_input("dataset:gtzan").unwrap();
        assert_eq!(gtzan.root, PathBuf::from("/proj/g"));
        assert_eq!(gtzan.label(), "datasets.gtzan");
        assert_eq!(p.datasets.len(), 2);
        let neither = YAML.replace("dataset:\n  root: data\n", "");
        let err = Pipeline::parse(Path::new("p.yaml"), neither).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("p.yaml:1:1: missing field `dataset`"),
            "{err}"
        );
    }

    #[test]
    fn structural_errors_carry_line_and_column() {
        let bad = YAML.replace(
            "    kind: toy_map\n",
            "    kind: toy_map\n    colour: red\n",
        );
        let err = Pipeline::parse(Path::new("p.yaml"), bad).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("p.yaml:10:5: stages[1]: unknown field `colour`"),
            "{text}"
        );
        assert!(!text.contains(" at line "), "{text}");
        assert!(text.contains("unknown field `colour`"), "{text}");
    }

    #[test]
    fn locator_matches_whole_names_not_substrings() {
        let yaml = YAML.replace("inputs: [a]", "inputs: [data, a]");
        let p = Pipeline::parse(Path::new("p.yaml"), yaml).unwrap();
        let e = p.locator().error("b", 0, Some("a"), "bad".into());
        assert_eq!((e.line, e.column), (10, 20));
    }

    #[test]
    fn whole_file_errors_have_no_position() {
        let err = Pipeline::load(Path::new("/nonexistent/p.yaml")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("/nonexistent/p.yaml: cannot read: "),
            "{text}"
        );
        assert!(!err.0[0].has_position());
    }

    #[test]
    fn locator_finds_keys_of_the_dataset_section() {
        let yaml = "dataset:\n  root: data\n  # tracks_per_genre: 1\n  synthetic:\n    seed: 7\n    tracks_per_genre: -1\nstages: []\n";
        let p = Pipeline::parse(Path::new("p.yaml"), yaml.into()).unwrap();
        let loc = p.locator();
        let at = |path: &[&str]| {
            let e = loc.key_error(path, "bad".into());
            (e.line, e.column)
        };
        assert_eq!(at(&["dataset", "synthetic", "tracks_per_genre"]), (6, 5));
        assert_eq!(at(&["dataset", "synthetic", "seed"]), (5, 5));
        // An absent key falls back to the section that should hold it.
        assert_eq!(at(&["dataset", "synthetic", "duplicates"]), (4, 3));
        assert_eq!(at(&["nowhere"]), (0, 0));
        assert_eq!(
            loc.key_error(&["nowhere"], "bad".into()).to_string(),
            "p.yaml: bad"
        );
    }

    #[test]
    fn locator_finds_members_at_their_family_and_keys_under_foreach() {
        let yaml = YAML.replace(
            "    params:\n      salt: x\n",
            "    foreach:\n      salt: [x, y]\n    params:\n      fail: false\n  - name: c\n    kind: toy_map\n    foreach: {fail: [true], salt: [z]}\n    params: {salt: q}\n",
        );
        let p = Pipeline::parse(Path::new("p.yaml"), yaml).unwrap();
        let loc = p.locator();
        let at = |stage: &str, path: &[&str]| {
            let e = loc.nested_error(stage, 0, path, "bad".into());
            (e.line, e.column)
        };
        assert_eq!(at("b[salt=x]", &[]), (8, 5));
        assert_eq!(at("b[salt=x]", &["foreach"]), (11, 5));
        assert_eq!(at("b", &["foreach", "salt"]), (12, 7));
        assert_eq!(at("b", &["params", "fail"]), (14, 7));
        // Flow style: on the parent's line, and never the same key under another parent.
        assert_eq!(at("c", &["foreach", "salt"]), (17, 29));
        assert_eq!(at("c", &["params", "salt"]), (18, 14));
        // A key that is not there: its deepest parent that is.
        assert_eq!(at("c", &["foreach", "seed"]), (17, 5));
        let e = loc.error("b[salt=y]", 0, Some("kind"), "bad".into());
        assert_eq!((e.line, e.column), (9, 5));
    }

    #[test]
    fn locator_points_at_a_key_inside_a_stage() {
        let p = Pipeline::parse(Path::new("p.yaml"), YAML.into()).unwrap();
        let e = p.locator().error("b", 0, Some("salt"), "bad".into());
        assert_eq!((e.line, e.column), (12, 7));
        let e = p.locator().error("a", 0, None, "bad".into());
        assert_eq!(e.line, 4);
    }
}
