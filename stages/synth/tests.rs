use std::collections::BTreeMap;
use std::path::Path;

use super::*;

fn small(per: u32, duplicates: u32) -> SynthParams {
    SynthParams {
        corpus: Corpus::Gtzan,
        tracks_per_genre: per,
        seed: 7,
        duplicates,
    }
}

fn transfer(per: u32, duplicates: u32) -> SynthParams {
    SynthParams {
        corpus: Corpus::Transfer,
        ..small(per, duplicates)
    }
}

/// blake3 of the decoded samples of every WAV under `root`, by relative path.
fn sample_digests(root: &Path) -> BTreeMap<String, String> {
    digests(root)
        .into_keys()
        .filter(|rel| rel.ends_with(".wav"))
        .map(|rel| {
            let reader = hound::WavReader::open(root.join(&rel)).unwrap();
            let mut hasher = blake3::Hasher::new();
            for s in reader.into_samples::<i16>() {
                hasher.update(&s.unwrap().to_le_bytes());
            }
            (rel, hasher.finalize().to_hex().to_string())
        })
        .collect()
}

/// blake3 of every file under `root`, by relative path.
fn digests(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(
                    rel,
                    blake3::hash(&std::fs::read(&path).unwrap())
                        .to_hex()
                        .to_string(),
                );
            }
        }
    }
    out
}

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

#[test]
fn bytes_do_not_depend_on_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let params = small(2, 1);
    let a = dir.path().join("one");
    let b = dir.path().join("four");
    in_pool(1, || ensure_corpus(&params, &a).unwrap());
    in_pool(4, || ensure_corpus(&params, &b).unwrap());
    let (da, db) = (digests(&a), digests(&b));
    assert_eq!(da.len(), 21, "20 tracks and the marker");
    assert_eq!(da, db);
    let other = dir.path().join("other-seed");
    ensure_corpus(&SynthParams { seed: 8, ..params }, &other).unwrap();
    assert_ne!(digests(&other), da, "the seed must matter");
}

#[test]
fn layout_rate_and_lengths_follow_gtzan() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("corpus");
    let out = ensure_corpus(&small(2, 0), &root).unwrap();
    assert!(out.generated);
    assert_eq!(out.tracks, 20);
    let mut lengths = Vec::new();
    for genre in GENRES {
        for i in 0..2 {
            let path = root.join(format!("genres_original/{genre}/{genre}.{i:05}.wav"));
            let reader = hound::WavReader::open(&path).unwrap();
            let spec = reader.spec();
            assert_eq!(
                (spec.sample_rate, spec.channels, spec.bits_per_sample),
                (22050, 1, 16),
                "{path:?}"
            );
            assert_eq!(spec.sample_format, hound::SampleFormat::Int);
            let samples: Vec<i16> = reader.into_samples().map(Result::unwrap).collect();
            let peak = samples.iter().map(|s| s.unsigned_abs()).max().unwrap();
            assert!(peak > 10000, "{path:?} is nearly silent (peak {peak})");
            lengths.push(samples.len());
        }
    }
    assert!(
        lengths.iter().all(|&n| (660000..=675808).contains(&n)),
        "{lengths:?}"
    );
    assert!(
        lengths.iter().filter(|&&n| n < 661500).count() >= 2,
        "{lengths:?}"
    );
    assert!(lengths.contains(&661794), "{lengths:?}");
}

#[test]
fn duplicates_are_byte_identical_copies() {
    let params = small(3, 3);
    let plan = plan(&params).unwrap();
    let dups: Vec<&TrackPlan> = plan.iter().filter(|t| t.copy_of.is_some()).collect();
    assert_eq!(dups.len(), 3);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("c");
    ensure_corpus(&params, &root).unwrap();
    let d = digests(&root);
    for t in dups {
        let (g, i) = t.copy_of.unwrap();
        let source = TrackPlan {
            genre: g,
            index: i,
            copy_of: None,
        };
        assert_eq!(d[&t.rel_path()], d[&source.rel_path()], "{t:?}");
    }
    let distinct: std::collections::BTreeSet<&String> = d.values().collect();
    assert_eq!(
        distinct.len(),
        d.len() - 3,
        "only the planned copies are equal"
    );
}

#[test]
fn ensure_corpus_is_idempotent_and_refuses_foreign_or_different_folders() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let params = small(1, 0);
    assert!(ensure_corpus(&params, &root).unwrap().generated);
    let before = digests(&root);
    let again = ensure_corpus(&params, &root).unwrap();
    assert!(!again.generated);
    assert_eq!(again.tracks, 10);
    assert_eq!(digests(&root), before);

    let err = ensure_corpus(&small(2, 0), &root).unwrap_err().to_string();
    assert!(
        err.contains("other settings") && err.contains("remove it"),
        "{err}"
    );

    let foreign = dir.path().join("mine");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("song.wav"), b"user data").unwrap();
    let err = ensure_corpus(&params, &foreign).unwrap_err().to_string();
    assert!(
        err.contains("not generated by genrelab") && err.contains("dataset.root"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(foreign.join("song.wav")).unwrap(),
        b"user data"
    );
}

#[test]
fn leftover_temp_folder_from_a_killed_run_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let tmp = dir.path().join(".data.genrelab-synth-tmp");
    std::fs::create_dir_all(tmp.join("genres_original/blues")).unwrap();
    std::fs::write(tmp.join("genres_original/blues/half.wav"), b"partial").unwrap();
    let params = small(1, 0);
    assert!(ensure_corpus(&params, &root).unwrap().generated);
    assert!(!tmp.exists());
    let files = digests(&root);
    assert!(!files.keys().any(|k| k.contains("half")), "{files:?}");
    assert_eq!(files.len(), 11);
}

#[test]
fn the_marker_lists_every_file_and_reuse_checks_names_and_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let params = small(1, 0);
    ensure_corpus(&params, &root).unwrap();
    let text = std::fs::read_to_string(root.join(MARKER)).unwrap();
    let marker: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        text,
        serde_json::to_string(&marker).unwrap(),
        "canonical JSON"
    );
    let files = digests(&root);
    let listed = marker["files"].as_object().unwrap();
    assert_eq!(listed.len(), 10);
    for (rel, entry) in listed {
        assert_eq!(entry["blake3"], files[rel].as_str(), "{rel}");
    }
    std::fs::remove_file(root.join("genres_original/pop/pop.00000.wav")).unwrap();
    let err = ensure_corpus(&params, &root).unwrap_err().to_string();
    assert!(
        err.contains("missing: genres_original/pop/pop.00000.wav"),
        "{err}"
    );
}

#[test]
fn a_marker_without_a_file_list_is_completed_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let params = small(1, 0);
    ensure_corpus(&params, &root).unwrap();
    let full = std::fs::read_to_string(root.join(MARKER)).unwrap();
    let old = serde_json::json!({"generator_version": GENERATOR_VERSION, "params": params});
    std::fs::write(root.join(MARKER), serde_json::to_vec_pretty(&old).unwrap()).unwrap();
    assert!(!ensure_corpus(&params, &root).unwrap().generated);
    assert_eq!(std::fs::read_to_string(root.join(MARKER)).unwrap(), full);
}

#[test]
fn params_from_yaml_name_the_offending_key() {
    let err = |yaml: &str| {
        let raw: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        let e = SynthParams::from_yaml(&raw).unwrap_err();
        (e.key.unwrap_or_default(), e.message)
    };
    assert_eq!(
        err("tracks_per_genre: 0"),
        (
            "tracks_per_genre".into(),
            "tracks_per_genre: must be from 1 to 10000, got 0".into()
        )
    );
    assert_eq!(err("tracks_per_genre: -1").0, "tracks_per_genre");
    assert_eq!(err("seeed: 1").0, "seeed");
    assert_eq!(err("duplicates: 6\ntracks_per_genre: 1").0, "duplicates");
    let ok: serde_yaml::Value = serde_yaml::from_str("seed: 3").unwrap();
    assert_eq!(SynthParams::from_yaml(&ok).unwrap().seed, 3);
    assert_eq!(
        SynthParams::from_yaml(&serde_yaml::Value::Null).unwrap(),
        SynthParams::default()
    );
}

#[test]
fn bad_params_are_rejected() {
    assert!(plan(&small(0, 0)).is_err());
    assert!(plan(&small(1, 6)).is_err());
    let p = plan(&small(1, 5)).unwrap();
    assert_eq!(p.iter().filter(|t| t.copy_of.is_some()).count(), 5);
}

#[test]
fn transfer_corpus_has_its_own_five_classes_in_the_same_layout() {
    assert_eq!(
        transfer(1, 0).classes(),
        ["afrobeat", "ambient", "bossa", "dub", "polka"]
    );
    assert_eq!(small(1, 0).classes(), GENRES);
    assert!(TRANSFER_CLASSES.iter().all(|c| !GENRES.contains(c)));
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("transfer");
    let out = ensure_corpus(&transfer(2, 1), &root).unwrap();
    assert_eq!((out.generated, out.tracks), (true, 10));
    let folders: Vec<String> = std::fs::read_dir(root.join("genres_original"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(folders, TRANSFER_CLASSES);
    let files = digests(&root);
    assert_eq!(files.len(), 11, "10 tracks and the marker: {files:?}");
    let mut short = 0;
    for class in TRANSFER_CLASSES {
        for i in 0..2 {
            let path = root.join(format!("genres_original/{class}/{class}.{i:05}.wav"));
            let reader = hound::WavReader::open(&path).unwrap();
            let spec = reader.spec();
            assert_eq!(
                (spec.sample_rate, spec.channels, spec.bits_per_sample),
                (22050, 1, 16)
            );
            let n = reader.len() as usize;
            assert!((660000..=675808).contains(&n), "{path:?}: {n}");
            short += usize::from(n < 661500);
            let samples: Vec<i16> = reader.into_samples().map(Result::unwrap).collect();
            let peak = samples.iter().map(|s| s.unsigned_abs()).max().unwrap();
            assert!(peak > 10000, "{path:?} is nearly silent (peak {peak})");
        }
    }
    assert!(short >= 2, "dub and polka keep a short track each");
    let distinct: std::collections::BTreeSet<&String> = files.values().collect();
    assert_eq!(
        distinct.len(),
        files.len() - 1,
        "only the planned copy is equal"
    );
    let marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join(MARKER)).unwrap()).unwrap();
    assert_eq!(marker["params"]["corpus"], "transfer");
}

#[test]
fn transfer_corpus_is_deterministic_and_shares_no_audio_with_gtzan() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, g) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("gtzan"),
    );
    in_pool(1, || ensure_corpus(&transfer(2, 0), &a).unwrap());
    in_pool(3, || ensure_corpus(&transfer(2, 0), &b).unwrap());
    assert_eq!(digests(&a), digests(&b));
    ensure_corpus(&small(2, 0), &g).unwrap();
    let gtzan: std::collections::BTreeSet<String> = sample_digests(&g).into_values().collect();
    let ours = sample_digests(&a);
    assert_eq!((ours.len(), gtzan.len()), (10, 20));
    for (rel, digest) in &ours {
        assert!(!gtzan.contains(digest), "{rel} has a GTZAN track's samples");
    }
    let other_seed = dir.path().join("seed8");
    ensure_corpus(
        &SynthParams {
            seed: 8,
            ..transfer(2, 0)
        },
        &other_seed,
    )
    .unwrap();
    assert_ne!(digests(&other_seed), digests(&a), "the seed must matter");
}

#[test]
fn gtzan_streams_and_markers_are_unchanged_by_the_corpus_field() {
    // The marker lists every file's blake3, so its digest pins the whole corpus; this value was checked
    // against a corpus generated by the code from before the transfer corpus, byte for byte.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("gtzan");
    ensure_corpus(&small(2, 3), &root).unwrap();
    let marker = blake3::hash(&std::fs::read(root.join(MARKER)).unwrap());
    assert_eq!(
        marker.to_hex().as_str(),
        "6d4dfea6041c87f1cb1c69effd231ce2bc545a581cb6669da7d6fb776e67dc88"
    );
    let plan = plan(&small(1, 0)).unwrap();
    let gtzan = render_track(Corpus::Gtzan, 7, &plan[0]);
    let moved = render_track(Corpus::Transfer, 7, &plan[0]);
    assert_ne!(
        gtzan[..1000],
        moved[..1000],
        "the corpus is part of the stream"
    );
    let value = serde_json::to_value(small(1, 0)).unwrap();
    assert_eq!(
        value,
        serde_json::json!({"tracks_per_genre": 1, "seed": 7, "duplicates": 0}),
        "GTZAN params serialise as they did before the corpus field"
    );
    assert_eq!(
        serde_json::to_value(transfer(1, 0)).unwrap()["corpus"],
        "transfer"
    );
}

#[test]
fn a_corpus_of_the_other_kind_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    ensure_corpus(&small(1, 0), &root).unwrap();
    let before = digests(&root);
    let err = ensure_corpus(&transfer(1, 0), &root).unwrap_err();
    assert!(matches!(err, SynthError::OtherCorpus { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("holds the synthetic gtzan corpus, not the transfer one")
            && text.contains("remove it"),
        "{text}"
    );
    assert_eq!(digests(&root), before);

    let t = dir.path().join("t");
    ensure_corpus(&transfer(1, 0), &t).unwrap();
    let text = ensure_corpus(&small(1, 0), &t).unwrap_err().to_string();
    assert!(
        text.contains("holds the synthetic transfer corpus, not the gtzan one"),
        "{text}"
    );
    assert!(!ensure_corpus(&transfer(1, 0), &t).unwrap().generated);
    // A marker from before the corpus field is a GTZAN one.
    let old = serde_json::json!({"generator_version": GENERATOR_VERSION, "params": small(1, 0)});
    std::fs::write(root.join(MARKER), serde_json::to_vec(&old).unwrap()).unwrap();
    assert!(!ensure_corpus(&small(1, 0), &root).unwrap().generated);
}

#[test]
fn transfer_params_from_yaml() {
    let raw: serde_yaml::Value =
        serde_yaml::from_str("{corpus: transfer, tracks_per_genre: 20, seed: 42}").unwrap();
    let params = SynthParams::from_yaml(&raw).unwrap();
    assert_eq!(params.corpus, Corpus::Transfer);
    assert_eq!((params.tracks_per_genre, params.seed), (20, 42));
    let raw: serde_yaml::Value = serde_yaml::from_str("corpus: gtzan").unwrap();
    assert_eq!(
        SynthParams::from_yaml(&raw).unwrap(),
        SynthParams::default()
    );
    let raw: serde_yaml::Value = serde_yaml::from_str("corpus: indian").unwrap();
    let err = SynthParams::from_yaml(&raw).unwrap_err();
    assert_eq!(err.key.as_deref(), Some("corpus"), "{}", err.message);
    // Five classes: duplicates are bounded by half of 5 * tracks_per_genre, not of 10 * tracks_per_genre.
    let raw: serde_yaml::Value =
        serde_yaml::from_str("{corpus: transfer, tracks_per_genre: 1, duplicates: 3}").unwrap();
    assert_eq!(
        SynthParams::from_yaml(&raw).unwrap_err().key.as_deref(),
        Some("duplicates")
    );
}

/// Writes a corpus for the tuning harness (`bench/synth-tuning/tune.py`):
/// `GENRELAB_SYNTH_OUT=/tmp/corpus GENRELAB_SYNTH_TRACKS=30 cargo test --release --lib write_tuning_corpus -- --ignored`
#[test]
#[ignore]
fn write_tuning_corpus() {
    let out = std::env::var("GENRELAB_SYNTH_OUT").expect("set GENRELAB_SYNTH_OUT");
    let params = SynthParams {
        tracks_per_genre: std::env::var("GENRELAB_SYNTH_TRACKS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30),
        seed: std::env::var("GENRELAB_SYNTH_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(42),
        ..SynthParams::default()
    };
    let started = std::time::Instant::now();
    let outcome = ensure_corpus(&params, Path::new(&out)).unwrap();
    eprintln!(
        "{} tracks in {:.1} s (generated: {})",
        outcome.tracks,
        started.elapsed().as_secs_f64(),
        outcome.generated
    );
    assert!(outcome.tracks > 0);
}
