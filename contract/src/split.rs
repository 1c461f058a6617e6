//! The three parts of a track-level split, and artifacts that hold one part's rows.
//!
//! An artifact named `base@split` (`features@test`) holds rows of that split only. A stage kind declares
//! which of them it needs, and the engine hands it those and no others: a trainer that declares
//! `features@train` and `features@val` has no path to `features@test`, whatever its code claims. The engine
//! records every per-split artifact a stage was handed, so "who read test" is answered from records the
//! stage did not write.

use serde::{Deserialize, Serialize};

/// One part of the split. Serialized as its lowercase name (`"train"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

/// The separator between an artifact's base name and its split.
pub const SPLIT_SEPARATOR: char = '@';

impl Split {
    /// In canonical order: the order of rows in every table that lists several splits.
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    pub const fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }

    /// The split called `name`; any other name is an error, never a default.
    pub fn parse(name: &str) -> Result<Split, UnknownSplit> {
        Split::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| UnknownSplit(name.to_string()))
    }

    /// The name of `base`'s artifact for this split: `features@train`.
    pub fn artifact(self, base: &str) -> String {
        format!("{base}{SPLIT_SEPARATOR}{}", self.name())
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown split `{0}`; the splits are train, val and test")]
pub struct UnknownSplit(pub String);

/// The split an artifact name holds rows of: `features@val` → `Some(Val)`, `tracks` → `None`; an unknown
/// suffix (`features@tset`) is an error.
pub fn split_of(artifact: &str) -> Result<Option<Split>, UnknownSplit> {
    match artifact.rsplit_once(SPLIT_SEPARATOR) {
        None => Ok(None),
        Some((_, split)) => Split::parse(split).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_errors() {
        for split in Split::ALL {
            assert_eq!(Split::parse(split.name()), Ok(split));
            assert_eq!(
                serde_json::to_string(&split).unwrap(),
                format!("\"{split}\"")
            );
        }
        assert_eq!(
            Split::parse("tset").unwrap_err().to_string(),
            "unknown split `tset`; the splits are train, val and test"
        );
        assert!(serde_json::from_str::<Split>("\"holdout\"").is_err());
    }

    #[test]
    fn artifact_names_carry_their_split() {
        assert_eq!(Split::Test.artifact("features"), "features@test");
        assert_eq!(split_of("features@val"), Ok(Some(Split::Val)));
        assert_eq!(split_of("tracks"), Ok(None));
        assert!(split_of("features@all").is_err());
    }
}
