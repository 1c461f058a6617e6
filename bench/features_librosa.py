#!/usr/bin/env python3
"""The librosa baseline for bench/features.sh: the study's log-mel features computed the study's way.

For every audio file under ROOT (sorted, then interleaved across folders so that any prefix has every genre in
it): load mono at 22,050 Hz, cut 10 back-to-back segments of 65,488 samples from t = 0 (a segment is kept only
if it fits), and for each one compute
    S = librosa.feature.melspectrogram(y=seg, sr=22050, n_mels=128, hop_length=512)
    librosa.power_to_db(S, ref=np.max)
in one process. The results are reduced to a checksum (nothing is written to disk, which favours librosa).

Untimed: imports, and one warm-up segment so that first-call set-up costs are not charged to the corpus.
When the corpus would take longer than --budget seconds, processing stops once the budget is spent and the total
is extrapolated linearly from the tracks done; the output says so.

Prints one JSON object on stdout; progress goes to stderr.
"""
import argparse
import json
import os
import resource
import sys
import time

SR = 22050
SEGMENTS = 10
SEGMENT_SAMPLES = int(22050 * 2.97)  # 65,488, as the study's code computes it
AUDIO_EXT = (".wav", ".au", ".flac")


def interleaved_tracks(root):
    by_folder = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.lower().endswith(AUDIO_EXT) and not name.startswith("."):
                by_folder.setdefault(dirpath, []).append(os.path.join(dirpath, name))
    folders = [by_folder[k] for k in sorted(by_folder)]
    out = []
    for i in range(max((len(f) for f in folders), default=0)):
        out.extend(f[i] for f in folders if i < len(f))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--budget", type=float, default=300.0, help="seconds to spend before extrapolating")
    ap.add_argument("--limit", type=int, default=0, help="process at most this many tracks (0: all)")
    args = ap.parse_args()

    t_import = time.perf_counter()
    import numpy as np
    import librosa

    import_s = time.perf_counter() - t_import

    tracks = interleaved_tracks(args.root)
    if not tracks:
        print(f"features_librosa: no audio files under {args.root}", file=sys.stderr)
        return 2
    total_tracks = len(tracks)
    todo = tracks[: args.limit] if args.limit else tracks

    warm = np.sin(np.arange(SEGMENT_SAMPLES, dtype=np.float32) * 0.01).astype(np.float32)
    librosa.power_to_db(librosa.feature.melspectrogram(y=warm, sr=SR, n_mels=128, hop_length=512), ref=np.max)

    checksum = 0.0
    done = segments = failed = 0
    shape = None
    t0 = time.perf_counter()
    for path in todo:
        try:
            y, _ = librosa.load(path, sr=SR, mono=True)
        except Exception as e:  # an unreadable file is skipped, as genrelab quarantines it
            failed += 1
            print(f"features_librosa: skipped {path}: {e}", file=sys.stderr)
            done += 1
            continue
        for k in range(SEGMENTS):
            start = k * SEGMENT_SAMPLES
            if start + SEGMENT_SAMPLES > len(y):
                break
            seg = y[start : start + SEGMENT_SAMPLES]
            S = librosa.feature.melspectrogram(y=seg, sr=SR, n_mels=128, hop_length=512)
            db = librosa.power_to_db(S, ref=np.max)
            shape = db.shape
            checksum += float(db.sum(dtype=np.float64))
            segments += 1
        done += 1
        elapsed = time.perf_counter() - t0
        if done % 50 == 0:
            print(f"features_librosa: {done} tracks in {elapsed:.1f} s", file=sys.stderr)
        if elapsed > args.budget and done < len(todo):
            break
    elapsed = time.perf_counter() - t0

    per_track = elapsed / done
    extrapolated = done < total_tracks
    result = {
        "librosa": librosa.__version__,
        "numpy": np.__version__,
        "tracks_total": total_tracks,
        "tracks_done": done,
        "tracks_failed": failed,
        "segments": segments,
        "segment_shape": list(shape) if shape else None,
        "seconds_measured": round(elapsed, 3),
        "seconds_per_track": round(per_track, 5),
        "seconds_total": round(per_track * total_tracks, 3),
        "extrapolated": extrapolated,
        "import_seconds": round(import_s, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "checksum": checksum,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
