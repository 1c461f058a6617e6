//! The remote cache's rules against a `file://` remote (the same object_store code path as S3 but for the
//! transport; `tests/remote_s3.rs` runs them against a real S3 server that checks signatures).

use std::fs;

use super::*;
use crate::cas::Lookup;
use crate::store::LocalStore;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn store(&self, name: &str) -> LocalStore {
        LocalStore::open(&self.dir.path().join(name)).unwrap()
    }

    fn remote_root(&self) -> PathBuf {
        self.dir.path().join("remote")
    }

    fn remote(&self, read_only: bool) -> Remote {
        Remote::connect(&RemoteSettings {
            url: format!("file://{}", self.remote_root().display()),
            read_only,
        })
        .unwrap()
    }

    fn remote_file(&self, relative: &str) -> PathBuf {
        self.remote_root().join(relative)
    }
}

/// A published result with a plain output and a folder output, as a stage run leaves it.
fn publish(store: &LocalStore, key: &str, salt: &str) -> ActionRecord {
    let output = store
        .put_bytes(format!("output of {salt}").as_bytes())
        .unwrap();
    let folder = tempfile::tempdir().unwrap();
    let model = folder.path().join("model");
    fs::create_dir_all(model.join("sub")).unwrap();
    fs::write(model.join("w.bin"), format!("weights {salt}")).unwrap();
    fs::write(
        model.join("sub/cfg.json"),
        format!("{{\"salt\":\"{salt}\"}}"),
    )
    .unwrap();
    let (tree, _) = store.put_tree(&model).unwrap();
    let manifest = store
        .put_bytes(format!("manifest of {key}").as_bytes())
        .unwrap();
    let record = ActionRecord {
        key: key.into(),
        manifest,
        outputs: [("table".to_string(), output), ("model".to_string(), tree)].into(),
        folders: ["model".to_string()].into(),
    };
    store.put_action(&record).unwrap();
    record
}

fn blob_file(record: &ActionRecord) -> String {
    let digest = &record.outputs["table"];
    format!("cas/{}/{digest}", &digest[..2])
}

#[test]
fn a_result_uploaded_from_one_store_is_a_verified_hit_in_another() {
    let f = Fixture::new();
    let (a, b) = (f.store("a"), f.store("b"));
    let record = publish(&a, "k1", "x");
    let remote = f.remote(false);
    let uploaded = remote.upload(&record, &a).unwrap();
    // Manifest, table, tree and its two files.
    assert_eq!(uploaded.sent.blobs, 5);
    assert!(uploaded.wrote_record);
    assert!(f.remote_file("ac/k1.json").is_file());
    // A second upload sends nothing and leaves the record.
    let again = remote.upload(&record, &a).unwrap();
    assert_eq!(again.sent, Traffic::default());
    assert!(!again.wrote_record);

    assert_eq!(b.lookup("k1", &b).unwrap(), Lookup::Miss);
    assert_eq!(remote.peek("k1").unwrap(), Some(record.clone()));
    match remote.fetch("k1", &b, &b).unwrap() {
        Fetched::Hit {
            record: got,
            downloaded,
        } => {
            assert_eq!(got, record);
            assert_eq!(downloaded.blobs, 5);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(b.lookup("k1", &b).unwrap(), Lookup::Hit(record.clone()));
    let tree = b.materialize_tree(&record.outputs["model"]).unwrap();
    assert_eq!(
        fs::read(tree.join("sub/cfg.json")).unwrap(),
        b"{\"salt\":\"x\"}"
    );
    // Nothing to download the second time.
    match remote.fetch("k1", &b, &b).unwrap() {
        Fetched::Hit { downloaded, .. } => assert_eq!(downloaded, Traffic::default()),
        other => panic!("{other:?}"),
    }
    assert_eq!(remote.fetch("absent", &b, &b).unwrap(), Fetched::Miss);
    assert_eq!(remote.peek("absent").unwrap(), None);
}

#[test]
fn a_corrupt_remote_blob_is_reported_never_published_and_overwritten_by_the_next_upload() {
    let f = Fixture::new();
    let (a, c) = (f.store("a"), f.store("c"));
    let record = publish(&a, "k1", "x");
    f.remote(false).upload(&record, &a).unwrap();
    let path = f.remote_file(&blob_file(&record));
    let mut bytes = fs::read(&path).unwrap();
    bytes[0] ^= 1;
    fs::write(&path, &bytes).unwrap();

    let remote = f.remote(false);
    match remote.fetch("k1", &c, &c).unwrap() {
        Fetched::Rejected(reason) => assert!(reason.contains("corrupt"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // No record locally, and the bad bytes were never stored.
    assert_eq!(c.lookup("k1", &c).unwrap(), Lookup::Miss.clone());
    assert_eq!(
        c.state(&record.outputs["table"]).unwrap(),
        ObjectState::Missing
    );
    // The process that found it bad overwrites it when it uploads the result it computed.
    let healed = remote.upload(&record, &a).unwrap();
    assert_eq!(healed.sent.blobs, 1);
    let d = f.store("d");
    assert!(matches!(
        f.remote(false).fetch("k1", &d, &d).unwrap(),
        Fetched::Hit { .. }
    ));
}

#[test]
fn an_upload_cut_short_leaves_a_miss_and_a_record_without_its_blobs_is_rejected() {
    let f = Fixture::new();
    let (a, b) = (f.store("a"), f.store("b"));
    let record = publish(&a, "k1", "x");
    let remote = f.remote(false);
    remote.upload(&record, &a).unwrap();
    // Killed after the blobs, before the record: nobody sees a result.
    fs::remove_file(f.remote_file("ac/k1.json")).unwrap();
    assert_eq!(remote.fetch("k1", &b, &b).unwrap(), Fetched::Miss);
    // A record whose blob is gone (deleted by hand, a lifecycle rule) is not a hit.
    remote.upload(&record, &a).unwrap();
    fs::remove_file(f.remote_file(&blob_file(&record))).unwrap();
    match remote.fetch("k1", &b, &b).unwrap() {
        Fetched::Rejected(reason) => assert!(reason.contains("missing"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(b.lookup("k1", &b).unwrap(), Lookup::Miss);
}

#[test]
fn an_unreadable_or_misfiled_record_is_rejected_and_rewritten_by_the_next_upload() {
    let f = Fixture::new();
    let (a, b) = (f.store("a"), f.store("b"));
    let record = publish(&a, "k1", "x");
    let remote = f.remote(false);
    remote.upload(&record, &a).unwrap();
    fs::write(f.remote_file("ac/k1.json"), b"{truncated").unwrap();
    assert!(matches!(
        remote.fetch("k1", &b, &b).unwrap(),
        Fetched::Rejected(_)
    ));
    assert_eq!(remote.peek("k1").unwrap(), None);
    assert!(remote.upload(&record, &a).unwrap().wrote_record);
    assert!(matches!(
        remote.fetch("k1", &b, &b).unwrap(),
        Fetched::Hit { .. }
    ));
    // A record filed under another key is not that key's result.
    let other = publish(&a, "k2", "y");
    let bytes = crate::hashing::canonical_json(&other);
    fs::write(f.remote_file("ac/k1.json"), bytes).unwrap();
    let fresh = f.store("fresh");
    match f.remote(false).fetch("k1", &fresh, &fresh).unwrap() {
        Fetched::Rejected(reason) => assert!(reason.contains("records key k2"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn two_writers_of_one_key_both_succeed_and_one_record_stands() {
    let f = Fixture::new();
    let a = f.store("a");
    let record = publish(&a, "k1", "x");
    let barrier = std::sync::Barrier::new(2);
    let outcomes: Vec<Uploaded> = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let remote = f.remote(false);
                let (a, record, barrier) = (&a, &record, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    remote.upload(record, a).unwrap()
                })
            })
            .collect();
        writers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    assert!(outcomes.iter().any(|o| o.wrote_record), "{outcomes:?}");
    assert_eq!(
        fs::read(f.remote_file("ac/k1.json")).unwrap(),
        crate::hashing::canonical_json(&record)
    );
    let b = f.store("b");
    assert!(matches!(
        f.remote(false).fetch("k1", &b, &b).unwrap(),
        Fetched::Hit { .. }
    ));
}

#[test]
fn a_read_only_remote_pulls_but_never_writes() {
    let f = Fixture::new();
    let a = f.store("a");
    let record = publish(&a, "k1", "x");
    let writer = f.remote(false);
    writer.upload(&record, &a).unwrap();
    let reader = f.remote(true);
    let other = publish(&a, "k2", "y");
    assert!(matches!(
        reader.upload(&other, &a),
        Err(RemoteError::ReadOnly(_))
    ));
    let entries = vec![("s".to_string(), "k2".to_string())];
    assert!(matches!(
        push(&reader, &entries, &a, &a),
        Err(RemoteError::ReadOnly(_))
    ));
    assert!(!f.remote_file("ac/k2.json").exists());
    let b = f.store("b");
    let pulled = pull(
        &reader,
        &[
            ("s".to_string(), "k1".to_string()),
            ("t".to_string(), "k2".to_string()),
        ],
        &b,
        &b,
    )
    .unwrap();
    assert_eq!(pulled.moved, 1);
    assert_eq!(pulled.problems.len(), 1);
    assert_eq!(pulled.problems[0].0, "t");
}

#[test]
fn push_then_pull_moves_a_whole_lock_and_counts_what_was_already_there() {
    let f = Fixture::new();
    let a = f.store("a");
    let entries: Vec<(String, String)> = (0..3)
        .map(|i| {
            publish(&a, &format!("k{i}"), &format!("s{i}"));
            (format!("stage{i}"), format!("k{i}"))
        })
        .collect();
    let remote = f.remote(false);
    let pushed = push(&remote, &entries, &a, &a).unwrap();
    assert_eq!((pushed.moved, pushed.present), (3, 0));
    assert!(pushed.problems.is_empty());
    let again = push(&remote, &entries, &a, &a).unwrap();
    assert_eq!((again.moved, again.present, again.traffic.blobs), (0, 3, 0));
    let b = f.store("b");
    let pulled = pull(&remote, &entries, &b, &b).unwrap();
    assert_eq!((pulled.moved, pulled.present), (3, 0));
    assert_eq!(pulled.traffic.bytes, pushed.traffic.bytes);
    for (_, key) in &entries {
        assert!(matches!(b.lookup(key, &b).unwrap(), Lookup::Hit(_)));
    }
    // A stage with no local result is named, not silently skipped.
    let missing = vec![("ghost".to_string(), "nokey".to_string())];
    assert_eq!(
        push(&remote, &missing, &a, &a).unwrap().problems[0].0,
        "ghost"
    );
}

#[test]
fn settings_come_from_the_environment_over_pipeline_yaml() {
    let config: RemoteConfig =
        serde_yaml::from_str("url: s3://lab/genrelab\nread_only: true\n").unwrap();
    let none = |_: &str| None;
    assert_eq!(
        RemoteSettings::resolve(Some(&config), none),
        Some(RemoteSettings {
            url: "s3://lab/genrelab".into(),
            read_only: true
        })
    );
    let plain: RemoteConfig = serde_yaml::from_str("s3://lab/x").unwrap();
    let env = |k: &str| match k {
        "GENRELAB_REMOTE" => Some("s3://other/y".to_string()),
        "GENRELAB_REMOTE_READ_ONLY" => Some("1".to_string()),
        _ => None,
    };
    assert_eq!(
        RemoteSettings::resolve(Some(&plain), env),
        Some(RemoteSettings {
            url: "s3://other/y".into(),
            read_only: true
        })
    );
    // An empty GENRELAB_REMOTE turns a configured remote off.
    let off = |k: &str| (k == "GENRELAB_REMOTE").then(String::new);
    assert_eq!(RemoteSettings::resolve(Some(&plain), off), None);
    assert_eq!(RemoteSettings::resolve(None, none), None);
    assert!(serde_yaml::from_str::<RemoteConfig>("url: x\nbogus: 1\n").is_err());
    for bad in ["http://x", "s3://", "file://relative/path"] {
        let err = Remote::connect(&RemoteSettings {
            url: bad.into(),
            read_only: false,
        })
        .unwrap_err();
        assert!(matches!(err, RemoteError::Config(_)), "{bad}: {err}");
    }
}

#[test]
fn profile_credentials_are_read_from_the_named_section() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials");
    fs::write(
        &file,
        "[default]\naws_access_key_id = A\naws_secret_access_key = B\n\n# lab\n[lab]\n\
         aws_access_key_id=C\naws_secret_access_key=D\naws_session_token = T\n[half]\naws_access_key_id=E\n",
    )
    .unwrap();
    let creds = |p: &str| profile_credentials(&file, p);
    assert_eq!(
        creds("default"),
        Some(ProfileCredentials {
            access_key_id: "A".into(),
            secret_access_key: "B".into(),
            session_token: None
        })
    );
    assert_eq!(creds("lab").unwrap().session_token.as_deref(), Some("T"));
    assert_eq!(creds("lab").unwrap().access_key_id, "C");
    assert_eq!(creds("half"), None);
    assert_eq!(creds("absent"), None);
}

#[test]
fn a_hostile_record_or_tree_cannot_name_files_outside_the_store() {
    let f = Fixture::new();
    let a = f.store("a");
    let record = publish(&a, "k1", "x");
    let remote = f.remote(false);
    remote.upload(&record, &a).unwrap();
    // A record naming a path instead of a digest.
    let mut hostile = record.clone();
    hostile.manifest = "../../../../etc/passwd".into();
    fs::write(
        f.remote_file("ac/k1.json"),
        crate::hashing::canonical_json(&hostile),
    )
    .unwrap();
    let b = f.store("b");
    match f.remote(false).fetch("k1", &b, &b).unwrap() {
        Fetched::Rejected(reason) => assert!(reason.contains("not a digest"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // A well-formed tree blob whose file path climbs out of its folder.
    let payload = a.put_bytes(b"payload").unwrap();
    let tree = Tree {
        genrelab_tree: 1,
        files: vec![crate::cas::TreeFile {
            path: "../../escaped".into(),
            size: 7,
            digest: payload,
        }],
    };
    let tree_digest = a.put_bytes(&crate::hashing::canonical_json(&tree)).unwrap();
    let mut climbing = record.clone();
    climbing.key = "k2".into();
    climbing.outputs.insert("model".into(), tree_digest);
    a.put_action(&climbing).unwrap();
    remote.upload(&climbing, &a).unwrap();
    let c = f.store("c");
    match f.remote(false).fetch("k2", &c, &c).unwrap() {
        Fetched::Rejected(reason) => assert!(reason.contains("../../escaped"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.lookup("k2", &c).unwrap(), Lookup::Miss);
    assert!(is_plain_relative_path("a/b.bin") && !is_plain_relative_path("/etc/x"));
    assert!(!is_plain_relative_path("a//b") && !is_plain_relative_path("./a"));
}
