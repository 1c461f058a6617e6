//! Digests and the stage key: what decides whether a stage must run.
//!
//! A stage key is computed **before** the stage runs, from canonical bytes of [`StageKeyInputs`]:
//!
//! | value                         | in the key | why |
//! |-------------------------------|-----------|-----|
//! | `engine_version`              | yes | the salt: bumping it disowns every cached result (format or semantics change) |
//! | stage `kind`                  | yes | two kinds with equal params are different computations |
//! | code fingerprint              | yes | digest of the kind's own `stages/` folders, taken at build time |
//! | canonical params              | yes | typed, defaults filled, sorted keys: YAML comments, order, spacing never matter |
//! | input digests                 | yes | as (input stage, artifact name, digest) in declared order, never as a set |
//! | files named by params         | yes | (param path, digest of the bytes), e.g. split's `lists:`; left out when a stage names none, so such stages keep their keys |
//! | input manifests (ancestry)    | only for kinds that read their ancestry (`audit`) | lineage records are in manifests, not in output digests: [`key_with_ancestry`] |
//! | stage name                    | no  | renaming a stage must not re-run it; two identical stages share one result |
//! | absolute paths, mtimes, host, thread count, clock | no | results must not depend on them (tests prove it) |
//!
//! The RNG seed a stage gets is derived from the same values **minus** the code fingerprint and engine
//! version ([`seed_material`]): editing a comment in a stage re-runs it, but must not re-draw its random split.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Bumped whenever the meaning of a key or the byte form of an artifact changes.
pub const ENGINE_VERSION: u32 = 1;

/// A file modified this close to the moment it was hashed may change again within the same timestamp tick
/// without its stat changing (git's "racy" problem): such a hash is never trusted from its stat alone.
pub const RACY_WINDOW: std::time::Duration = std::time::Duration::from_secs(2);

/// The stat fields that change when a file's content is replaced or written: (size, mtime ns, ctime ns,
/// inode).
pub fn stat_key(meta: &std::fs::Metadata) -> (u64, i128, i128, u64) {
    use std::os::unix::fs::MetadataExt;
    let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
    (
        meta.len(),
        ns(meta.mtime(), meta.mtime_nsec()),
        ns(meta.ctime(), meta.ctime_nsec()),
        meta.ino(),
    )
}

/// A blake3 digest as 64 lowercase hex characters.
pub type Digest = String;

pub fn short(digest: &str) -> &str {
    digest.get(..8).unwrap_or(digest)
}

pub fn digest_bytes(bytes: &[u8]) -> Digest {
    blake3::hash(bytes).to_hex().to_string()
}

/// Hash a file through a memory map (no copy through a read buffer; blake3 falls back to reads for small
/// files), never loading it whole into the heap.
pub fn digest_file(path: &Path) -> std::io::Result<(Digest, u64)> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_mmap(path)?;
    Ok((hasher.finalize().to_hex().to_string(), hasher.count()))
}

/// The canonical byte form of any serializable value: JSON with sorted keys, no whitespace, shortest
/// round-trip floats.
pub fn canonical_json<T: Serialize>(value: &T) -> Vec<u8> {
    // to_value sorts map keys (serde_json's Map is a BTreeMap without `preserve_order`).
    let value = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
    serde_json::to_vec(&value).unwrap_or_default()
}

/// One input of a stage as it enters the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInput {
    pub stage: String,
    /// Only the artifacts the stage kind needs, by name.
    pub artifacts: BTreeMap<String, Digest>,
}

/// Everything a stage key is made of. See the module doc for why each field is (or is not) here.
#[derive(Debug, Clone, Serialize)]
pub struct StageKeyInputs<'a> {
    pub engine_version: u32,
    pub kind: &'a str,
    pub code_fingerprint: &'a str,
    pub params: &'a serde_json::Value,
    pub inputs: &'a [KeyInput],
    /// Files named by params: dotted param path -> digest of the bytes read.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub files: &'a BTreeMap<String, Digest>,
}

impl StageKeyInputs<'_> {
    pub fn key(&self) -> Digest {
        let mut hasher = blake3::Hasher::new_derive_key("genrelab stage key");
        hasher.update(&canonical_json(self));
        hasher.finalize().to_hex().to_string()
    }

    pub fn seed_material(&self) -> [u8; 32] {
        seed_material(self.kind, self.params, self.inputs, self.files)
    }
}

pub fn seed_material(
    kind: &str,
    params: &serde_json::Value,
    inputs: &[KeyInput],
    files: &BTreeMap<String, Digest>,
) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key("genrelab stage seed");
    if files.is_empty() {
        hasher.update(&canonical_json(&(kind, params, inputs)));
    } else {
        hasher.update(&canonical_json(&(kind, params, inputs, files)));
    }
    *hasher.finalize().as_bytes()
}

/// The key of a stage that reads its ancestry (see `StageKind::wants_ancestry`): its ordinary key and the
/// manifest digest of each input run, as (input stage, manifest) in declared order. A manifest names its own
/// inputs' manifests, so these digests cover every ancestor's lineage records, which no output digest does.
pub fn key_with_ancestry(key: &str, manifests: &[(String, Digest)]) -> Digest {
    let mut hasher = blake3::Hasher::new_derive_key("genrelab stage key with ancestry");
    hasher.update(&canonical_json(&(key, manifests)));
    hasher.finalize().to_hex().to_string()
}

pub fn params_digest(params: &serde_json::Value) -> Digest {
    digest_bytes(&canonical_json(params))
}

/// A stage kind's code fingerprint from the build-time digests of its declared folders.
pub fn code_fingerprint(dirs: &BTreeMap<String, Digest>) -> Digest {
    digest_bytes(&canonical_json(dirs))
}

/// The build-time digest of one `stages/` folder, `None` when build.rs found no such folder.
pub fn source_digest(dir: &str) -> Option<&'static str> {
    crate::code::STAGE_SOURCE_DIGESTS
        .iter()
        .find(|(name, _)| *name == dir)
        .map(|(_, d)| *d)
}

/// The key under which the contract's digest enters every kind's code map (not a folder name: those cannot
/// start with `@`).
pub const CONTRACT: &str = "@contract";

/// The build-time fingerprints of the given `stages/` folders, plus the contract's ([`CONTRACT`]). A folder
/// that does not exist gets an empty digest (it shows up as changed once it exists); a test over the
/// registry makes that a test failure for any kind declaring one.
pub fn code_dirs(dirs: &[&str]) -> BTreeMap<String, Digest> {
    let mut map: BTreeMap<String, Digest> = dirs
        .iter()
        .map(|dir| {
            let digest = source_digest(dir);
            debug_assert!(digest.is_some(), "stages/{dir} is not a stage code folder");
            (dir.to_string(), digest.unwrap_or_default().to_string())
        })
        .collect();
    map.insert(
        CONTRACT.to_string(),
        crate::code::CONTRACT_DIGEST.to_string(),
    );
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(params: serde_json::Value, inputs: &[KeyInput]) -> Digest {
        StageKeyInputs {
            engine_version: ENGINE_VERSION,
            kind: "k",
            code_fingerprint: "c",
            params: &params,
            inputs,
            files: &BTreeMap::new(),
        }
        .key()
    }

    #[test]
    fn files_named_by_params_enter_the_key_only_when_there_are_some() {
        let p = serde_json::json!({});
        let none = BTreeMap::new();
        let list = |d: &str| BTreeMap::from([("lists.train".to_string(), d.to_string())]);
        let (a, b) = (list("aa"), list("bb"));
        let with = |files| StageKeyInputs {
            engine_version: ENGINE_VERSION,
            kind: "k",
            code_fingerprint: "c",
            params: &p,
            inputs: &[],
            files,
        };
        // A stage that names no file keeps the key it had before files could enter keys.
        let before = {
            #[derive(Serialize)]
            struct Old<'a> {
                engine_version: u32,
                kind: &'a str,
                code_fingerprint: &'a str,
                params: &'a serde_json::Value,
                inputs: &'a [KeyInput],
            }
            let mut hasher = blake3::Hasher::new_derive_key("genrelab stage key");
            hasher.update(&canonical_json(&Old {
                engine_version: ENGINE_VERSION,
                kind: "k",
                code_fingerprint: "c",
                params: &p,
                inputs: &[],
            }));
            hasher.finalize().to_hex().to_string()
        };
        assert_eq!(with(&none).key(), before);
        assert_ne!(with(&a).key(), with(&none).key());
        assert_ne!(with(&a).key(), with(&b).key());
        assert_ne!(with(&a).seed_material(), with(&b).seed_material());
    }

    #[test]
    fn an_ancestry_key_moves_with_any_input_manifest() {
        let manifests = |m: &str| {
            vec![
                ("a".to_string(), "m1".to_string()),
                ("b".to_string(), m.to_string()),
            ]
        };
        let base = key_with_ancestry("k", &manifests("m2"));
        assert_eq!(base, key_with_ancestry("k", &manifests("m2")));
        assert_ne!(base, key_with_ancestry("k", &manifests("m3")));
        assert_ne!(base, key_with_ancestry("k2", &manifests("m2")));
        assert_ne!(base, "k");
    }

    #[test]
    fn key_ignores_param_key_order_but_not_values() {
        let a: serde_json::Value = serde_json::from_str(r#"{"a":1,"b":2.5}"#).unwrap();
        let b: serde_json::Value = serde_json::from_str(r#"{"b":2.5,"a":1}"#).unwrap();
        let c: serde_json::Value = serde_json::from_str(r#"{"b":2.5,"a":2}"#).unwrap();
        assert_eq!(key(a.clone(), &[]), key(b, &[]));
        assert_ne!(key(a, &[]), key(c, &[]));
    }

    #[test]
    fn input_order_is_part_of_the_key() {
        let input = |s: &str| KeyInput {
            stage: s.into(),
            artifacts: BTreeMap::from([("model".to_string(), s.to_string())]),
        };
        let p = serde_json::json!({});
        assert_ne!(
            key(p.clone(), &[input("a"), input("b")]),
            key(p, &[input("b"), input("a")])
        );
    }

    #[test]
    fn the_built_fingerprints_are_the_digests_of_the_stage_folders() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let cargo_lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap();
        for (dir, built) in crate::code::STAGE_SOURCE_DIGESTS {
            assert_eq!(
                &crate::code_digest::folder_fingerprint(
                    &root.join("stages").join(dir),
                    &cargo_lock
                )
                .unwrap(),
                built,
                "stages/{dir}"
            );
        }
        assert_eq!(
            crate::code::CONTRACT_DIGEST,
            crate::code_digest::folder_fingerprint(&root.join("contract/src"), &cargo_lock)
                .unwrap()
        );
        assert!(code_dirs(&["split"])["split"].len() == 64);
    }

    #[test]
    fn the_stage_folders_fingerprints_cover_the_crates_they_compute_with() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let cargo_lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap();
        let names = |dir: &str| -> Vec<String> {
            crate::code_digest::crate_versions(&root.join("stages").join(dir), &cargo_lock)
                .unwrap()
                .into_iter()
                .map(|line| line.split(' ').next().unwrap_or_default().to_string())
                .collect()
        };
        let audio = names("audio");
        assert!(
            ["hound", "rubato"]
                .iter()
                .all(|c| audio.iter().any(|n| n == c)),
            "{audio:?}"
        );
        let features = names("features");
        assert!(
            ["rustfft", "realfft", "num-complex"]
                .iter()
                .all(|c| features.iter().any(|n| n == c)),
            "{features:?}"
        );
        assert!(!features.iter().any(|n| n == "clap"), "{features:?}");
    }

    #[test]
    fn every_registered_kind_declares_existing_code_folders() {
        let mut unknown = Vec::new();
        for kind in crate::stages::registry() {
            assert!(
                !kind.code_dirs().is_empty(),
                "{} declares no code",
                kind.kind()
            );
            for dir in kind.code_dirs() {
                if source_digest(dir).is_none() {
                    unknown.push(format!("{}: stages/{dir}", kind.kind()));
                }
            }
        }
        assert!(
            unknown.is_empty(),
            "code folders that do not exist: {unknown:?}"
        );
        assert_eq!(source_digest("no-such-folder"), None);
    }

    #[test]
    fn a_crate_upgrade_changes_the_fingerprint_of_the_folders_that_use_it() {
        let tree = tempfile::tempdir().unwrap();
        std::fs::write(
            tree.path().join("mod.rs"),
            "use rustfft::FftPlanner;\nfn f() { let _ = std::fs::read(\"x\"); }\n",
        )
        .unwrap();
        let lock = |fft: &str, num: &str| {
            format!(
                "version = 4\n\n[[package]]\nname = \"rustfft\"\nversion = \"{fft}\"\ndependencies = [\n \"num-complex\",\n]\n\n\
                 [[package]]\nname = \"num-complex\"\nversion = \"{num}\"\n\n[[package]]\nname = \"hound\"\nversion = \"3.5.1\"\n"
            )
        };
        let versions =
            crate::code_digest::crate_versions(tree.path(), &lock("6.2.0", "0.4.6")).unwrap();
        assert_eq!(versions, ["num-complex 0.4.6", "rustfft 6.2.0"]);
        let fp = |l: &str| crate::code_digest::folder_fingerprint(tree.path(), l).unwrap();
        let base = fp(&lock("6.2.0", "0.4.6"));
        assert_ne!(
            fp(&lock("6.4.1", "0.4.6")),
            base,
            "a direct dependency moved"
        );
        assert_ne!(
            fp(&lock("6.2.0", "0.4.7")),
            base,
            "a transitive dependency moved"
        );
        let unused = lock("6.2.0", "0.4.6").replace("3.5.1", "3.6.0");
        assert_eq!(fp(&unused), base, "a crate the folder does not use moved");
    }

    #[test]
    fn editing_one_stage_folder_changes_only_its_digest() {
        let tree = tempfile::tempdir().unwrap();
        for dir in ["split", "slice"] {
            std::fs::create_dir_all(tree.path().join(dir)).unwrap();
            std::fs::write(tree.path().join(dir).join("mod.rs"), format!("//! {dir}\n")).unwrap();
        }
        let digest = |dir: &str| crate::code_digest::folder_digest(&tree.path().join(dir)).unwrap();
        let (split, slice) = (digest("split"), digest("slice"));
        std::fs::write(
            tree.path().join("split/mod.rs"),
            "//! split, with a comment edited\n",
        )
        .unwrap();
        assert_ne!(digest("split"), split);
        assert_eq!(digest("slice"), slice);
        // Tests do not make the code: editing them changes nothing.
        let split = digest("split");
        std::fs::write(tree.path().join("split/tests.rs"), "#[test] fn t() {}\n").unwrap();
        std::fs::write(
            tree.path().join("split/mod_tests.rs"),
            "#[test] fn u() {}\n",
        )
        .unwrap();
        assert_eq!(digest("split"), split);
        // A renamed file is a change too, even with the same bytes.
        std::fs::rename(
            tree.path().join("slice/mod.rs"),
            tree.path().join("slice/other.rs"),
        )
        .unwrap();
        assert_ne!(digest("slice"), slice);
    }

    #[test]
    fn seed_ignores_code_but_key_does_not() {
        let p = serde_json::json!({"x": 1});
        let no_files = BTreeMap::new();
        let with_code = |code: &'static str| StageKeyInputs {
            engine_version: ENGINE_VERSION,
            kind: "k",
            code_fingerprint: code,
            params: &p,
            inputs: &[],
            files: &no_files,
        };
        assert_ne!(with_code("a").key(), with_code("b").key());
        assert_eq!(
            with_code("a").seed_material(),
            with_code("b").seed_material()
        );
    }
}
