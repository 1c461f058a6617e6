//! The validated stage graph: families expanded into their members (`family.rs`), every stage's kind
//! resolved, params canonicalised, inputs checked, cycles rejected. All validation errors are collected,
//! sorted by line, and reported together.
//!
//! Invariant: a [`Dag`] is acyclic, its `order` is a topological order that is stable (ties broken by the
//! order stages appear in pipeline.yaml), and every artifact a stage needs is produced by exactly one of its
//! inputs (or by several, for a `many` need).

use std::collections::{BTreeMap, BTreeSet};

use crate::config::is_dataset_input;
use crate::config::{ConfigError, ConfigErrors, Locator, Pipeline};
use crate::family::{self, Expansion, Member};
use crate::stage::{ParamError, StageKind, DATASET};

/// A stage ready to plan: its kind, canonical params and where each needed artifact comes from.
pub struct Node<'r> {
    pub name: String,
    pub kind: &'r dyn StageKind,
    pub inputs: Vec<String>,
    pub params: serde_json::Value,
    /// Needed artifact name -> the input stages providing it, in `inputs` order.
    pub sources: BTreeMap<String, Vec<String>>,
    /// Run settings (never in the key); threads default to `run -j` when the block leaves them out.
    pub exec: crate::exec::ExecConfig,
}

pub struct Dag<'r> {
    pub nodes: Vec<Node<'r>>,
    /// Indices into `nodes`, dependencies first.
    pub order: Vec<usize>,
    /// Family name -> member names (each a node), in expansion order.
    pub families: BTreeMap<String, Vec<String>>,
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// "(did you mean `x`?)" when some candidate is close enough to be a typo.
pub fn suggestion<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min()
        .map(|(_, c)| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

impl<'r> Dag<'r> {
    pub fn build(
        pipeline: &Pipeline,
        registry: &'r [Box<dyn StageKind>],
    ) -> Result<Dag<'r>, ConfigErrors> {
        let loc = pipeline.locator();
        let mut errors: Vec<ConfigError> = Vec::new();
        let expansion = family::expand(pipeline, &mut errors);
        let stages = &expansion.stages;
        let names: BTreeSet<&str> = pipeline
            .stages
            .iter()
            .map(|s| s.name.as_str())
            .chain(stages.iter().map(|s| s.name.as_str()))
            .collect();
        // A family's members share their entry, so an error about the entry is reported once.
        let mut param_errors_seen: BTreeSet<(&str, String)> = BTreeSet::new();
        let mut nodes = Vec::new();

        for stage in stages {
            let entry = stage.entry_name();
            let Some(kind) = registry.iter().find(|k| k.kind() == stage.kind) else {
                let known: Vec<&str> = registry.iter().map(|k| k.kind()).collect();
                errors.push(loc.error(
                    entry,
                    0,
                    Some("kind"),
                    format!(
                        "stage `{}`: unknown stage kind `{}`{}; known kinds: {}",
                        entry,
                        stage.kind,
                        suggestion(&stage.kind, known.iter().copied()),
                        known.join(", ")
                    ),
                ));
                continue;
            };
            // A kind naming `x@tset` would never be handed anything; a build-time slip, so said plainly.
            let declared = kind.needs().iter().map(|n| n.artifact);
            let declared =
                declared.chain(kind.outputs().iter().map(|o| crate::stage::output_name(o)));
            if let Some((name, e)) = declared
                .filter_map(|n| crate::stage::split_of(n).err().map(|e| (n, e)))
                .next()
            {
                errors.push(loc.error(
                    entry,
                    0,
                    Some("kind"),
                    format!(
                        "stage `{entry}`: kind `{}` declares artifact `{name}`: {e}",
                        stage.kind
                    ),
                ));
                continue;
            }
            let params = match kind.canonical_params(&stage.params) {
                Ok(p) => p,
                Err(e) => {
                    if stage.family.is_some()
                        && !param_errors_seen.insert((entry, e.message.clone()))
                    {
                        continue;
                    }
                    errors.push(family_param_error(&loc, stage, &e).unwrap_or_else(|| {
                        let hint = unknown_field_hint(&e.message);
                        // Name the member only when its own matrix values may be the cause.
                        let label = match e.key.as_deref() {
                            Some(key) if !stage.matrix_keys.iter().any(|k| k == key) => entry,
                            _ => &stage.name,
                        };
                        loc.error(
                            label,
                            0,
                            e.key.as_deref(),
                            format!(
                                "stage `{label}` ({}): params: {}{hint}",
                                stage.kind, e.message
                            ),
                        )
                    }));
                    continue;
                }
            };
            for problem in kind.validate_params(&params) {
                // The locator looks for a `key:` line inside the stage, so the leaf of `lists.train`; a
                // problem of the params as a whole points at `params:`.
                let leaf = problem.key.rsplit('.').next().unwrap_or_default();
                let key = if leaf.is_empty() { "params" } else { leaf };
                errors.push(loc.error(
                    &stage.name,
                    0,
                    Some(key),
                    format!("stage `{}` ({}): params: {problem}", stage.name, stage.kind),
                ));
            }
            if stage.inputs.iter().any(|i| expansion.is_dropped(i)) {
                continue;
            }
            let inputs = expansion.resolve_inputs(&stage.inputs);
            let mut sources: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for input in &stage.inputs {
                let datasets = pipeline.datasets.keys().map(String::as_str);
                if is_dataset_input(input) && pipeline.dataset_for_input(input).is_none() {
                    let declared: Vec<String> =
                        pipeline.datasets.keys().map(|k| format!("`{k}`")).collect();
                    errors.push(loc.error(
                        entry,
                        0,
                        Some(input),
                        format!(
                            "stage `{entry}`: input `{input}` is not a dataset in this pipeline{}; \
                             its datasets are listed as {}",
                            suggestion(input, datasets),
                            declared.join(", ")
                        ),
                    ));
                } else if !is_dataset_input(input) && !names.contains(input.as_str()) {
                    errors.push(loc.error(
                        entry,
                        0,
                        Some(input),
                        format!(
                            "stage `{}`: input `{input}` is not a stage in this pipeline{}",
                            entry,
                            suggestion(input, names.iter().copied().chain(datasets))
                        ),
                    ));
                }
            }
            errors.extend(repeated_members(&loc, &expansion, stage));
            for need in kind.needs() {
                let providers: Vec<String> = inputs
                    .iter()
                    .filter(|input| provides(stages, registry, input, need.artifact))
                    .cloned()
                    .collect();
                let family_input = stage.inputs.iter().find(|i| {
                    expansion.families.get(*i).is_some_and(|members| {
                        members
                            .iter()
                            .any(|m| provides(stages, registry, m, need.artifact))
                    })
                });
                if let (false, Some(family)) = (need.many, family_input) {
                    let members = &expansion.families[family];
                    errors.push(loc.error(
                        entry,
                        0,
                        Some(family),
                        format!(
                            "stage `{entry}` ({}) takes one `{}`, but input `{family}` is a family of {} \
                             {}; a family name stands for all its members, which only a kind taking \
                             many `{}` accepts: list one member instead, such as `{}`",
                            stage.kind,
                            need.artifact,
                            members.len(),
                            if members.len() == 1 { "stage" } else { "stages" },
                            need.artifact,
                            members.first().map(String::as_str).unwrap_or_default()
                        ),
                    ));
                    sources.insert(need.artifact.to_string(), providers);
                    continue;
                }
                let ok = if need.many {
                    need.optional || !providers.is_empty()
                } else {
                    providers.len() == 1
                };
                if !ok {
                    let mut producers: Vec<&str> = stages
                        .iter()
                        .filter(|s| provides(stages, registry, &s.name, need.artifact))
                        .map(|s| s.entry_name())
                        .collect();
                    producers.dedup();
                    let hint = if need.artifact == DATASET {
                        let listed: Vec<String> =
                            pipeline.datasets.keys().map(|k| format!("`{k}`")).collect();
                        format!(
                            "list one of its datasets among its inputs: {}",
                            listed.join(", ")
                        )
                    } else if producers.is_empty() {
                        "no stage in this pipeline produces it".to_string()
                    } else {
                        format!("produced by: {}", producers.join(", "))
                    };
                    let problem = if providers.is_empty() {
                        "none of its inputs provide it".to_string()
                    } else {
                        format!("several inputs provide it ({})", providers.join(", "))
                    };
                    errors.push(loc.error(
                        entry,
                        0,
                        Some("inputs"),
                        format!(
                            "stage `{}` ({}) needs artifact `{}`, but {problem}; {hint}",
                            entry, stage.kind, need.artifact
                        ),
                    ));
                }
                sources.insert(need.artifact.to_string(), providers);
            }
            for (key, problem) in stage.exec.job_resources(1).err().unwrap_or_default() {
                errors.push(loc.error(
                    &stage.name,
                    0,
                    Some(key),
                    format!("stage `{}`: exec.{key}: {problem}", stage.name),
                ));
            }
            nodes.push(Node {
                name: stage.name.clone(),
                kind: kind.as_ref(),
                inputs,
                params,
                sources,
                exec: stage.exec.clone(),
            });
        }

        if errors.is_empty() {
            match topological_order(&nodes) {
                Ok(order) => {
                    return Ok(Dag {
                        nodes,
                        order,
                        families: expansion.families,
                    })
                }
                Err(cycle) => errors.push(loc.error(
                    &cycle[0],
                    0,
                    Some("inputs"),
                    format!("cycle: {}", cycle.join(" -> ")),
                )),
            }
        }
        // Members of one family repeat their entry's errors word for word: keep the first of each.
        let mut seen = BTreeSet::new();
        errors.retain(|e| seen.insert((e.line, e.column, e.message.clone())));
        errors.sort_by_key(|e| (e.line, e.column));
        Err(ConfigErrors(errors))
    }

    /// The stages `name` selects: a stage (or member) alone, or every member of a family, in expansion
    /// order; `None` when it names neither.
    pub fn select(&self, name: &str) -> Option<Vec<usize>> {
        match self.families.get(name) {
            Some(members) => members.iter().map(|m| self.index(m)).collect(),
            None => self.index(name).map(|i| vec![i]),
        }
    }

    /// Every name [`Dag::select`] accepts, for "did you mean" hints.
    pub fn selectable_names(&self) -> impl Iterator<Item = &str> {
        self.nodes
            .iter()
            .map(|n| n.name.as_str())
            .chain(self.families.keys().map(String::as_str))
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Stages that depend on `idx` directly.
    pub fn children(&self, idx: usize) -> Vec<usize> {
        let name = &self.nodes[idx].name;
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].inputs.iter().any(|x| x == name))
            .collect()
    }

    /// `idx` and every stage upstream of it.
    pub fn ancestors_and_self(&self, idx: usize) -> BTreeSet<usize> {
        let mut out = BTreeSet::new();
        let mut todo = vec![idx];
        while let Some(i) = todo.pop() {
            if out.insert(i) {
                todo.extend(self.nodes[i].inputs.iter().filter_map(|n| self.index(n)));
            }
        }
        out
    }

    /// `idx` and every stage downstream of it.
    pub fn descendants_and_self(&self, idx: usize) -> BTreeSet<usize> {
        let mut out = BTreeSet::new();
        let mut todo = vec![idx];
        while let Some(i) = todo.pop() {
            if out.insert(i) {
                todo.extend(self.children(i));
            }
        }
        out
    }

    /// The dataset inputs (`dataset`, `dataset:NAME`) some stage lists, sorted.
    pub fn dataset_inputs(&self) -> BTreeSet<&str> {
        self.nodes
            .iter()
            .flat_map(|n| n.inputs.iter())
            .map(String::as_str)
            .filter(|i| is_dataset_input(i))
            .collect()
    }

    pub fn render(&self, format: DagFormat) -> String {
        let mut out = String::new();
        let edges: Vec<(&str, &str)> = self
            .order
            .iter()
            .flat_map(|&i| {
                let n = &self.nodes[i];
                n.inputs
                    .iter()
                    .map(move |input| (input.as_str(), n.name.as_str()))
            })
            .collect();
        match format {
            DagFormat::Text => {
                for &i in &self.order {
                    let n = &self.nodes[i];
                    let from = if n.inputs.is_empty() {
                        String::new()
                    } else {
                        format!(" <- {}", n.inputs.join(", "))
                    };
                    out.push_str(&format!("{} ({}){from}\n", n.name, n.kind.kind()));
                }
            }
            DagFormat::Dot => {
                out.push_str("digraph pipeline {\n  rankdir=LR;\n");
                for dataset in self.dataset_inputs() {
                    out.push_str(&format!("  \"{dataset}\" [shape=cylinder];\n"));
                }
                // Ids are quoted, so member names (`train[fold=0]`) are valid ids as they are.
                let quoted = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
                for &i in &self.order {
                    let n = &self.nodes[i];
                    out.push_str(&format!(
                        "  \"{}\" [label=\"{}\\n({})\"];\n",
                        quoted(&n.name),
                        quoted(&n.name),
                        n.kind.kind()
                    ));
                }
                for (a, b) in edges {
                    out.push_str(&format!("  \"{}\" -> \"{}\";\n", quoted(a), quoted(b)));
                }
                out.push_str("}\n");
            }
            DagFormat::Mermaid => {
                out.push_str("flowchart LR\n");
                // Mermaid ids must be plain words; names that flatten to the same word (`a-b`, `a_b`, or
                // `t[x=1]` and `t_x_1_`) get a numeric suffix so no two nodes merge.
                let mut ids: BTreeMap<&str, String> = BTreeMap::new();
                let mut taken: BTreeSet<String> = BTreeSet::new();
                let names = self
                    .dataset_inputs()
                    .into_iter()
                    .chain(self.order.iter().map(|&i| self.nodes[i].name.as_str()));
                for name in names {
                    let base = name.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
                    let mut candidate = base.clone();
                    let mut n = 1;
                    while taken.contains(&candidate) {
                        n += 1;
                        candidate = format!("{base}_{n}");
                    }
                    taken.insert(candidate.clone());
                    ids.insert(name, candidate);
                }
                let id = |s: &str| ids.get(s).cloned().unwrap_or_default();
                for dataset in self.dataset_inputs() {
                    out.push_str(&format!("  {}[({dataset})]\n", id(dataset)));
                }
                for &i in &self.order {
                    let n = &self.nodes[i];
                    out.push_str(&format!(
                        "  {}[\"{} ({})\"]\n",
                        id(&n.name),
                        n.name,
                        n.kind.kind()
                    ));
                }
                for (a, b) in edges {
                    out.push_str(&format!("  {} --> {}\n", id(a), id(b)));
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DagFormat {
    Text,
    Dot,
    Mermaid,
}

/// serde says "unknown field `slat`, expected one of `salt`, `fail`": add the likely fix.
pub fn unknown_field_hint(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return String::new();
    };
    let Some((field, expected)) = rest.split_once('`') else {
        return String::new();
    };
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    suggestion(field, candidates)
}

/// A member's params error that is about its family's matrix rather than its own values: a matrix key the
/// kind does not accept, pointed at under `foreach:`. `None` for any other error.
fn family_param_error(loc: &Locator, stage: &Member, e: &ParamError) -> Option<ConfigError> {
    let family = stage.family.as_deref()?;
    let key = e.key.as_deref()?;
    if !e.message.starts_with("unknown field") || !stage.matrix_keys.iter().any(|k| k == key) {
        return None;
    }
    Some(loc.nested_error(
        family,
        0,
        &["foreach", key],
        format!(
            "stage `{family}` ({}): foreach: {}{}; a foreach key must be a param of the kind",
            stage.kind,
            e.message,
            unknown_field_hint(&e.message)
        ),
    ))
}

/// A member listed twice among a stage's inputs, once through its family's name and once by itself:
/// almost certainly a mistake, and it would feed the same artifact twice.
fn repeated_members(loc: &Locator, expansion: &Expansion, stage: &Member) -> Vec<ConfigError> {
    let mut out = Vec::new();
    for (family, members) in &expansion.families {
        if !stage.inputs.contains(family) {
            continue;
        }
        for member in members.iter().filter(|m| stage.inputs.contains(m)) {
            out.push(loc.error(
                stage.entry_name(),
                0,
                Some(family),
                format!(
                    "stage `{}`: input `{member}` is listed twice: by itself and as a member of `{family}`",
                    stage.entry_name()
                ),
            ));
        }
    }
    out
}

/// Does the stage (or the dataset) called `name` produce `artifact`?
fn provides(
    stages: &[Member],
    registry: &[Box<dyn StageKind>],
    name: &str,
    artifact: &str,
) -> bool {
    if is_dataset_input(name) {
        return artifact == DATASET;
    }
    stages
        .iter()
        .find(|s| s.name == name)
        .and_then(|s| registry.iter().find(|k| k.kind() == s.kind))
        .is_some_and(|k| {
            k.outputs()
                .iter()
                .any(|o| crate::stage::output_name(o) == artifact)
        })
}

/// Kahn's algorithm, always taking the earliest-declared ready stage, so the order is stable. On a cycle,
/// returns one cycle as a closed path of stage names.
fn topological_order(nodes: &[Node]) -> Result<Vec<usize>, Vec<String>> {
    let index = |name: &str| nodes.iter().position(|n| n.name == name);
    let deps: Vec<Vec<usize>> = nodes
        .iter()
        .map(|n| n.inputs.iter().filter_map(|i| index(i)).collect())
        .collect();
    let mut done = vec![false; nodes.len()];
    let mut order = Vec::new();
    while order.len() < nodes.len() {
        let Some(next) = (0..nodes.len()).find(|&i| !done[i] && deps[i].iter().all(|&d| done[d]))
        else {
            // Walk unfinished dependencies from any unfinished node until one repeats: that is a cycle.
            let mut path: Vec<usize> = Vec::new();
            let mut at = (0..nodes.len()).find(|&i| !done[i]).unwrap_or(0);
            while !path.contains(&at) {
                path.push(at);
                at = deps[at].iter().copied().find(|&d| !done[d]).unwrap_or(at);
            }
            let start = path.iter().position(|&p| p == at).unwrap_or(0);
            let mut cycle: Vec<usize> = path[start..].to_vec();
            cycle.reverse();
            // Start at the earliest-declared stage so the message is the same whatever the walk found.
            let first = cycle
                .iter()
                .enumerate()
                .min_by_key(|(_, &i)| i)
                .map(|(pos, _)| pos)
                .unwrap_or(0);
            cycle.rotate_left(first);
            let mut names: Vec<String> = cycle.iter().map(|&i| nodes[i].name.clone()).collect();
            names.push(names[0].clone());
            return Err(names);
        };
        done[next] = true;
        order.push(next);
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const HEAD: &str = "dataset:\n  root: data\nstages:\n  - name: ingest\n    kind: ingest\n    inputs: [dataset]\n";

    /// Build `HEAD` + `stages` with the real kinds; the errors as printed when it fails.
    fn build(stages: &str) -> Result<Vec<(String, Vec<String>, serde_json::Value)>, String> {
        let p = Pipeline::parse(Path::new("p.yaml"), format!("{HEAD}{stages}")).expect("parses");
        let registry = crate::stages::registry();
        let dag = Dag::build(&p, &registry).map_err(|e| e.to_string())?;
        Ok(dag
            .order
            .iter()
            .map(|&i| {
                let n = &dag.nodes[i];
                (n.name.clone(), n.inputs.clone(), n.params.clone())
            })
            .collect())
    }

    #[test]
    fn members_are_nodes_with_matrix_params_and_family_inputs_expand() {
        let nodes = build(
            "  - name: split\n    kind: split\n    inputs: [ingest]\n  - name: slice\n    kind: slice\n    inputs: [ingest, split]\n    foreach:\n      segments_per_track: [10, 5]\n    params: {segment_samples: 4096}\n  - name: features\n    kind: features\n    inputs: [dataset, ingest, 'slice[segments_per_track=5]']\n",
        )
        .expect("valid");
        let names: Vec<&str> = nodes.iter().map(|n| n.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "ingest",
                "split",
                "slice[segments_per_track=10]",
                "slice[segments_per_track=5]",
                "features"
            ]
        );
        assert_eq!(nodes[3].2["segments_per_track"], serde_json::json!(5));
        assert_eq!(nodes[3].2["segment_samples"], serde_json::json!(4096));
        assert_eq!(
            nodes[4].1,
            ["dataset", "ingest", "slice[segments_per_track=5]"]
        );
    }

    #[test]
    fn a_family_feeds_only_a_need_for_many() {
        let err = build(
            "  - name: split\n    kind: split\n    inputs: [ingest]\n    foreach: {train: [0.6]}\n    params: {val: 0.2, test: 0.2}\n  - name: slice\n    kind: slice\n    inputs: [ingest, split]\n",
        )
        .unwrap_err();
        assert!(
            err.starts_with("p.yaml:14:22: stage `slice` (slice) takes one `split`, but input `split` is a family of 1 stage;"),
            "{err}"
        );
        assert!(err.contains("such as `split[train=0.6]`"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }

    #[test]
    fn matrix_errors_are_reported_once_per_family_at_the_matrix_key() {
        let err = build(
            "  - name: split\n    kind: split\n    inputs: [ingest]\n    foreach:\n      tran: [0.6, 0.5]\n  - name: other\n    kind: split\n    inputs: [ingest]\n    foreach:\n      train: [0.6, x]\n",
        )
        .unwrap_err();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{err}");
        assert!(
            lines[0]
                .starts_with("p.yaml:11:7: stage `split` (split): foreach: unknown field `tran`"),
            "{err}"
        );
        assert!(lines[0].contains("(did you mean `train`?)"), "{err}");
        assert!(
            lines[1].starts_with(
                "p.yaml:16:7: stage `other[train=x]` (split): params: train: invalid type"
            ),
            "{err}"
        );
    }

    #[test]
    fn mermaid_ids_stay_distinct_when_names_flatten_alike() {
        let p = Pipeline::parse(
            Path::new("p.yaml"),
            format!("{HEAD}  - name: ingest2_sample_rate_1000_\n    kind: ingest\n    inputs: [dataset]\n  - name: ingest2\n    kind: ingest\n    inputs: [dataset]\n    foreach: {{sample_rate: [1000]}}\n"),
        )
        .expect("parses");
        let registry = crate::stages::registry();
        let dag = Dag::build(&p, &registry).expect("valid");
        let mermaid = dag.render(DagFormat::Mermaid);
        assert!(
            mermaid.contains("  ingest2_sample_rate_1000_[\"ingest2_sample_rate_1000_ (ingest)\"]"),
            "{mermaid}"
        );
        assert!(
            mermaid
                .contains("  ingest2_sample_rate_1000__2[\"ingest2[sample_rate=1000] (ingest)\"]"),
            "{mermaid}"
        );
        let dot = dag.render(DagFormat::Dot);
        assert!(
            dot.contains("\"dataset\" -> \"ingest2[sample_rate=1000]\";"),
            "{dot}"
        );
        assert_eq!(dag.select("ingest2").map(|v| v.len()), Some(1));
        assert_eq!(
            dag.select("ingest2[sample_rate=1000]").map(|v| v.len()),
            Some(1)
        );
        assert_eq!(dag.select("nope"), None);
    }

    #[test]
    fn suggestions_catch_typos_only() {
        assert_eq!(
            suggestion("n_mel", ["n_mels", "hop_length"]),
            " (did you mean `n_mels`?)"
        );
        assert_eq!(suggestion("zzzzzz", ["n_mels"]), "");
        assert_eq!(
            unknown_field_hint("unknown field `slat`, expected one of `salt`, `sleep_ms`"),
            " (did you mean `salt`?)"
        );
    }
}
