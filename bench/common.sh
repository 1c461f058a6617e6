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
