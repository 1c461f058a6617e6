//! Raw inputs (the dataset folder) hashed by content, with a stat cache so an unchanged corpus is not
//! re-read.
//!
//! A file's cached digest is reused only while its (size, mtime in ns, inode, ctime in ns) are unchanged.
//! Like git's "racy" check, a file modified within [`RACY_WINDOW`] of the hashing is never cached: a write in
//! the same timestamp tick could otherwise go unnoticed. Hidden files and folders (a leading `.`) are not
//! part of the dataset. The dataset digest covers every (relative path, size, digest), sorted by path.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::hashing::{canonical_json, digest_bytes, digest_file};
use crate::stage::{DatasetView, RawFile};
use crate::store::write_atomic;

const RACY_WINDOW: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum RawInputError {
    #[error("dataset root {0} does not exist")]
    MissingRoot(PathBuf),
    #[error("dataset root {0} is not a folder")]
    NotAFolder(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StatEntry {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    inode: u64,
    digest: String,
}

/// Path (absolute) -> last seen stat and digest.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct StatCache {
    entries: BTreeMap<String, StatEntry>,
}

#[derive(Debug)]
pub struct HashStats {
    pub files: usize,
    pub rehashed: usize,
    pub bytes_rehashed: u64,
}

impl StatCache {
    pub fn load(path: &Path) -> StatCache {
        // A missing or unreadable cache only costs a re-hash.
        fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, path: &Path) -> Result<(), RawInputError> {
        write_atomic(path, &serde_json::to_vec(self).unwrap_or_default()).map_err(|e| {
            RawInputError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            }
        })
    }
}

fn stat_key(meta: &fs::Metadata) -> (u64, i128, i128, u64) {
    use std::os::unix::fs::MetadataExt;
    let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
    (
        meta.len(),
        ns(meta.mtime(), meta.mtime_nsec()),
        ns(meta.ctime(), meta.ctime_nsec()),
        meta.ino(),
    )
}

fn list_files(
    root: &Path,
    dir: &Path,
    out: &mut Vec<(String, PathBuf)>,
) -> Result<(), RawInputError> {
    let entries = fs::read_dir(dir).map_err(|source| RawInputError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| RawInputError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follows symlinks: a dataset assembled from links is hashed by what they point at.
        if path.is_dir() {
            list_files(root, &path, out)?;
        } else if path.is_file() {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let rel = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.push((rel, path));
        }
    }
    Ok(())
}

/// One file's digest, the stat-cache entry to store (none if racy) and whether it was read.
type Hashed = (RawFile, Option<(String, StatEntry)>, bool);

/// Hash every file under `root`, reusing `cache` where the stat is unchanged, updating it in place.
pub fn hash_dataset(
    root: &Path,
    cache: &mut StatCache,
) -> Result<(DatasetView, HashStats), RawInputError> {
    if !root.exists() {
        return Err(RawInputError::MissingRoot(root.to_path_buf()));
    }
    if !root.is_dir() {
        return Err(RawInputError::NotAFolder(root.to_path_buf()));
    }
    let started = SystemTime::now();
    let mut files = Vec::new();
    list_files(root, root, &mut files)?;
    files.sort();
    let results: Vec<Result<Hashed, RawInputError>> = files
        .par_iter()
        .map(|(rel, path)| {
            let err = |source| RawInputError::Io {
                path: path.clone(),
                source,
            };
            let meta = fs::metadata(path).map_err(err)?;
            let (size, mtime_ns, ctime_ns, inode) = stat_key(&meta);
            let abs = path.to_string_lossy().into_owned();
            if let Some(e) = cache.entries.get(&abs) {
                if (e.size, e.mtime_ns, e.ctime_ns, e.inode) == (size, mtime_ns, ctime_ns, inode) {
                    let file = RawFile {
                        rel_path: rel.clone(),
                        size,
                        digest: e.digest.clone(),
                    };
                    return Ok((file, None, false));
                }
            }
            let (digest, _) = digest_file(path).map_err(err)?;
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let racy = started
                .duration_since(modified)
                .map(|age| age < RACY_WINDOW)
                .unwrap_or(true);
            let entry = (!racy).then(|| {
                (
                    abs,
                    StatEntry {
                        size,
                        mtime_ns,
                        ctime_ns,
                        inode,
                        digest: digest.clone(),
                    },
                )
            });
            Ok((
                RawFile {
                    rel_path: rel.clone(),
                    size,
                    digest,
                },
                entry,
                true,
            ))
        })
        .collect();
    let mut view_files = Vec::with_capacity(results.len());
    let mut stats = HashStats {
        files: results.len(),
        rehashed: 0,
        bytes_rehashed: 0,
    };
    for result in results {
        let (file, entry, rehashed) = result?;
        if rehashed {
            stats.rehashed += 1;
            stats.bytes_rehashed += file.size;
        }
        if let Some((abs, entry)) = entry {
            cache.entries.insert(abs, entry);
        }
        view_files.push(file);
    }
    let listing: Vec<(&str, u64, &str)> = view_files
        .iter()
        .map(|f| (f.rel_path.as_str(), f.size, f.digest.as_str()))
        .collect();
    let digest = digest_bytes(&canonical_json(&listing));
    Ok((
        DatasetView {
            root: root.to_path_buf(),
            files: view_files,
            digest,
        },
        stats,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_depends_on_content_not_on_mtime_and_ignores_hidden_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a")).unwrap();
        fs::write(dir.path().join("a/x.wav"), b"one").unwrap();
        fs::write(dir.path().join(".hidden"), b"h").unwrap();
        let mut cache = StatCache::default();
        let (v1, s1) = hash_dataset(dir.path(), &mut cache).unwrap();
        assert_eq!(v1.files.len(), 1);
        assert_eq!(v1.files[0].rel_path, "a/x.wav");
        assert_eq!(s1.rehashed, 1);
        fs::write(dir.path().join("a/x.wav"), b"two").unwrap();
        let (v2, _) = hash_dataset(dir.path(), &mut cache).unwrap();
        assert_ne!(v1.digest, v2.digest);
        fs::write(dir.path().join("a/x.wav"), b"one").unwrap();
        let (v3, _) = hash_dataset(dir.path(), &mut StatCache::default()).unwrap();
        assert_eq!(v1.digest, v3.digest);
    }

    #[test]
    fn unchanged_old_files_are_not_rehashed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x");
        fs::write(&file, b"data").unwrap();
        let old = SystemTime::now() - Duration::from_secs(60);
        fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let mut cache = StatCache::default();
        hash_dataset(dir.path(), &mut cache).unwrap();
        let (_, stats) = hash_dataset(dir.path(), &mut cache).unwrap();
        assert_eq!(stats.rehashed, 0);
    }

    #[test]
    fn missing_root_is_a_clear_error() {
        let err = hash_dataset(Path::new("/no/such/root"), &mut StatCache::default()).unwrap_err();
        assert_eq!(err.to_string(), "dataset root /no/such/root does not exist");
    }
}
