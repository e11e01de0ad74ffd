#!/usr/bin/env bash
# One real run through solo-learn's own, unmodified scripts on CPU, and the plugin's numbers beside
# `poisoncam detect`'s on the same checkpoint (docs/solo-learn.md, "A real run").
#
#   SOLO_LEARN_ROOT=~/solo-learn PYTHON=~/venv-solo/bin/python bash benchmarks/solo_real_run.sh OUT
#
# OUT gets: fmnist32/ (Fashion-MNIST export, 5,000 + 2,000), trained_models/ (solo's run folders),
# patched-val/ and one log per step (with its wall time in <log>.time); then benchmarks/solo_report.py writes
# benchmarks/results/solo-learn-run.md and .json. Needs Fashion-MNIST (apt) and solo-learn installed.
set -euo pipefail
OUT=$(realpath -m "${1:?usage: solo_real_run.sh OUT}")
PY=${PYTHON:-python3}
: "${SOLO_LEARN_ROOT:?set SOLO_LEARN_ROOT to a solo-learn source checkout}"
REPO=$(cd "$(dirname "$0")/.." && pwd)
export WANDB_MODE=disabled
mkdir -p "$OUT"
cd "$OUT"
CPU=(accelerator=cpu 'devices="1"' strategy=auto sync_batchnorm=False precision=32 data.num_workers=1
     checkpoint.dir="$OUT/trained_models" backbone.name=cnn_small)
DETECT=(detect.classifier.models=1 detect.classifier.iters=300)
timed() { local log=$1; shift; /usr/bin/time -f "%e s wall" -o "$log.time" "$@" > "$log" 2>&1; }

[ -d fmnist32 ] || "$PY" "$REPO/scripts/export_fashion_mnist.py" --out fmnist32 --num-samples 5000 --num-val-samples 2000

# 1. BYOL threat model through the unmodified main_pretrain.py (+poison, +detect via the Hydra plugin)
if [ ! -d trained_models/byol ]; then
  timed pretrain.log "$PY" "$SOLO_LEARN_ROOT/main_pretrain.py" --config-path "$REPO/zoo_configs/pretrain/fashion-mnist" \
    --config-name byol.yaml "${CPU[@]}" data.train_path="$OUT/fmnist32/train" max_epochs=5 \
    optimizer.name=adamw optimizer.lr=0.001 optimizer.weight_decay=1e-4 '~optimizer.kwargs' scheduler.name=none \
    +poison=patch poison.attack.size=12 poison.rate=0.5 poison.target=0 +detect=poisoncam "${DETECT[@]}"
fi
RUN=$(ls -d trained_models/byol/*/ | head -1)
CKPT=$(ls "$RUN"*.ckpt | head -1)

# 2. the same detection from the saved checkpoint with `poisoncam detect`
[ -f cli-detect/metrics.json ] || timed cli-detect.log "$PY" -m solo_poisoncam.cli detect --ckpt "$CKPT" \
  --manifest "$RUN/manifest.json" --out cli-detect --quiet --set classifier.models=1 --set classifier.iters=300

# 3. the cluster_head method on that threat model, then detection with it as the clustering model
if [ ! -d trained_models/cluster_head ]; then
  timed cluster-head.log "$PY" "$SOLO_LEARN_ROOT/main_pretrain.py" --config-path "$REPO/zoo_configs/pretrain/fashion-mnist" \
    --config-name cluster_head.yaml "${CPU[@]}" data.train_path="$OUT/fmnist32/train" max_epochs=5 \
    "method_kwargs.threat_checkpoint='$OUT/$CKPT'" +poison=patch poison.manifest="$OUT/$RUN/manifest.json"
fi
HEAD=$(ls trained_models/cluster_head/*/*.ckpt | head -1)
[ -f head-detect/metrics.json ] || timed head-detect.log "$PY" -m solo_poisoncam.cli detect --ckpt "$CKPT" \
  --manifest "$RUN/manifest.json" --out head-detect --quiet --no-backdoor-check --set "head_checkpoint='$OUT/$HEAD'" \
  --set classifier.models=1 --set classifier.iters=300

# 4. main_linear.py (unmodified; the plugin sets the 32 px pipeline); solo_report.py evaluates the saved
#    backbone + linear head on the clean val and on the patched val (all filed as the target: top-1 = ASR)
[ -d patched-val ] || "$PY" "$REPO/scripts/export_patched_val.py" --manifest "$RUN/manifest.json" --out patched-val
[ -f linear-clean.log ] || timed linear-clean.log "$PY" "$SOLO_LEARN_ROOT/main_linear.py" \
  --config-path "$REPO/zoo_configs/linear/fashion-mnist" --config-name byol.yaml "${CPU[@]}" \
  data.train_path="$OUT/fmnist32/train" data.val_path="$OUT/fmnist32/val" "pretrained_feature_extractor='$OUT/$CKPT'" \
  max_epochs=20 'scheduler.lr_decay_steps=[12,16]' name=byol-linear-clean

"$PY" "$REPO/benchmarks/solo_report.py" "$OUT"
