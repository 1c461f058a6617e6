//! The remote cache against a real S3-compatible server that checks request signatures (s3s-fs, started by
//! `scripts/s3-server.sh`): hits, misses, a corrupt remote blob, an upload cut short, two writers at once,
//! a read-only reader, wrong credentials, push and pull.

mod util;

use std::path::PathBuf;
use std::time::Instant;

use util::{Project, Service, COMMAND_LIMIT};

const PIPELINE: &str = "\
dataset:
  root: data
remote: s3://genrelab/cache
stages:
  - name: src
    kind: toy_source
    params:
      value: abc
      size: 100
  - name: a
    kind: toy_map
    inputs: [src]
    params:
      salt: a
  - name: t
    kind: toy_tree
    params:
      files:
        x/y.txt: hello
";

/// Where s3s-fs keeps an object of the bucket `genrelab`.
fn remote_object(s3: &Service, key: &str) -> PathBuf {
    PathBuf::from(s3.var("GENRELAB_TEST_S3_ROOT"))
        .join("genrelab")
        .join(key)
}

fn record_key(p: &Project, stage: &str) -> String {
    p.lock_field(stage, &["key"]).expect("a locked key")
}

#[test]
fn the_remote_cache_on_a_signature_checking_s3_server() {
    let Some(s3) = Service::start("s3-server.sh") else {
        return;
    };
    let env = &s3.env;

    // Hit: what one project ran, another pulls instead of computing; the locks are the same bytes.
    let first = Project::new(PIPELINE);
    let run = first.run_with(env, &["run"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(run.ran(), ["a", "src", "t"]);
    let key_a = record_key(&first, "a");
    assert!(remote_object(&s3, &format!("cache/ac/{key_a}.json")).is_file());

    let second = Project::new(PIPELINE);
    let status = second.run_with(env, &["status", "--json"]);
    let json: serde_json::Value =
        serde_json::from_str(&status.stdout).unwrap_or_else(|e| panic!("{e}: {}", status.all()));
    let states: Vec<&str> = json["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["remote", "remote", "remote"], "{}", status.all());
    let pulled = second.run_with(env, &["run"]);
    assert_eq!(pulled.code, 0, "{}", pulled.all());
    assert!(pulled.ran().is_empty(), "{}", pulled.all());
    assert!(
        pulled.line("a").contains("pulled from the remote cache"),
        "{}",
        pulled.all()
    );
    assert_eq!(second.lock(), first.lock());
    assert_eq!(second.run(&["verify"]).code, 0);

    // Offline: the remote is not asked.
    let offline = Project::new(PIPELINE);
    let status = offline.run_with(env, &["status", "--offline"]);
    assert!(
        status.status_line("src").contains("never run") && !status.stdout.contains("remote"),
        "{}",
        status.all()
    );
    let run = offline.run_with(env, &["run", "--offline"]);
    assert_eq!(run.ran(), ["a", "src", "t"], "{}", run.all());

    // Miss: a changed param is a new key, computed here and uploaded.
    let changed = PIPELINE.replace("salt: a", "salt: miss");
    let third = Project::new(&changed);
    let run = third.run_with(env, &["run"]);
    assert_eq!(run.ran(), ["a"], "{}", run.all());
    let key_miss = record_key(&third, "a");
    assert!(remote_object(&s3, &format!("cache/ac/{key_miss}.json")).is_file());

    // A corrupt remote blob: reported, never used, the stage computed here, and the remote copy replaced.
    let out_a = first.lock_field("a", &["outputs", "data"]).unwrap();
    let blob = remote_object(&s3, &format!("cache/cas/{}/{out_a}", &out_a[..2]));
    util::flip_byte(&blob, 3);
    let fourth = Project::new(PIPELINE);
    let run = fourth.run_with(env, &["run"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(run.ran(), ["a"], "{}", run.all());
    assert!(run.stderr.contains("corrupt"), "{}", run.all());
    assert_eq!(fourth.lock(), first.lock());
    assert!(fourth.objects_failing_their_hash().is_empty());
    let fifth = Project::new(PIPELINE);
    let run = fifth.run_with(env, &["run"]);
    assert!(run.ran().is_empty(), "healed remote: {}", run.all());

    // An upload cut short (blobs sent, record not): a miss for readers; the next writer completes it.
    std::fs::remove_file(remote_object(&s3, &format!("cache/ac/{key_miss}.json"))).unwrap();
    let sixth = Project::new(&changed);
    let run = sixth.run_with(env, &["run"]);
    assert_eq!(run.ran(), ["a"], "{}", run.all());
    assert!(remote_object(&s3, &format!("cache/ac/{key_miss}.json")).is_file());

    // Two writers of the same new keys at once: both succeed, and a third project pulls what they wrote.
    let twice = PIPELINE.replace("salt: a", "salt: twice");
    let (w1, w2) = (Project::new(&twice), Project::new(&twice));
    let (r1, r2) = (w1.spawn_with(env, &["run"]), w2.spawn_with(env, &["run"]));
    let deadline = Instant::now() + COMMAND_LIMIT;
    let (r1, r2) = (r1.wait(deadline), r2.wait(deadline));
    assert_eq!((r1.code, r2.code), (0, 0), "{}\n{}", r1.all(), r2.all());
    assert_eq!(w1.lock(), w2.lock());
    let reader = Project::new(&twice);
    let run = reader.run_with(env, &["run"]);
    assert!(run.ran().is_empty(), "{}", run.all());

    // Read-only: pulls, computes what is missing, uploads nothing; push refuses.
    let mut read_only = env.clone();
    read_only.push(("GENRELAB_REMOTE_READ_ONLY".into(), "1".into()));
    let ro = PIPELINE.replace("salt: a", "salt: read-only");
    let seventh = Project::new(&ro);
    let run = seventh.run_with(&read_only, &["run"]);
    assert_eq!(run.ran(), ["a"], "{}", run.all());
    assert!(run.line("src").contains("pulled"), "{}", run.all());
    let key_ro = record_key(&seventh, "a");
    assert!(!remote_object(&s3, &format!("cache/ac/{key_ro}.json")).exists());
    let push = seventh.run_with(&read_only, &["push"]);
    assert_eq!(push.code, 2, "{}", push.all());
    assert!(push.stderr.contains("read-only"), "{}", push.all());
    // Without the flag the same project pushes its one new result.
    let push = seventh.run_with(env, &["push"]);
    assert_eq!(push.code, 0, "{}", push.all());
    assert!(
        push.stdout.contains("1 result uploaded, 2 already there"),
        "{}",
        push.all()
    );
    assert!(remote_object(&s3, &format!("cache/ac/{key_ro}.json")).is_file());

    // Pull restores a whole lock into an empty store, every blob checked.
    std::fs::remove_dir_all(seventh.path().join("artifacts")).unwrap();
    let pull = seventh.run_with(env, &["pull"]);
    assert_eq!(pull.code, 0, "{}", pull.all());
    assert!(
        pull.stdout.contains("3 results downloaded"),
        "{}",
        pull.all()
    );
    assert_eq!(seventh.run(&["verify"]).code, 0);

    // Wrong credentials: the server refuses the signature; the run warns once and works locally.
    let mut wrong = env.clone();
    wrong.retain(|(k, _)| k != "AWS_SECRET_ACCESS_KEY");
    wrong.push(("AWS_SECRET_ACCESS_KEY".into(), "not-the-secret".into()));
    let eighth = Project::new(PIPELINE);
    let run = eighth.run_with(&wrong, &["run"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(run.ran(), ["a", "src", "t"]);
    assert_eq!(
        run.stderr
            .matches("going on without the remote cache")
            .count(),
        1,
        "{}",
        run.all()
    );
    assert!(run.stderr.contains("403"), "{}", run.all());
}
