use super::*;
use crate::common::tables::Track;
use genrelab_contract::local_inputs;

fn track(id: &str, label: u32, samples: u64) -> Track {
    Track {
        id: id.into(),
        class: id.split('/').next().unwrap().into(),
        label,
        path: format!("{id}.wav"),
        samples,
        source_rate: 22050,
        source_channels: 1,
        file_digest: format!("f-{id}"),
        audio_digest: format!("a-{id}"),
        warnings: vec![],
    }
}

fn fixture() -> (TrackTable, SplitTable) {
    let tracks = TrackTable {
        sample_rate: 22050,
        classes: vec!["blues".into(), "jazz".into()],
        tracks: vec![
            track("blues/blues.00000", 0, 661794),
            track("blues/blues.00001", 0, 660000),
            track("jazz/jazz.00000", 1, 661504),
            track("jazz/jazz.00001", 1, 1000),
            track("jazz/jazz.00002", 1, 661794),
        ],
    };
    let split = SplitTable {
        method: "random".into(),
        train: vec!["jazz/jazz.00000".into(), "blues/blues.00000".into()],
        val: vec!["blues/blues.00001".into()],
        test: vec!["jazz/jazz.00001".into()],
        duplicate_groups: vec![],
    };
    (tracks, split)
}

#[test]
fn segments_follow_split_then_track_order_and_never_pad() {
    let (tracks, split) = fixture();
    let t = slice(&tracks, &split, &Params::default()).unwrap();
    // 661794 / 65488 = 10.1 -> 10; 660000 -> 10; 1000 -> 0.
    assert_eq!(t.segments.len(), 30);
    assert_eq!(t.segments[0].id, "blues/blues.00000#0");
    assert_eq!(t.segments[9].start, 9 * 65488);
    assert_eq!(t.segments[10].track, "jazz/jazz.00000");
    assert_eq!(t.segments[10].label, 1);
    assert_eq!(t.segments[20].split, Split::Val);
    assert!(t.segments.iter().all(|s| s.start + 65488 <= 661794));
    assert!(
        !t.segments.iter().any(|s| s.track == "jazz/jazz.00002"),
        "unsplit track not sliced"
    );
    assert_eq!(t.short_tracks.len(), 1);
    assert_eq!(t.short_tracks[0].track, "jazz/jazz.00001");
    assert_eq!(t.short_tracks[0].segments, 0);
}

#[test]
fn three_second_segments_make_gtzan_short_tracks_yield_nine() {
    let (tracks, split) = fixture();
    let params = Params {
        segment_samples: 66150,
        ..Params::default()
    };
    let t = slice(&tracks, &split, &params).unwrap();
    let short: Vec<(&str, u32)> = t
        .short_tracks
        .iter()
        .map(|s| (s.track.as_str(), s.segments))
        .collect();
    // 660000 < 10 * 66150 = 661500: only 9 full segments.
    assert_eq!(short, [("blues/blues.00001", 9), ("jazz/jazz.00001", 0)]);
    assert_eq!(t.of_split(Split::Val).count(), 9);
}

#[test]
fn stage_writes_deterministic_table_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (tracks, split) = fixture();
    let tp = dir.path().join("tracks.json");
    let sp = dir.path().join("split.json");
    write_canonical_json(&tp, &tracks).unwrap();
    write_canonical_json(&sp, &split).unwrap();
    let mut bytes = Vec::new();
    for threads in [1, 4] {
        let out = dir.path().join(format!("out{threads}"));
        std::fs::create_dir_all(&out).unwrap();
        let inputs = local_inputs([("tracks", tp.clone()), ("split", sp.clone())]);
        let ctx = StageContext::new(
            "slice",
            [0; 32],
            threads,
            inputs,
            None,
            out,
            vec!["segments"],
        );
        let report = run(&Params::default(), &ctx).unwrap();
        assert_eq!(
            report.summary[0],
            "sliced 4 tracks into 30 segments of 65488 samples (2.97 s); 1 short track"
        );
        assert!(
            report.summary[1].contains("jazz/jazz.00001"),
            "{:?}",
            report.summary
        );
        assert_eq!(
            report.lineage.records[0],
            Record::Segments {
                split: Split::Train,
                segments: 20,
                tracks: 2
            }
        );
        assert_eq!(report.lineage.details["short_tracks"], 1);
        bytes.push(std::fs::read(ctx.output_path("segments").unwrap()).unwrap());
    }
    assert_eq!(bytes[0], bytes[1]);
}

#[test]
fn unknown_track_and_zero_params_are_errors() {
    let (tracks, mut split) = fixture();
    split.test.push("pop/pop.00000".into());
    let err = slice(&tracks, &split, &Params::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("pop/pop.00000"), "{err}");
    let (tracks, split) = fixture();
    let params = Params {
        segment_samples: 0,
        ..Params::default()
    };
    assert!(slice(&tracks, &split, &params).is_err());
}

#[test]
fn absurd_params_are_rejected_naming_the_param_and_the_limit() {
    let (tracks, split) = fixture();
    for (params, text) in [
        (
            Params {
                segment_samples: u64::MAX,
                ..Params::default()
            },
            "segment_samples: 18446744073709551615 is outside the limit 1..=134217728",
        ),
        (
            Params {
                segments_per_track: 4_000_000_000,
                ..Params::default()
            },
            "segments_per_track: 4000000000 is outside the limit 1..=65536",
        ),
    ] {
        let problems = params.validate();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].to_string().starts_with(text), "{problems:?}");
        let err = slice(&tracks, &split, &params).unwrap_err().to_string();
        assert!(err.starts_with(&format!("params: {text}")), "{err}");
    }
}

#[test]
fn every_bad_param_is_reported_at_once() {
    let params = Params {
        segments_per_track: 0,
        segment_samples: 0,
    };
    let keys: Vec<String> = params.validate().into_iter().map(|p| p.key).collect();
    assert_eq!(keys, ["segments_per_track", "segment_samples"]);
    assert_eq!(Params::default().validate(), []);
    // The study's 3 s variant and the longest accepted segment are usable.
    for segment_samples in [66150, MAX_SEGMENT_SAMPLES] {
        let params = Params {
            segment_samples,
            ..Params::default()
        };
        assert_eq!(params.validate(), [], "{segment_samples}");
    }
}

#[test]
fn report_counts_take_the_singular_for_one() {
    let (tracks, _) = fixture();
    let split = SplitTable {
        method: "random".into(),
        train: vec!["jazz/jazz.00000".into()],
        val: vec![],
        test: vec!["jazz/jazz.00001".into()],
        duplicate_groups: vec![],
    };
    let params = Params {
        segments_per_track: 1,
        ..Params::default()
    };
    let table = slice(&tracks, &split, &params).unwrap();
    let summary = report(&split, &table).summary;
    assert_eq!(
        summary[0],
        "sliced 2 tracks into 1 segment of 65488 samples (2.97 s); 1 short track"
    );
    assert!(
        summary[1].starts_with("1 track too short for one segment, not used: jazz/jazz.00001;"),
        "{summary:?}"
    );
}
