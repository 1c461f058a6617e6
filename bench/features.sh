#!/usr/bin/env bash
# Data-path benchmark: ingest + split + slice + features for 1,000 synthetic 30 s tracks (GTZAN-sized): wall time
# and peak memory of `genrelab run --until features` from an empty artifacts folder, against librosa computing
# the same log-mel segments in one Python process on the same files (bench/features_librosa.py).
# Targets: at least 20x faster than librosa, peak memory under 2 GiB.
#
# Usage: bench/features.sh          (builds the release binary unless GENRELAB is set)
# Environment:
#   BENCH_DIR         work folder (default /tmp/genrelab-bench-features); the corpus is generated once and reused
#   TRACKS_PER_GENRE  synthetic tracks per genre (default 100, i.e. 1,000 tracks)
#   RUNS              rounds, each one genrelab run (from an empty artifacts folder) and one librosa run, alternated
#                     run by run (default 3; median, min and max reported)
#   GENRELAB          use this genrelab binary instead of building one
#   LIBROSA           0 to skip the librosa baseline
#   LIBROSA_BUDGET    seconds librosa may spend before its total is extrapolated from the tracks done (default 300)
#   BENCH_VENV        Python venv for librosa (default /tmp/genrelab-bench-venv; created on first use)
#
# Exit status: 0 measured; 1 a check failed; other: setup failed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
BENCH_DIR="${BENCH_DIR:-/tmp/genrelab-bench-features}"
TRACKS_PER_GENRE="${TRACKS_PER_GENRE:-100}"
RUNS="${RUNS:-3}"
LIBROSA="${LIBROSA:-1}"
LIBROSA_BUDGET="${LIBROSA_BUDGET:-300}"
BENCH_VENV="${BENCH_VENV:-/tmp/genrelab-bench-venv}"

NAME=features.sh
# shellcheck source=bench/common.sh
source "$HERE/common.sh"

ensure_genrelab

if [[ ! -x /usr/bin/time ]]; then
    say "installing GNU time (for peak memory)..."
    apt-get install -y -qq time >&2 || fail "GNU time is needed at /usr/bin/time"
fi

mkdir -p "$BENCH_DIR"
cd "$BENCH_DIR"
cat >pipeline.yaml <<EOF
dataset:
  root: corpus
  synthetic: {tracks_per_genre: $TRACKS_PER_GENRE, seed: 42}
stages:
  - name: ingest
    kind: ingest
    inputs: [dataset]
  - name: split
    kind: split
    inputs: [ingest]
  - name: slice
    kind: slice
    inputs: [ingest, split]
  - name: features
    kind: features
    inputs: [dataset, ingest, slice]
EOF

say "generating the synthetic corpus (untimed; reused when present)..."
"$GENRELAB" synth >&2 || fail "genrelab synth failed"
NTRACKS=$(find corpus -type f \( -name '*.wav' -o -name '*.au' \) | wc -l)
EXPECTED=$((TRACKS_PER_GENRE * 10))
[[ "$NTRACKS" -ge "$EXPECTED" ]] || fail "expected at least $EXPECTED tracks under corpus/, found $NTRACKS"
CORPUS_BYTES=$(du -sb corpus | cut -f1)
# Both sides read the corpus from a warm page cache.
find corpus -type f -exec cat {} + >/dev/null

HAVE_LIBROSA=0
if [[ "$LIBROSA" != 0 ]]; then
    if ! "$BENCH_VENV/bin/python" -c 'import librosa, soundfile' 2>/dev/null; then
        say "installing librosa into $BENCH_VENV..."
        ([[ -x "$BENCH_VENV/bin/python" ]] || python3 -m venv "$BENCH_VENV") >&2
        "$BENCH_VENV/bin/pip" install -q librosa numpy soundfile >&2 || say "could not install librosa; skipping it"
    fi
    "$BENCH_VENV/bin/python" -c 'import librosa, soundfile' 2>/dev/null && HAVE_LIBROSA=1
fi

genrelab_once() {
    rm -rf artifacts pipeline.lock
    say "genrelab run --until features ($1 of $RUNS)..."
    if ! /usr/bin/time -v -o time.log "$GENRELAB" run --until features >run.log 2>&1; then
        tail -30 run.log >&2
        fail "genrelab run --until features failed (log: $BENCH_DIR/run.log)"
    fi
    read -r wall rss < <(python3 - <<'PY'
import re
t = open("time.log").read()
w = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", t).group(1)
s = 0.0
for part in w.split(":"):
    s = s * 60 + float(part)
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1))
print(f"{s:.3f} {rss}")
PY
    )
    WALLS+=("$wall")
    RSSS+=("$rss")
    say "  $wall s, peak RSS $((rss / 1024)) MiB"
}

librosa_once() {
    say "librosa baseline ($1 of $RUNS; single process, budget ${LIBROSA_BUDGET} s)..."
    LIB_JSONS+=("$("$BENCH_VENV/bin/python" "$HERE/features_librosa.py" corpus --budget "$LIBROSA_BUDGET")") ||
        fail "features_librosa.py failed"
}

# The two tools alternate run by run, and which goes first swaps every round, so a load swing on a shared
# machine lands on both alike instead of moving their ratio.
WALLS=() RSSS=() LIB_JSONS=()
for i in $(seq 1 "$RUNS"); do
    if [[ "$HAVE_LIBROSA" == 1 && $((i % 2)) == 0 ]]; then
        librosa_once "$i"
        genrelab_once "$i"
    else
        genrelab_once "$i"
        if [[ "$HAVE_LIBROSA" == 1 ]]; then librosa_once "$i"; fi
    fi
done
"$GENRELAB" status >status.log 2>&1 || { cat status.log >&2; fail "stages not up to date right after the run"; }
SUMMARY=$(grep -E '^features' run.log | tail -1 || true)
LIB_JSON=$(printf '%s\n' "${LIB_JSONS[@]}")

export LIB_JSON NTRACKS CORPUS_BYTES SUMMARY
python3 - "${WALLS[@]}" -- "${RSSS[@]}" <<'EOF'
import json
import os
import statistics
import sys

args = sys.argv[1:]
cut = args.index("--")
walls = [float(x) for x in args[:cut]]
rsss = [int(x) for x in args[cut + 1:]]
e = os.environ
n = int(e["NTRACKS"])
wall = statistics.median(walls)
peak_mib = max(rsss) / 1024
load = open("/proc/loadavg").read().split()[:3]

print()
print(f"ingest + split + slice + features, {n} synthetic tracks ({int(e['CORPUS_BYTES']) / 1e9:.2f} GB), "
      f"{os.cpu_count()} CPUs, load average {' '.join(load)}")
print(f"genrelab run --until features, empty artifacts folder, warm page cache, {len(walls)} runs")
print(f"  wall time        {wall:.2f} s median (min {min(walls):.2f} s, max {max(walls):.2f} s); "
      f"{wall / n * 1000:.1f} ms per track")
print(f"  peak RSS         {peak_mib:.0f} MiB (max over runs)      target < 2048 MiB: "
      f"{'met' if peak_mib < 2048 else 'NOT met'}")
if e.get("SUMMARY"):
    print(f"  {e['SUMMARY']}")
libs = [json.loads(line) for line in e.get("LIB_JSON", "").splitlines() if line.strip()]
lib = libs[0] if libs else None
if lib:
    totals = [x["seconds_total"] for x in libs]
    lib = dict(lib, seconds_total=statistics.median(totals))
    how = (f"extrapolated from {lib['tracks_done']} of {lib['tracks_total']} tracks"
           if lib["extrapolated"] else f"measured on all {lib['tracks_total']} tracks")
    print(f"librosa {lib['librosa']} (numpy {lib['numpy']}), one process, load + melspectrogram + power_to_db, "
          f"no output written")
    print(f"  wall time        {lib['seconds_total']:.1f} s median of {len(totals)} runs alternated with genrelab's "
          f"(min {min(totals):.1f} s, max {max(totals):.1f} s; {how})")
    print(f"                   {lib['seconds_per_track'] * 1000:.1f} ms per track;"
          f" {lib['segments']} segments of {lib['segment_shape']} in {lib['seconds_measured']:.1f} s measured")
    print(f"  peak RSS         {lib['peak_rss_mib']:.0f} MiB")
    if lib["tracks_failed"]:
        print(f"  unreadable       {lib['tracks_failed']} tracks skipped")
    ratio = lib["seconds_total"] / wall
    print(f"ratio              {ratio:.1f}x faster than librosa      target >= 20x: {'met' if ratio >= 20 else 'NOT met'}")
else:
    print("librosa baseline not measured (LIBROSA=0 or not installable)")
EOF
