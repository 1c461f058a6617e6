//! Fold assignment for cross-validation, as pure functions over ids so that tests can prove the invariants
//! without any audio.
//!
//! - [`grouped_folds`]: the leak-free way. Tracks, not segments, are dealt into folds, stratified by class;
//!   tracks with identical audio (the split's duplicate groups) are dealt as one unit, so no audio reaches
//!   two folds.
//! - [`segment_folds`]: the study's way, kept as a replica: a shuffled `StratifiedKFold` over segments, which
//!   puts most tracks' segments in several folds.
//!
//! Both draw from a ChaCha stream seeded by the caller from what every fold of one cross-validation shares
//! (never from one fold's stage key), so the five members of a family agree on the assignment.

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;

/// One track as the fold assignment sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackLabel {
    pub id: String,
    pub label: u32,
}

/// Each track's fold in `0..folds`, by track id.
///
/// Units (a duplicate group, or a track on its own) are grouped by class (a group takes its first member's
/// class), sorted by their first id, shuffled per class, then dealt round robin with one cursor that runs on
/// across classes: every class is spread over the folds as evenly as its unit count allows, and the folds'
/// sizes differ by at most one unit per class.
pub fn grouped_folds(
    tracks: &[TrackLabel],
    duplicate_groups: &[Vec<String>],
    folds: usize,
    rng: &mut ChaCha20Rng,
) -> BTreeMap<String, usize> {
    let mut sorted: Vec<&TrackLabel> = tracks.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let label_of: BTreeMap<&str, u32> = sorted.iter().map(|t| (t.id.as_str(), t.label)).collect();
    let mut unit_of: BTreeMap<&str, usize> = BTreeMap::new();
    let mut units: Vec<Vec<&str>> = Vec::new();
    for group in duplicate_groups {
        let mut members: Vec<&str> = group
            .iter()
            .map(String::as_str)
            .filter(|id| label_of.contains_key(id) && !unit_of.contains_key(id))
            .collect();
        members.sort_unstable();
        if members.len() > 1 {
            for id in &members {
                unit_of.insert(id, units.len());
            }
            units.push(members);
        }
    }
    for t in &sorted {
        if !unit_of.contains_key(t.id.as_str()) {
            unit_of.insert(&t.id, units.len());
            units.push(vec![&t.id]);
        }
    }
    units.sort();
    let mut by_class: BTreeMap<u32, Vec<&Vec<&str>>> = BTreeMap::new();
    for unit in &units {
        by_class.entry(label_of[unit[0]]).or_default().push(unit);
    }
    let mut fold_of = BTreeMap::new();
    let mut cursor = 0usize;
    for class_units in by_class.values_mut() {
        class_units.shuffle(rng);
        for unit in class_units.iter() {
            for id in unit.iter() {
                fold_of.insert(id.to_string(), cursor % folds);
            }
            cursor += 1;
        }
    }
    fold_of
}

/// Each segment's fold (segments given by their labels, in row order), as the study drew them with
/// scikit-learn's shuffled `StratifiedKFold` on segment labels: per class, the segments shuffled and dealt round
/// robin, one cursor running on across classes. A track's segments scatter over the folds.
pub fn segment_folds(labels: &[u32], folds: usize, rng: &mut ChaCha20Rng) -> Vec<usize> {
    let mut by_class: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, &label) in labels.iter().enumerate() {
        by_class.entry(label).or_default().push(i);
    }
    let mut fold_of = vec![0; labels.len()];
    let mut cursor = 0usize;
    for rows in by_class.values_mut() {
        rows.shuffle(rng);
        for &i in rows.iter() {
            fold_of[i] = cursor % folds;
            cursor += 1;
        }
    }
    fold_of
}

/// What one fold of a cross-validation does with each part of the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Fits the scaler (grouped mode) and the weights.
    Train,
    /// Drives early stopping and the learning-rate plateau.
    EarlyStopping,
    /// Scored, after training, and never seen before.
    HeldOut,
}

/// In grouped mode, fold `k` is held out, the next fold (cyclically) stops training early, and the rest
/// train: the held-out score never comes from the rows that chose the epoch.
pub fn grouped_role(fold_of_row: usize, held_out: usize, folds: usize) -> Role {
    if fold_of_row == held_out {
        Role::HeldOut
    } else if fold_of_row == (held_out + 1) % folds {
        Role::EarlyStopping
    } else {
        Role::Train
    }
}
