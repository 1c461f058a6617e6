//! End-to-end tests of datasets that are odd or hostile: links that dangle, loop or leave the root, special
//! files, hidden and unreadable files, audio headers and params that would make a run allocate without bound.
//! Every entry under the dataset root must come out ingested or quarantined with a reason; every run here is
//! bounded in time and memory, so a regression to "runs forever" or "allocates 8 GB" fails instead of hanging.

mod util;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use util::{Project, Run};

const LIMIT: Duration = Duration::from_secs(120);

// The tracks here are half a second long, under the study's `min_seconds`.
const INGEST: &str = "
stages:
  - name: ingest
    kind: ingest
    inputs: [dataset]
    params:
      min_seconds: 0.1
";

const CLASSES: [&str; 3] = ["blues", "jazz", "rock"];
const TRACKS: usize = 5;

/// A 16-bit mono WAV of a quiet tone, `frames` long, declaring `rate`.
fn wav_bytes(rate: u32, frames: usize) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut cursor = std::io::Cursor::new(Vec::new());
    {
        let mut w = hound::WavWriter::new(&mut cursor, spec).unwrap();
        for i in 0..frames {
            let v = (3000.0 * (i as f32 * 0.05).sin()) as i16;
            w.write_sample(v).unwrap();
        }
        w.finalize().unwrap();
    }
    cursor.into_inner()
}

fn au_bytes(rate: u32, channels: u32, frames: usize) -> Vec<u8> {
    let data = frames * channels as usize * 2;
    let mut bytes = Vec::new();
    for v in [0x2e73_6e64u32, 24, data as u32, 3, rate, channels] {
        bytes.extend_from_slice(&v.to_be_bytes());
    }
    bytes.resize(24 + data, 0);
    bytes
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// `data/<class>/<class>.N.wav`: 3 classes of 5 half-second tracks at 22,050 Hz.
fn project(config_extra: &str, stages: &str) -> Project {
    let p = Project::new(&format!("dataset:\n  root: data\n{config_extra}{stages}"));
    for class in CLASSES {
        for t in 0..TRACKS {
            write(
                &p.path().join(format!("data/{class}/{class}.{t}.wav")),
                &wav_bytes(22050, 11025),
            );
        }
    }
    p
}

fn data(p: &Project) -> std::path::PathBuf {
    p.path().join("data")
}

fn ok(run: &Run) {
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
}

fn assert_quarantined(run: &Run, path: &str, reason: &str) {
    let line = format!("quarantined {path}: ");
    let found = run
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with(&line));
    match found {
        Some(l) => assert!(l.contains(reason), "expected `{reason}` in: {l}"),
        None => panic!("no `{line}` line in:\n{}\n{}", run.stdout, run.stderr),
    }
    assert!(!run.stdout.contains("quarantine: none"), "{}", run.stdout);
}

#[test]
fn a_dangling_symlink_is_quarantined_and_changes_the_dataset_digest() {
    let p = project("", INGEST);
    ok(&p.run_bounded(&["run"], LIMIT));
    symlink("/no/such/file.wav", data(&p).join("jazz/jazz.9.wav")).unwrap();
    let status = p.run_bounded(&["status"], LIMIT);
    assert_eq!(
        status.code, 1,
        "a new dangling link must make ingest stale:\n{}",
        status.stdout
    );
    let run = p.run_bounded(&["run"], LIMIT);
    ok(&run);
    assert!(run.line("ingest").contains(": ran ("), "{}", run.stdout);
    assert!(
        run.stdout.contains("15 tracks in 3 classes"),
        "{}",
        run.stdout
    );
    assert_quarantined(
        &run,
        "jazz/jazz.9.wav",
        "dangling symlink to /no/such/file.wav",
    );
}

#[test]
fn symlink_loops_terminate_and_are_quarantined() {
    let p = project("", INGEST);
    symlink(".", data(&p).join("loop")).unwrap();
    symlink("..", data(&p).join("blues/up")).unwrap();
    let status = p.run_bounded(&["status"], Duration::from_secs(30));
    assert_eq!(status.code, 1, "{}\n{}", status.stdout, status.stderr);
    let run = p.run_bounded(&["run"], Duration::from_secs(30));
    ok(&run);
    assert!(
        run.stdout.contains("15 tracks in 3 classes"),
        "{}",
        run.stdout
    );
    assert_quarantined(&run, "loop", "symlink loop");
    assert_quarantined(&run, "blues/up", "symlink loop");
}

#[test]
fn a_symlink_leaving_the_root_is_quarantined_unless_the_config_allows_it() {
    let p = project("", INGEST);
    write(
        &p.path().join("elsewhere/rock.9.wav"),
        &wav_bytes(22050, 11025),
    );
    symlink(
        "../../elsewhere/rock.9.wav",
        data(&p).join("rock/rock.9.wav"),
    )
    .unwrap();
    let run = p.run_bounded(&["run"], LIMIT);
    ok(&run);
    assert!(
        run.stdout.contains("15 tracks in 3 classes"),
        "{}",
        run.stdout
    );
    assert_quarantined(&run, "rock/rock.9.wav", "outside the dataset root");

    p.write_config(&p.config().replace(
        "  root: data\n",
        "  root: data\n  follow_external_symlinks: true\n",
    ));
    let run = p.run_bounded(&["run"], LIMIT);
    ok(&run);
    assert!(
        run.stdout.contains("16 tracks in 3 classes"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("quarantine: none"), "{}", run.stdout);
}

#[test]
fn a_symlink_to_a_symlink_is_followed_at_most_once() {
    let p = project("", INGEST);
    symlink("blues.0.wav", data(&p).join("blues/hop1.wav")).unwrap();
    symlink("hop1.wav", data(&p).join("blues/hop2.wav")).unwrap();
    let run = p.run_bounded(&["run"], LIMIT);
    ok(&run);
    // hop1 points at a regular file and is read through; hop2 would need two hops.
    assert!(
        run.stdout.contains("16 tracks in 3 classes"),
        "{}",
        run.stdout
    );
    assert_quarantined(&run, "blues/hop2.wav", "symlink to a symlink");
}

#[test]
fn special_files_are_quarantined_without_being_opened() {
    let p = project("", INGEST);
    let fifo = data(&p).join("blues/blues.7.wav");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let _socket = std::os::unix::net::UnixListener::bind(data(&p).join("jazz/jazz.7.wav")).unwrap();
    // Opening a FIFO with no writer blocks forever: the bound turns that into a failure.
    let run = p.run_bounded(&["run"], Duration::from_secs(60));
    ok(&run);
    assert!(
        run.stdout.contains("15 tracks in 3 classes"),
        "{}",
        run.stdout
    );
    assert_quarantined(&run, "blues/blues.7.wav", "special file (FIFO)");
    assert_quarantined(&run, "jazz/jazz.7.wav", "special file (socket)");
}

#[test]
fn hidden_files_and_folders_are_quarantined_as_hidden() {
    let p = project("", INGEST);
    write(&data(&p).join("blues/.DS_Store"), b"finder");
    write(&data(&p).join(".cache/jazz.3.wav"), &wav_bytes(22050, 100));
    let run = p.run_bounded(&["run"], LIMIT);
    ok(&run);
    assert_quarantined(&run, "blues/.DS_Store", "hidden file");
    assert_quarantined(&run, ".cache", "hidden folder");
}

#[test]
fn the_synthetic_generators_marker_is_quarantined_as_what_it_is() {
    let p = project("", INGEST);
    write(&data(&p).join(".genrelab-synth.json"), b"{}");
    let run = p.run_bounded(&["run"], LIMIT);
    ok(&run);
    assert_quarantined(
        &run,
        ".genrelab-synth.json",
        "the synthetic generator's marker, not audio",
    );
}

#[test]
fn a_class_made_only_of_dangling_links_fails_ingest_naming_the_class_and_files() {
    let p = project("", INGEST);
    for t in 0..3 {
        let link = data(&p).join(format!("metal/metal.{t}.wav"));
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        symlink(format!("/mnt/gone/metal.{t}.wav"), link).unwrap();
    }
    let run = p.run_bounded(&["run"], LIMIT);
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    let text = format!("{}\n{}", run.stdout, run.stderr);
    assert!(
        text.contains("class `metal` has no decodable track (3 quarantined"),
        "{text}"
    );
    for t in 0..3 {
        assert!(
            text.contains(&format!(
                "metal/metal.{t}.wav: dangling symlink to /mnt/gone/metal.{t}.wav"
            )),
            "{text}"
        );
    }
}

#[test]
fn an_unreadable_file_is_quarantined_not_a_run_stopping_error() {
    use std::os::unix::fs::PermissionsExt;
    let p = project("", INGEST);
    let secret = data(&p).join("rock/rock.4.wav");
    // The project must be usable by the unprivileged user, except for the one file it must not read.
    let chmod = std::process::Command::new("chmod")
        .args(["-R", "a+rwX"])
        .arg(p.path())
        .status()
        .unwrap();
    assert!(chmod.success());
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
    let run = match p.run_unprivileged(&["run"], LIMIT) {
        Ok(run) => run,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    ok(&run);
    assert!(
        run.stdout.contains("14 tracks in 3 classes"),
        "{}",
        run.stdout
    );
    assert_quarantined(&run, "rock/rock.4.wav", "unreadable: Permission denied");
}

#[test]
fn audio_headers_that_would_allocate_without_bound_are_quarantined_by_name() {
    let p = project("", INGEST);
    // 2 MB of samples declared at 10 Hz: resampling to 22,050 Hz would need 8.8 GB.
    write(
        &data(&p).join("blues/blues.8.wav"),
        &wav_bytes(10, 1_000_000),
    );
    write(
        &data(&p).join("jazz/jazz.8.au"),
        &au_bytes(10, 1, 1_000_000),
    );
    write(&data(&p).join("rock/rock.8.au"), &au_bytes(22050, 5000, 4));
    let run = p.run_bounded(&["run"], LIMIT);
    ok(&run);
    assert!(
        run.stdout.contains("15 tracks in 3 classes"),
        "{}",
        run.stdout
    );
    assert_quarantined(&run, "blues/blues.8.wav", "sample rate 10 Hz");
    assert_quarantined(&run, "jazz/jazz.8.au", "sample rate 10 Hz");
    assert_quarantined(&run, "rock/rock.8.au", "5000 channels");
}

const PIPELINE: &str = "
stages:
  - name: ingest
    kind: ingest
    inputs: [dataset]
    params:
      min_seconds: 0.2
  - name: split
    kind: split
    inputs: [ingest]
  - name: slice
    kind: slice
    inputs: [ingest, split]
    params:
      segment_samples: 4096
      segments_per_track: 2
  - name: features
    kind: features
    inputs: [dataset, ingest, slice]
    params:
      n_fft: 512
      n_mels: 32
      hop_length: 256
";

#[test]
fn absurd_params_are_rejected_naming_the_param_and_its_limit() {
    let p = project("", PIPELINE);
    ok(&p.run_bounded(&["run"], LIMIT));
    let cases = [
        ("n_fft: 512", "n_fft: 1000000000", "features", "n_fft"),
        ("n_mels: 32", "n_mels: 1000000000", "features", "n_mels"),
        (
            "hop_length: 256",
            "hop_length: 1000000000000",
            "features",
            "hop_length",
        ),
        (
            "segment_samples: 4096",
            "segment_samples: 18446744073709551615",
            "slice",
            "segment_samples",
        ),
        (
            "segments_per_track: 2",
            "segments_per_track: 4000000000",
            "slice",
            "segments_per_track",
        ),
        (
            "min_seconds: 0.2\n",
            "min_seconds: 0.2\n      sample_rate: 4000000000\n",
            "ingest",
            "sample_rate",
        ),
    ];
    let original = p.config();
    for (from, to, stage, param) in cases {
        let config = original.replacen(from, to, 1);
        p.write_config(&config);
        let run = p.run_bounded(&["run"], LIMIT);
        assert_eq!(run.code, 2, "{to}:\n{}\n{}", run.stdout, run.stderr);
        // Rejected while planning, at the param's own line, before any stage (even a cached one) is looked at.
        let at = config
            .lines()
            .position(|l| l.contains(&format!("{param}:")))
            .expect("the param's line")
            + 1;
        let error = run
            .stderr
            .lines()
            .find(|l| l.contains(&format!("stage `{stage}`")))
            .unwrap_or_default();
        assert!(
            error.contains(&format!("pipeline.yaml:{at}:"))
                && error.contains(&format!("{param}: "))
                && error.contains("limit"),
            "{to}: {}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "{to}: {}", run.stdout);
    }
}

#[test]
fn an_overflowing_segment_length_is_reported_as_too_long() {
    let p = project("", PIPELINE);
    // u64::MAX: slicing finds no segment, and centring pads it past usize::MAX.
    p.write_config(&p.config().replace(
        "segment_samples: 4096",
        "segment_samples: 18446744073709551615",
    ));
    let run = p.run_bounded(&["run"], LIMIT);
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    let text = format!("{}\n{}", run.stdout, run.stderr);
    assert!(!text.contains("shorter than n_fft"), "{text}");
    assert!(text.contains("segment_samples"), "{text}");
}
