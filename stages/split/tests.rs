use std::path::{Path, PathBuf};

use super::*;
use genrelab_contract::{local_inputs, DatasetView};

const CLASSES: [&str; 3] = ["blues", "jazz", "rock"];

/// `per_class` tracks per class; `dups` lists (a, b) id pairs that share audio.
fn table(per_class: usize, dups: &[(&str, &str)]) -> TrackTable {
    let mut tracks = Vec::new();
    for (label, class) in CLASSES.iter().enumerate() {
        for i in 0..per_class {
            let id = format!("{class}/{class}.{i:05}");
            tracks.push(Track {
                audio_digest: format!("digest-{id}"),
                warnings: vec![],
                file_digest: format!("file-{id}"),
                path: format!("genres_original/{id}.wav"),
                id,
                class: class.to_string(),
                label: label as u32,
                samples: 661794,
                source_rate: 22050,
                source_channels: 1,
            });
        }
    }
    for (a, b) in dups {
        let digest = tracks
            .iter()
            .find(|t| t.id == *a)
            .unwrap()
            .audio_digest
            .clone();
        tracks.iter_mut().find(|t| t.id == *b).unwrap().audio_digest = digest;
    }
    TrackTable {
        sample_rate: 22050,
        classes: CLASSES.iter().map(|c| c.to_string()).collect(),
        tracks,
    }
}

fn ctx(dir: &Path, tracks: &TrackTable, seed: u8, dataset: Option<DatasetView>) -> StageContext {
    std::fs::create_dir_all(dir).unwrap();
    let tracks_path = dir.join("tracks.json");
    write_canonical_json(&tracks_path, tracks).unwrap();
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let inputs = local_inputs([("tracks", tracks_path)]);
    StageContext::new("split", [seed; 32], 1, inputs, dataset, out, vec!["split"])
}

fn run_bytes(dir: &Path, tracks: &TrackTable, seed: u8, params: &Params) -> (Vec<u8>, StageReport) {
    let c = ctx(dir, tracks, seed, None);
    let report = run(params, &c).unwrap();
    (
        std::fs::read(c.output_path("split").unwrap()).unwrap(),
        report,
    )
}

fn split_of(table: &SplitTable, id: &str) -> Vec<&'static str> {
    SPLITS
        .iter()
        .filter(|&&s| table.ids(s).iter().any(|x| x == id))
        .map(|s| s.name())
        .collect()
}

#[test]
fn random_split_is_stratified_with_documented_rounding() {
    let tracks = table(10, &[]);
    let mut rng = ChaCha20Rng::from_seed([7; 32]);
    let t = split_random(&tracks, &Params::default(), &mut rng);
    assert_eq!((t.train.len(), t.val.len(), t.test.len()), (18, 6, 6));
    for class in CLASSES {
        let count = |ids: &[String]| ids.iter().filter(|i| i.starts_with(class)).count();
        assert_eq!((count(&t.train), count(&t.val), count(&t.test)), (6, 2, 2));
    }
    for ids in [&t.train, &t.val, &t.test] {
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "lists are sorted");
    }
    // 7 per class at 0.5/0.25/0.25: round(3.5) = 4, round(1.75) = 2, rest 1.
    let params = Params {
        train: 0.5,
        val: 0.25,
        test: 0.25,
        lists: None,
    };
    let t = split_random(&table(7, &[]), &params, &mut rng);
    assert_eq!((t.train.len(), t.val.len(), t.test.len()), (12, 6, 3));
}

use rand::SeedableRng;

#[test]
fn duplicate_groups_never_cross_splits() {
    let dups = [
        ("blues/blues.00001", "blues/blues.00002"),
        ("jazz/jazz.00003", "rock/rock.00004"),
        ("rock/rock.00005", "rock/rock.00006"),
    ];
    let tracks = table(10, &dups);
    for seed in 0..40u8 {
        let mut rng = ChaCha20Rng::from_seed([seed; 32]);
        let t = split_random(&tracks, &Params::default(), &mut rng);
        assert_eq!(t.duplicate_groups.len(), 3);
        for (a, b) in dups {
            assert_eq!(split_of(&t, a).len(), 1);
            assert_eq!(
                split_of(&t, a),
                split_of(&t, b),
                "seed {seed}: {a} and {b} split apart"
            );
        }
        assert_eq!(t.train.len() + t.val.len() + t.test.len(), 30);
    }
}

#[test]
fn same_seed_same_bytes_and_input_order_does_not_matter() {
    let dir = tempfile::tempdir().unwrap();
    let tracks = table(10, &[("blues/blues.00001", "blues/blues.00002")]);
    let (a, report) = run_bytes(&dir.path().join("a"), &tracks, 1, &Params::default());
    let mut reversed = tracks.clone();
    reversed.tracks.reverse();
    let (b, _) = run_bytes(&dir.path().join("b"), &reversed, 1, &Params::default());
    assert_eq!(a, b);
    let (c, _) = run_bytes(&dir.path().join("c"), &tracks, 2, &Params::default());
    assert_ne!(a, c, "different seed material must draw a different split");
    assert_eq!(
        report.summary[0],
        "split (random, 60/20/20): train 18, val 6, test 6 tracks; 1 duplicate group kept together"
    );
    assert_eq!(report.lineage.details["counts"]["val"]["jazz"], 2);
    assert_eq!(report.lineage.details["duplicate_groups"], 1);
}

fn mkdirs(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    dir.to_path_buf()
}

#[test]
fn bad_fractions_are_rejected_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let tracks = table(3, &[]);
    for (p, needle) in [
        ((0.6, 0.3, 0.2), "= 1.09999"),
        ((1.2, -0.2, 0.0), "val: -0.2 is not a fraction"),
        ((f64::NAN, 0.5, 0.5), "train: NaN is not a fraction"),
    ] {
        let params = Params {
            train: p.0,
            val: p.1,
            test: p.2,
            lists: None,
        };
        let c = ctx(
            &mkdirs(&dir.path().join(needle.len().to_string())),
            &tracks,
            1,
            None,
        );
        let err = run(&params, &c).unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
    }
}

fn lists_params() -> Params {
    Params {
        lists: Some(ListFiles {
            train: "train.txt".into(),
            val: "val.txt".into(),
            test: "test.txt".into(),
        }),
        ..Params::default()
    }
}

fn run_lists(
    tracks: &TrackTable,
    files: [&str; 3],
) -> Result<(SplitTable, StageReport), StageError> {
    let dir = tempfile::tempdir().unwrap();
    let root = mkdirs(&dir.path().join("data"));
    for (name, text) in ["train.txt", "val.txt", "test.txt"].iter().zip(files) {
        std::fs::write(root.join(name), text).unwrap();
    }
    let view = DatasetView {
        root,
        files: vec![],
        unlisted: vec![],
        digest: "x".into(),
    };
    let files = ["train", "val", "test"]
        .iter()
        .map(|s| (format!("lists.{s}"), view.root.join(format!("{s}.txt"))))
        .collect();
    let c = ctx(&mkdirs(&dir.path().join("w")), tracks, 1, Some(view)).with_param_files(files);
    let report = run(&lists_params(), &c)?;
    let table: SplitTable = read_json(&c.output_path("split").unwrap(), "split").unwrap();
    Ok((table, report))
}

#[test]
fn lists_mode_normalises_names_and_excludes_the_rest() {
    let tracks = table(3, &[]);
    let (t, report) = run_lists(
        &tracks,
        [
            "# fault-filtered\nblues/blues.00000.wav\nblues.00001.au\n\njazz/jazz.00000\n",
            "rock\\rock.00001.wav\n",
            "rock/rock.00002.wav\nrock/rock.00002.wav\n",
        ],
    )
    .unwrap();
    assert_eq!(t.method, "lists");
    assert_eq!(
        t.train,
        ["blues/blues.00000", "blues/blues.00001", "jazz/jazz.00000"]
    );
    assert_eq!(t.val, ["rock/rock.00001"]);
    assert_eq!(t.test, ["rock/rock.00002"]);
    assert_eq!(report.lineage.details["excluded"], 4);
    assert!(
        report.summary[0].contains("4 tracks in no list excluded"),
        "{:?}",
        report.summary
    );
}

#[test]
fn lists_mode_errors_name_the_problem() {
    let tracks = table(3, &[("blues/blues.00000", "jazz/jazz.00000")]);
    let err = run_lists(&tracks, ["blues/blues.00099.wav\npop.00001.wav\n", "", ""])
        .unwrap_err()
        .to_string();
    assert!(err.contains("2 list line(s) names no known track"), "{err}");
    assert!(err.contains("blues/blues.00099.wav (train.txt:1)"), "{err}");
    assert!(err.contains("pop.00001.wav (train.txt:2)"), "{err}");

    // A line that is not shaped like a track name is never echoed: the list could be any file.
    let err = run_lists(&tracks, ["root:$6$secret:19000:0:99999:7:::\n", "", ""])
        .unwrap_err()
        .to_string();
    assert!(!err.contains("secret"), "{err}");
    assert!(
        err.contains("(a line that is not a track name) (train.txt:1)"),
        "{err}"
    );

    let err = run_lists(&tracks, ["blues/blues.00001.wav", "blues.00001.au", ""])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("blues/blues.00001 (train.txt and val.txt)"),
        "{err}"
    );

    let err = run_lists(
        &tracks,
        ["blues/blues.00000.wav", "", "jazz/jazz.00000.wav"],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("identical audio in different splits"), "{err}");

    // The files come from the engine, which reads and hashes them; a context without them is an error.
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(dir.path(), &tracks, 1, None);
    let err = run(&lists_params(), &c).unwrap_err().to_string();
    assert!(
        err.contains("params.lists.train: the engine did not provide this file"),
        "{err}"
    );
    assert_eq!(
        super::list_files(&lists_params())
            .iter()
            .map(|f| (f.param.as_str(), f.path.as_str()))
            .collect::<Vec<_>>(),
        [
            ("lists.train", "train.txt"),
            ("lists.val", "val.txt"),
            ("lists.test", "test.txt")
        ]
    );
}

#[test]
fn every_fraction_problem_is_reported_at_its_param() {
    let problems = |train, val, test| {
        let params = Params {
            train,
            val,
            test,
            lists: None,
        };
        params
            .validate()
            .into_iter()
            .map(|p| (p.key, p.message))
            .collect::<Vec<_>>()
    };
    assert_eq!(problems(0.6, 0.2, 0.2), []);
    assert_eq!(problems(1.0, 0.0, 0.0), []);
    assert_eq!(
        problems(1.5, -0.25, -0.25),
        [
            (
                "train".to_string(),
                "1.5 is not a fraction; each of train, val, test must lie in [0, 1]".to_string()
            ),
            (
                "val".to_string(),
                "-0.25 is not a fraction; each of train, val, test must lie in [0, 1]".to_string()
            ),
            (
                "test".to_string(),
                "-0.25 is not a fraction; each of train, val, test must lie in [0, 1]".to_string()
            ),
        ]
    );
    // A relation of all three: no single param is to blame, so the problem has no key.
    assert_eq!(
        problems(0.6, 0.2, 0.1),
        [(
            String::new(),
            "train + val + test = 0.6 + 0.2 + 0.1 = 0.9, must be 1".to_string()
        )]
    );
    assert_eq!(problems(f64::INFINITY, 0.0, 0.0).len(), 1);
}

#[test]
fn lists_must_name_three_distinct_files_and_make_fractions_moot() {
    let with = |train: &str, val: &str, test: &str| Params {
        train: 7.0,
        lists: Some(ListFiles {
            train: train.into(),
            val: val.into(),
            test: test.into(),
        }),
        ..Params::default()
    };
    assert_eq!(with("a.txt", "b.txt", "c.txt").validate(), []);
    assert_eq!(
        with("a.txt", " ", "a.txt").validate(),
        [
            ParamProblem::at("lists.val", "names no file"),
            ParamProblem::at(
                "lists.test",
                "`a.txt` is also the train list; each split needs its own file"
            ),
        ]
    );
}

#[test]
fn report_counts_take_the_singular_for_one() {
    let tracks = table(1, &[]);
    let split = SplitTable {
        method: "lists".into(),
        train: vec!["blues/blues.00000".into()],
        val: vec!["jazz/jazz.00000".into()],
        test: vec!["rock/rock.00000".into()],
        duplicate_groups: vec![vec!["a".into(), "b".into()]],
    };
    let params = Params {
        lists: Some(ListFiles {
            train: "train.txt".into(),
            val: "val.txt".into(),
            test: "test.txt".into(),
        }),
        ..Params::default()
    };
    assert_eq!(
        report(&params, &tracks, &split, 1).summary,
        ["split (lists): train 1, val 1, test 1 track; 1 track in no list excluded; 1 duplicate group \
          kept together"]
    );
}
