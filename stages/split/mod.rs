//! Stage `split`: assigns every track to train, val or test, at the level of tracks (never segments), so no
//! track's audio can reach two splits.
//!
//! Two methods:
//! - `random` (default): stratified by class, seeded from `ctx.rng("split")`. Track ids are sorted before
//!   anything is drawn, so the split never depends on directory order. Tracks with identical decoded audio
//!   (equal `audio_digest`) form one unit that is drawn as a whole: a duplicate group always lands in a
//!   single split.
//! - `lists`: a fixed split read from three text files (e.g. the fault-filtered GTZAN lists), named
//!   relative to the dataset root; tracks named in no list are excluded and counted. The engine reads the
//!   files, confines them to the project and dataset folders and hashes them into this stage's key (see
//!   `ParamFile`), so editing a list re-runs the split. Error messages quote a list line only when it has
//!   the shape of a track name, never arbitrary file content.
//!
//! Invariants: every output list is sorted; a track is in at most one split; a duplicate group never spans
//! splits (in `lists` mode a violation is an error, since the lists cannot be silently changed).

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use crate::common::count;
use crate::common::tables::{SplitTable, Track, TrackTable, SPLITS};
use genrelab_contract::{
    read_json, write_canonical_json, Determinism, Lineage, Need, ParamFile, ParamProblem, Record,
    StageContext, StageError, StageKind, StageParams, StageReport, TypedStage,
};

/// Params of `split`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Fraction of each class's tracks for training. 0.6/0.2/0.2 is the study's split (80/20, then 75/25 of
    /// the 80%).
    pub train: f64,
    /// Fraction for validation (early stopping, model selection).
    pub val: f64,
    /// Fraction held out for the final test; train + val + test must be 1.
    pub test: f64,
    /// A fixed split from files instead of a random one (`null` = random). The fractions are then unused.
    pub lists: Option<ListFiles>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            train: 0.6,
            val: 0.2,
            test: 0.2,
            lists: None,
        }
    }
}

/// Three files relative to the dataset root, one track per line (`blues/blues.00029.wav`, `blues.00029.au`
/// or `blues/blues.00029`); empty lines and lines starting with `#` are skipped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListFiles {
    pub train: String,
    pub val: String,
    pub test: String,
}

const NEEDS: &[Need] = &[Need::one("tracks")];

pub fn kind() -> Box<dyn StageKind> {
    Box::new(TypedStage::<Params> {
        kind: "split",
        about: "assign tracks to train/val/test (stratified random, duplicates kept together, or fixed lists)",
        needs: NEEDS,
        outputs: &["split"],
        code_dirs: &["split", "common"],
        determinism: Determinism::Exact,
        run,
    })
}

/// The three list files, when `lists:` is set.
fn list_files(params: &Params) -> Vec<ParamFile> {
    let Some(lists) = &params.lists else {
        return Vec::new();
    };
    [
        ("train", &lists.train),
        ("val", &lists.val),
        ("test", &lists.test),
    ]
    .into_iter()
    .map(|(split, path)| ParamFile {
        param: format!("lists.{split}"),
        path: path.clone(),
    })
    .collect()
}

fn run(params: &Params, ctx: &StageContext) -> Result<StageReport, StageError> {
    params.check()?;
    let tracks: TrackTable = read_json(ctx.input("tracks")?, "tracks")?;
    let (table, excluded) = match &params.lists {
        None => (split_random(&tracks, params, &mut ctx.rng("split")), 0),
        Some(lists) => {
            let texts = read_lists(ctx, lists)?;
            let table = split_from_lists(&tracks, &texts)?;
            let kept = table.train.len() + table.val.len() + table.test.len();
            (table, tracks.tracks.len() - kept)
        }
    };
    write_canonical_json(&ctx.output_path("split")?, &table)?;
    Ok(report(params, &tracks, &table, excluded))
}

impl StageParams for Params {
    fn files(&self) -> Vec<ParamFile> {
        list_files(self)
    }

    /// With `lists:` the fractions are unused, so only the lists are checked; without, the fractions.
    fn validate(&self) -> Vec<ParamProblem> {
        match &self.lists {
            None => fraction_problems(self),
            Some(lists) => list_problems(lists),
        }
    }
}

/// Each fraction finite and in [0, 1], and (when all are finite) the three summing to 1 within 1e-9.
fn fraction_problems(params: &Params) -> Vec<ParamProblem> {
    let all = [
        ("train", params.train),
        ("val", params.val),
        ("test", params.test),
    ];
    let mut problems: Vec<ParamProblem> = all
        .iter()
        .filter(|(_, v)| !(0.0..=1.0).contains(v))
        .map(|(name, v)| {
            ParamProblem::at(
                *name,
                format!("{v} is not a fraction; each of train, val, test must lie in [0, 1]"),
            )
        })
        .collect();
    let sum = params.train + params.val + params.test;
    // A NaN is already reported above, and a sum with it in says nothing more.
    if sum.is_finite() && (sum - 1.0).abs() > 1e-9 {
        problems.push(ParamProblem::whole(format!(
            "train + val + test = {} + {} + {} = {sum}, must be 1",
            params.train, params.val, params.test
        )));
    }
    problems
}

/// Each list named, and no file named for two splits (its tracks would land in both).
fn list_problems(lists: &ListFiles) -> Vec<ParamProblem> {
    let named = [
        ("train", &lists.train),
        ("val", &lists.val),
        ("test", &lists.test),
    ];
    let mut problems = Vec::new();
    for (i, (split, path)) in named.iter().enumerate() {
        let key = format!("lists.{split}");
        if path.trim().is_empty() {
            problems.push(ParamProblem::at(key, "names no file"));
        } else if let Some((first, _)) = named[..i].iter().find(|(_, p)| p.trim() == path.trim()) {
            problems.push(ParamProblem::at(
                key,
                format!("`{path}` is also the {first} list; each split needs its own file"),
            ));
        }
    }
    problems
}

/// Tracks grouped by identical audio: each group sorted by id, groups ordered by their smallest id.
fn audio_groups<'a>(tracks: &[&'a Track]) -> Vec<Vec<&'a Track>> {
    let mut by_digest: BTreeMap<&str, Vec<&Track>> = BTreeMap::new();
    for t in tracks {
        by_digest.entry(&t.audio_digest).or_default().push(t);
    }
    let mut groups: Vec<Vec<&Track>> = by_digest
        .into_values()
        .map(|mut g| {
            g.sort_by(|a, b| a.id.cmp(&b.id));
            g
        })
        .collect();
    groups.sort_by(|a, b| a[0].id.cmp(&b[0].id));
    groups
}

fn duplicate_groups(groups: &[Vec<&Track>]) -> Vec<Vec<String>> {
    groups
        .iter()
        .filter(|g| g.len() > 1)
        .map(|g| g.iter().map(|t| t.id.clone()).collect())
        .collect()
}

/// The random, stratified split.
///
/// Units (single tracks or duplicate groups; a group's class is the class of its smallest id) are sorted,
/// then shuffled per class (classes in sorted order, one RNG). A class with `n` units gets
/// `round(n * train)` units in train, `min(round(n * val), rest)` in val and the rest in test, with `round`
/// rounding halves away from zero. Counts are in units, so a class holding a duplicate pair gets one track
/// more in whichever split the pair lands in.
pub fn split_random(tracks: &TrackTable, params: &Params, rng: &mut ChaCha20Rng) -> SplitTable {
    let mut sorted: Vec<&Track> = tracks.tracks.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let groups = audio_groups(&sorted);
    let mut by_class: BTreeMap<&str, Vec<&Vec<&Track>>> = BTreeMap::new();
    for g in &groups {
        by_class.entry(&g[0].class).or_default().push(g);
    }
    let mut out: [Vec<String>; 3] = Default::default();
    for units in by_class.values_mut() {
        units.shuffle(rng);
        let n = units.len();
        let n_train = ((n as f64 * params.train).round() as usize).min(n);
        let n_val = ((n as f64 * params.val).round() as usize).min(n - n_train);
        for (i, unit) in units.iter().enumerate() {
            let split = if i < n_train {
                0
            } else if i < n_train + n_val {
                1
            } else {
                2
            };
            out[split].extend(unit.iter().map(|t| t.id.clone()));
        }
    }
    let [mut train, mut val, mut test] = out;
    train.sort();
    val.sort();
    test.sort();
    SplitTable {
        method: "random".into(),
        train,
        val,
        test,
        duplicate_groups: duplicate_groups(&groups),
    }
}

/// The contents of the three list files, in split order.
pub type ListTexts = [(String, String); 3];

fn read_lists(ctx: &StageContext, lists: &ListFiles) -> Result<ListTexts, StageError> {
    let read = |split: &str, written: &str| {
        let path = ctx.param_file(&format!("lists.{split}"))?;
        let bytes = std::fs::read(path).map_err(|e| StageError::io(path, e))?;
        let text = String::from_utf8(bytes).map_err(|_| {
            StageError::Invalid(format!("split lists: {written} is not UTF-8 text"))
        })?;
        Ok::<_, StageError>((written.to_string(), text))
    };
    Ok([
        read("train", &lists.train)?,
        read("val", &lists.val)?,
        read("test", &lists.test)?,
    ])
}

/// A list line as an error message may show it: only when it has the shape of a track name, so that a
/// list path pointing at some other file never prints that file's content.
fn shown(line: &str) -> &str {
    let track_like = line.len() <= 120
        && line
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | '\\' | ' '));
    if track_like {
        line
    } else {
        "(a line that is not a track name)"
    }
}

/// An extension is only stripped when it looks like one (letters and digits, starting with a letter), so the
/// dot inside GTZAN's `blues.00029` stays.
fn strip_extension(name: &str) -> &str {
    match name.rsplit_once('.') {
        Some((stem, ext))
            if !stem.is_empty()
                && ext.len() <= 5
                && ext.starts_with(|c: char| c.is_ascii_alphabetic())
                && ext.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            stem
        }
        _ => name,
    }
}

/// The fixed split: each list line names a track by `<class>/<file>` or by bare file name.
pub fn split_from_lists(tracks: &TrackTable, texts: &ListTexts) -> Result<SplitTable, StageError> {
    let ids: BTreeSet<&str> = tracks.tracks.iter().map(|t| t.id.as_str()).collect();
    let mut by_stem: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for t in &tracks.tracks {
        let stem = t.id.rsplit('/').next().unwrap_or(&t.id);
        by_stem.entry(stem).or_default().push(&t.id);
    }
    let mut unknown: Vec<String> = Vec::new();
    let mut ambiguous: Vec<String> = Vec::new();
    let mut assigned: BTreeMap<String, (usize, &str)> = BTreeMap::new();
    let mut twice: Vec<String> = Vec::new();
    let mut out: [Vec<String>; 3] = Default::default();
    for (split, (file, text)) in texts.iter().enumerate() {
        for (number, line) in text.lines().enumerate() {
            let at = format!("{file}:{}", number + 1);
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let norm = line.replace('\\', "/");
            let mut parts = norm.rsplit('/');
            let file_name = parts.next().unwrap_or_default();
            let stem = strip_extension(file_name);
            let id = match parts.next() {
                Some(class) if !class.is_empty() => {
                    let id = format!("{class}/{stem}");
                    if !ids.contains(id.as_str()) {
                        unknown.push(format!("{} ({at})", shown(line)));
                        continue;
                    }
                    id
                }
                _ => match by_stem.get(stem).map(Vec::as_slice) {
                    Some([one]) => one.to_string(),
                    Some(many) if many.len() > 1 => {
                        ambiguous.push(format!("{} ({at}: {})", shown(line), many.join(", ")));
                        continue;
                    }
                    _ => {
                        unknown.push(format!("{} ({at})", shown(line)));
                        continue;
                    }
                },
            };
            match assigned.get(&id) {
                Some((s, _)) if *s == split => {} // listed twice in one file: harmless
                Some((_, other)) => twice.push(format!("{id} ({other} and {file})")),
                None => {
                    assigned.insert(id.clone(), (split, file));
                    out[split].push(id);
                }
            }
        }
    }
    let problems = [
        ("names no known track", unknown),
        (
            "matches tracks in several classes; name the class",
            ambiguous,
        ),
        ("is listed in two splits", twice),
    ];
    let mut messages = Vec::new();
    for (what, items) in problems {
        if !items.is_empty() {
            let shown: Vec<&str> = items.iter().take(5).map(String::as_str).collect();
            let more = if items.len() > 5 {
                format!(" and {} more", items.len() - 5)
            } else {
                String::new()
            };
            messages.push(format!(
                "{} list line(s) {what}: {}{more}",
                items.len(),
                shown.join("; ")
            ));
        }
    }
    if !messages.is_empty() {
        return Err(StageError::Invalid(format!(
            "split lists: {}",
            messages.join("; ")
        )));
    }
    let mut listed: Vec<&Track> = tracks
        .tracks
        .iter()
        .filter(|t| assigned.contains_key(&t.id))
        .collect();
    listed.sort_by(|a, b| a.id.cmp(&b.id));
    let groups = audio_groups(&listed);
    for g in groups.iter().filter(|g| g.len() > 1) {
        let splits: BTreeSet<usize> = g.iter().map(|t| assigned[&t.id].0).collect();
        if splits.len() > 1 {
            let names: Vec<String> = g
                .iter()
                .map(|t| format!("{} ({})", t.id, SPLITS[assigned[&t.id].0]))
                .collect();
            return Err(StageError::Invalid(format!(
                "split lists put identical audio in different splits, which leaks test audio into \
                 training: {}; remove all but one of them from the lists",
                names.join(", ")
            )));
        }
    }
    let [mut train, mut val, mut test] = out;
    train.sort();
    val.sort();
    test.sort();
    Ok(SplitTable {
        method: "lists".into(),
        train,
        val,
        test,
        duplicate_groups: duplicate_groups(&groups),
    })
}

/// `60` for 0.6, `33.3` for 1/3.
fn percent(x: f64) -> String {
    format!("{}", (x * 1000.0).round() / 10.0)
}

fn report(
    params: &Params,
    tracks: &TrackTable,
    table: &SplitTable,
    excluded: usize,
) -> StageReport {
    let class_of: BTreeMap<&str, &str> = tracks
        .tracks
        .iter()
        .map(|t| (t.id.as_str(), t.class.as_str()))
        .collect();
    let mut counts = serde_json::Map::new();
    for split in SPLITS {
        let mut per_class: BTreeMap<&str, usize> =
            tracks.classes.iter().map(|c| (c.as_str(), 0)).collect();
        for id in table.ids(split) {
            if let Some(class) = class_of.get(id.as_str()) {
                *per_class.entry(class).or_default() += 1;
            }
        }
        counts.insert(split.to_string(), serde_json::json!(per_class));
    }
    let mut details = serde_json::json!({
        "method": table.method,
        "counts": counts,
        "duplicate_groups": table.duplicate_groups.len(),
    });
    let method = if params.lists.is_some() {
        "lists".to_string()
    } else {
        format!(
            "random, {}/{}/{}",
            percent(params.train),
            percent(params.val),
            percent(params.test)
        )
    };
    // The noun follows the last count: "test 1 track", "test 4 tracks".
    let mut line = format!(
        "split ({method}): train {}, val {}, test {}",
        table.train.len(),
        table.val.len(),
        count(table.test.len(), "track", "tracks")
    );
    if params.lists.is_some() {
        details["excluded"] = serde_json::json!(excluded);
        line.push_str(&format!(
            "; {} in no list excluded",
            count(excluded, "track", "tracks")
        ));
    }
    let n = table.duplicate_groups.len();
    if n > 0 {
        line.push_str(&format!(
            "; {} kept together",
            count(n, "duplicate group", "duplicate groups")
        ));
    }
    let records = SPLITS
        .iter()
        .map(|&split| Record::SplitTracks {
            split,
            tracks: table.ids(split).to_vec(),
        })
        .collect();
    StageReport {
        lineage: Lineage { records, details },
        summary: vec![line],
    }
}
