//! The shared artifact cache: the store's blobs and action records mirrored on S3-compatible object storage
//! (or a `file://` folder), so that nobody trains the same key twice.
//!
//! ```text
//! <prefix>/cas/<2 hex>/<digest>   blobs, named by their blake3 (as under artifacts/objects/)
//! <prefix>/ac/<key>.json          action records: stage key -> manifest and outputs (written last)
//! ```
//!
//! The layout is Bazel's remote cache (an action cache over a CAS) and DVC's mirrored cache. Its rules:
//! - a writer uploads every blob a record names before the record, so a reader never finds a record whose
//!   blobs were never written; an upload killed half-way leaves blobs nobody names, which is harmless;
//! - records are written with "create only" (`If-None-Match: *`): of two writers of one key the second
//!   finds the first's record there and leaves it (both computed the same bytes: the key says so);
//! - a reader trusts nothing it downloads: every blob is hashed before it is published into the local store,
//!   and a record, tree or blob that fails is reported and ignored (the stage then runs locally), never
//!   used. What this process found bad it overwrites on its next upload instead of trusting it.
//!
//! Settings (`remote:` in pipeline.yaml, or `GENRELAB_REMOTE`) are run settings: never part of a key.
//! Credentials and the endpoint come from the standard AWS environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, and
//! instance or container credentials), or from `~/.aws/credentials` (`AWS_PROFILE`, default `default`)
//! when the environment names no key.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::Deserialize;

use crate::cas::{ActionCache, ActionRecord, BlobStore, ObjectState, StoreError, Tree};
use crate::hashing::{digest_bytes, short, Digest};

/// Requests in flight at once during a transfer.
const CONCURRENCY: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("remote cache: {0}")]
    Config(String),
    #[error("remote cache {url}: {what}: {source}")]
    Backend {
        url: String,
        what: String,
        #[source]
        source: object_store::Error,
    },
    #[error("remote cache {0} is read-only (remote.read_only or GENRELAB_REMOTE_READ_ONLY): nothing is uploaded")]
    ReadOnly(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `remote:` as written in pipeline.yaml: a URL, or a block.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum RemoteConfig {
    Url(String),
    Block(RemoteBlock),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteBlock {
    pub url: String,
    /// May pull, never push (CI runners, readers without write credentials).
    #[serde(default)]
    pub read_only: bool,
}

/// Where the remote is and whether this process may write to it, after the environment had its say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSettings {
    pub url: String,
    pub read_only: bool,
}

impl RemoteSettings {
    /// `GENRELAB_REMOTE` (a URL, or empty for none) over pipeline.yaml's `remote:`;
    /// `GENRELAB_REMOTE_READ_ONLY=1` makes either read-only.
    pub fn resolve(
        config: Option<&RemoteConfig>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Option<RemoteSettings> {
        let (url, read_only) = match (env("GENRELAB_REMOTE"), config) {
            (Some(url), _) => (url, false),
            (None, Some(RemoteConfig::Url(url))) => (url.clone(), false),
            (None, Some(RemoteConfig::Block(block))) => (block.url.clone(), block.read_only),
            (None, None) => return None,
        };
        let url = url.trim().to_string();
        if url.is_empty() {
            return None;
        }
        let env_read_only = env("GENRELAB_REMOTE_READ_ONLY")
            .is_some_and(|v| !matches!(v.trim(), "" | "0" | "false" | "no"));
        Some(RemoteSettings {
            url,
            read_only: read_only || env_read_only,
        })
    }
}

/// What one transfer moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub blobs: u64,
    pub bytes: u64,
}

impl Traffic {
    fn add(&mut self, other: Traffic) {
        self.blobs += other.blobs;
        self.bytes += other.bytes;
    }
}

/// The result of looking a key up remotely and bringing its result home.
#[derive(Debug, Clone, PartialEq)]
pub enum Fetched {
    /// Every blob is now intact in the local store and the record is published locally.
    Hit {
        record: ActionRecord,
        downloaded: Traffic,
    },
    Miss,
    /// The remote holds something for the key that cannot be used: why, naming the object.
    Rejected(String),
}

/// What an upload of one record did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub sent: Traffic,
    /// False when another writer's record for the key was already there (and was left alone).
    pub wrote_record: bool,
}

/// A connection to the remote cache.
pub struct Remote {
    url: String,
    read_only: bool,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    runtime: tokio::runtime::Runtime,
    /// Remote paths this process found corrupt or unreadable: its uploads overwrite them.
    known_bad: Mutex<BTreeSet<String>>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("url", &self.url)
            .field("read_only", &self.read_only)
            .finish()
    }
}

impl Remote {
    /// Connect (lazily: no request is made until the first lookup).
    pub fn connect(settings: &RemoteSettings) -> Result<Remote, RemoteError> {
        let url = settings.url.clone();
        let (store, prefix): (Arc<dyn ObjectStore>, String) =
            if let Some(rest) = url.strip_prefix("s3://") {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(RemoteError::Config(format!(
                        "`{url}` names no bucket (use s3://BUCKET/PREFIX)"
                    )));
                }
                (Arc::new(s3_store(bucket, &url)?), prefix.to_string())
            } else if let Some(path) = url.strip_prefix("file://") {
                let path = Path::new(path);
                if !path.is_absolute() {
                    return Err(RemoteError::Config(format!(
                        "`{url}`: a file:// remote needs an absolute path (file:///shared/cache)"
                    )));
                }
                std::fs::create_dir_all(path).map_err(|e| {
                    RemoteError::Config(format!("cannot create {}: {e}", path.display()))
                })?;
                let local = object_store::local::LocalFileSystem::new_with_prefix(path).map_err(
                    |source| RemoteError::Backend {
                        url: url.clone(),
                        what: "opening the folder".into(),
                        source,
                    },
                )?;
                (Arc::new(local), String::new())
            } else {
                return Err(RemoteError::Config(format!(
                    "`{url}` is not a supported remote (use s3://BUCKET/PREFIX or file:///PATH)"
                )));
            };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("genrelab-remote")
            .enable_all()
            .build()
            .map_err(|e| RemoteError::Config(format!("cannot start the I/O runtime: {e}")))?;
        Ok(Remote {
            url,
            read_only: settings.read_only,
            store,
            prefix: ObjectPath::from(prefix.trim_matches('/')),
            runtime,
            known_bad: Mutex::new(BTreeSet::new()),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    fn blob_path(&self, digest: &str) -> ObjectPath {
        let shard = digest.get(..2).unwrap_or("00");
        self.prefix.clone().join("cas").join(shard).join(digest)
    }

    fn record_path(&self, key: &str) -> ObjectPath {
        self.prefix.clone().join("ac").join(format!("{key}.json"))
    }

    fn backend(&self, what: String) -> impl FnOnce(object_store::Error) -> RemoteError + '_ {
        move |source| RemoteError::Backend {
            url: self.url.clone(),
            what,
            source,
        }
    }

    fn mark_bad(&self, path: &ObjectPath) {
        if let Ok(mut bad) = self.known_bad.lock() {
            bad.insert(path.to_string());
        }
    }

    fn is_known_bad(&self, path: &ObjectPath) -> bool {
        self.known_bad
            .lock()
            .map(|bad| bad.contains(path.as_ref()))
            .unwrap_or(false)
    }

    async fn get_opt(&self, path: &ObjectPath) -> Result<Option<Vec<u8>>, RemoteError> {
        match self.store.get(path).await {
            Ok(result) => result
                .bytes()
                .await
                .map(|b| Some(b.to_vec()))
                .map_err(self.backend(format!("reading {path}"))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.backend(format!("reading {path}"))(e)),
        }
    }

    /// The record stored for `key`, parsed and checked to name that key; `Err(reason)` when it cannot be used.
    async fn record(&self, key: &str) -> Result<Result<Option<ActionRecord>, String>, RemoteError> {
        let path = self.record_path(key);
        let Some(bytes) = self.get_opt(&path).await? else {
            return Ok(Ok(None));
        };
        let verdict = match serde_json::from_slice::<ActionRecord>(&bytes) {
            Ok(record) if record.key != key => Err(format!("{path} records key {}", record.key)),
            Ok(record) => match std::iter::once(&record.manifest)
                .chain(record.outputs.values())
                .find(|d| !is_digest(d))
            {
                // Digests become local file names: only a blake3 hex digest may name one.
                Some(bad) => Err(format!("{path} names `{bad}`, which is not a digest")),
                None => Ok(Some(record)),
            },
            Err(e) => Err(format!("{path} is not an action record: {e}")),
        };
        if verdict.is_err() {
            self.mark_bad(&path);
        }
        Ok(verdict)
    }

    /// Whether the remote holds a usable-looking record for `key` (its blobs are not checked: `status`
    /// asks this for every stale stage and must stay cheap). Its outputs plan the stages below it.
    pub fn peek(&self, key: &str) -> Result<Option<ActionRecord>, RemoteError> {
        self.runtime
            .block_on(self.record(key))
            .map(|verdict| verdict.ok().flatten())
    }

    /// Download one blob, hash it, and publish it locally; `Err(reason)` when its bytes are not its name.
    async fn fetch_blob(
        &self,
        digest: &str,
        blobs: &dyn BlobStore,
    ) -> Result<Result<Traffic, String>, RemoteError> {
        if blobs.state(digest)? == ObjectState::Intact {
            return Ok(Ok(Traffic::default()));
        }
        let path = self.blob_path(digest);
        let Some(bytes) = self.get_opt(&path).await? else {
            return Ok(Err(format!("blob {} is missing", short(digest))));
        };
        let actual = digest_bytes(&bytes);
        if actual != digest {
            self.mark_bad(&path);
            return Ok(Err(format!(
                "blob {path} is corrupt ({} bytes hash to {})",
                bytes.len(),
                short(&actual)
            )));
        }
        blobs.put_bytes(&bytes)?;
        Ok(Ok(Traffic {
            blobs: 1,
            bytes: bytes.len() as u64,
        }))
    }

    async fn fetch_all(
        &self,
        digests: Vec<Digest>,
        blobs: &dyn BlobStore,
    ) -> Result<Result<Traffic, String>, RemoteError> {
        let mut results = futures::stream::iter(digests.iter().map(|d| self.fetch_blob(d, blobs)))
            .buffer_unordered(CONCURRENCY);
        let mut total = Traffic::default();
        let mut first_problem = None;
        while let Some(result) = results.next().await {
            match result? {
                Ok(traffic) => total.add(traffic),
                Err(problem) => {
                    first_problem.get_or_insert(problem);
                }
            }
        }
        Ok(match first_problem {
            Some(problem) => Err(problem),
            None => Ok(total),
        })
    }

    /// Look `key` up remotely and, on a hit, download and verify every blob it names (trees and their files
    /// too), publish them into the local store, then the record into the local action cache.
    pub fn fetch(
        &self,
        key: &str,
        blobs: &dyn BlobStore,
        actions: &dyn ActionCache,
    ) -> Result<Fetched, RemoteError> {
        self.runtime.block_on(async {
            let record = match self.record(key).await? {
                Ok(Some(record)) => record,
                Ok(None) => return Ok(Fetched::Miss),
                Err(reason) => return Ok(Fetched::Rejected(reason)),
            };
            let named: Vec<Digest> = std::iter::once(record.manifest.clone())
                .chain(record.outputs.values().cloned())
                .collect();
            let mut downloaded = match self.fetch_all(named, blobs).await? {
                Ok(traffic) => traffic,
                Err(reason) => return Ok(Fetched::Rejected(reason)),
            };
            // A folder output's tree is verified above; the files it lists come next.
            let mut files = Vec::new();
            for name in &record.folders {
                let Some(digest) = record.outputs.get(name) else {
                    return Ok(Fetched::Rejected(format!(
                        "record for {} lists a folder `{name}` it has no output for",
                        short(key)
                    )));
                };
                let tree: Tree = match blobs.read_tree(digest) {
                    Ok(tree) => tree,
                    Err(e) => return Ok(Fetched::Rejected(e.to_string())),
                };
                // A tree's paths become files under the store's trees/ folder: nothing may climb out.
                if let Some(bad) = tree
                    .files
                    .iter()
                    .find(|f| !is_digest(&f.digest) || !is_plain_relative_path(&f.path))
                {
                    return Ok(Fetched::Rejected(format!(
                        "folder `{name}` ({}) lists `{}` ({}), which is not a plain relative path and digest",
                        short(digest),
                        bad.path,
                        bad.digest
                    )));
                }
                files.extend(tree.files.into_iter().map(|f| f.digest));
            }
            match self.fetch_all(files, blobs).await? {
                Ok(traffic) => downloaded.add(traffic),
                Err(reason) => return Ok(Fetched::Rejected(reason)),
            }
            actions.put_action(&record)?;
            Ok(Fetched::Hit { record, downloaded })
        })
    }

    async fn upload_blob(
        &self,
        digest: &str,
        blobs: &dyn BlobStore,
    ) -> Result<Traffic, RemoteError> {
        let path = self.blob_path(digest);
        let overwrite = self.is_known_bad(&path);
        if !overwrite {
            match self.store.head(&path).await {
                Ok(_) => return Ok(Traffic::default()),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.backend(format!("looking up {path}"))(e)),
            }
        }
        // What leaves this machine is checked as strictly as what arrives.
        if blobs.verify(digest)? != ObjectState::Intact {
            return Err(StoreError::Corrupt {
                path: PathBuf::from(digest),
                reason: "the local copy is missing or fails its digest; not uploading it".into(),
            }
            .into());
        }
        let bytes = blobs.read(digest)?;
        let size = bytes.len() as u64;
        self.store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(self.backend(format!("uploading {path}")))?;
        if let Ok(mut bad) = self.known_bad.lock() {
            bad.remove(path.as_ref());
        }
        Ok(Traffic {
            blobs: 1,
            bytes: size,
        })
    }

    /// Upload every blob `record` names (those the remote lacks), then the record, create-only.
    pub fn upload(
        &self,
        record: &ActionRecord,
        blobs: &dyn BlobStore,
    ) -> Result<Uploaded, RemoteError> {
        if self.read_only {
            return Err(RemoteError::ReadOnly(self.url.clone()));
        }
        self.runtime.block_on(async {
            let mut digests: Vec<Digest> = vec![record.manifest.clone()];
            for (name, digest) in &record.outputs {
                digests.push(digest.clone());
                if record.folders.contains(name) {
                    digests.extend(blobs.read_tree(digest)?.files.into_iter().map(|f| f.digest));
                }
            }
            digests.sort();
            digests.dedup();
            let mut sent = Traffic::default();
            let mut uploads =
                futures::stream::iter(digests.iter().map(|d| self.upload_blob(d, blobs)))
                    .buffer_unordered(CONCURRENCY);
            while let Some(result) = uploads.next().await {
                sent.add(result?);
            }
            // Last: every blob it names is there.
            let path = self.record_path(&record.key);
            let mode = if self.is_known_bad(&path) {
                PutMode::Overwrite
            } else {
                PutMode::Create
            };
            let options = PutOptions {
                mode,
                ..Default::default()
            };
            let payload = PutPayload::from(crate::hashing::canonical_json(record));
            let wrote_record = match self.store.put_opts(&path, payload, options).await {
                Ok(_) => true,
                // Another writer's record of the same key: the same result by construction.
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => false,
                Err(e) => return Err(self.backend(format!("writing {path}"))(e)),
            };
            if let Ok(mut bad) = self.known_bad.lock() {
                bad.remove(path.as_ref());
            }
            Ok(Uploaded { sent, wrote_record })
        })
    }
}

/// A blake3 digest as the store names blobs: 64 lowercase hex characters.
fn is_digest(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `a/b.bin`: relative, `/`-separated, no empty, `.` or `..` component.
fn is_plain_relative_path(path: &str) -> bool {
    !path.is_empty()
        && !path.contains('\\')
        && !path.contains('\0')
        && path.split('/').all(|part| !matches!(part, "" | "." | ".."))
}

/// An S3 client from the standard AWS environment, with short retries: a cache that is down must cost a
/// run seconds, not the minutes of a default retry budget.
fn s3_store(bucket: &str, url: &str) -> Result<object_store::aws::AmazonS3, RemoteError> {
    use object_store::aws::AmazonS3Builder;
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_retry(object_store::RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(15),
            ..Default::default()
        })
        .with_client_options(
            object_store::ClientOptions::new()
                .with_connect_timeout(Duration::from_secs(5))
                .with_timeout(Duration::from_secs(300)),
        );
    // The client options above replace those from_env read, AWS_ALLOW_HTTP among them.
    if std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| matches!(v.trim(), "true" | "1" | "yes")) {
        builder = builder.with_allow_http(true);
    }
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        if let Some(profile) = profile_credentials(&aws_credentials_file(), &aws_profile()) {
            builder = builder
                .with_access_key_id(profile.access_key_id)
                .with_secret_access_key(profile.secret_access_key);
            if let Some(token) = profile.session_token {
                builder = builder.with_token(token);
            }
        }
    }
    if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none()
    {
        builder = builder.with_region("us-east-1");
    }
    builder.build().map_err(|source| RemoteError::Backend {
        url: url.to_string(),
        what: "configuring the S3 client".into(),
        source,
    })
}

fn aws_profile() -> String {
    std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into())
}

fn aws_credentials_file() -> PathBuf {
    match std::env::var_os("AWS_SHARED_CREDENTIALS_FILE") {
        Some(path) => PathBuf::from(path),
        None => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default()
            .join(".aws/credentials"),
    }
}

#[derive(Debug, PartialEq, Eq)]
struct ProfileCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

/// The keys of `[profile]` in an AWS credentials file (INI), if it names both.
fn profile_credentials(file: &Path, profile: &str) -> Option<ProfileCredentials> {
    let text = std::fs::read_to_string(file).ok()?;
    let mut in_profile = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = section.trim() == profile;
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        if !in_profile {
            continue;
        }
        let value = Some(value.trim().to_string());
        match name.trim() {
            "aws_access_key_id" => id = value,
            "aws_secret_access_key" => secret = value,
            "aws_session_token" => token = value,
            _ => {}
        }
    }
    Some(ProfileCredentials {
        access_key_id: id?,
        secret_access_key: secret?,
        session_token: token,
    })
}

/// One `push` or `pull` over every stage of a lock.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncReport {
    /// Keys whose result was moved (records written or fetched).
    pub moved: usize,
    /// Keys that needed nothing (already there).
    pub present: usize,
    /// Keys that could not be moved, each with why.
    pub problems: Vec<(String, String)>,
    pub traffic: Traffic,
    pub seconds: f64,
}

/// Upload the result of every `(stage, key)` the local store holds intact.
pub fn push(
    remote: &Remote,
    entries: &[(String, Digest)],
    blobs: &dyn BlobStore,
    actions: &dyn ActionCache,
) -> Result<SyncReport, RemoteError> {
    if remote.read_only() {
        return Err(RemoteError::ReadOnly(remote.url().to_string()));
    }
    let started = Instant::now();
    let mut report = SyncReport::default();
    for (stage, key) in entries {
        match actions.lookup(key, blobs)? {
            crate::cas::Lookup::Hit(record) => {
                let uploaded = remote.upload(&record, blobs)?;
                report.traffic.add(uploaded.sent);
                if uploaded.wrote_record {
                    report.moved += 1;
                } else {
                    report.present += 1;
                }
            }
            other => report.problems.push((
                stage.clone(),
                format!(
                    "no intact local result for key {} ({})",
                    short(key),
                    match other {
                        crate::cas::Lookup::Miss => "not in the store".to_string(),
                        crate::cas::Lookup::Broken { bad, .. } =>
                            format!("{} missing or corrupt objects", bad.len()),
                        _ => "unreadable record".to_string(),
                    }
                ),
            )),
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Download the result of every `(stage, key)` the local store lacks.
pub fn pull(
    remote: &Remote,
    entries: &[(String, Digest)],
    blobs: &dyn BlobStore,
    actions: &dyn ActionCache,
) -> Result<SyncReport, RemoteError> {
    let started = Instant::now();
    let mut report = SyncReport::default();
    for (stage, key) in entries {
        if matches!(actions.lookup(key, blobs)?, crate::cas::Lookup::Hit(_)) {
            report.present += 1;
            continue;
        }
        match remote.fetch(key, blobs, actions)? {
            Fetched::Hit { downloaded, .. } => {
                report.moved += 1;
                report.traffic.add(downloaded);
            }
            Fetched::Miss => report.problems.push((
                stage.clone(),
                format!("the remote has no result for key {}", short(key)),
            )),
            Fetched::Rejected(reason) => report.problems.push((
                stage.clone(),
                format!(
                    "the remote's result for key {} is unusable: {reason}",
                    short(key)
                ),
            )),
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
#[path = "remote_tests.rs"]
mod tests;
