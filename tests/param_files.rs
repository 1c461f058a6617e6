//! Files named by params (split's `lists:`) are part of the stage's key wherever they live, and are confined
//! to the project and dataset folders.

mod util;

use std::path::Path;

use util::Project;

const PIPELINE: &str = "dataset:
  root: data
stages:
  - name: ingest
    kind: ingest
    inputs: [dataset]
    params:
      min_seconds: 0.1
  - name: split
    kind: split
    inputs: [ingest]
    params:
      lists:
        train: ../lists/train.txt
        val: ../lists/val.txt
        test: ../lists/test.txt
";

fn write_wav(path: &Path, seed: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 22050,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..4410 {
        w.write_sample((((i * (seed + 3)) % 200) as i16 - 100) * 50)
            .unwrap();
    }
    w.finalize().unwrap();
}

/// Two classes of three tracks under `data/`, and lists under `lists/`, outside the dataset root.
fn project() -> Project {
    let p = Project::new(PIPELINE);
    for (c, class) in ["blues", "jazz"].iter().enumerate() {
        for t in 0..3 {
            write_wav(
                &p.path()
                    .join(format!("data/genres_original/{class}/{class}.{t:05}.wav")),
                c * 10 + t,
            );
        }
    }
    std::fs::create_dir_all(p.path().join("lists")).unwrap();
    let write =
        |name: &str, text: &str| std::fs::write(p.path().join("lists").join(name), text).unwrap();
    write("train.txt", "blues.00000.wav\njazz.00000.wav\n");
    write("val.txt", "blues.00001.wav\njazz.00001.wav\n");
    write("test.txt", "blues.00002.wav\njazz.00002.wav\n");
    p
}

fn split_key(p: &Project) -> String {
    let lock: serde_yaml::Value = serde_yaml::from_str(&p.lock()).unwrap();
    lock["stages"]["split"]["key"].as_str().unwrap().to_string()
}

#[test]
fn editing_a_list_outside_the_dataset_root_reruns_the_split() {
    let p = project();
    let first = p.run(&["run"]);
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
    assert!(p.lock().contains("lists.train:"), "{}", p.lock());
    let key = split_key(&p);

    std::fs::write(p.path().join("lists/val.txt"), "blues.00001.wav\n").unwrap();
    let status = p.run(&["status"]);
    assert_eq!(status.code, 1, "{}", status.stdout);
    assert!(
        status.stdout.contains("file params.lists.val changed"),
        "{}",
        status.stdout
    );
    let again = p.run(&["run"]);
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    assert_eq!(again.ran(), vec!["split"]);
    assert_ne!(split_key(&p), key);
    assert!(
        again.stdout.contains("1 track in no list excluded")
            || again.stdout.contains("1 track in no list excluded"),
        "{}",
        again.stdout
    );

    // A fresh store computes the same key and the same split from the same files.
    let fresh = project();
    std::fs::write(fresh.path().join("lists/val.txt"), "blues.00001.wav\n").unwrap();
    assert_eq!(fresh.run(&["run"]).code, 0);
    assert_eq!(split_key(&fresh), split_key(&p));
    assert_eq!(fresh.lock(), p.lock());
}

#[test]
fn list_paths_outside_the_project_are_refused_without_echoing_the_file() {
    let p = project();
    std::os::unix::fs::symlink("/etc/passwd", p.path().join("lists/linked.txt")).unwrap();
    for hostile in [
        "/etc/passwd",
        "../../../../../../../../etc/passwd",
        "../lists/linked.txt",
    ] {
        p.write_config(&PIPELINE.replace("../lists/test.txt", hostile));
        for command in [&["run"][..], &["status"], &["status", "--json"]] {
            let out = p.run(command);
            assert_eq!(
                out.code, 2,
                "{command:?} {hostile}: {}{}",
                out.stdout, out.stderr
            );
            let all = format!("{}{}", out.stdout, out.stderr);
            assert!(
                all.contains("params.lists.test")
                    && all.contains("outside the project and dataset folders"),
                "{command:?} {hostile}: {all}"
            );
            assert!(all.contains("pipeline.yaml:"), "{all}");
            assert!(!all.contains("root:"), "file content leaked: {all}");
        }
    }
    assert!(!p.path().join("pipeline.lock").exists());
}

#[test]
fn a_missing_list_is_named_before_anything_runs() {
    let p = project();
    std::fs::remove_file(p.path().join("lists/val.txt")).unwrap();
    let out = p.run(&["run"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("params.lists.val") && out.stderr.contains("does not exist"),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("ingest: ran"), "{}", out.stdout);
}
