//! The validated stage graph: every stage's kind resolved, params canonicalised, inputs checked, cycles
//! rejected. All validation errors are collected, sorted by line, and reported together.
//!
//! Invariant: a [`Dag`] is acyclic, its `order` is a topological order that is stable (ties broken by the
//! order stages appear in pipeline.yaml), and every artifact a stage needs is produced by exactly one of its
//! inputs (or by several, for a `many` need).

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{ConfigError, ConfigErrors, Pipeline};
use crate::stage::{StageKind, DATASET};

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
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        let names: BTreeSet<&str> = pipeline.stages.iter().map(|s| s.name.as_str()).collect();
        let mut nodes = Vec::new();

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
            let Some(kind) = registry.iter().find(|k| k.kind() == stage.kind) else {
                let known: Vec<&str> = registry.iter().map(|k| k.kind()).collect();
                errors.push(loc.error(
                    &stage.name,
                    0,
                    Some("kind"),
                    format!(
                        "stage `{}`: unknown stage kind `{}`{}; known kinds: {}",
                        stage.name,
                        stage.kind,
                        suggestion(&stage.kind, known.iter().copied()),
                        known.join(", ")
                    ),
                ));
                continue;
            };
            let params = match kind.canonical_params(&stage.params) {
                Ok(p) => p,
                Err(e) => {
                    let hint = unknown_field_hint(&e.message);
                    errors.push(loc.error(
                        &stage.name,
                        0,
                        e.key.as_deref(),
                        format!(
                            "stage `{}` ({}): params: {}{hint}",
                            stage.name, stage.kind, e.message
                        ),
                    ));
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
            let mut sources: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for input in &stage.inputs {
                if input != DATASET && !names.contains(input.as_str()) {
                    errors.push(loc.error(
                        &stage.name,
                        0,
                        Some(input),
                        format!(
                            "stage `{}`: input `{input}` is not a stage in this pipeline{}",
                            stage.name,
                            suggestion(input, names.iter().copied().chain([DATASET]))
                        ),
                    ));
                }
            }
            for need in kind.needs() {
                let providers: Vec<String> = stage
                    .inputs
                    .iter()
                    .filter(|input| provides(pipeline, registry, input, need.artifact))
                    .cloned()
                    .collect();
                let ok = if need.many {
                    !providers.is_empty()
                } else {
                    providers.len() == 1
                };
                if !ok {
                    let producers: Vec<&str> = pipeline
                        .stages
                        .iter()
                        .filter(|s| provides(pipeline, registry, &s.name, need.artifact))
                        .map(|s| s.name.as_str())
                        .collect();
                    let hint = if need.artifact == DATASET {
                        format!("add `{DATASET}` to its inputs")
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
                        &stage.name,
                        0,
                        Some("inputs"),
                        format!(
                            "stage `{}` ({}) needs artifact `{}`, but {problem}; {hint}",
                            stage.name, stage.kind, need.artifact
                        ),
                    ));
                }
                sources.insert(need.artifact.to_string(), providers);
            }
            for (key, problem) in stage.exec.resolve(1).err().unwrap_or_default() {
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
                inputs: stage.inputs.clone(),
                params,
                sources,
                exec: stage.exec.clone(),
            });
        }

        if errors.is_empty() {
            match topological_order(&nodes) {
                Ok(order) => return Ok(Dag { nodes, order }),
                Err(cycle) => errors.push(loc.error(
                    &cycle[0],
                    0,
                    Some("inputs"),
                    format!("cycle: {}", cycle.join(" -> ")),
                )),
            }
        }
        errors.sort_by_key(|e| (e.line, e.column));
        Err(ConfigErrors(errors))
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

    pub fn uses_dataset(&self) -> bool {
        self.nodes
            .iter()
            .any(|n| n.inputs.iter().any(|i| i == DATASET))
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
                if self.uses_dataset() {
                    out.push_str(&format!("  \"{DATASET}\" [shape=cylinder];\n"));
                }
                for &i in &self.order {
                    let n = &self.nodes[i];
                    out.push_str(&format!(
                        "  \"{}\" [label=\"{}\\n({})\"];\n",
                        n.name,
                        n.name,
                        n.kind.kind()
                    ));
                }
                for (a, b) in edges {
                    out.push_str(&format!("  \"{a}\" -> \"{b}\";\n"));
                }
                out.push_str("}\n");
            }
            DagFormat::Mermaid => {
                out.push_str("flowchart LR\n");
                let id = |s: &str| s.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
                if self.uses_dataset() {
                    out.push_str(&format!("  {}[({DATASET})]\n", id(DATASET)));
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

/// Does the stage (or the dataset) called `name` produce `artifact`?
fn provides(
    pipeline: &Pipeline,
    registry: &[Box<dyn StageKind>],
    name: &str,
    artifact: &str,
) -> bool {
    if name == DATASET {
        return artifact == DATASET;
    }
    pipeline
        .stages
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
