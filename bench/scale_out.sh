#!/usr/bin/env bash
# Scale-out benchmark: the remote cache against a local S3 server (s3s-fs, signatures checked) and the Slurm
# executor on a one-node cluster, each against a baseline measured in the same run, alternated run by run.
#
#   1. push the default pipeline's locked results (this checkout's artifacts/) to the server: time and MB/s;
#   2. full pull of them into an empty store, every blob hashed before it is stored: time and MB/s, against
#      `cp -r` of the same store's objects/ folder (the same bytes copied on this disk, nothing verified);
#   3. warm remote status: `status` in a project whose store is empty, so every stage asks the remote (one
#      small GET each), against `status --offline` on the same project;
#   4. Slurm: a 16-stage DAG of the default pipeline's shape (trivial toy stages, so that only scheduling is
#      measured) run from an empty store with `--executor slurm`, against the same DAG run locally; the
#      difference per stage is the scheduler latency a real stage pays.
#
# Needs the default pipeline reproduced in this checkout (`make reproduce`), s3s-fs (scripts/s3-server.sh
# install) and Slurm (scripts/slurm-cluster.sh install). Environment: BENCH_DIR (default
# /tmp/genrelab-bench-scale), RUNS (pull and status rounds, default 3), SLURM_RUNS (default 3), GENRELAB.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
BENCH_DIR="${BENCH_DIR:-/tmp/genrelab-bench-scale}"
RUNS="${RUNS:-3}"
SLURM_RUNS="${SLURM_RUNS:-3}"
TIMECMD=(python3 "$HERE/timecmd.py")
NAME=scale_out.sh
# shellcheck source=bench/common.sh
source "$HERE/common.sh"
ensure_genrelab

"$GENRELAB" -c "$REPO/pipeline.yaml" status --offline >/dev/null ||
    fail "the default pipeline is not up to date in $REPO: run make reproduce first"
rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"

S3="$BENCH_DIR/s3"
SLURM="$BENCH_DIR/slurm"
cleanup() {
    bash "$REPO/scripts/s3-server.sh" stop "$S3" || true
    bash "$REPO/scripts/slurm-cluster.sh" stop "$SLURM" || true
}
trap cleanup EXIT
# shellcheck disable=SC1090
source "$(bash "$REPO/scripts/s3-server.sh" start "$S3")"
export GENRELAB_REMOTE=s3://genrelab/bench

# --- 1. push ------------------------------------------------------------------------------------------------
say "push..."
push_line=$(cd "$REPO" && "$GENRELAB" push | tail -1)
say "$push_line"

# --- 2. full pull into an empty store, against cp -r of the same objects --------------------------------------
P="$BENCH_DIR/puller"
mkdir -p "$P"
cp "$REPO/pipeline.yaml" "$REPO/pipeline.lock" "$P/"
ln -s "$REPO/data" "$P/data"
"$GENRELAB" -c "$P/pipeline.yaml" pull >/dev/null
"$GENRELAB" -c "$P/pipeline.yaml" verify >/dev/null || fail "the pulled store does not verify"
BYTES=$(du -sb --apparent-size "$P/artifacts/objects" | cut -f1)
mkdir -p "$BENCH_DIR/copy"
say "timing a full pull ($RUNS rounds, alternated with cp -r)..."
{ read -r PULL PULL_MIN PULL_MAX _; read -r CP CP_MIN CP_MAX _; } < <(
    "${TIMECMD[@]}" --runs "$RUNS" --warmup 0 \
        --cwd "$P" --before "rm -rf artifacts" \
        --cwd-b "$BENCH_DIR/copy" --before-b "rm -rf objects" \
        -- "$GENRELAB" pull :: cp -r "$P/artifacts/objects" objects
) || fail "pull timing failed"

# --- 3. warm remote status: every stage stale locally, found remotely ------------------------------------------
S="$BENCH_DIR/status"
mkdir -p "$S"
cp "$REPO/pipeline.yaml" "$REPO/pipeline.lock" "$S/"
ln -s "$REPO/data" "$S/data"
# (status exits 1: every stage is stale here)
STAGES=$({ "$GENRELAB" -c "$S/pipeline.yaml" status --json || true; } | python3 -c \
    'import json,sys; s=json.load(sys.stdin)["stages"]; assert all(x["state"]=="remote" for x in s), s; print(len(s))') ||
    fail "status does not find every stage in the remote"
say "timing status with the remote ($RUNS rounds, alternated with --offline)..."
{ read -r ST ST_MIN ST_MAX _; read -r OFF OFF_MIN OFF_MAX _; } < <(
    "${TIMECMD[@]}" --runs "$((RUNS * 3))" --warmup 1 --expect-rc 1 --cwd "$S" --cwd-b "$S" --before true --before-b true \
        -- "$GENRELAB" status :: "$GENRELAB" status --offline
) || fail "status timing failed"

# --- 4. Slurm against local, on the default DAG's shape --------------------------------------------------------
# shellcheck disable=SC1090
source "$(bash "$REPO/scripts/slurm-cluster.sh" start "$SLURM")"
unset GENRELAB_REMOTE
SHAPE="$DEFAULT_SHAPE"
DAGS=$(printf '%s\n' "$SHAPE" | wc -l)
write_dag() {
    mkdir -p "$1/data"
    {
        printf 'dataset:\n  root: data\nstages:\n'
        while IFS=':' read -r name inputs; do
            printf '  - name: %s\n' "$name"
            if [[ "${inputs// /}" == dataset ]]; then
                printf '    kind: toy_source\n    params: {value: %s, size: 1000}\n' "$name"
            else
                printf '    kind: toy_map\n    inputs: [%s]\n    params: {salt: %s}\n' \
                    "$(echo $inputs | sed 's/ /, /g')" "$name"
            fi
        done <<<"$SHAPE"
    } >"$1/pipeline.yaml"
}
L="$BENCH_DIR/dag-local"
C="$BENCH_DIR/dag-slurm"
write_dag "$L"
write_dag "$C"
say "timing the $DAGS-stage DAG on Slurm and locally ($SLURM_RUNS rounds, alternated)..."
{ read -r SL SL_MIN SL_MAX _; read -r LO LO_MIN LO_MAX _; } < <(
    "${TIMECMD[@]}" --runs "$SLURM_RUNS" --warmup 1 \
        --cwd "$C" --before "rm -rf artifacts pipeline.lock" \
        --cwd-b "$L" --before-b "rm -rf artifacts pipeline.lock" \
        -- "$GENRELAB" run --executor slurm :: "$GENRELAB" run
) || fail "Slurm timing failed"
cmp -s "$C/pipeline.lock" "$L/pipeline.lock" || fail "the Slurm run's lock differs from the local run's"

python3 - "$BYTES" "$PULL" "$PULL_MIN" "$PULL_MAX" "$CP" "$CP_MIN" "$CP_MAX" "$STAGES" "$ST" "$ST_MIN" "$ST_MAX" \
    "$OFF" "$OFF_MIN" "$OFF_MAX" "$DAGS" "$SL" "$SL_MIN" "$SL_MAX" "$LO" "$LO_MIN" "$LO_MAX" "$push_line" \
    "$(bash "$REPO/scripts/s3-server.sh" which)" <<'PY'
import sys
a = sys.argv[1:]
mb = int(a[0]) / 1e6
f = [float(x) for x in a[1:21] if x.replace(".", "", 1).isdigit()]
(pull, pmin, pmax, cp, cmin, cmax) = map(float, a[1:7])
stages = int(a[7])
(st, smin, smax, off, omin, omax) = map(float, a[8:14])
dags = int(a[14])
(sl, slmin, slmax, lo, lomin, lomax) = map(float, a[15:21])
print(f"S3 server: {a[22]}")
print(f"push of the default pipeline's locked results: {a[21]}")
print(f"full pull, {mb:.1f} MB of blobs, every one hashed (median, min-max of alternated rounds):")
print(f"  genrelab pull   {pull:7.2f} s ({pmin:.2f}-{pmax:.2f})  {mb / pull:7.1f} MB/s")
print(f"  cp -r objects/  {cp:7.2f} s ({cmin:.2f}-{cmax:.2f})  {mb / cp:7.1f} MB/s   (baseline: a local disk copy)")
print(f"  ratio pull / cp: {pull / cp:.1f}x")
print(f"warm remote status, {stages} stages stale locally and held remotely:")
print(f"  status           {st:.3f} s ({smin:.3f}-{smax:.3f})")
print(f"  status --offline {off:.3f} s ({omin:.3f}-{omax:.3f})   (baseline)")
print(f"  the remote adds {(st - off) * 1000:.0f} ms, {(st - off) / stages * 1000:.1f} ms per stage")
print(f"{dags}-stage DAG of the default pipeline's shape, trivial stages, from an empty store:")
print(f"  --executor slurm {sl:.2f} s ({slmin:.2f}-{slmax:.2f})")
print(f"  local            {lo:.2f} s ({lomin:.2f}-{lomax:.2f})   (baseline)")
print(f"  Slurm overhead: {sl - lo:.1f} s in all, {(sl - lo) / dags:.2f} s per stage; locks identical")
PY
