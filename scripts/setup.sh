#!/usr/bin/env bash
# One-shot install into the active Python: torch, this package with its test extras,
# the faiss build that fits the machine, and the offline Fashion-MNIST data from Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

"$PY" -m pip install --upgrade pip
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build from PyPI.
"$PY" -m pip install "torch==2.14.1" "torchvision==0.29.1"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    extra="gpu,test"
else
    extra="cpu,test"
fi
"$PY" -m pip install -e ".[$extra]"

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update
    $SUDO apt-get install -y dataset-fashion-mnist
fi
"$PY" -c "import solo_poisoncam, torch, kornia, lightning; print('solo-poisoncam', solo_poisoncam.__version__, '| torch', torch.__version__, '| cuda', torch.cuda.is_available())"
