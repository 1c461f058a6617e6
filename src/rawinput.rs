//! Raw inputs (the dataset folder) hashed by content, with a stat cache so an unchanged corpus is not
//! re-read.
//!
//! A file's cached digest is reused only while its (size, mtime in ns, inode, ctime in ns) are unchanged.
//! Like git's "racy" check, a file modified within [`RACY_WINDOW`] of the hashing is never cached: a write in
//! the same timestamp tick could otherwise go unnoticed.
//!
//! Every entry under the root is either a regular file, hashed, or an *unlisted* entry with its reason, so a
//! stage can account for all of them: hidden files and folders (a leading `.`, never read), dangling links,
//! links to links (a link is followed once), links leaving the root (unless the config allows them), a folder
//! reached twice (so a link loop ends), FIFOs, sockets and devices (never opened), and anything unreadable.
//! The dataset digest covers every (relative path, size, digest), sorted by path, and the unlisted entries
//! when there are any.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::hashing::{canonical_json, digest_bytes, digest_file, stat_key, RACY_WINDOW};
use crate::stage::{DatasetView, RawFile, UnlistedEntry, UnlistedReason};
use crate::store::write_atomic;

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

/// Everything found under the dataset root: regular files to hash (relative path, path to open) and every
/// other entry with the reason it is not hashed.
#[derive(Debug, Default)]
struct Listing {
    files: Vec<(String, PathBuf)>,
    unlisted: Vec<UnlistedEntry>,
}

/// A depth-first walk in sorted name order, so which of two paths to one folder counts as "reached again" is
/// the same on every machine.
struct Walker {
    canonical_root: PathBuf,
    follow_external_symlinks: bool,
    /// Canonical folder -> the relative path it was first listed under. A folder is entered once, so a link
    /// loop ends at its first repetition instead of recursing until memory runs out.
    visited: BTreeMap<PathBuf, String>,
    listing: Listing,
}

fn join_rel(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn special_kind(file_type: fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_fifo() {
        "FIFO"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_char_device() {
        "character device"
    } else if file_type.is_block_device() {
        "block device"
    } else {
        "unknown type"
    }
}

impl Walker {
    fn skip(&mut self, rel_path: String, reason: UnlistedReason) {
        self.listing
            .unlisted
            .push(UnlistedEntry { rel_path, reason });
    }

    fn unreadable(&mut self, rel_path: String, error: &std::io::Error) {
        self.skip(
            rel_path,
            UnlistedReason::Unreadable {
                error: error.to_string(),
            },
        );
    }

    /// Names in `dir`, sorted. Only the root's failure is an error: anything below it is an entry to record.
    fn names(dir: &Path) -> std::io::Result<Vec<std::ffi::OsString>> {
        let mut names = fs::read_dir(dir)?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect::<std::io::Result<Vec<_>>>()?;
        names.sort();
        Ok(names)
    }

    fn walk(&mut self, dir: &Path, rel_dir: &str) {
        match Self::names(dir) {
            Ok(names) => {
                for name in names {
                    let rel = join_rel(rel_dir, &name.to_string_lossy());
                    self.visit(&dir.join(&name), rel);
                }
            }
            Err(e) => self.unreadable(rel_dir.to_string(), &e),
        }
    }

    fn visit(&mut self, path: &Path, rel: String) {
        // symlink_metadata never follows a link and never opens the entry: a FIFO is not blocked on.
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) => return self.unreadable(rel, &e),
        };
        let file_type = meta.file_type();
        let hidden = rel.rsplit('/').next().is_some_and(|n| n.starts_with('.'));
        if hidden {
            let reason = if file_type.is_dir() {
                UnlistedReason::HiddenFolder
            } else {
                UnlistedReason::HiddenFile
            };
            self.skip(rel, reason);
        } else if file_type.is_symlink() {
            self.visit_link(path, rel);
        } else if file_type.is_dir() {
            self.enter(path, rel);
        } else if file_type.is_file() {
            self.listing.files.push((rel, path.to_path_buf()));
        } else {
            let kind = special_kind(file_type);
            self.skip(rel, UnlistedReason::Special { kind });
        }
    }

    /// Follow a link once: to a regular file or folder inside the root (or anywhere, when allowed).
    fn visit_link(&mut self, path: &Path, rel: String) {
        let target = match fs::read_link(path) {
            Ok(target) => target,
            Err(e) => return self.unreadable(rel, &e),
        };
        let target_text = target.display().to_string();
        let hop = path.parent().unwrap_or(Path::new("")).join(&target);
        match fs::symlink_metadata(&hop) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return self.skip(
                    rel,
                    UnlistedReason::Dangling {
                        target: target_text,
                    },
                )
            }
            Err(e) => return self.unreadable(rel, &e),
            Ok(meta) if meta.file_type().is_symlink() => {
                return self.skip(
                    rel,
                    UnlistedReason::LinkToLink {
                        target: target_text,
                    },
                )
            }
            Ok(_) => {}
        }
        let canonical = match fs::canonicalize(path) {
            Ok(canonical) => canonical,
            Err(e) => return self.unreadable(rel, &e),
        };
        if !self.follow_external_symlinks && !canonical.starts_with(&self.canonical_root) {
            return self.skip(
                rel,
                UnlistedReason::OutsideRoot {
                    target: target_text,
                },
            );
        }
        let meta = match fs::metadata(&canonical) {
            Ok(meta) => meta,
            Err(e) => return self.unreadable(rel, &e),
        };
        if meta.is_dir() {
            self.enter(path, rel);
        } else if meta.is_file() {
            self.listing.files.push((rel, path.to_path_buf()));
        } else {
            let kind = special_kind(meta.file_type());
            self.skip(rel, UnlistedReason::Special { kind });
        }
    }

    fn enter(&mut self, path: &Path, rel: String) {
        let canonical = match fs::canonicalize(path) {
            Ok(canonical) => canonical,
            Err(e) => return self.unreadable(rel, &e),
        };
        if let Some(first) = self.visited.get(&canonical) {
            let first = first.clone();
            let inside = first.is_empty() || rel.starts_with(&format!("{first}/"));
            let reason = if inside {
                UnlistedReason::Loop { first }
            } else {
                UnlistedReason::Repeat { first }
            };
            return self.skip(rel, reason);
        }
        self.visited.insert(canonical, rel.clone());
        self.walk(path, &rel);
    }
}

/// List `root`: every regular file to hash, every other entry with its reason, both sorted by path.
fn list(root: &Path, follow_external_symlinks: bool) -> Result<Listing, RawInputError> {
    let io = |source| RawInputError::Io {
        path: root.to_path_buf(),
        source,
    };
    let canonical_root = fs::canonicalize(root).map_err(io)?;
    let names = Walker::names(root).map_err(io)?;
    let mut walker = Walker {
        canonical_root: canonical_root.clone(),
        follow_external_symlinks,
        visited: BTreeMap::from([(canonical_root, String::new())]),
        listing: Listing::default(),
    };
    for name in names {
        let rel = name.to_string_lossy().into_owned();
        walker.visit(&root.join(&name), rel);
    }
    let mut listing = walker.listing;
    listing.files.sort();
    listing.unlisted.sort_by(|a, b| a.rel_path.cmp(&b.rel_path));
    Ok(listing)
}

/// One file's digest, the stat-cache entry to store (none if racy) and whether it was read.
type Hashed = (RawFile, Option<(String, StatEntry)>, bool);

/// The dataset digest: every (relative path, size, digest); the unlisted entries (path, reason) join it only
/// when there are any, so a clean dataset keeps the digest it had before they were recorded.
fn dataset_digest(files: &[RawFile], unlisted: &[UnlistedEntry]) -> String {
    let listing: Vec<(&str, u64, &str)> = files
        .iter()
        .map(|f| (f.rel_path.as_str(), f.size, f.digest.as_str()))
        .collect();
    if unlisted.is_empty() {
        return digest_bytes(&canonical_json(&listing));
    }
    let unlisted: Vec<(&str, String)> = unlisted
        .iter()
        .map(|u| (u.rel_path.as_str(), u.reason.to_string()))
        .collect();
    digest_bytes(&canonical_json(
        &serde_json::json!({ "files": listing, "unlisted": unlisted }),
    ))
}

/// Hash every file under `root`, reusing `cache` where the stat is unchanged, updating it in place. Links
/// leaving the root are followed only with `follow_external_symlinks`.
pub fn hash_dataset(
    root: &Path,
    cache: &mut StatCache,
    follow_external_symlinks: bool,
) -> Result<(DatasetView, HashStats), RawInputError> {
    if !root.exists() {
        return Err(RawInputError::MissingRoot(root.to_path_buf()));
    }
    if !root.is_dir() {
        return Err(RawInputError::NotAFolder(root.to_path_buf()));
    }
    let started = SystemTime::now();
    let Listing {
        files,
        mut unlisted,
    } = list(root, follow_external_symlinks)?;
    let results: Vec<Result<Hashed, UnlistedEntry>> = files
        .par_iter()
        .map(|(rel, path)| {
            // A file that cannot be read is recorded with the OS error, never a reason to stop the run.
            let unlisted = |reason| UnlistedEntry {
                rel_path: rel.clone(),
                reason,
            };
            let unreadable = |e: std::io::Error| {
                unlisted(UnlistedReason::Unreadable {
                    error: e.to_string(),
                })
            };
            let meta = fs::metadata(path).map_err(unreadable)?;
            if !meta.is_file() {
                // Replaced since it was listed: still never open a FIFO or device.
                let kind = special_kind(meta.file_type());
                return Err(unlisted(UnlistedReason::Special { kind }));
            }
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
            let (digest, _) = digest_file(path).map_err(unreadable)?;
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
        files: 0,
        rehashed: 0,
        bytes_rehashed: 0,
    };
    for result in results {
        let (file, entry, rehashed) = match result {
            Ok(hashed) => hashed,
            Err(skipped) => {
                unlisted.push(skipped);
                continue;
            }
        };
        if rehashed {
            stats.rehashed += 1;
            stats.bytes_rehashed += file.size;
        }
        if let Some((abs, entry)) = entry {
            cache.entries.insert(abs, entry);
        }
        view_files.push(file);
    }
    stats.files = view_files.len();
    unlisted.sort_by(|a, b| a.rel_path.cmp(&b.rel_path));
    let digest = dataset_digest(&view_files, &unlisted);
    Ok((
        DatasetView {
            root: root.to_path_buf(),
            files: view_files,
            unlisted,
            digest,
        },
        stats,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_depends_on_content_not_on_mtime_and_hidden_files_are_unlisted() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a")).unwrap();
        fs::write(dir.path().join("a/x.wav"), b"one").unwrap();
        fs::write(dir.path().join(".hidden"), b"h").unwrap();
        let mut cache = StatCache::default();
        let (v1, s1) = hash_dataset(dir.path(), &mut cache, false).unwrap();
        assert_eq!(v1.files.len(), 1);
        assert_eq!(v1.files[0].rel_path, "a/x.wav");
        assert_eq!(
            v1.unlisted,
            vec![UnlistedEntry {
                rel_path: ".hidden".into(),
                reason: UnlistedReason::HiddenFile
            }]
        );
        assert_eq!(s1.rehashed, 1);
        fs::write(dir.path().join("a/x.wav"), b"two").unwrap();
        let (v2, _) = hash_dataset(dir.path(), &mut cache, false).unwrap();
        assert_ne!(v1.digest, v2.digest);
        fs::write(dir.path().join("a/x.wav"), b"one").unwrap();
        let (v3, _) = hash_dataset(dir.path(), &mut StatCache::default(), false).unwrap();
        assert_eq!(v1.digest, v3.digest);
    }

    #[test]
    fn unchanged_old_files_are_not_rehashed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x");
        fs::write(&file, b"data").unwrap();
        let old = SystemTime::now() - std::time::Duration::from_secs(60);
        fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let mut cache = StatCache::default();
        hash_dataset(dir.path(), &mut cache, false).unwrap();
        let (_, stats) = hash_dataset(dir.path(), &mut cache, false).unwrap();
        assert_eq!(stats.rehashed, 0);
    }

    #[test]
    fn missing_root_is_a_clear_error() {
        let err =
            hash_dataset(Path::new("/no/such/root"), &mut StatCache::default(), false).unwrap_err();
        assert_eq!(err.to_string(), "dataset root /no/such/root does not exist");
    }

    fn reasons(view: &DatasetView) -> Vec<(String, String)> {
        view.unlisted
            .iter()
            .map(|u| (u.rel_path.clone(), u.reason.to_string()))
            .collect()
    }

    #[test]
    fn a_clean_dataset_keeps_the_digest_of_its_files_alone() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a")).unwrap();
        fs::write(dir.path().join("a/x.wav"), b"one").unwrap();
        let (view, _) = hash_dataset(dir.path(), &mut StatCache::default(), false).unwrap();
        let listing = vec![("a/x.wav", 3u64, blake3::hash(b"one").to_hex().to_string())];
        assert_eq!(view.digest, digest_bytes(&canonical_json(&listing)));
        // A new dangling link changes it.
        std::os::unix::fs::symlink("gone.wav", dir.path().join("a/y.wav")).unwrap();
        let (dangling, _) = hash_dataset(dir.path(), &mut StatCache::default(), false).unwrap();
        assert_ne!(view.digest, dangling.digest);
        assert_eq!(
            reasons(&dangling),
            vec![("a/y.wav".into(), "dangling symlink to gone.wav".into())]
        );
    }

    #[test]
    fn link_loops_end_and_every_odd_entry_is_recorded() {
        use std::os::unix::fs::symlink;
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("root");
        fs::create_dir_all(root.join("a/deep")).unwrap();
        fs::write(root.join("a/x.wav"), b"x").unwrap();
        fs::write(base.path().join("outside.wav"), b"o").unwrap();
        symlink(".", root.join("loop")).unwrap();
        symlink("../..", root.join("a/deep/up")).unwrap();
        symlink("../outside.wav", root.join("ext.wav")).unwrap();
        symlink("x.wav", root.join("a/one_hop.wav")).unwrap();
        symlink("one_hop.wav", root.join("a/two_hops.wav")).unwrap();
        symlink("a", root.join("alias")).unwrap();
        let fifo = root.join("a/pipe.wav");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()));
        let (view, _) = hash_dataset(&root, &mut StatCache::default(), false).unwrap();
        let files: Vec<&str> = view.files.iter().map(|f| f.rel_path.as_str()).collect();
        // `a` comes before `alias` in name order, so the alias is the repeat.
        assert_eq!(files, vec!["a/one_hop.wav", "a/x.wav"]);
        assert_eq!(
            reasons(&view),
            vec![
                (
                    "a/deep/up".into(),
                    "symlink loop: reaches folder `.` again".into()
                ),
                ("a/pipe.wav".into(), "special file (FIFO), not read".into()),
                (
                    "a/two_hops.wav".into(),
                    "symlink to a symlink (one_hop.wav); links are followed at most once".into()
                ),
                (
                    "alias".into(),
                    "second path to folder `a`, already listed there".into()
                ),
                (
                    "ext.wav".into(),
                    "symlink to ../outside.wav, outside the dataset root (set \
                     dataset.follow_external_symlinks to follow it)"
                        .into()
                ),
                (
                    "loop".into(),
                    "symlink loop: reaches folder `.` again".into()
                ),
            ]
        );
        let (allowed, _) = hash_dataset(&root, &mut StatCache::default(), true).unwrap();
        let files: Vec<&str> = allowed.files.iter().map(|f| f.rel_path.as_str()).collect();
        assert_eq!(files, vec!["a/one_hop.wav", "a/x.wav", "ext.wav"]);
    }
}
