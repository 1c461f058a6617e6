//! The digest of a stage folder's sources. Shared by `build.rs` (which bakes the digests into the binary as
//! code fingerprints) and the tests, so that what is tested is what is built.
//!
//! Test code (`tests.rs`, anything under a `tests/` folder) is left out: editing a stage's tests cannot change
//! its outputs, and must not re-run it and everything downstream.

use std::fs;
use std::path::{Path, PathBuf};

fn collect(dir: &Path, base: &Path, out: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "tests" {
                collect(&path, base, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") && name != "tests.rs" {
            let rel = path.strip_prefix(base).unwrap_or(&path);
            out.push((rel.to_string_lossy().replace('\\', "/"), path));
        }
    }
}

/// The `.rs` files under `dir`, sorted by relative path.
pub fn source_files(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut files = Vec::new();
    collect(dir, dir, &mut files);
    files.sort();
    files
}

/// blake3 over every source file's relative path and bytes, each length-prefixed so that no two different
/// trees hash the same.
pub fn folder_digest(dir: &Path) -> std::io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    for (rel, path) in source_files(dir) {
        let bytes = fs::read(&path)?;
        hasher.update(&(rel.len() as u64).to_le_bytes());
        hasher.update(rel.as_bytes());
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(hasher.finalize().to_hex().to_string())
}
