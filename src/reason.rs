//! Why a stage must run (or was restored from the cache): one sentence per cause, with old and new values.
//!
//! Reasons come from diffing the key's components against the stage's `pipeline.lock` entry, so they name
//! the param, the input or the code folder that changed, never just "the hash differs".

use std::collections::BTreeMap;
use std::fmt;

use crate::hashing::{code_fingerprint, short, Digest, KeyInput, StageKeyInputs, ENGINE_VERSION};
use crate::lock::StageEntry;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StaleReason {
    NeverRun,
    Forced,
    EngineChanged {
        old: u32,
        new: u32,
    },
    KindChanged {
        old: String,
        new: String,
    },
    CodeChanged {
        dir: String,
        old: Digest,
        new: Digest,
    },
    ParamChanged {
        path: String,
        old: String,
        new: String,
    },
    InputAdded {
        stage: String,
    },
    InputRemoved {
        stage: String,
    },
    /// Same inputs, listed in another order (which input plays which role is part of the key).
    InputsReordered {
        old: Vec<String>,
        new: Vec<String>,
    },
    InputChanged {
        stage: String,
        artifact: String,
        old: Digest,
        new: Digest,
    },
    UpstreamStale {
        stage: String,
    },
    OutputsMissing {
        key: Digest,
    },
    /// A file named by a param (split's `lists:`) has other bytes than when the lock was written.
    FileChanged {
        param: String,
        old: Digest,
        new: Digest,
    },
    /// The store's copy of an output (or of the manifest) is missing or fails its digest.
    OutputBroken {
        name: String,
        digest: Digest,
        corrupt: bool,
    },
    /// The action record for the key cannot be read back.
    RecordUnreadable {
        reason: String,
    },
    /// The lock entry's components give another key than the one it records: nothing about the stage changed,
    /// the lock file did (edited by hand, or damaged).
    LockKeyMismatch {
        recorded: Digest,
        computed: Digest,
    },
    /// The synthetic corpus the dataset stands for does not exist yet, so no key can be computed.
    DatasetNotGenerated {
        root: String,
    },
}

impl fmt::Display for StaleReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StaleReason::NeverRun => write!(f, "never run"),
            StaleReason::Forced => write!(f, "forced with --force"),
            StaleReason::EngineChanged { old, new } => {
                write!(f, "engine format version changed {old} → {new}")
            }
            StaleReason::KindChanged { old, new } => write!(f, "kind changed {old} → {new}"),
            StaleReason::CodeChanged { dir, old, new } => {
                let show = |d: &str| {
                    if d.is_empty() {
                        "none".to_string()
                    } else {
                        short(d).to_string()
                    }
                };
                if dir == crate::hashing::CONTRACT {
                    write!(
                        f,
                        "the stage contract (contract/src/lib.rs) changed {} → {}",
                        show(old),
                        show(new)
                    )
                } else {
                    write!(
                        f,
                        "code in stages/{dir} changed {} → {}",
                        show(old),
                        show(new)
                    )
                }
            }
            StaleReason::ParamChanged { path, old, new } => {
                write!(f, "{path} changed {old} → {new}")
            }
            StaleReason::InputAdded { stage } => write!(f, "input `{stage}` added"),
            StaleReason::InputRemoved { stage } => write!(f, "input `{stage}` removed"),
            StaleReason::InputsReordered { old, new } => write!(
                f,
                "inputs reordered [{}] → [{}]",
                old.join(", "),
                new.join(", ")
            ),
            StaleReason::InputChanged {
                stage,
                artifact,
                old,
                new,
            } => {
                if stage == artifact {
                    write!(f, "input `{stage}` changed {} → {}", short(old), short(new))
                } else {
                    write!(
                        f,
                        "input `{artifact}` from `{stage}` changed {} → {}",
                        short(old),
                        short(new)
                    )
                }
            }
            StaleReason::UpstreamStale { stage } => write!(f, "upstream `{stage}` is stale"),
            StaleReason::OutputsMissing { key } => {
                write!(f, "outputs of key {} missing from the store", short(key))
            }
            StaleReason::FileChanged { param, old, new } => {
                let show = |d: &str| {
                    if d.is_empty() {
                        "none".to_string()
                    } else {
                        short(d).to_string()
                    }
                };
                write!(
                    f,
                    "file params.{param} changed {} → {}",
                    show(old),
                    show(new)
                )
            }
            StaleReason::OutputBroken {
                name,
                digest,
                corrupt: true,
            } => write!(
                f,
                "stored {name} {} is corrupt (moved to artifacts/corrupt/ when run)",
                short(digest)
            ),
            StaleReason::OutputBroken { name, digest, .. } => {
                write!(f, "stored {name} {} is missing", short(digest))
            }
            StaleReason::RecordUnreadable { reason } => {
                write!(f, "its action record is unreadable ({reason})")
            }
            StaleReason::LockKeyMismatch { recorded, computed } => write!(
                f,
                "the recorded key {} in pipeline.lock does not match its recorded components \
                 (hand-edited or corrupt lock); they give {}",
                short(recorded),
                short(computed)
            ),
            StaleReason::DatasetNotGenerated { root } => write!(
                f,
                "the synthetic corpus is not generated yet in {root} (`genrelab run` or `genrelab synth` \
                 makes it)"
            ),
        }
    }
}

/// Leaf values of a JSON object by dotted path; arrays are leaves (compared and shown whole).
fn flatten(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    match value {
        serde_json::Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                flatten(&format!("{prefix}.{k}"), v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// The differences between a lock entry and the components of a newly computed key.
pub fn diff(
    entry: &StageEntry,
    engine_version: u32,
    kind: &str,
    code: &BTreeMap<String, Digest>,
    params: &serde_json::Value,
    inputs: &[KeyInput],
) -> Vec<StaleReason> {
    let mut reasons = Vec::new();
    if entry.engine_version != engine_version {
        reasons.push(StaleReason::EngineChanged {
            old: entry.engine_version,
            new: engine_version,
        });
    }
    if entry.kind != kind {
        reasons.push(StaleReason::KindChanged {
            old: entry.kind.clone(),
            new: kind.to_string(),
        });
    }
    let dirs: std::collections::BTreeSet<&String> = entry.code.keys().chain(code.keys()).collect();
    for dir in dirs {
        let old = entry.code.get(dir).cloned().unwrap_or_default();
        let new = code.get(dir).cloned().unwrap_or_default();
        if old != new {
            reasons.push(StaleReason::CodeChanged {
                dir: dir.clone(),
                old,
                new,
            });
        }
    }
    let (mut old_params, mut new_params) = (BTreeMap::new(), BTreeMap::new());
    flatten("params", &entry.params, &mut old_params);
    flatten("params", params, &mut new_params);
    let paths: std::collections::BTreeSet<&String> =
        old_params.keys().chain(new_params.keys()).collect();
    for path in paths {
        let old = old_params
            .get(path)
            .cloned()
            .unwrap_or_else(|| "(unset)".into());
        let new = new_params
            .get(path)
            .cloned()
            .unwrap_or_else(|| "(unset)".into());
        if old != new {
            reasons.push(StaleReason::ParamChanged {
                path: path.clone(),
                old,
                new,
            });
        }
    }
    for input in inputs {
        match entry.inputs.get(&input.stage) {
            None => reasons.push(StaleReason::InputAdded {
                stage: input.stage.clone(),
            }),
            Some(old) => {
                for (artifact, new) in &input.artifacts {
                    let old = old.get(artifact).cloned().unwrap_or_default();
                    if &old != new {
                        reasons.push(StaleReason::InputChanged {
                            stage: input.stage.clone(),
                            artifact: artifact.clone(),
                            old,
                            new: new.clone(),
                        });
                    }
                }
            }
        }
    }
    for stage in entry.inputs.keys() {
        if !inputs.iter().any(|i| &i.stage == stage) {
            reasons.push(StaleReason::InputRemoved {
                stage: stage.clone(),
            });
        }
    }
    reasons
}

/// The order of the inputs that gives the entry's recorded key from components equal to `inputs` and the
/// rest, when an order other than today's does. Tries every order of up to 6 inputs (720 keys at most).
pub fn recorded_input_order(
    entry: &StageEntry,
    kind: &str,
    code: &BTreeMap<String, Digest>,
    params: &serde_json::Value,
    inputs: &[KeyInput],
    files: &BTreeMap<String, Digest>,
) -> Option<Vec<String>> {
    let n = inputs.len();
    if !(2..=6).contains(&n) {
        return None;
    }
    let fingerprint = code_fingerprint(code);
    let mut order: Vec<usize> = (0..n).collect();
    // Heap's algorithm, iterative: visits every other permutation of `order` once.
    let mut counters = vec![0; n];
    let mut i = 0;
    while i < n {
        if counters[i] < i {
            order.swap(if i % 2 == 0 { 0 } else { counters[i] }, i);
            let permuted: Vec<KeyInput> = order.iter().map(|&k| inputs[k].clone()).collect();
            let key = StageKeyInputs {
                engine_version: ENGINE_VERSION,
                kind,
                code_fingerprint: &fingerprint,
                params,
                inputs: &permuted,
                files,
            }
            .key();
            if key == entry.key {
                return Some(permuted.into_iter().map(|i| i.stage).collect());
            }
            counters[i] += 1;
            i = 0;
        } else {
            counters[i] = 0;
            i += 1;
        }
    }
    None
}

/// Reasons joined into the one sentence `run` and `status` print.
pub fn sentence(reasons: &[StaleReason]) -> String {
    reasons
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> StageEntry {
        StageEntry {
            kind: "features".into(),
            key: "k".into(),
            engine_version: 1,
            code: BTreeMap::from([("features".to_string(), "aaaaaaaaaa".to_string())]),
            params: serde_json::json!({"n_mels": 128, "ref": "max"}),
            params_digest: String::new(),
            inputs: BTreeMap::from([(
                "slice".to_string(),
                BTreeMap::from([("segments".to_string(), "1111111111".to_string())]),
            )]),
            outputs: BTreeMap::new(),
            manifest: String::new(),
            files: BTreeMap::new(),
        }
    }

    #[test]
    fn sentences_name_what_changed_with_old_and_new_values() {
        let code = BTreeMap::from([("features".to_string(), "bbbbbbbbbb".to_string())]);
        let inputs = vec![KeyInput {
            stage: "slice".into(),
            artifacts: BTreeMap::from([("segments".to_string(), "2222222222".to_string())]),
        }];
        let reasons = diff(
            &entry(),
            1,
            "features",
            &code,
            &serde_json::json!({"n_mels": 64, "ref": "max"}),
            &inputs,
        );
        assert_eq!(
            sentence(&reasons),
            "code in stages/features changed aaaaaaaa → bbbbbbbb; params.n_mels changed 128 → 64; \
             input `segments` from `slice` changed 11111111 → 22222222"
        );
    }

    #[test]
    fn a_key_that_its_own_components_do_not_give_is_blamed_on_the_lock() {
        let reason = StaleReason::LockKeyMismatch {
            recorded: "00aa11bb22".into(),
            computed: "4e7570e9ff".into(),
        };
        assert_eq!(
            reason.to_string(),
            "the recorded key 00aa11bb in pipeline.lock does not match its recorded components \
             (hand-edited or corrupt lock); they give 4e7570e9"
        );
        assert!(!reason.to_string().contains("engine format version"));
    }

    #[test]
    fn reordered_inputs_are_told_apart_from_a_hand_edited_key() {
        let input = |stage: &str| KeyInput {
            stage: stage.into(),
            artifacts: BTreeMap::from([("data".to_string(), format!("{stage}{stage}"))]),
        };
        let (code, params) = (BTreeMap::new(), serde_json::json!({}));
        let key_of = |inputs: &[KeyInput]| {
            StageKeyInputs {
                engine_version: ENGINE_VERSION,
                kind: "k",
                code_fingerprint: &code_fingerprint(&code),
                params: &params,
                inputs,
                files: &BTreeMap::new(),
            }
            .key()
        };
        let mut e = entry();
        e.key = key_of(&[input("a"), input("b"), input("c")]);
        let now = [input("c"), input("a"), input("b")];
        assert_eq!(
            recorded_input_order(&e, "k", &code, &params, &now, &BTreeMap::new()),
            Some(vec!["a".to_string(), "b".into(), "c".into()])
        );
        e.key = "00".repeat(32);
        assert_eq!(
            recorded_input_order(&e, "k", &code, &params, &now, &BTreeMap::new()),
            None
        );
    }

    #[test]
    fn identical_components_give_no_reason() {
        let e = entry();
        let inputs = vec![KeyInput {
            stage: "slice".into(),
            artifacts: e.inputs["slice"].clone(),
        }];
        assert!(diff(&e, 1, "features", &e.code, &e.params, &inputs).is_empty());
    }
}
