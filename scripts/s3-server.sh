#!/usr/bin/env bash
# A local S3-compatible server for the remote cache's tests and benchmarks: s3s-fs, which checks request
# signatures (SigV4) like real S3, so a wrong secret fails here as it would there.
#
#   scripts/s3-server.sh install      build s3s-fs once into the cache folder (about 1.5 minutes on 2 cores)
#   scripts/s3-server.sh start DIR    start a server storing under DIR/data with bucket `genrelab`;
#                                     writes DIR/env (the AWS_* settings a client needs) and prints its path
#   scripts/s3-server.sh stop DIR     stop it
#   scripts/s3-server.sh which        print the binary start would use
#
# The binary is found at $S3S_FS, then in the cache folder ($GENRELAB_CI_CACHE, default ~/.cache/genrelab-ci),
# then on PATH.
set -euo pipefail

VERSION=0.14.1
CACHE=${GENRELAB_CI_CACHE:-$HOME/.cache/genrelab-ci}
CACHED=$CACHE/s3s-fs-$VERSION/bin/s3s-fs

binary() {
  if [ -n "${S3S_FS:-}" ] && [ -x "$S3S_FS" ]; then echo "$S3S_FS"
  elif [ -x "$CACHED" ]; then echo "$CACHED"
  elif command -v s3s-fs >/dev/null 2>&1; then command -v s3s-fs
  else return 1
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case "${1:-}" in
  install)
    if binary >/dev/null; then echo "s3s-fs: $(binary)"; exit 0; fi
    # 0.17 needs a newer rustc than this project's; 0.14.1 is the newest that builds with it. Built unoptimised
    # (--debug): 1.5 minutes instead of 9 on 2 cores, and a test server's speed only matters to bench/scale_out.sh,
    # which prints the server it used.
    cargo install --locked --debug s3s-fs --version "$VERSION" --features binary --root "$CACHE/s3s-fs-$VERSION"
    echo "s3s-fs: $CACHED"
    ;;
  start)
    dir=${2:?usage: s3-server.sh start DIR}
    bin=$(binary) || { echo "s3-server: s3s-fs is not installed (run scripts/s3-server.sh install)" >&2; exit 3; }
    mkdir -p "$dir/data/genrelab"
    dir=$(cd "$dir" && pwd)
    port=$(free_port)
    key=genrelab-test
    secret=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
    "$bin" --host 127.0.0.1 --port "$port" --access-key "$key" --secret-key "$secret" "$dir/data" \
      >"$dir/server.log" 2>&1 &
    echo $! >"$dir/pid"
    # Ready when it accepts a connection (or fail when it exits first).
    for _ in $(seq 1 600); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
      kill -0 "$(cat "$dir/pid")" 2>/dev/null || { cat "$dir/server.log" >&2; exit 1; }
      sleep 0.05
    done
    cat >"$dir/env" <<ENV
export AWS_ACCESS_KEY_ID=$key
export AWS_SECRET_ACCESS_KEY=$secret
export AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$port
export AWS_ALLOW_HTTP=true
export GENRELAB_TEST_S3_ROOT=$dir/data
ENV
    echo "$dir/env"
    ;;
  which)
    binary || { echo "s3-server: s3s-fs is not installed" >&2; exit 3; }
    ;;
  stop)
    dir=${2:?usage: s3-server.sh stop DIR}
    if [ -f "$dir/pid" ]; then kill "$(cat "$dir/pid")" 2>/dev/null || true; rm -f "$dir/pid"; fi
    ;;
  *)
    sed -n '2,12p' "$0" >&2; exit 2 ;;
esac
