//! Transfer end to end on two tiny synthetic corpora: the second has other classes and shares no audio with
//! the first, goes through the same data-path kinds, and the champion is scored on it four ways.

mod util;

use std::collections::BTreeSet;

use util::Project;

const PIPELINE: &str = "
datasets:
  gtzan:
    root: data/tiny
    synthetic: {tracks_per_genre: 6, seed: 3, duplicates: 0}
  other:
    root: data/other
    synthetic: {corpus: transfer, tracks_per_genre: 8, seed: 3, duplicates: 0}
stages:
  - {name: ingest, kind: ingest, inputs: ['dataset:gtzan']}
  - {name: split, kind: split, inputs: [ingest]}
  - {name: slice, kind: slice, inputs: [ingest, split], params: {segments_per_track: 3}}
  - name: features
    kind: features
    inputs: ['dataset:gtzan', ingest, slice]
    params: {n_mels: 32, hop_length: 2048}
  - {name: scaler, kind: scaler, inputs: [features, slice]}
  - name: train
    kind: train
    inputs: [features, scaler, slice, ingest]
    foreach: {augment: [false, true]}
    params: {arch: unet_lean, width: 0.25, batch_size: 16, max_epochs: 1}
  - {name: tournament, kind: tournament, inputs: [train, features, scaler, slice, ingest]}
  - {name: ingest_other, kind: ingest, inputs: ['dataset:other']}
  - {name: split_other, kind: split, inputs: [ingest_other]}
  - {name: slice_other, kind: slice, inputs: [ingest_other, split_other], params: {segments_per_track: 3}}
  - name: features_other
    kind: features
    inputs: ['dataset:other', ingest_other, slice_other]
    params: {n_mels: 32, hop_length: 2048}
  - {name: scaler_other, kind: scaler, inputs: [features_other, slice_other]}
  - name: transfer
    kind: transfer
    inputs: [train, tournament, features_other, scaler_other, slice_other, ingest_other]
    params: {batch_size: 16, max_epochs: 1, k: 3, probe_steps: 20}
";

fn audio_digests(p: &Project, ingest: &str) -> BTreeSet<String> {
    let tracks: serde_json::Value =
        serde_json::from_slice(&p.object(&p.lock_field(ingest, &["outputs", "tracks"]).unwrap()))
            .unwrap();
    tracks["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["audio_digest"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_champion_is_scored_four_ways_on_a_corpus_it_never_heard() {
    let p = Project::new(PIPELINE);
    let run = p.run(&["run"]);
    assert_eq!(run.code, 0, "{}", run.all());

    let first = audio_digests(&p, "ingest");
    let second = audio_digests(&p, "ingest_other");
    assert_eq!(second.len(), 40);
    assert!(first.is_disjoint(&second), "the corpora share audio");

    let t = p.output_json("transfer", "transfer", "transfer.json");
    let classes: Vec<&str> = t["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(classes.len(), 5);
    let champion = p.output_json("tournament", "tournament", "champion.json");
    assert_eq!(t["source"], champion["member"]);
    let methods: Vec<&str> = t["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, ["linear_probe", "knn_3", "fine_tune", "scratch"]);
    for m in t["methods"].as_array().unwrap() {
        let confusion = m["test"]["segment"]["confusion"].as_array().unwrap();
        assert_eq!(confusion.len(), 5);
        let scored: u64 = confusion
            .iter()
            .flat_map(|r| r.as_array().unwrap())
            .map(|n| n.as_u64().unwrap())
            .sum();
        assert_eq!(scored, t["test_segments"].as_u64().unwrap());
    }

    // The transfer stage reads the second corpus's three splits; the first corpus's test never reaches it.
    let lineage: serde_json::Value =
        serde_json::from_str(&p.run(&["lineage", "transfer", "--json"]).stdout).unwrap();
    let reads = &lineage["split_reads"];
    for split in ["train", "val", "test"] {
        let names: Vec<&str> = reads[split]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [format!("features_other.features@{split}")],
            "{split}"
        );
    }
}
