//! Which files of the dataset are tracks, and of which class: a pure function of the sorted file list.
//!
//! Layouts recognised, in this order:
//! - `genres_original`: the Kaggle GTZAN copy, `[Data/]genres_original/<genre>/<genre>.000NN.wav`;
//! - `genres`: the original GTZAN archive, `genres/<genre>/<genre>.000NN.au`;
//! - `class_folders`: any `[<prefix>/]<class>/<track>.<ext>`, every audio file at the same depth under one
//!   prefix (e.g. `tablaDataset/<taal>/<taal>NN.wav`).
//!
//! The class is the folder directly containing the file; a track's id is `<class>/<file stem>`.
//! Nothing is dropped silently: every file that is not a candidate track (images and CSVs of the Kaggle copy,
//! notes next to the audio, audio outside the class tree) comes back as a quarantined file with its reason.

use std::collections::{BTreeMap, BTreeSet};

use crate::common::tables::QuarantinedFile;
use genrelab_contract::RawFile;

/// How the class tree was recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutKind {
    GenresOriginal,
    Genres,
    ClassFolders,
}

impl LayoutKind {
    pub fn name(self) -> &'static str {
        match self {
            LayoutKind::GenresOriginal => "genres_original",
            LayoutKind::Genres => "genres",
            LayoutKind::ClassFolders => "class_folders",
        }
    }
}

/// A file that will be decoded as a track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub class: String,
    pub rel_path: String,
    pub file_digest: String,
}

/// Why a file that is not a track was left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipKind {
    /// Extension not among the audio extensions.
    NotAudio,
    /// Audio extension, but not at `<prefix>/<class>/<file>`.
    OutsideTree,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    pub kind: SkipKind,
    pub file: QuarantinedFile,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub kind: LayoutKind,
    /// Folders above the class folders, `/`-joined (empty when classes sit at the dataset root).
    pub prefix: String,
    /// In the dataset's file order (sorted by path).
    pub candidates: Vec<Candidate>,
    /// In the dataset's file order.
    pub skipped: Vec<Skipped>,
}

/// Lowercase extension of the last path component, if it has one.
pub fn extension(rel_path: &str) -> Option<String> {
    let name = rel_path.rsplit('/').next().unwrap_or(rel_path);
    let (stem, ext) = name.rsplit_once('.')?;
    (!stem.is_empty() && !ext.is_empty()).then(|| ext.to_ascii_lowercase())
}

fn stem(name: &str) -> &str {
    match name.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem,
        _ => name,
    }
}

/// Decide the layout and sort every file into candidate tracks and skipped files.
/// `extensions` are lowercase, without the dot. `root` is only used in messages.
pub fn plan(files: &[RawFile], extensions: &[String], root: &str) -> Result<Plan, String> {
    let is_audio = |f: &RawFile| extension(&f.rel_path).is_some_and(|e| extensions.contains(&e));
    let audio: Vec<Vec<&str>> = files
        .iter()
        .filter(|f| is_audio(f))
        .map(|f| f.rel_path.split('/').collect())
        .collect();
    if audio.is_empty() {
        let what = if files.is_empty() {
            "no files".to_string()
        } else {
            format!("{} files, none of them audio", files.len())
        };
        return Err(format!(
            "no audio files (extensions {}) under {root}: {what}",
            extensions.join(", ")
        ));
    }
    let (kind, prefix) = detect(&audio, extensions)?;
    let depth = prefix.len() + 2;
    let prefix_text = prefix.join("/");

    let mut candidates = Vec::new();
    let mut skipped = Vec::new();
    let mut ids: BTreeMap<String, &str> = BTreeMap::new();
    for f in files {
        let parts: Vec<&str> = f.rel_path.split('/').collect();
        let in_tree = parts.len() == depth && parts[..prefix.len()] == prefix[..];
        let skip = |kind: SkipKind, reason: String| Skipped {
            kind,
            file: QuarantinedFile {
                path: f.rel_path.clone(),
                file_digest: f.digest.clone(),
                reason,
            },
        };
        if !is_audio(f) {
            let ext = match extension(&f.rel_path) {
                Some(e) => format!("extension .{e}"),
                None => "no extension".to_string(),
            };
            let place = if in_tree {
                String::new()
            } else {
                format!(", outside the class folders{}", tree_hint(&prefix_text))
            };
            skipped.push(skip(
                SkipKind::NotAudio,
                format!("not an audio file ({ext}){place}"),
            ));
            continue;
        }
        if !in_tree {
            skipped.push(skip(
                SkipKind::OutsideTree,
                format!(
                    "audio file outside the class folders: layout {} expects {}<class>/<track>",
                    kind.name(),
                    with_slash(&prefix_text)
                ),
            ));
            continue;
        }
        let class = parts[depth - 2].to_string();
        let id = format!("{class}/{}", stem(parts[depth - 1]));
        if let Some(first) = ids.insert(id.clone(), &f.rel_path) {
            return Err(format!(
                "duplicate track id {id}: {first} and {} (same class folder and file stem)",
                f.rel_path
            ));
        }
        candidates.push(Candidate {
            id,
            class,
            rel_path: f.rel_path.clone(),
            file_digest: f.digest.clone(),
        });
    }
    Ok(Plan {
        kind,
        prefix: prefix_text,
        candidates,
        skipped,
    })
}

/// The class of a path standing where a track would (audio extension, `<prefix>/<class>/<file>`), if it does.
pub fn class_of(plan: &Plan, rel_path: &str, extensions: &[String]) -> Option<String> {
    if !extension(rel_path).is_some_and(|e| extensions.contains(&e)) {
        return None;
    }
    let parts: Vec<&str> = rel_path.split('/').collect();
    let prefix: Vec<&str> = if plan.prefix.is_empty() {
        Vec::new()
    } else {
        plan.prefix.split('/').collect()
    };
    let depth = prefix.len() + 2;
    (parts.len() == depth && parts[..prefix.len()] == prefix[..])
        .then(|| parts[depth - 2].to_string())
}

fn with_slash(prefix: &str) -> String {
    if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    }
}

fn tree_hint(prefix: &str) -> String {
    if prefix.is_empty() {
        String::new()
    } else {
        format!(" under {prefix}/")
    }
}

/// The layout and the folders above the class folders.
fn detect<'a>(
    audio: &[Vec<&'a str>],
    extensions: &[String],
) -> Result<(LayoutKind, Vec<&'a str>), String> {
    for (marker, kind) in [
        ("genres_original", LayoutKind::GenresOriginal),
        ("genres", LayoutKind::Genres),
    ] {
        // The marker folder must hold class folders that hold files: `.../<marker>/<class>/<file>`.
        let prefixes: BTreeSet<Vec<&str>> = audio
            .iter()
            .filter(|p| p.len() >= 3 && p[p.len() - 3] == marker)
            .map(|p| p[..p.len() - 2].to_vec())
            .collect();
        match prefixes.len() {
            0 => continue,
            1 => {
                let prefix = prefixes.into_iter().next().unwrap_or_default();
                return Ok((kind, prefix));
            }
            _ => {
                let found: Vec<String> = prefixes
                    .iter()
                    .map(|p| format!("{}/", p.join("/")))
                    .collect();
                return Err(format!(
                    "ambiguous layout: audio under several {marker}/ folders: {}",
                    found.join(", ")
                ));
            }
        }
    }
    let unknown = |example: &[&str]| {
        format!(
            "unknown layout: expected <root>/<class>/<track>.{{{}}}, genres_original/<genre>/..., or \
             genres/<genre>/...; found e.g. {}",
            extensions.join(","),
            example.join("/")
        )
    };
    let depths: BTreeMap<usize, &Vec<&str>> = audio.iter().map(|p| (p.len(), p)).collect();
    if let Some(shallow) = audio.iter().find(|p| p.len() < 2) {
        return Err(format!("{} (no class folder)", unknown(shallow)));
    }
    if depths.len() > 1 {
        let examples: Vec<String> = depths.values().map(|p| p.join("/")).collect();
        return Err(format!(
            "{} (audio files at {} different depths: {}; classes must all be folders at one depth)",
            unknown(depths.values().next().map(|p| p.as_slice()).unwrap_or(&[])),
            depths.len(),
            examples.join(", ")
        ));
    }
    let prefixes: BTreeMap<Vec<&str>, &Vec<&str>> = audio
        .iter()
        .map(|p| (p[..p.len() - 2].to_vec(), p))
        .collect();
    if prefixes.len() > 1 {
        let examples: Vec<String> = prefixes.values().map(|p| p.join("/")).collect();
        return Err(format!(
            "{} (class folders under {} different parents: {})",
            unknown(
                prefixes
                    .values()
                    .next()
                    .map(|p| p.as_slice())
                    .unwrap_or(&[])
            ),
            prefixes.len(),
            examples.join(", ")
        ));
    }
    let prefix = prefixes.into_keys().next().unwrap_or_default();
    Ok((LayoutKind::ClassFolders, prefix))
}
