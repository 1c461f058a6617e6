# Shared by the bench scripts (sourced, not run): messages, failure, and the release binary under test.
# The sourcing script sets NAME (for messages) and REPO before sourcing.

say() { printf '%s\n' "$*" >&2; }
fail() { say "bench/$NAME: $*"; exit 1; }

# Sets GENRELAB to an absolute path: the binary named by $GENRELAB, or a release build with the toy stage kinds.
ensure_genrelab() {
    if [[ -z "${GENRELAB:-}" ]]; then
        say "building genrelab (release, toy stage kinds)..."
        (cd "$REPO" && cargo build --release --features toy-stages --quiet)
        GENRELAB="${CARGO_TARGET_DIR:-$REPO/target}/release/genrelab"
    fi
    [[ -x "$GENRELAB" ]] || fail "no genrelab binary at $GENRELAB"
    GENRELAB="$(cd "$(dirname "$GENRELAB")" && pwd)/$(basename "$GENRELAB")"
}

# The default pipeline's DAG shape, one stage a line as "name: input input ..." (dataset = the raw input folder):
# the benchmarks that time the engine on trivial stages use it.
DEFAULT_SHAPE="ingest: dataset
split: ingest
slice: split
features: slice
scaler: features
train_vgg: scaler
train_resse: scaler
train_unet: scaler
tournament: train_vgg train_resse train_unet
cv_0: scaler tournament
cv_1: scaler tournament
cv_2: scaler tournament
cv_3: scaler tournament
cv_4: scaler tournament
transfer: tournament
report: cv_0 cv_1 cv_2 cv_3 cv_4 transfer"
