#!/usr/bin/env bash
# Engine benchmark: how long `genrelab status` takes on a 16-stage DAG over 1,000 raw inputs of 1.3 MB each
# when nothing changed (warm stat cache), and when every input must be re-hashed (cold stat cache), against
# `dvc status` on the same files and the same DAG shape, measured on this machine in the same run.
#
# Usage: bench/status.sh            (from anywhere; builds the release binary with the toy stage kinds)
# Environment:
#   BENCH_DIR   work folder for the corpus and both projects (default /tmp/genrelab-bench); reused if present
#   RUNS        timed runs for warm measurements (default 10); COLD_RUNS for cold ones (default 5)
#   GENRELAB    use this genrelab binary instead of building one
#   DVC         0 to skip the DVC baseline (its figures are then the issue's quoted ones, labelled so)
#   BENCH_VENV  Python venv holding DVC (default /tmp/genrelab-bench-venv; created on first use)
#   DVC_SPEC    pip requirement for DVC (default 'dvc==3.67.*')
#
# Exit status: 0 measured; 1 a check failed (e.g. status not up to date after a run); other: setup failed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
BENCH_DIR="${BENCH_DIR:-/tmp/genrelab-bench}"
RUNS="${RUNS:-10}"
COLD_RUNS="${COLD_RUNS:-5}"
DVC="${DVC:-1}"
BENCH_VENV="${BENCH_VENV:-/tmp/genrelab-bench-venv}"
DVC_SPEC="${DVC_SPEC:-dvc==3.67.*}"
FILES_PER_CLASS=100
CLASSES=10
FILE_SIZE=1300000
TIMECMD=(python3 "$HERE/timecmd.py")

NAME=status.sh
# shellcheck source=bench/common.sh
source "$HERE/common.sh"

# --- the binary --------------------------------------------------------------------------------------------
ensure_genrelab

# --- the DAG shape (DEFAULT_SHAPE, from common.sh), shared by both tools --------------------------------------
SHAPE="$DEFAULT_SHAPE"
STAGES=$(printf '%s\n' "$SHAPE" | wc -l)
[[ "$STAGES" -eq 16 ]] || fail "shape has $STAGES stages, expected 16"

# --- corpus ------------------------------------------------------------------------------------------------
G="$BENCH_DIR/genrelab"
mkdir -p "$G"
python3 "$HERE/gen_inputs.py" "$G/data" --classes "$CLASSES" --per-class "$FILES_PER_CLASS" --size "$FILE_SIZE" >&2
NFILES=$(find "$G/data" -type f -name '*.wav' | wc -l)
[[ "$NFILES" -eq $((CLASSES * FILES_PER_CLASS)) ]] || fail "expected $((CLASSES * FILES_PER_CLASS)) inputs, found $NFILES"

# --- genrelab ----------------------------------------------------------------------------------------------
{
    printf 'dataset:\n  root: data\nstages:\n'
    while IFS=': ' read -r name inputs; do
        kind=toy_map
        [[ "$name" == ingest ]] && kind=toy_scan
        printf '  - name: %s\n    kind: %s\n    inputs: [%s]\n' "$name" "$kind" "$(echo $inputs | sed 's/ /, /g')"
        [[ "$kind" == toy_map ]] && printf '    params: {salt: %s}\n' "$name"
    done <<<"$SHAPE"
} >"$G/pipeline.yaml"

LOAD_BEFORE=$(cut -d" " -f1-3 /proc/loadavg)
cd "$G"
say "genrelab run..."
"$GENRELAB" run >&2 || fail "genrelab run failed"
# Files written within the stat cache's racy window are never cached; let it pass so the warm runs are warm.
sleep 2
"$GENRELAB" status >/dev/null || fail "genrelab status reports stale stages right after a run"

# The cold figure means something only if a cold status really re-reads every input, and the warm one only if
# a warm status reads none.
rm -f artifacts/statcache.json
RUST_LOG=info "$GENRELAB" status 2>&1 >/dev/null | grep -q "rehashed=$NFILES " ||
    fail "a status without artifacts/statcache.json did not re-hash all $NFILES inputs"
RUST_LOG=info "$GENRELAB" status 2>&1 >/dev/null | grep -q "rehashed=0 " ||
    fail "a status with a warm stat cache re-hashed inputs"

# --- DVC ---------------------------------------------------------------------------------------------------
D_WARM="" D_COLD="" D_DISK="" D_WARM_CPU="" D_COLD_CPU="" D_DISK_CPU="" D_LABEL="" D_MEASURED=0
D="$BENCH_DIR/dvc" SITE="$BENCH_DIR/dvc-site-cache" DVCBIN=""
if [[ "$DVC" != 0 ]]; then
    if [[ ! -x "$BENCH_VENV/bin/dvc" ]]; then
        say "installing DVC ($DVC_SPEC) into $BENCH_VENV..."
        (python3 -m venv "$BENCH_VENV" && "$BENCH_VENV/bin/pip" install -q "$DVC_SPEC") >&2 ||
            say "could not install DVC; using the issue's quoted figures"
    fi
fi
if [[ "$DVC" != 0 && -x "$BENCH_VENV/bin/dvc" ]]; then
    DVCBIN="$BENCH_VENV/bin/dvc"
    DVC_VERSION=$("$DVCBIN" --version)
    D_LABEL="DVC $DVC_VERSION (measured)"
    D_MEASURED=1
    export DVC_NO_ANALYTICS=1
    D="$BENCH_DIR/dvc"
    SITE="$BENCH_DIR/dvc-site-cache"
    mkdir -p "$D"
    # Its own copy of the corpus (same bytes), refreshed when the corpus spec changed.
    if [[ ! -d "$D/data" ]] || ! cmp -s "$BENCH_DIR/genrelab/.inputs-data" "$D/.inputs-data" 2>/dev/null; then
        rm -rf "$D/data" "$D/.inputs-data"
        cp -r "$G/data" "$D/data"
        cp "$G/.inputs-data" "$D/.inputs-data"
    fi
    cd "$D"
    if [[ ! -d .git ]]; then git init -q . && git config user.email bench@localhost && git config user.name bench; fi
    if [[ ! -d .dvc ]]; then "$DVCBIN" init -q; fi
    "$DVCBIN" config core.analytics false
    "$DVCBIN" config core.check_update false
    # DVC keeps its hash (state) database and data index under the site cache folder; put it where the cold
    # runs can delete it.
    "$DVCBIN" config --local core.site_cache_dir "$SITE"
    {
        printf 'stages:\n'
        while IFS=': ' read -r name inputs; do
            printf '  %s:\n' "$name"
            if [[ "$name" == ingest ]]; then
                printf '    cmd: mkdir -p out && find data -type f | sort > out/ingest\n'
                printf '    deps: [data]\n'
            else
                deps=$(for i in $inputs; do printf 'out/%s ' "$i"; done)
                printf '    cmd: cat %s| md5sum > out/%s && echo %s >> out/%s\n' "$deps" "$name" "$name" "$name"
                printf '    deps: [%s]\n' "$(echo $deps | sed 's/ /, /g')"
            fi
            printf '    outs: [out/%s]\n' "$name"
        done <<<"$SHAPE"
    } >dvc.yaml
    printf '/data\n/out\n' >.gitignore
    say "dvc repro..."
    "$DVCBIN" repro -q >&2 || fail "dvc repro failed"
    git add -A >/dev/null && git commit -qm "bench pipeline" >/dev/null 2>&1 || true
    "$DVCBIN" status -q || fail "dvc status reports changes right after dvc repro"
    "$DVCBIN" status -q || fail "dvc status reports changes after the benchmark"
else
    D_LABEL="DVC 3.67 (quoted, not measured)"
    D_WARM=0.57
    D_COLD=2.9
fi

# --- timing: genrelab and DVC alternated run by run (A B, B A, ...), so load swings hit both alike ----------
DROP=0
if (sync && echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null; then DROP=1; fi
G_DISK="" G_DISK_MIN="" G_DISK_MAX="" G_DISK_CPU=""
# Each figure: one timecmd call; with DVC measured, both tools in it, alternated; prints one line per tool.
time_both() { # label runs warmup g_before d_before
    local label=$1 runs=$2 warmup=$3 gb=$4 db=$5
    say "timing status, $label ($runs runs$([[ "$D_MEASURED" == 1 ]] && echo ", genrelab and DVC alternated"))..."
    if [[ "$D_MEASURED" == 1 ]]; then
        "${TIMECMD[@]}" --runs "$runs" --warmup "$warmup" --cwd "$G" --before "$gb" --cwd-b "$D" --before-b "$db" \
            -- "$GENRELAB" status :: "$DVCBIN" status
    else
        "${TIMECMD[@]}" --runs "$runs" --warmup "$warmup" --cwd "$G" --before "$gb" -- "$GENRELAB" status
        echo "- - - -"
    fi
}
{ read -r G_WARM G_WARM_MIN G_WARM_MAX G_WARM_CPU; read -r D_W D_WARM_MIN D_WARM_MAX D_W_CPU; } \
    < <(time_both "warm stat cache" "$RUNS" 2 true true) || fail "warm status timing failed"
{ read -r G_COLD G_COLD_MIN G_COLD_MAX G_COLD_CPU; read -r D_C D_COLD_MIN D_COLD_MAX D_C_CPU; } \
    < <(time_both "cold stat cache" "$COLD_RUNS" 1 "rm -f artifacts/statcache.json" "rm -rf '$SITE'") ||
    fail "cold status timing failed"
if [[ "$DROP" -eq 1 ]]; then
    { read -r G_DISK G_DISK_MIN G_DISK_MAX G_DISK_CPU; read -r D_K D_DISK_MIN D_DISK_MAX D_K_CPU; } \
        < <(time_both "cold stat cache and cold page cache" 3 0 \
            "rm -f artifacts/statcache.json; sync; echo 3 > /proc/sys/vm/drop_caches" \
            "rm -rf '$SITE'; sync; echo 3 > /proc/sys/vm/drop_caches") || fail "cold-disk status timing failed"
fi
if [[ "$D_MEASURED" == 1 ]]; then
    D_WARM=$D_W D_WARM_CPU=$D_W_CPU D_COLD=$D_C D_COLD_CPU=$D_C_CPU
    [[ "$DROP" -eq 1 ]] && D_DISK=$D_K D_DISK_CPU=$D_K_CPU
fi
(cd "$G" && "$GENRELAB" status >/dev/null) || fail "genrelab status reports stale stages after the benchmark"

# --- report ------------------------------------------------------------------------------------------------
LOAD_AFTER=$(cut -d" " -f1-3 /proc/loadavg)
export D_LABEL D_MEASURED G_WARM G_WARM_MIN G_WARM_MAX G_WARM_CPU G_COLD G_COLD_MIN G_COLD_MAX G_COLD_CPU G_DISK G_DISK_MIN \
    G_DISK_MAX G_DISK_CPU D_WARM D_WARM_MIN D_WARM_MAX D_WARM_CPU D_COLD D_COLD_MIN D_COLD_MAX D_COLD_CPU D_DISK D_DISK_MIN \
    D_DISK_MAX D_DISK_CPU NFILES FILE_SIZE LOAD_BEFORE LOAD_AFTER
python3 - <<'EOF'
import os

e = os.environ
n, size = int(e["NFILES"]), int(e["FILE_SIZE"])
# The issue's figures for DVC 3.67 and the targets set against them.
QUOTED = {"warm": 0.57, "cold": 2.9}
TARGET = {"warm": 0.03, "cold": 0.5}


def sec(x):
    return f"{float(x):.3f} s" if x and x != "-" else "-"


def spread(v):
    """median (min-max) of one figure, from its environment variables."""
    med, lo, hi = e.get(v, ""), e.get(v + "_MIN", ""), e.get(v + "_MAX", "")
    if not med or med == "-":
        return "-"
    if lo and hi and lo != "-":
        return f"{float(med):.3f} s ({float(lo):.3f}-{float(hi):.3f})"
    return sec(med)


def ratio(d, g):
    return f"{float(d) / float(g):.1f}x" if d and g else "-"


rows = [
    ("warm", "warm stat cache", "G_WARM", "D_WARM"),
    ("cold", "cold stat cache, warm page cache", "G_COLD", "D_COLD"),
]
if e["G_DISK"]:
    rows.append(("disk", "cold stat cache, cold page cache", "G_DISK", "D_DISK"))

print()
print(f"status, 16 stages, {n} x {size / 1e6:.1f} MB inputs ({n * size / 1e9:.2f} GB); "
      f"{os.cpu_count()} CPUs, load average {e['LOAD_BEFORE']} before, {e['LOAD_AFTER']} after")
print("wall time, median (min-max) of the runs" + (", genrelab and DVC alternated run by run" if e["D_MEASURED"] == "1" else ""))
print(f"{'':34}{'genrelab':28}{e['D_LABEL']:34}{'ratio':9}target")
verdicts = []
for key, name, g, d in rows:
    gtxt = spread(g)
    target = f"<= {TARGET[key]} s" if key in TARGET else ""
    if key in TARGET:
        verdicts.append(f"{key} {'met' if float(e[g]) <= TARGET[key] else 'NOT met'}")
    print(f"{name:34}{gtxt:28}{spread(d):34}{ratio(e[d], e[g]):9}{target}")
if e["D_MEASURED"] == "1":
    print()
    print("CPU time (user+sys), median; less sensitive to other load on the machine")
    for key, name, g, d in rows:
        print(f"{name:34}{sec(e[g + '_CPU']):28}{sec(e.get(d + '_CPU')):34}{ratio(e.get(d + '_CPU'), e[g + '_CPU'])}")
print()
print("targets (the issue's, for a machine where DVC takes 0.57 s / 2.9 s):", ", ".join(verdicts))
if e["D_MEASURED"] == "1":
    # The targets are stated against DVC on the issue's machine; DVC runs at another speed on this one.
    for key, name, g, d in rows:
        if key not in TARGET:
            continue
        scale = float(e[d]) / QUOTED[key]
        scaled = TARGET[key] * scale
        verdict = "met" if float(e[g]) <= scaled else "NOT met"
        print(f"  {name}: DVC here takes {scale:.2f}x the quoted {QUOTED[key]} s; "
              f"target scaled to this machine {scaled:.3f} s: {verdict}")
EOF
