#!/usr/bin/env bash
# The accuracy the default profile's budget leaves on the table: the default pipeline's data path and its
# U-Net member (width 0.25, no SpecAugment), trained for MAX_EPOCHS (default 30) instead of 5, in a scratch
# project under BENCH_DIR. Prints the per-epoch curve (validation only: test is never read here) and the time
# per epoch, so the gap between the 5-epoch default and the 80% / 88% target has a measured cause.
set -euo pipefail
NAME=accuracy_curve
REPO="$(cd "$(dirname "$0")/.." && pwd)"
source "$REPO/bench/common.sh"
ensure_genrelab

dir="${BENCH_DIR:-/tmp/genrelab-bench}/accuracy-curve"
epochs="${MAX_EPOCHS:-30}"
mkdir -p "$dir"
# The default pipeline up to and including `train`, with the U-Net member only and the longer run; the
# corpus is shared with the checkout's (generated there on first use).
python3 - "$REPO/pipeline.yaml" "$dir/pipeline.yaml" "$REPO" "$epochs" <<'PY'
import sys
src, dst, repo, epochs = sys.argv[1:]
text = open(src).read()
text = text.replace("root: data/gtzan-synthetic", f"root: {repo}/data/gtzan-synthetic")
text = text.replace("      arch: [efficient_vgg, res_se, unet]\n      augment: [false, true]",
                    "      arch: [unet]\n      augment: [false]")
text = text.replace("max_epochs: 5", f"max_epochs: {epochs}")
cut = text.index("  # The champion is chosen")
open(dst, "w").write(text[:cut])
PY
say "training the U-Net for $epochs epochs in $dir (about 20 s per epoch on 2 idle cores)..."
start=$(date +%s)
"$GENRELAB" --config "$dir/pipeline.yaml" run >&2
say "done in $(( $(date +%s) - start )) s"
"$GENRELAB" --config "$dir/pipeline.yaml" export 'train[arch=unet,augment=false]' --to "$dir/model" >/dev/null
echo "epoch  lr        train_loss  train_acc  val_loss  val_seg  val_track"
tail -n +2 "$dir/model/history.csv" | awk -F, '{ printf "%5d  %.6f  %10.4f  %9.1f  %8.4f  %7.1f  %9.1f\n", $1, $2, $3, 100*$4, $5, 100*$6, 100*$7 }'
echo "curve: $dir/model/curve.svg"
