//! The leakage invariants, proven from an [`Ancestry`]: the manifests of the audited runs, the stages' typed
//! lineage records, what the engine recorded handing each stage (`split_reads`, which no stage writes), and
//! the record tables every data path produces (`tracks` from ingest, `split`, `segments` from slice).
//!
//! Each check reads the tables themselves rather than a stage's account of them: a split is checked from
//! its table and the ingest table's audio digests, a fit set against the digest of the segment ids it must
//! equal. Where only a stage can say what it did with its rows (a CV fold's held-out tracks), the check
//! names the record it relies on.
//!
//! One implementation serves both `genrelab audit` (an ancestry built from the store) and the `audit`
//! stage (the ancestry the engine hands it), so the command and the artifact cannot disagree.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use genrelab_contract::{ids_digest, Ancestor, Ancestry, PartRole, Record, Split, StageError};

use crate::common::tables::{SegmentTable, SplitTable, TrackTable};

/// Culprits named on a check's text line; `--json` lists them all.
const SHOWN: usize = 10;

/// The kinds that may be handed test rows: the tournament for the corpus its models were trained on, and a
/// transfer stage for its own second corpus (whose independence from the first is a check of its own).
const TEST_READERS: [&str; 2] = ["tournament", "transfer"];

/// The audit stage's kind name; `genrelab audit <an audit stage>` audits what that stage audits.
pub const AUDIT_KIND: &str = "audit";

fn short(digest: &str) -> &str {
    digest.get(..8).unwrap_or(digest)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditReport {
    /// The stage whose ancestry was audited; `None` for every stage in pipeline.lock.
    pub target: Option<String>,
    /// The stages audited, sorted.
    pub stages: Vec<String>,
    pub holds: bool,
    /// The closing line: `all 11 invariants hold`, or how many fail.
    pub verdict: String,
    /// Stages reproducing one of the study's leaks on purpose whose failures are listed, not counted; sorted.
    pub replica_stages: BTreeSet<String>,
    pub checks: Vec<Check>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    pub(crate) fn new(id: &str, title: &str) -> Check {
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

    pub(crate) fn fail(&mut self, failure: String) {
        self.holds = false;
        self.failures.push(failure);
    }

    fn fail_at(&mut self, node: &Node<'_>, failure: String) {
        if node.replica {
            self.replica_stages.insert(node.name.to_string());
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
        out.push_str(&format!("audit: {}\n", self.verdict));
        out
    }

    /// The checks that fail, in check order.
    pub fn failing(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.holds)
    }

    /// One line for a summary: `all 11 invariants hold`, or `2 of 11 invariants fail: split-tracks, ...`.
    pub fn headline(&self) -> String {
        let failing: Vec<&str> = self.failing().map(|c| c.id.as_str()).collect();
        if failing.is_empty() {
            format!("all {} invariants hold", self.checks.len())
        } else {
            format!(
                "{} of {} invariants fail: {}",
                failing.len(),
                self.checks.len(),
                failing.join(", ")
            )
        }
    }
}

fn verdict(checks: &[Check]) -> String {
    let failing = checks.iter().filter(|c| !c.holds).count();
    let replica = checks
        .iter()
        .filter(|c| !c.replica_failures.is_empty())
        .count();
    if failing == 0 && replica > 0 {
        format!(
            "all {} invariants hold; the study's replica breaks {replica} of them, as it is meant to \
             (audit a replica stage by name to fail on it)",
            checks.len()
        )
    } else if failing == 0 {
        format!("all {} invariants hold", checks.len())
    } else {
        format!("{failing} of {} invariants fail", checks.len())
    }
}

/// The data-path tables the checks read, by digest.
pub trait Tables {
    fn tracks(&self, digest: &str) -> Option<&TrackTable>;
    fn split(&self, digest: &str) -> Option<&SplitTable>;
    fn segments(&self, digest: &str) -> Option<&SegmentTable>;
}

/// Every `tracks`, `split` and `segments` table an ancestry's stages make or read, each read once.
#[derive(Debug, Default)]
pub struct TableSet {
    pub tracks: BTreeMap<String, TrackTable>,
    pub splits: BTreeMap<String, SplitTable>,
    pub segments: BTreeMap<String, SegmentTable>,
}

impl Tables for TableSet {
    fn tracks(&self, digest: &str) -> Option<&TrackTable> {
        self.tracks.get(digest)
    }
    fn split(&self, digest: &str) -> Option<&SplitTable> {
        self.splits.get(digest)
    }
    fn segments(&self, digest: &str) -> Option<&SegmentTable> {
        self.segments.get(digest)
    }
}

impl TableSet {
    /// Read every table the ancestry's stages make or read, by the artifact names the data-path kinds give
    /// them.
    pub fn load(ancestry: &Ancestry) -> Result<Self, StageError> {
        let mut wanted: BTreeMap<&'static str, BTreeSet<(&str, &str)>> = BTreeMap::new();
        let mut nodes: Vec<&Ancestor> = ancestry.stages().values().collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name).then(a.manifest.cmp(&b.manifest)));
        for node in nodes {
            for name in ["tracks", "split", "segments"] {
                let set = wanted.entry(name).or_default();
                if let Some(d) = node.output(name) {
                    set.insert((node.name.as_str(), d));
                }
                if let Some((d, _)) = node.input(name) {
                    set.insert((node.name.as_str(), d));
                }
            }
        }
        let mut tables = TableSet::default();
        let read = |stage: &str, name: &str, digest: &str| -> Result<Vec<u8>, StageError> {
            ancestry
                .read(digest)
                .map_err(|e| StageError::Invalid(format!("{stage}: `{name}` table: {e}")))
        };
        let parse = |stage: &str, name: &str, digest: &str, e: serde_json::Error| {
            StageError::Invalid(format!(
                "{stage}: `{name}` table {}: not readable: {e}",
                short(digest)
            ))
        };
        for (name, set) in wanted {
            for (stage, digest) in set {
                match name {
                    "tracks" if !tables.tracks.contains_key(digest) => {
                        let bytes = read(stage, name, digest)?;
                        let t = serde_json::from_slice(&bytes)
                            .map_err(|e| parse(stage, name, digest, e))?;
                        tables.tracks.insert(digest.to_string(), t);
                    }
                    "split" if !tables.splits.contains_key(digest) => {
                        let bytes = read(stage, name, digest)?;
                        let t = serde_json::from_slice(&bytes)
                            .map_err(|e| parse(stage, name, digest, e))?;
                        tables.splits.insert(digest.to_string(), t);
                    }
                    "segments" if !tables.segments.contains_key(digest) => {
                        let bytes = read(stage, name, digest)?;
                        let t = serde_json::from_slice(&bytes)
                            .map_err(|e| parse(stage, name, digest, e))?;
                        tables.segments.insert(digest.to_string(), t);
                    }
                    _ => {}
                }
            }
        }
        Ok(tables)
    }
}

/// One audited run.
struct Node<'a> {
    name: &'a str,
    digest: &'a str,
    stage: &'a Ancestor,
    /// Reproduces one of the study's leaks on purpose and is not itself the stage audited.
    replica: bool,
}

impl<'a> Node<'a> {
    fn kind(&self) -> &'a str {
        &self.stage.kind
    }

    fn input(&self, artifact: &str) -> Option<(&'a str, Option<&'a str>)> {
        self.stage.input(artifact)
    }

    fn output(&self, artifact: &str) -> Option<&'a str> {
        self.stage.output(artifact)
    }

    fn records(&self) -> &'a [Record] {
        &self.stage.lineage.records
    }

    fn fits(&self) -> impl Iterator<Item = Fit<'a>> {
        self.records().iter().filter_map(|r| match r {
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
        self.kind() == "cv"
    }

    /// A stage whose artifact is named `scaler` is a scaler, whatever its kind.
    fn is_scaler(&self) -> bool {
        self.output("scaler").is_some()
    }

    fn test_reads(&self) -> Vec<String> {
        self.stage
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
struct Chain<'a> {
    segments: &'a str,
    split: Option<&'a str>,
    tracks: Option<&'a str>,
}

/// What a CV fold did with its rows, from one walk over its records: the tracks that gave its score, the
/// tracks that drove its early stopping, and the tracks its weights were fitted on.
struct FoldParts<'a> {
    held_out: Vec<&'a str>,
    early_stopping: BTreeSet<&'a str>,
    trained: BTreeSet<&'a str>,
}

/// The audited runs and the tables they read.
struct Audit<'a> {
    /// By manifest digest.
    nodes: BTreeMap<&'a str, Node<'a>>,
    ancestry: &'a Ancestry,
    tables: &'a dyn Tables,
    /// Each CV fold's parts (or why they cannot be known), by manifest digest.
    folds: BTreeMap<&'a str, Result<FoldParts<'a>, String>>,
}

impl<'a> Audit<'a> {
    /// Nodes in name order (then manifest), so every report lists them the same way.
    fn sorted(&self) -> Vec<&Node<'a>> {
        let mut nodes: Vec<&Node<'a>> = self.nodes.values().collect();
        nodes.sort_by(|a, b| a.name.cmp(b.name).then(a.digest.cmp(b.digest)));
        nodes
    }

    /// The data path behind a node's `segments` input: the slice run that made it and its own inputs.
    fn chain(&self, node: &Node<'a>) -> Option<Chain<'a>> {
        let (segments, producer) = node.input("segments")?;
        let slice = producer.and_then(|d| self.nodes.get(d));
        Some(Chain {
            segments,
            split: slice.and_then(|s| s.input("split")).map(|(d, _)| d),
            tracks: slice.and_then(|s| s.input("tracks")).map(|(d, _)| d),
        })
    }

    /// The track tables (by digest) that stages upstream of `node` fitted models on, with those stages.
    fn fitted_corpora_upstream(&self, node: &Node<'a>) -> BTreeMap<&'a str, BTreeSet<String>> {
        let mut corpora: BTreeMap<&'a str, BTreeSet<String>> = BTreeMap::new();
        for a in self.ancestry.upstream_of(node.digest) {
            let Some(anc) = self.nodes.get(a) else {
                continue;
            };
            if anc.fits().next().is_none() || anc.is_scaler() {
                continue;
            }
            if let Some(tracks) = self.chain(anc).and_then(|c| c.tracks) {
                corpora
                    .entry(tracks)
                    .or_default()
                    .insert(anc.name.to_string());
            }
        }
        corpora
    }

    /// The track table a node reads.
    fn tracks_of(&self, node: &Node<'a>) -> Option<&'a TrackTable> {
        let tables: &'a dyn Tables = self.tables;
        node.input("tracks").and_then(|(d, _)| tables.tracks(d))
    }
}

/// A stage whose params ask for one of the study's leaks, to show it: a CV fold in `study_replica` mode, a
/// tournament choosing its champion on test.
pub fn is_replica(kind: &str, params: &serde_json::Value) -> bool {
    match kind {
        "cv" => serde_json::from_value::<crate::cv::Params>(params.clone())
            .is_ok_and(|p| p.mode == crate::cv::Mode::StudyReplica),
        "tournament" => serde_json::from_value::<crate::tournament::Params>(params.clone())
            .is_ok_and(|p| p.selection == crate::tournament::Selection::Test),
        _ => false,
    }
}

/// One walk over a fold's records: its typed parts and weight fits. A fold recorded before the typed part
/// record existed states its parts in its lineage details (fold.json carries the same lists).
fn fold_parts<'a>(node: &Node<'a>) -> Result<FoldParts<'a>, String> {
    let mut held_out: Vec<&'a str> = Vec::new();
    let mut early_stopping: BTreeSet<&'a str> = BTreeSet::new();
    let mut trained: BTreeSet<&'a str> = BTreeSet::new();
    let mut typed = false;
    for record in node.records() {
        match record {
            Record::Part { role, tracks, .. } => {
                typed = true;
                let ids = tracks.iter().map(String::as_str);
                match role {
                    PartRole::HeldOut => held_out.extend(ids),
                    PartRole::EarlyStopping => early_stopping.extend(ids),
                }
            }
            Record::Fit { what, tracks, .. } if what.contains("weights") => {
                trained.extend(tracks.iter().map(String::as_str));
            }
            _ => {}
        }
    }
    if !typed {
        return legacy_fold_parts(node, trained);
    }
    held_out.sort_unstable();
    held_out.dedup();
    Ok(FoldParts {
        held_out,
        early_stopping,
        trained,
    })
}

/// [`fold_parts`] for a fold recorded before the typed part record existed: its lineage details state the
/// same lists (fold.json carries them too).
fn legacy_fold_parts<'a>(
    node: &Node<'a>,
    trained: BTreeSet<&'a str>,
) -> Result<FoldParts<'a>, String> {
    let details = &node.stage.lineage.details;
    let ids = |key: &str| -> Option<Vec<&'a str>> {
        details
            .get(key)?
            .as_array()?
            .iter()
            .map(|v| v.as_str())
            .collect()
    };
    match (ids("held_out_tracks"), ids("early_stopping_tracks")) {
        (Some(held_out), Some(early_stopping)) => Ok(FoldParts {
            held_out,
            early_stopping: early_stopping.into_iter().collect(),
            trained,
        }),
        _ => Err(format!(
            "{}: its lineage names no held-out and early-stopping tracks",
            node.name
        )),
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

/// Audit every run in `ancestry`. The runs in `explicit` (manifest digests) answer for their own leaks even
/// when they reproduce one of the study's on purpose; `target` names what was audited in the report.
pub fn audit(
    ancestry: &Ancestry,
    tables: &dyn Tables,
    explicit: &BTreeSet<String>,
    target: Option<&str>,
) -> AuditReport {
    let nodes: BTreeMap<&str, Node<'_>> = ancestry
        .stages()
        .iter()
        .map(|(digest, stage)| {
            let node = Node {
                name: &stage.name,
                digest,
                stage,
                replica: is_replica(&stage.kind, &stage.params) && !explicit.contains(digest),
            };
            (digest.as_str(), node)
        })
        .collect();
    let folds = nodes
        .iter()
        .filter(|(_, n)| n.is_cv())
        .map(|(d, n)| (*d, fold_parts(n)))
        .collect();
    let audit = Audit {
        nodes,
        ancestry,
        tables,
        folds,
    };
    let checks = vec![
        split_tracks(&audit),
        split_audio(&audit),
        segments_in_split(&audit),
        scaler_fits(&audit),
        weight_fits(&audit),
        selected_by_val(&audit),
        test_readers(&audit),
        test_after_selection(&audit),
        cv_grouped(&audit),
        cv_early_stopping(&audit),
        transfer_audio(&audit),
    ];
    let stages: BTreeSet<String> = audit.nodes.values().map(|n| n.name.to_string()).collect();
    let replica_stages = checks
        .iter()
        .flat_map(|c| c.replica_stages.iter().cloned())
        .collect();
    AuditReport {
        target: target.map(str::to_string),
        stages: stages.into_iter().collect(),
        holds: checks.iter().all(|c| c.holds),
        verdict: verdict(&checks),
        replica_stages,
        checks,
    }
}

/// Invariant 1, tracks: from every split table (the study's corpus and any transfer corpus alike).
fn split_tracks(audit: &Audit<'_>) -> Check {
    let mut check = Check::new(
        "split-tracks",
        "no track is in two of train, val and test (every corpus's split table)",
    );
    for node in audit.sorted() {
        let Some(table) = node.output("split").and_then(|d| audit.tables.split(d)) else {
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
        let known: Option<BTreeSet<&str>> = audit
            .tracks_of(node)
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
fn split_audio(audit: &Audit<'_>) -> Check {
    let mut check = Check::new(
        "split-audio",
        "no audio (by content digest) is in two of train, val and test",
    );
    for node in audit.sorted() {
        let Some(table) = node.output("split").and_then(|d| audit.tables.split(d)) else {
            continue;
        };
        let Some(tracks) = audit.tracks_of(node) else {
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
fn segments_in_split(audit: &Audit<'_>) -> Check {
    let mut check = Check::new("segments-in-split", "every segment is in its track's split");
    for node in audit.sorted() {
        let Some(table) = node
            .output("segments")
            .and_then(|d| audit.tables.segments(d))
        else {
            continue;
        };
        let Some(split) = node.input("split").and_then(|(d, _)| audit.tables.split(d)) else {
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
fn fit_problems(audit: &Audit<'_>, chain: Option<&Chain<'_>>, fit: Fit<'_>) -> Vec<String> {
    let Some(chain) = chain else {
        return vec![format!(
            "{} is recorded without a segment table to check it against",
            fit.what
        )];
    };
    let Some(segments) = audit.tables.segments(chain.segments) else {
        return vec![format!(
            "{}: its segment table is not among the audited artifacts",
            fit.what
        )];
    };
    let split_at = chain
        .split
        .and_then(|d| audit.tables.split(d))
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
fn cv_fits<'a>(node: &Node<'a>, needle: &str) -> BTreeMap<Split, Fit<'a>> {
    node.fits()
        .filter(|f| f.what.contains(needle))
        .map(|f| (f.split, f))
        .collect()
}

/// Invariant 2, scalers: a scaler's fit set is exactly its data path's train segments (the digest of their
/// ids in table order); a CV fold's scaler is fitted on exactly the rows its weights are.
fn scaler_fits(audit: &Audit<'_>) -> Check {
    let mut check = Check::new(
        "scaler-fit",
        "every scaler is fitted on exactly its training segments (each CV fold's on its fold's)",
    );
    for node in audit.sorted() {
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
        let chain = audit.chain(node);
        let mut any = false;
        for fit in node.fits() {
            any = true;
            for problem in fit_problems(audit, chain.as_ref(), fit) {
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
fn weight_fits(audit: &Audit<'_>) -> Check {
    let mut check = Check::new(
        "weights-fit",
        "every model's weights are fitted on training segments only",
    );
    for node in audit.sorted() {
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
        let chain = audit.chain(node);
        for fit in fits {
            for problem in fit_problems(audit, chain.as_ref(), fit) {
                check.fail_at(node, format!("{}: {problem}", node.name));
            }
        }
    }
    check
}

/// Invariant 3, selection: every Selected record (early stopping, the learning-rate plateau, the
/// tournament's champion) names val.
fn selected_by_val(audit: &Audit<'_>) -> Check {
    let mut check = Check::new(
        "selected-by-val",
        "early stopping, learning-rate schedules and the champion are chosen on val only",
    );
    for node in audit.sorted() {
        for record in node.records() {
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
fn test_readers(audit: &Audit<'_>) -> Check {
    let mut check = Check::new(
        "test-readers",
        "test rows are handed only to the tournament (a transfer stage: its own corpus's), each to one stage",
    );
    let mut readers: BTreeMap<&str, (String, BTreeMap<String, bool>)> = BTreeMap::new();
    for node in audit.sorted() {
        check.checked += 1;
        let Some(reads) = node.stage.split_reads.get(&Split::Test) else {
            continue;
        };
        if !TEST_READERS.contains(&node.kind()) {
            check.fail_at(
                node,
                format!(
                    "{} (kind {}) was handed {}",
                    node.name,
                    node.kind(),
                    node.test_reads().join(", ")
                ),
            );
        }
        if node.kind() == "transfer" {
            let trained_on = audit.fitted_corpora_upstream(node);
            for read in reads {
                let corpus = node
                    .stage
                    .inputs
                    .iter()
                    .find(|i| i.artifacts.get(&read.artifact) == Some(&read.digest))
                    .and_then(|i| i.manifest.as_deref())
                    .and_then(|m| audit.nodes.get(m))
                    .and_then(|producer| audit.chain(producer))
                    .and_then(|c| c.tracks);
                if let Some(trainers) = corpus.and_then(|c| trained_on.get(c)) {
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
                .entry(read.digest.as_str())
                .or_insert_with(|| (format!("{}.{}", read.stage, read.artifact), BTreeMap::new()))
                .1
                .insert(node.name.to_string(), node.replica);
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
fn test_after_selection(audit: &Audit<'_>) -> Check {
    let mut check = Check::new(
        "test-once-after-selection",
        "test is scored once, after the choice, by each stage handed it",
    );
    for node in audit.sorted() {
        let handed = node.stage.split_reads.contains_key(&Split::Test);
        let is_tournament = node.kind() == "tournament";
        if !handed && !is_tournament {
            continue;
        }
        check.checked += 1;
        let records = node.records();
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

/// Pairs (a in `left`, b in `right`, a != b) with the same audio digest, as `a ~ b`.
pub(crate) fn same_audio(
    tracks: Option<&TrackTable>,
    left: &[&str],
    right: &BTreeSet<&str>,
) -> Vec<String> {
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
    for &id in left {
        let Some(a) = audio.get(id) else {
            continue;
        };
        for &other in by_audio.get(a).into_iter().flatten() {
            if other != id {
                pairs.insert(if id < other { (id, other) } else { (other, id) });
            }
        }
    }
    pairs
        .into_iter()
        .map(|(a, b)| format!("{a} ~ {b}"))
        .collect()
}

/// The CV folds in check order, each with its parts from the one walk over its records, or the failure
/// that they are not stated.
fn cv_folds<'s, 'a>(
    audit: &'s Audit<'a>,
) -> impl Iterator<Item = (&'s Node<'a>, &'s Result<FoldParts<'a>, String>)> {
    audit
        .sorted()
        .into_iter()
        .filter_map(move |n| audit.folds.get(n.digest).map(|parts| (n, parts)))
}

/// Invariant 4, grouping: a fold's held-out tracks, and their audio, are not among its training rows.
fn cv_grouped(audit: &Audit<'_>) -> Check {
    let mut check = Check::new(
        "cv-grouped",
        "CV folds are grouped by track and by duplicate audio: no held-out track trains its fold",
    );
    for (node, parts) in cv_folds(audit) {
        check.checked += 1;
        let parts = match parts {
            Ok(p) => p,
            Err(e) => {
                check.fail_at(node, e.clone());
                continue;
            }
        };
        let shared: Vec<&str> = parts
            .held_out
            .iter()
            .copied()
            .filter(|t| parts.trained.contains(t))
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
        let copies = same_audio(audit.tracks_of(node), &parts.held_out, &parts.trained);
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
fn cv_early_stopping(audit: &Audit<'_>) -> Check {
    let mut check = Check::new(
        "cv-early-stopping",
        "each CV fold is scored on tracks that did not drive its early stopping",
    );
    for (node, parts) in cv_folds(audit) {
        check.checked += 1;
        let parts = match parts {
            Ok(p) => p,
            Err(e) => {
                check.fail_at(node, e.clone());
                continue;
            }
        };
        let shared: Vec<&str> = parts
            .held_out
            .iter()
            .copied()
            .filter(|t| parts.early_stopping.contains(t))
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
        let copies = same_audio(
            audit.tracks_of(node),
            &parts.held_out,
            &parts.early_stopping,
        );
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
fn transfer_audio(audit: &Audit<'_>) -> Check {
    let mut check = Check::new(
        "transfer-audio",
        "a transfer corpus shares no audio (by content digest) with the corpus its model was trained on",
    );
    let mut seen: BTreeSet<(&str, &str)> = BTreeSet::new();
    for node in audit.sorted() {
        if node.fits().next().is_none() || node.is_scaler() {
            continue;
        }
        let Some(own) = audit.chain(node).and_then(|c| c.tracks) else {
            continue;
        };
        let mut upstream = audit.fitted_corpora_upstream(node);
        upstream.remove(own);
        for (theirs, trained_by) in upstream {
            if !seen.insert((own, theirs)) {
                continue;
            }
            check.checked += 1;
            let (Some(mine), Some(other)) = (audit.tables.tracks(own), audit.tables.tracks(theirs))
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
