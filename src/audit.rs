//! `genrelab audit`: the leakage invariants, proven from what the store already holds (never by re-running
//! anything): the manifests pipeline.lock names and the manifests those name, the stages' typed lineage
//! records, what the engine recorded handing each stage (`split_reads`, which no stage writes), and the
//! record tables every data path produces (`tracks` from ingest, `split`, `segments` from slice).
//!
//! Each check reads the tables themselves rather than a stage's account of them: a split is checked from
//! its table and the ingest table's audio digests, a fit set against the digest of the segment ids it must
//! equal. Where only a stage can say what it did with its rows (a CV fold's held-out tracks), the check
//! names the record it relies on.

use std::collections::{BTreeMap, BTreeSet};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::engine::{EngineError, Project};
use crate::hashing::{digest_bytes, short, Digest};
use crate::lock::LockFile;
use crate::manifest::Manifest;
use crate::stage::{ids_digest, Lineage, Record, Split};
use crate::stages::common::tables::{SegmentTable, SplitTable, TrackTable};

/// Culprits named on a check's text line; `--json` lists them all.
const SHOWN: usize = 10;

/// The kinds that may be handed test rows: the tournament for the corpus its models were trained on, and a
/// transfer stage for its own second corpus (whose independence from the first is a check of its own).
const TEST_READERS: [&str; 2] = ["tournament", "transfer"];

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditReport {
    /// The stage whose ancestry was audited; `None` for every stage in pipeline.lock.
    pub target: Option<String>,
    /// The stages audited, sorted.
    pub stages: Vec<String>,
    pub holds: bool,
    pub checks: Vec<Check>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub id: String,
    pub title: String,
    pub holds: bool,
    /// How many things (tables, stages, folds) the check examined; 0 means it held for want of anything
    /// to check in the audited stages.
    pub checked: usize,
    /// Each names the stage and the tracks, segments or artifacts that break the invariant.
    pub failures: Vec<String>,
    /// Failures of stages that reproduce the study's leaks on purpose (a CV `study_replica` fold, a
    /// tournament with `selection: test`), audited as part of another stage's ancestry or of the whole lock:
    /// they are reported, and fail the audit only when such a stage is itself the one audited.
    pub replica_failures: Vec<String>,
    /// The replica stages behind `replica_failures`, sorted.
    pub replica_stages: BTreeSet<String>,
}

impl Check {
    fn new(id: &str, title: &str) -> Check {
        Check {
            id: id.to_string(),
            title: title.to_string(),
            holds: true,
            checked: 0,
            failures: Vec::new(),
            replica_failures: Vec::new(),
            replica_stages: BTreeSet::new(),
        }
    }

    fn fail(&mut self, failure: String) {
        self.holds = false;
        self.failures.push(failure);
    }

    fn fail_at(&mut self, node: &Node, failure: String) {
        if node.replica {
            self.replica_stages.insert(node.name.clone());
            self.replica_failures.push(failure);
        } else {
            self.fail(failure);
        }
    }

    /// `holds  <title>` or `FAILS  <title>: <the first culprits>, and N more`.
    pub fn line(&self) -> String {
        if self.holds {
            let note = if self.checked == 0 {
                " (nothing of the kind among the audited stages)".to_string()
            } else if !self.replica_failures.is_empty() {
                let stages: Vec<&String> = self.replica_stages.iter().collect();
                format!(
                    " (not in the study's replica, leaky on purpose: {})",
                    list(&stages)
                )
            } else {
                String::new()
            };
            return format!("holds  {}{note}", self.title);
        }
        let mut shown: Vec<&str> = self
            .failures
            .iter()
            .take(SHOWN)
            .map(String::as_str)
            .collect();
        let more = self.failures.len().saturating_sub(SHOWN);
        let tail = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        if let Some(last) = shown.pop() {
            let mut text = shown.join("; ");
            if !text.is_empty() {
                text.push_str("; ");
            }
            text.push_str(last);
            format!("FAILS  {}: {text}{tail}", self.title)
        } else {
            format!("FAILS  {}", self.title)
        }
    }
}

impl AuditReport {
    /// The text `genrelab audit` prints: what was audited, a line per check, and the verdict.
    pub fn render(&self) -> String {
        let mut out = match &self.target {
            Some(t) => format!(
                "audit: the ancestry of `{t}` ({} stages)\n",
                self.stages.len()
            ),
            None => format!(
                "audit: every stage in pipeline.lock ({} stages)\n",
                self.stages.len()
            ),
        };
        for check in &self.checks {
            out.push_str(&check.line());
            out.push('\n');
        }
        let failing = self.checks.iter().filter(|c| !c.holds).count();
        let replica = self
            .checks
            .iter()
            .filter(|c| !c.replica_failures.is_empty())
            .count();
        if failing == 0 && replica > 0 {
            out.push_str(&format!(
                "audit: all {} invariants hold; the study's replica breaks {replica} of them, as it is meant to \
                 (audit a replica stage by name to fail on it)\n",
                self.checks.len()
            ));
        } else if failing == 0 {
            out.push_str(&format!(
                "audit: all {} invariants hold\n",
                self.checks.len()
            ));
        } else {
            out.push_str(&format!(
                "audit: {failing} of {} invariants fail\n",
                self.checks.len()
            ));
        }
        out
    }
}

/// One stage run, as its manifest records it.
struct Node {
    name: String,
    digest: Digest,
    manifest: Manifest,
    lineage: Lineage,
    /// Reproduces one of the study's leaks on purpose and is not itself the stage audited.
    replica: bool,
}

impl Node {
    /// The digest of input artifact `artifact` and the manifest of the run that produced it.
    fn input(&self, artifact: &str) -> Option<(&Digest, Option<&Digest>)> {
        self.manifest
            .inputs
            .iter()
            .find_map(|i| i.artifacts.get(artifact).map(|d| (d, i.manifest.as_ref())))
    }

    fn output(&self, artifact: &str) -> Option<&Digest> {
        self.manifest.outputs.get(artifact).map(|o| &o.digest)
    }

    fn fits(&self) -> impl Iterator<Item = Fit<'_>> {
        self.lineage.records.iter().filter_map(|r| match r {
            Record::Fit {
                what,
                split,
                tracks,
                segments,
                segment_ids_digest,
            } => Some(Fit {
                what,
                split: *split,
                tracks,
                segments: *segments,
                digest: segment_ids_digest,
            }),
            _ => None,
        })
    }

    fn is_cv(&self) -> bool {
        self.manifest.kind == "cv"
    }

    /// A stage whose artifact is named `scaler` is a scaler, whatever its kind.
    fn is_scaler(&self) -> bool {
        self.output("scaler").is_some()
    }

    fn test_reads(&self) -> Vec<String> {
        self.manifest
            .split_reads
            .get(&Split::Test)
            .map(|reads| {
                reads
                    .iter()
                    .map(|r| format!("{}.{}", r.stage, r.artifact))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[derive(Clone, Copy)]
struct Fit<'a> {
    what: &'a str,
    split: Split,
    tracks: &'a [String],
    segments: usize,
    digest: &'a str,
}

/// The data path a stage's rows come from: its segment table and the split and track tables behind it.
struct Chain {
    segments: Digest,
    split: Option<Digest>,
    tracks: Option<Digest>,
}

/// The CV fold details a fold states about its parts (fold.json carries the same lists).
#[derive(Deserialize)]
struct FoldDetails {
    held_out_tracks: Vec<String>,
    early_stopping_tracks: Vec<String>,
}

/// The audited stages and the tables they read, each read once.
struct Store<'p> {
    project: &'p Project,
    /// By manifest digest.
    nodes: BTreeMap<Digest, Node>,
    tracks: BTreeMap<Digest, TrackTable>,
    splits: BTreeMap<Digest, SplitTable>,
    segments: BTreeMap<Digest, SegmentTable>,
}

impl<'p> Store<'p> {
    fn read<T: DeserializeOwned>(&self, digest: &str, what: &str) -> Result<T, EngineError> {
        let bytes = self.project.blobs().read(digest)?;
        if digest_bytes(&bytes) != digest {
            return Err(EngineError::Other(format!(
                "{what} {} no longer matches its digest; `genrelab verify` names what is damaged",
                short(digest)
            )));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| EngineError::Other(format!("{what} {}: not readable: {e}", short(digest))))
    }

    /// Every manifest reachable from `roots` (stage name, manifest digest) through the inputs it names.
    fn load(
        project: &'p Project,
        roots: Vec<(String, Digest)>,
        explicit: &BTreeSet<Digest>,
    ) -> Result<Self, EngineError> {
        let mut store = Store {
            project,
            nodes: BTreeMap::new(),
            tracks: BTreeMap::new(),
            splits: BTreeMap::new(),
            segments: BTreeMap::new(),
        };
        let mut todo = roots;
        while let Some((name, digest)) = todo.pop() {
            if store.nodes.contains_key(&digest) {
                continue;
            }
            if !project.blobs().contains(&digest) {
                return Err(EngineError::Other(format!(
                    "{name}: manifest {} is not in the store (collected?); run `genrelab run` first",
                    short(&digest)
                )));
            }
            let manifest: Manifest = store.read(&digest, &format!("{name}: manifest"))?;
            let lineage: Lineage =
                serde_json::from_value(manifest.lineage.clone()).map_err(|e| {
                    EngineError::Other(format!("{name}: lineage records not readable: {e}"))
                })?;
            for input in &manifest.inputs {
                if let Some(d) = &input.manifest {
                    todo.push((input.stage.clone(), d.clone()));
                }
            }
            store.nodes.insert(
                digest.clone(),
                Node {
                    replica: is_replica(&manifest) && !explicit.contains(&digest),
                    name,
                    digest,
                    manifest,
                    lineage,
                },
            );
        }
        // Every table a node makes or reads, by the artifact names the data-path kinds give them.
        let mut wanted: BTreeMap<&'static str, BTreeSet<(String, Digest)>> = BTreeMap::new();
        for node in store.nodes.values() {
            for name in ["tracks", "split", "segments"] {
                let mut add = |d: &Digest| {
                    wanted
                        .entry(name)
                        .or_default()
                        .insert((node.name.clone(), d.clone()));
                };
                if let Some(d) = node.output(name) {
                    add(d);
                }
                if let Some((d, _)) = node.input(name) {
                    add(d);
                }
            }
        }
        for (name, set) in wanted {
            for (stage, digest) in set {
                let what = format!("{stage}: `{name}` table");
                match name {
                    "tracks" if !store.tracks.contains_key(&digest) => {
                        let t = store.read(&digest, &what)?;
                        store.tracks.insert(digest, t);
                    }
                    "split" if !store.splits.contains_key(&digest) => {
                        let t = store.read(&digest, &what)?;
                        store.splits.insert(digest, t);
                    }
                    "segments" if !store.segments.contains_key(&digest) => {
                        let t = store.read(&digest, &what)?;
                        store.segments.insert(digest, t);
                    }
                    _ => {}
                }
            }
        }
        Ok(store)
    }

    /// Nodes in name order (then manifest), so every report lists them the same way.
    fn sorted(&self) -> Vec<&Node> {
        let mut nodes: Vec<&Node> = self.nodes.values().collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name).then(a.digest.cmp(&b.digest)));
        nodes
    }

    /// The data path behind a node's `segments` input: the slice run that made it and its own inputs.
    fn chain(&self, node: &Node) -> Option<Chain> {
        let (segments, producer) = node.input("segments")?;
        let slice = producer.and_then(|d| self.nodes.get(d));
        Some(Chain {
            segments: segments.clone(),
            split: slice.and_then(|s| s.input("split")).map(|(d, _)| d.clone()),
            tracks: slice
                .and_then(|s| s.input("tracks"))
                .map(|(d, _)| d.clone()),
        })
    }

    /// The track tables (by digest) that stages upstream of `node` fitted models on, with those stages.
    fn fitted_corpora_upstream(&self, node: &Node) -> BTreeMap<Digest, BTreeSet<String>> {
        let mut corpora: BTreeMap<Digest, BTreeSet<String>> = BTreeMap::new();
        for a in self.ancestors(&node.digest) {
            let Some(anc) = self.nodes.get(&a) else {
                continue;
            };
            if anc.fits().next().is_none() || anc.is_scaler() {
                continue;
            }
            if let Some(tracks) = self.chain(anc).and_then(|c| c.tracks) {
                corpora.entry(tracks).or_default().insert(anc.name.clone());
            }
        }
        corpora
    }

    /// Every ancestor of `digest` (manifest digests), not itself.
    fn ancestors(&self, digest: &Digest) -> BTreeSet<Digest> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![digest.clone()];
        while let Some(d) = todo.pop() {
            if let Some(node) = self.nodes.get(&d) {
                for input in &node.manifest.inputs {
                    if let Some(m) = &input.manifest {
                        if seen.insert(m.clone()) {
                            todo.push(m.clone());
                        }
                    }
                }
            }
        }
        seen
    }
}

/// A stage whose params ask for one of the study's leaks, to show it: a CV fold in `study_replica` mode, a
/// tournament choosing its champion on test.
fn is_replica(manifest: &Manifest) -> bool {
    match manifest.kind.as_str() {
        "cv" => serde_json::from_value::<crate::stages::cv::Params>(manifest.params.clone())
            .is_ok_and(|p| p.mode == crate::stages::cv::Mode::StudyReplica),
        "tournament" => {
            serde_json::from_value::<crate::stages::tournament::Params>(manifest.params.clone())
                .is_ok_and(|p| p.selection == crate::stages::tournament::Selection::Test)
        }
        _ => false,
    }
}

/// Track id -> the splits a split table puts it in.
fn placement(table: &SplitTable) -> BTreeMap<&str, Vec<Split>> {
    let mut at: BTreeMap<&str, Vec<Split>> = BTreeMap::new();
    for split in Split::ALL {
        for id in table.ids(split) {
            at.entry(id.as_str()).or_default().push(split);
        }
    }
    at
}

fn splits_text(splits: &[Split]) -> String {
    splits
        .iter()
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join(" and ")
}

/// Up to `SHOWN` items, then how many more.
fn list<S: AsRef<str>>(items: &[S]) -> String {
    let mut text = items
        .iter()
        .take(SHOWN)
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        text.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    text
}

/// Audit the ancestry of stage `target` (by name, as pipeline.lock records it), or every stage in the lock.
pub fn audit(project: &Project, target: Option<&str>) -> Result<AuditReport, EngineError> {
    match target {
        Some(t) => audit_stages(project, Some(&[t.to_string()]), Some(t)),
        None => audit_stages(project, None, None),
    }
}

/// Audit the ancestry of `stages` (every stage in the lock for `None`); `label` names them in the report.
pub fn audit_stages(
    project: &Project,
    stages: Option<&[String]>,
    label: Option<&str>,
) -> Result<AuditReport, EngineError> {
    let lock = LockFile::load(&project.lock_path)?;
    if lock.stages.is_empty() {
        return Err(EngineError::Other(format!(
            "{} records no stage: there is nothing to audit (`genrelab run` writes it)",
            project.lock_path.display()
        )));
    }
    let roots: Vec<(String, Digest)> = match stages {
        None => lock
            .stages
            .iter()
            .map(|(name, e)| (name.clone(), e.manifest.clone()))
            .collect(),
        Some(names) => names
            .iter()
            .map(|name| {
                lock.stages
                    .get(name)
                    .map(|e| (name.clone(), e.manifest.clone()))
                    .ok_or_else(|| {
                        EngineError::UnknownStage(
                            name.clone(),
                            format!(" in {}", project.lock_path.display()),
                        )
                    })
            })
            .collect::<Result<_, _>>()?,
    };
    // The stages named on the command line answer for their own leaks, replica or not.
    let explicit: BTreeSet<Digest> = match stages {
        Some(_) => roots.iter().map(|(_, d)| d.clone()).collect(),
        None => BTreeSet::new(),
    };
    let store = Store::load(project, roots, &explicit)?;
    let checks = vec![
        split_tracks(&store),
        split_audio(&store),
        segments_in_split(&store),
        scaler_fits(&store),
        weight_fits(&store),
        selected_by_val(&store),
        test_readers(&store),
        test_after_selection(&store),
        cv_grouped(&store),
        cv_early_stopping(&store),
        transfer_audio(&store),
    ];
    let stages: BTreeSet<String> = store.nodes.values().map(|n| n.name.clone()).collect();
    Ok(AuditReport {
        target: label.map(str::to_string),
        stages: stages.into_iter().collect(),
        holds: checks.iter().all(|c| c.holds),
        checks,
    })
}

/// Invariant 1, tracks: from every split table (the study's corpus and any transfer corpus alike).
fn split_tracks(store: &Store<'_>) -> Check {
    let mut check = Check::new(
        "split-tracks",
        "no track is in two of train, val and test (every corpus's split table)",
    );
    for node in store.sorted() {
        let Some(table) = node.output("split").and_then(|d| store.splits.get(d)) else {
            continue;
        };
        check.checked += 1;
        for (track, splits) in placement(table) {
            if splits.len() > 1 {
                check.fail_at(
                    node,
                    format!(
                        "{}: track {track} is in {}",
                        node.name,
                        splits_text(&splits)
                    ),
                );
            }
        }
        let known: Option<BTreeSet<&str>> = node
            .input("tracks")
            .and_then(|(d, _)| store.tracks.get(d))
            .map(|t| t.tracks.iter().map(|t| t.id.as_str()).collect());
        if let Some(known) = known {
            for (track, _) in placement(table) {
                if !known.contains(track) {
                    check.fail_at(
                        node,
                        format!(
                            "{}: track {track} is not in the track table it split",
                            node.name
                        ),
                    );
                }
            }
        }
    }
    check
}

/// Invariant 1, audio: tracks grouped by the ingest table's digest of their decoded audio, so a copy under
/// another name (or in another container) counts as the same track, whatever the split says its groups are.
fn split_audio(store: &Store<'_>) -> Check {
    let mut check = Check::new(
        "split-audio",
        "no audio (by content digest) is in two of train, val and test",
    );
    for node in store.sorted() {
        let Some(table) = node.output("split").and_then(|d| store.splits.get(d)) else {
            continue;
        };
        let Some(tracks) = node.input("tracks").and_then(|(d, _)| store.tracks.get(d)) else {
            check.fail_at(
                node,
                format!(
                    "{}: reads no track table, so its split cannot be checked for identical audio",
                    node.name
                ),
            );
            continue;
        };
        check.checked += 1;
        let at = placement(table);
        let mut by_audio: BTreeMap<&str, Vec<(&str, Split)>> = BTreeMap::new();
        for t in &tracks.tracks {
            for &split in at.get(t.id.as_str()).into_iter().flatten() {
                by_audio
                    .entry(t.audio_digest.as_str())
                    .or_default()
                    .push((t.id.as_str(), split));
            }
        }
        for (audio, members) in by_audio {
            let splits: BTreeSet<Split> = members.iter().map(|m| m.1).collect();
            let names: BTreeSet<&str> = members.iter().map(|m| m.0).collect();
            if splits.len() > 1 && names.len() > 1 {
                let named: Vec<String> = members
                    .iter()
                    .map(|(id, split)| format!("{id} ({split})"))
                    .collect();
                check.fail_at(
                    node,
                    format!(
                        "{}: one audio ({}) under {}",
                        node.name,
                        short(audio),
                        named.join(", ")
                    ),
                );
            }
        }
    }
    check
}

/// Invariant 2, segments: each segment's split is the one its track's split table puts the track in.
fn segments_in_split(store: &Store<'_>) -> Check {
    let mut check = Check::new("segments-in-split", "every segment is in its track's split");
    for node in store.sorted() {
        let Some(table) = node.output("segments").and_then(|d| store.segments.get(d)) else {
            continue;
        };
        let Some(split) = node.input("split").and_then(|(d, _)| store.splits.get(d)) else {
            check.fail_at(
                node,
                format!(
                    "{}: reads no split table to check its segments against",
                    node.name
                ),
            );
            continue;
        };
        check.checked += 1;
        let at = placement(split);
        for s in &table.segments {
            match at.get(s.track.as_str()) {
                Some(splits) if splits == &[s.split] => {}
                Some(splits) => check.fail_at(
                    node,
                    format!(
                        "{}: segment {} is in {}, its track in {}",
                        node.name,
                        s.id,
                        s.split,
                        splits_text(splits)
                    ),
                ),
                None => check.fail_at(
                    node,
                    format!(
                        "{}: segment {} ({}) comes from a track in no split",
                        node.name, s.id, s.split
                    ),
                ),
            }
        }
    }
    check
}

/// What is wrong with `fit` as a statement of "exactly the train split's segments of this data path".
fn fit_problems(store: &Store<'_>, chain: Option<&Chain>, fit: Fit<'_>) -> Vec<String> {
    let Some(chain) = chain else {
        return vec![format!(
            "{} is recorded without a segment table to check it against",
            fit.what
        )];
    };
    let Some(segments) = store.segments.get(&chain.segments) else {
        return vec![format!(
            "{}: its segment table is not among the audited artifacts",
            fit.what
        )];
    };
    let split_at = chain
        .split
        .as_ref()
        .and_then(|d| store.splits.get(d))
        .map(placement)
        .unwrap_or_default();
    let mut problems = Vec::new();
    if fit.split != Split::Train {
        problems.push(format!(
            "{} fitted on {} rows ({} segments of {} tracks: {})",
            fit.what,
            fit.split,
            fit.segments,
            fit.tracks.len(),
            list(fit.tracks)
        ));
        return problems;
    }
    let train: Vec<&str> = segments
        .of_split(Split::Train)
        .map(|s| s.id.as_str())
        .collect();
    let train_tracks: BTreeSet<&str> = segments
        .of_split(Split::Train)
        .map(|s| s.track.as_str())
        .collect();
    let extra: Vec<String> = fit
        .tracks
        .iter()
        .filter(|t| !train_tracks.contains(t.as_str()))
        .map(|t| match split_at.get(t.as_str()) {
            Some(splits) => format!("{t} ({})", splits_text(splits)),
            None => t.clone(),
        })
        .collect();
    let recorded: BTreeSet<&str> = fit.tracks.iter().map(String::as_str).collect();
    let missing: Vec<&str> = train_tracks.difference(&recorded).copied().collect();
    if !extra.is_empty() {
        problems.push(format!(
            "{} fitted on tracks outside train: {}",
            fit.what,
            list(&extra)
        ));
    }
    if !missing.is_empty() {
        problems.push(format!(
            "{} not fitted on train tracks {}",
            fit.what,
            list(&missing)
        ));
    }
    if extra.is_empty()
        && missing.is_empty()
        && (fit.segments != train.len() || fit.digest != ids_digest(train.iter().copied()))
    {
        problems.push(format!(
            "{} fitted on {} segments that are not the {} train segments of its tracks",
            fit.what,
            fit.segments,
            train.len()
        ));
    }
    problems
}

/// A CV fold's Fit records about `needle` (scaler statistics or model weights), by split.
fn cv_fits<'a>(node: &'a Node, needle: &str) -> BTreeMap<Split, Fit<'a>> {
    node.fits()
        .filter(|f| f.what.contains(needle))
        .map(|f| (f.split, f))
        .collect()
}

/// Invariant 2, scalers: a scaler's fit set is exactly its data path's train segments (the digest of their
/// ids in table order); a CV fold's scaler is fitted on exactly the rows its weights are.
fn scaler_fits(store: &Store<'_>) -> Check {
    let mut check = Check::new(
        "scaler-fit",
        "every scaler is fitted on exactly its training segments (each CV fold's on its fold's)",
    );
    for node in store.sorted() {
        if node.is_cv() {
            check.checked += 1;
            let scaler = cv_fits(node, "scaler");
            let weights = cv_fits(node, "weights");
            if scaler.is_empty() || weights.is_empty() {
                check.fail_at(
                    node,
                    format!(
                        "{}: records no fit set for its scaler or its weights",
                        node.name
                    ),
                );
                continue;
            }
            let splits: BTreeSet<Split> = scaler.keys().chain(weights.keys()).copied().collect();
            for split in splits {
                let (s, w) = (scaler.get(&split), weights.get(&split));
                let same = match (s, w) {
                    (Some(s), Some(w)) => {
                        s.tracks == w.tracks && s.segments == w.segments && s.digest == w.digest
                    }
                    _ => false,
                };
                if same {
                    continue;
                }
                let count = |f: Option<&Fit<'_>>| f.map(|f| f.segments).unwrap_or(0);
                let tracks = |f: Option<&Fit<'_>>| -> BTreeSet<String> {
                    f.map(|f| f.tracks.iter().cloned().collect())
                        .unwrap_or_default()
                };
                let only: Vec<String> = tracks(s).difference(&tracks(w)).cloned().collect();
                let mut text = format!(
                    "{}: its scaler is fitted on {} {split} segments, its weights on {}",
                    node.name,
                    count(s),
                    count(w)
                );
                if !only.is_empty() {
                    text.push_str(&format!(" (scaler-only tracks: {})", list(&only)));
                }
                check.fail_at(node, text);
            }
            continue;
        }
        if !node.is_scaler() {
            continue;
        }
        check.checked += 1;
        let chain = store.chain(node);
        let mut any = false;
        for fit in node.fits() {
            any = true;
            for problem in fit_problems(store, chain.as_ref(), fit) {
                check.fail_at(node, format!("{}: {problem}", node.name));
            }
        }
        if !any {
            check.fail_at(
                node,
                format!("{}: makes a scaler but records no fit set", node.name),
            );
        }
    }
    check
}

/// Invariant 3, weights: every other fit (model weights, probes, fine-tuning) is exactly the train segments
/// of its data path; a CV fold fits only inside the train and val pool.
fn weight_fits(store: &Store<'_>) -> Check {
    let mut check = Check::new(
        "weights-fit",
        "every model's weights are fitted on training segments only",
    );
    for node in store.sorted() {
        if node.is_scaler() {
            continue;
        }
        let fits: Vec<Fit<'_>> = node.fits().collect();
        if fits.is_empty() {
            continue;
        }
        check.checked += 1;
        if node.is_cv() {
            for fit in fits.iter().filter(|f| f.split == Split::Test) {
                check.fail_at(
                    node,
                    format!(
                        "{}: {} fitted on {} test segments",
                        node.name, fit.what, fit.segments
                    ),
                );
            }
            continue;
        }
        let chain = store.chain(node);
        for fit in fits {
            for problem in fit_problems(store, chain.as_ref(), fit) {
                check.fail_at(node, format!("{}: {problem}", node.name));
            }
        }
    }
    check
}

/// Invariant 3, selection: every Selected record (early stopping, the learning-rate plateau, the
/// tournament's champion) names val.
fn selected_by_val(store: &Store<'_>) -> Check {
    let mut check = Check::new(
        "selected-by-val",
        "early stopping, learning-rate schedules and the champion are chosen on val only",
    );
    for node in store.sorted() {
        for record in &node.lineage.records {
            if let Record::Selected { what, by, chosen } = record {
                check.checked += 1;
                if *by != Split::Val {
                    check.fail_at(
                        node,
                        format!("{}: {what} chosen on {by} ({chosen})", node.name),
                    );
                }
            }
        }
    }
    check
}

/// Invariant 3, who saw test: from the engine's record of what it handed each stage, which no stage's own
/// lineage can change.
fn test_readers(store: &Store<'_>) -> Check {
    let mut check = Check::new(
        "test-readers",
        "test rows are handed only to the tournament (a transfer stage: its own corpus's), each to one stage",
    );
    let mut readers: BTreeMap<Digest, (String, BTreeMap<String, bool>)> = BTreeMap::new();
    for node in store.sorted() {
        check.checked += 1;
        let Some(reads) = node.manifest.split_reads.get(&Split::Test) else {
            continue;
        };
        if !TEST_READERS.contains(&node.manifest.kind.as_str()) {
            check.fail_at(
                node,
                format!(
                    "{} (kind {}) was handed {}",
                    node.name,
                    node.manifest.kind,
                    node.test_reads().join(", ")
                ),
            );
        }
        if node.manifest.kind == "transfer" {
            let trained_on = store.fitted_corpora_upstream(node);
            for read in reads {
                let corpus = node
                    .manifest
                    .inputs
                    .iter()
                    .find(|i| i.artifacts.get(&read.artifact) == Some(&read.digest))
                    .and_then(|i| i.manifest.as_ref())
                    .and_then(|m| store.nodes.get(m))
                    .and_then(|producer| store.chain(producer))
                    .and_then(|c| c.tracks);
                if let Some(trainers) = corpus.and_then(|c| trained_on.get(&c)) {
                    check.fail_at(
                        node,
                        format!(
                            "{} was handed {}.{}, test rows of the corpus {} trained on",
                            node.name,
                            read.stage,
                            read.artifact,
                            trainers.iter().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    );
                }
            }
        }
        for read in reads {
            readers
                .entry(read.digest.clone())
                .or_insert_with(|| (format!("{}.{}", read.stage, read.artifact), BTreeMap::new()))
                .1
                .insert(node.name.clone(), node.replica);
        }
    }
    for (artifact, stages) in readers.into_values() {
        if stages.len() > 1 {
            let failure = format!(
                "{artifact} was handed to {} stages: {}",
                stages.len(),
                stages.keys().cloned().collect::<Vec<_>>().join(", ")
            );
            // A replica reading test beside the honest reader is the replica's leak, not the pipeline's.
            if stages.values().filter(|&&replica| !replica).count() > 1 {
                check.fail(failure);
            } else {
                check
                    .replica_stages
                    .extend(stages.into_iter().filter(|s| s.1).map(|s| s.0));
                check.replica_failures.push(failure);
            }
        }
    }
    check
}

/// Invariant 3, order: a stage handed test scores it once, and every choice it records comes before.
fn test_after_selection(store: &Store<'_>) -> Check {
    let mut check = Check::new(
        "test-once-after-selection",
        "test is scored once, after the choice, by each stage handed it",
    );
    for node in store.sorted() {
        let handed = node.manifest.split_reads.contains_key(&Split::Test);
        let is_tournament = node.manifest.kind == "tournament";
        if !handed && !is_tournament {
            continue;
        }
        check.checked += 1;
        let records = &node.lineage.records;
        let scored: Vec<usize> = records
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                matches!(
                    r,
                    Record::Scored {
                        split: Split::Test,
                        ..
                    }
                )
            })
            .map(|(i, _)| i)
            .collect();
        let selected: Vec<usize> = records
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, Record::Selected { .. }))
            .map(|(i, _)| i)
            .collect();
        match scored.as_slice() {
            [] if handed => check.fail_at(
                node,
                format!(
                    "{}: handed {} but records no score on it",
                    node.name,
                    node.test_reads().join(", ")
                ),
            ),
            [] => check.fail_at(node, format!("{}: records no score on test", node.name)),
            [once] => {
                if let Some(after) = selected.iter().find(|&&i| i > *once) {
                    if let Record::Selected { what, by, .. } = &records[*after] {
                        check.fail_at(
                            node,
                            format!("{}: {what} chosen on {by} after test was scored", node.name),
                        );
                    }
                }
            }
            many => check.fail_at(
                node,
                format!("{}: scores test {} times", node.name, many.len()),
            ),
        }
        if is_tournament && selected.is_empty() {
            check.fail_at(
                node,
                format!("{}: records no choice of a champion", node.name),
            );
        }
    }
    check
}

/// A fold's stated parts, or the failure that they are not stated.
fn fold_details(node: &Node) -> Result<FoldDetails, String> {
    serde_json::from_value(node.lineage.details.clone()).map_err(|_| {
        format!(
            "{}: its lineage names no held-out and early-stopping tracks",
            node.name
        )
    })
}

/// Pairs (a in `left`, b in `right`, a != b) with the same audio digest, as `a ~ b`.
fn same_audio(tracks: Option<&TrackTable>, left: &[String], right: &BTreeSet<&str>) -> Vec<String> {
    let Some(tracks) = tracks else {
        return Vec::new();
    };
    let audio: BTreeMap<&str, &str> = tracks
        .tracks
        .iter()
        .map(|t| (t.id.as_str(), t.audio_digest.as_str()))
        .collect();
    let mut by_audio: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for id in right {
        if let Some(a) = audio.get(id) {
            by_audio.entry(a).or_default().push(id);
        }
    }
    let mut pairs = BTreeSet::new();
    for id in left {
        let Some(a) = audio.get(id.as_str()) else {
            continue;
        };
        for &other in by_audio.get(a).into_iter().flatten() {
            if other != id.as_str() {
                pairs.insert(if id.as_str() < other {
                    (id.as_str(), other)
                } else {
                    (other, id.as_str())
                });
            }
        }
    }
    pairs
        .into_iter()
        .map(|(a, b)| format!("{a} ~ {b}"))
        .collect()
}

/// Invariant 4, grouping: a fold's held-out tracks, and their audio, are not among its training rows.
fn cv_grouped(store: &Store<'_>) -> Check {
    let mut check = Check::new(
        "cv-grouped",
        "CV folds are grouped by track and by duplicate audio: no held-out track trains its fold",
    );
    for node in store.sorted().into_iter().filter(|n| n.is_cv()) {
        check.checked += 1;
        let details = match fold_details(node) {
            Ok(d) => d,
            Err(e) => {
                check.fail_at(node, e);
                continue;
            }
        };
        let trained: BTreeSet<&str> = cv_fits(node, "weights")
            .values()
            .flat_map(|f| f.tracks.iter().map(String::as_str))
            .collect();
        let shared: Vec<&String> = details
            .held_out_tracks
            .iter()
            .filter(|t| trained.contains(t.as_str()))
            .collect();
        if !shared.is_empty() {
            check.fail_at(
                node,
                format!(
                    "{}: {} held-out tracks have segments among its training rows too: {}",
                    node.name,
                    shared.len(),
                    list(&shared)
                ),
            );
        }
        let tracks = node.input("tracks").and_then(|(d, _)| store.tracks.get(d));
        let copies = same_audio(tracks, &details.held_out_tracks, &trained);
        if !copies.is_empty() {
            check.fail_at(
                node,
                format!(
                    "{}: held-out tracks with the audio of a training track: {}",
                    node.name,
                    list(&copies)
                ),
            );
        }
    }
    check
}

/// Invariant 4, scoring: a fold's score comes from tracks that did not choose its epoch.
fn cv_early_stopping(store: &Store<'_>) -> Check {
    let mut check = Check::new(
        "cv-early-stopping",
        "each CV fold is scored on tracks that did not drive its early stopping",
    );
    for node in store.sorted().into_iter().filter(|n| n.is_cv()) {
        check.checked += 1;
        let details = match fold_details(node) {
            Ok(d) => d,
            Err(e) => {
                check.fail_at(node, e);
                continue;
            }
        };
        let stopping: BTreeSet<&str> = details
            .early_stopping_tracks
            .iter()
            .map(String::as_str)
            .collect();
        let shared: Vec<&String> = details
            .held_out_tracks
            .iter()
            .filter(|t| stopping.contains(t.as_str()))
            .collect();
        if !shared.is_empty() {
            check.fail_at(
                node,
                format!(
                    "{}: {} held-out tracks also drove early stopping: {}",
                    node.name,
                    shared.len(),
                    list(&shared)
                ),
            );
        }
        let tracks = node.input("tracks").and_then(|(d, _)| store.tracks.get(d));
        let copies = same_audio(tracks, &details.held_out_tracks, &stopping);
        if !copies.is_empty() {
            check.fail_at(
                node,
                format!(
                    "{}: held-out tracks with the audio of an early-stopping track: {}",
                    node.name,
                    list(&copies)
                ),
            );
        }
    }
    check
}

/// Invariant 5: a stage that fits on one corpus a model fitted upstream on another (transfer, fine-tuning)
/// shares no audio between the two corpora's track tables.
fn transfer_audio(store: &Store<'_>) -> Check {
    let mut check = Check::new(
        "transfer-audio",
        "a transfer corpus shares no audio (by content digest) with the corpus its model was trained on",
    );
    let corpus = |node: &Node| store.chain(node).and_then(|c| c.tracks);
    let mut seen: BTreeSet<(Digest, Digest)> = BTreeSet::new();
    for node in store.sorted() {
        if node.fits().next().is_none() || node.is_scaler() {
            continue;
        }
        let Some(own) = corpus(node) else {
            continue;
        };
        let mut upstream = store.fitted_corpora_upstream(node);
        upstream.remove(&own);
        for (theirs, trained_by) in upstream {
            if !seen.insert((own.clone(), theirs.clone())) {
                continue;
            }
            check.checked += 1;
            let (Some(mine), Some(other)) = (store.tracks.get(&own), store.tracks.get(&theirs))
            else {
                continue;
            };
            let mut by_audio: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for t in &other.tracks {
                by_audio
                    .entry(t.audio_digest.as_str())
                    .or_default()
                    .push(t.id.as_str());
            }
            let trainers = trained_by.into_iter().collect::<Vec<_>>().join(", ");
            for t in &mine.tracks {
                for o in by_audio.get(t.audio_digest.as_str()).into_iter().flatten() {
                    check.fail_at(node, format!(
                        "{}: its corpus's track {} has the audio of {o}, a track of the corpus {trainers} trained on",
                        node.name, t.id
                    ));
                }
            }
        }
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_line_names_ten_culprits_then_counts_the_rest() {
        let mut check = Check::new("x", "the invariant");
        check.checked = 1;
        for i in 0..12 {
            check.fail(format!("stage: track {i}"));
        }
        let line = check.line();
        assert!(
            line.starts_with("FAILS  the invariant: stage: track 0; "),
            "{line}"
        );
        assert!(line.contains("track 9"), "{line}");
        assert!(!line.contains("track 10"), "{line}");
        assert!(line.ends_with("track 9 and 2 more"), "{line}");
    }

    #[test]
    fn a_check_with_nothing_to_check_says_so() {
        let mut check = Check::new("x", "the invariant");
        assert_eq!(
            check.line(),
            "holds  the invariant (nothing of the kind among the audited stages)"
        );
        check.checked = 2;
        assert_eq!(check.line(), "holds  the invariant");
    }

    #[test]
    fn duplicate_audio_pairs_are_named_once_each() {
        let track = |id: &str, audio: &str| crate::stages::common::tables::Track {
            id: id.into(),
            class: "c".into(),
            label: 0,
            path: format!("{id}.wav"),
            samples: 1,
            source_rate: 1,
            source_channels: 1,
            file_digest: id.into(),
            audio_digest: audio.into(),
            warnings: Vec::new(),
        };
        let table = TrackTable {
            sample_rate: 1,
            classes: vec!["c".into()],
            tracks: vec![track("a", "1"), track("b", "1"), track("c", "2")],
        };
        let left = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let right: BTreeSet<&str> = ["a", "b"].into();
        assert_eq!(same_audio(Some(&table), &left, &right), ["a ~ b"]);
        assert!(same_audio(Some(&table), &["c".to_string()], &right).is_empty());
    }
}
