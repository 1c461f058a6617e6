//! The digest of a stage folder's sources. Shared by `build.rs` (which bakes the digests into the binary as
//! code fingerprints) and the tests, so that what is tested is what is built.
//!
//! Test code (`tests.rs`, `<module>_tests.rs`, anything under a `tests/` folder) is left out: editing a stage's
//! tests cannot change its outputs, and must not re-run it and everything downstream. A `_tests.rs` file is only
//! ever mounted behind `#[cfg(test)]`.

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
        } else if path.extension().is_some_and(|e| e == "rs")
            && !is_test_file(&name.to_string_lossy())
        {
            let rel = path.strip_prefix(base).unwrap_or(&path);
            out.push((rel.to_string_lossy().replace('\\', "/"), path));
        }
    }
}

fn is_test_file(name: &str) -> bool {
    name == "tests.rs" || name.ends_with("_tests.rs")
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

/// One package of Cargo.lock: its version and the packages it depends on (as `name` or `name version`).
struct LockedPackage {
    name: String,
    version: String,
    dependencies: Vec<String>,
}

/// The `[[package]]` entries of a Cargo.lock (format v3/v4), read line by line: the file is machine-written
/// with one key per line, so a TOML parser would add a build dependency for nothing.
fn locked_packages(lock: &str) -> Vec<LockedPackage> {
    let mut out: Vec<LockedPackage> = Vec::new();
    let mut in_deps = false;
    for line in lock.lines() {
        let line = line.trim();
        if line == "[[package]]" {
            out.push(LockedPackage {
                name: String::new(),
                version: String::new(),
                dependencies: Vec::new(),
            });
            in_deps = false;
        } else if let Some(package) = out.last_mut() {
            let quoted = |v: &str| v.trim().trim_end_matches(',').trim_matches('"').to_string();
            if in_deps {
                if line.starts_with(']') {
                    in_deps = false;
                } else {
                    package.dependencies.push(quoted(line));
                }
            } else if let Some(v) = line.strip_prefix("name = ") {
                package.name = quoted(v);
            } else if let Some(v) = line.strip_prefix("version = ") {
                package.version = quoted(v);
            } else if line.starts_with("dependencies = [") {
                in_deps = !line.ends_with(']');
            }
        }
    }
    out
}

/// Names a source file uses as paths (`rustfft::FftPlanner`, `use realfft::...`): every `ident::` whose
/// ident is not a keyword of the language's own paths.
fn path_roots(source: &str) -> std::collections::BTreeSet<String> {
    let mut roots = std::collections::BTreeSet::new();
    let bytes = source.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        if is_ident(bytes[i]) && (i == 0 || !(is_ident(bytes[i - 1]) || bytes[i - 1] == b':')) {
            let start = i;
            while i < bytes.len() && is_ident(bytes[i]) {
                i += 1;
            }
            if source[i..].starts_with("::") {
                roots.insert(source[start..i].to_string());
            }
        } else {
            i += 1;
        }
    }
    roots
}

/// The resolved versions, from Cargo.lock, of the registry crates that the sources under `dir` name
/// directly, and of everything those depend on: `name version` lines, sorted. A `cargo update` that moves
/// any of them changes this list, and so the fingerprint of every stage whose code uses them.
pub fn crate_versions(dir: &Path, cargo_lock: &str) -> std::io::Result<Vec<String>> {
    let packages = locked_packages(cargo_lock);
    let mut used = std::collections::BTreeSet::new();
    for (_, path) in source_files(dir) {
        used.extend(path_roots(&fs::read_to_string(&path)?));
    }
    let find = |spec: &str| -> Option<&LockedPackage> {
        let (name, version) = spec.split_once(' ').unwrap_or((spec, ""));
        packages.iter().find(|p| {
            (p.name == name || p.name.replace('-', "_") == name)
                && (version.is_empty() || p.version == version)
        })
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut todo: Vec<&LockedPackage> = used.iter().filter_map(|name| find(name)).collect();
    while let Some(package) = todo.pop() {
        if seen.insert(format!("{} {}", package.name, package.version)) {
            todo.extend(package.dependencies.iter().filter_map(|d| find(d)));
        }
    }
    Ok(seen.into_iter().collect())
}

/// The digest of a stage folder's code as its fingerprint sees it: its sources and the resolved versions of
/// the crates they use.
pub fn folder_fingerprint(dir: &Path, cargo_lock: &str) -> std::io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    hasher.update(folder_digest(dir)?.as_bytes());
    for line in crate_versions(dir, cargo_lock)? {
        hasher.update(b"\n");
        hasher.update(line.as_bytes());
    }
    Ok(hasher.finalize().to_hex().to_string())
}
