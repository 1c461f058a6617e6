#!/usr/bin/env python3
"""Write the raw-input corpus for bench/status.sh: CLASSES x PER_CLASS files of SIZE pseudo-random bytes.

Every file differs (each is seeded from its own path), and the same arguments always give the same bytes, so a
corpus left from an earlier run is reused as is. A marker file records the arguments; a corpus whose marker does
not match is rewritten.
"""
import argparse
import hashlib
import os
import random
import sys


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--size", type=int, default=1_300_000)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()

    marker = os.path.join(os.path.dirname(os.path.abspath(args.root)), ".inputs-" + os.path.basename(args.root))
    spec = f"classes={args.classes} per_class={args.per_class} size={args.size} seed={args.seed}\n"
    if os.path.isdir(args.root) and os.path.exists(marker) and open(marker).read() == spec:
        print(f"inputs: reusing {args.root} ({spec.strip()})")
        return 0

    os.makedirs(args.root, exist_ok=True)
    for c in range(args.classes):
        folder = os.path.join(args.root, f"class{c:02d}")
        os.makedirs(folder, exist_ok=True)
        for n in range(args.per_class):
            rel = f"class{c:02d}/class{c:02d}.{n:05d}.wav"
            seed = int.from_bytes(hashlib.blake2b(f"{args.seed}/{rel}".encode(), digest_size=8).digest(), "little")
            data = random.Random(seed).randbytes(args.size)
            with open(os.path.join(args.root, rel), "wb") as f:
                f.write(data)
        print(f"inputs: wrote {folder}", file=sys.stderr)
    with open(marker, "w") as f:
        f.write(spec)
    print(f"inputs: wrote {args.classes * args.per_class} files of {args.size} bytes under {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
