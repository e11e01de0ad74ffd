#!/usr/bin/env bash
# The GPU checks on one CUDA GPU; writes benchmarks/results/gpu-check[-STEPS].md (this script's log: device,
# versions, every test and timing) and the tables of steps 4 and 5. Steps 1-4 take at most about 10 minutes,
# step 5 about 5: one call of the device tool each.
#
#   bash benchmarks/gpu_check.sh 1 2 3 4    # from the repository root, after scripts/setup.sh
#   bash benchmarks/gpu_check.sh 5          # the 224 px end-to-end run
#   bash benchmarks/gpu_check.sh            # all five
#
# 1. the test suite's CUDA cases (every test taking the `device` fixture runs on cuda too) and the AMP tests;
# 2. the AMP path on the GPU: maps and windows in bf16 and fp16 against float32 (detect/test_amp.py's tolerances);
# 3. faiss-gpu k-means against the torch backend on the same features;
# 4. the cost benchmark, float32 and bf16, end to end, PoisonCAM vs PatchSearch, at 3 sizes;
# 5. both detectors end to end on an image folder served at 224 px (3,000 Fashion-MNIST images upscaled to
#    200-320 px, poisoned as SSL-Backdoor's generator does, a ResNet-18 trained 3 epochs, detection in bf16):
#    gpu-scaling-224.md, the measured side of docs/cost-model.md's projection.
set -euo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=disabled
STEPS=" ${*:-1 2 3 4 5} "
want() { [[ "$STEPS" == *" $1 "* ]]; }
LOG=benchmarks/results/gpu-check$([ $# -gt 0 ] && printf -- '-%s' "$@").md
mkdir -p benchmarks/results
python - <<'PY' || { echo "no CUDA GPU here: nothing to check" >&2; exit 2; }
import torch, sys
sys.exit(0 if torch.cuda.is_available() else 1)
PY
{
  echo "# gpu-check"; echo
  echo "- date: $(date -u +%F)"; echo "- command: \`bash benchmarks/gpu_check.sh $*\`"; echo '```'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c "import torch, solo_poisoncam; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'solo-poisoncam', solo_poisoncam.__version__)"
  python -c "import faiss; print('faiss', faiss.__version__, 'gpus', faiss.get_num_gpus())" || echo "faiss: not importable"
  echo '```'
  if want 1; then
  echo; echo "## 1. CUDA and AMP tests"; echo '```'
  timeout 240 python -m pytest -q tests -k "cuda or amp" -p no:cacheprovider 2>&1 | tail -15
  echo '```'
  fi
  if want 2; then
  echo; echo "## 2. AMP on the GPU against float32"; echo '```'
  timeout 60 python - <<'PY'
import sys, torch
sys.path[:0] = ["tests", "tests/detect"]
from test_amp import cnn, BF16_MAP_ATOL, BF16_WINDOW_IOU
from test_verdict import generated
from solo_poisoncam.data.indexed import IndexedImages
from solo_poisoncam.detect.cam import cluster_activation, masked_maps
from solo_poisoncam.detect.config import DetectConfig
from solo_poisoncam.detect.poisoncam import build_masks
from solo_poisoncam.detect.window import best_window
from solo_poisoncam.engine.runner import Runner
from solo_poisoncam.models.heads import CosineClusterHead
from solo_poisoncam.poison.manifest import box_iou
dev = torch.device("cuda")
model = cnn().to(dev)
x = (IndexedImages(generated(512), size=32).as_tensor().float() / 255).to(dev)
with torch.no_grad():
    feats = torch.nn.functional.normalize(model(x), dim=1)
act = cluster_activation(model, CosineClusterHead(feats[::16].clone(), 0.1).state_dict(), 0.1).to(dev)
masks, fill, runner = build_masks(DetectConfig().poisoncam, 32).to(dev), model.mean.flatten(), Runner(dev, progress=False)
with torch.no_grad():
    c, base = act.own_cluster(x)
    ref = masked_maps(act, x, c, base, masks, fill, 8192)
    for amp in ("bf16", "fp16"):
        with runner.autocast(amp):
            _, b = act.own_cluster(x)
            low = masked_maps(act, x, c, b, masks, fill, 8192)
        err = (low - ref).abs().max().item()
        iou = box_iou(best_window(ref, list(range(3, 17)))[0].cpu().numpy(),
                      best_window(low, list(range(3, 17)))[0].cpu().numpy()).mean()
        ok = err < BF16_MAP_ATOL and iou >= BF16_WINDOW_IOU
        print(f"{amp}: max |map - float32| {err:.4f} (tolerance {BF16_MAP_ATOL}), window IoU {iou:.3f} "
              f"(>= {BF16_WINDOW_IOU}) -> {'ok' if ok else 'OUT OF TOLERANCE'}")
PY
  echo '```'
  fi
  if want 3; then
  echo; echo "## 3. faiss-gpu k-means against torch"; echo '```'
  timeout 60 python - <<'PY' || echo "faiss-gpu check failed (is faiss-gpu installed? scripts/setup.sh picks it on CUDA machines)"
import time, torch
from solo_poisoncam.cluster import kmeans
f = torch.nn.functional.normalize(torch.randn(50000, 512, device="cuda"), dim=1)
for backend in ("torch", "faiss"):
    torch.cuda.synchronize(); t = time.perf_counter()
    r = kmeans(f, 1000, iters=20, seed=0, backend=backend)
    torch.cuda.synchronize()
    print(f"{backend}: {time.perf_counter() - t:.2f} s, inertia {r.inertia:.1f}, backend ran: {r.backend}")
PY
  echo '```'
  fi
  if want 4; then
  echo; echo "## 4. cost, end to end (tables: gpu-cost-off.md, gpu-cost-bf16.md)"; echo '```'
  for amp in off bf16; do
    timeout 200 python benchmarks/bench_cost.py --device cuda --amp "$amp" --sizes 5000 10000 20000 \
      --backbones cnn_small:32 resnet18-cifar:32 --name "gpu-cost-$amp" 2>&1 | tail -12
  done
  echo '```'
  fi
  if want 5; then
  echo; echo "## 5. both detectors at 224 px on a generator-faithful folder (table: gpu-scaling-224.md)"; echo '```'
  timeout 420 python benchmarks/bench_scaling.py --only fm-224 --device cuda --amp bf16 --root runs/gpu-check \
    --name gpu-scaling-224 2>&1 | tail -14 || echo "step 5 did not finish within its 420 s"
  echo '```'
  fi
} 2>&1 | tee "$LOG"
