#!/usr/bin/env bash
# Method sweep in one command: every SSL method of zoo_configs/pretrain/<DATASET>/ through solo-learn's
# main_pretrain.py (Option A wrapper), with the same solo-poisoncam flags and overrides for each.
#
#   scripts/solo_sweep.sh DATASET [HYDRA OVERRIDES...]
#
#   SOLO_LEARN_ROOT=~/solo-learn scripts/solo_sweep.sh fashion-mnist \
#       +poison=patch poison.rate=0.5 poison.target=0 +detect=poisoncam
#
#   METHODS="byol simclr" scripts/solo_sweep.sh cifar10 +poison=patch max_epochs=200   # a subset
#
# DATASET: fashion-mnist | cifar10 | imagenet100 (a folder name under zoo_configs/pretrain/).
# METHODS: method yamls to run (default: every yaml but cluster_head, which needs a threat checkpoint).
# PYTHON:  the interpreter of the solo-learn environment (default: python).
# Each run writes trained_models/<method>/<id>/ (checkpoint, args.json, manifest.json, detect-*/);
# a failed method is reported and the sweep goes on; the exit status is non-zero if any failed.
set -uo pipefail

if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
DATASET=$1
shift
ZOO="$(cd "$(dirname "$0")/.." && pwd)/zoo_configs/pretrain/$DATASET"
if [ ! -d "$ZOO" ]; then
    echo "error: no configs for '$DATASET' in $(dirname "$ZOO") ($(ls "$(dirname "$ZOO")" | tr '\n' ' '))" >&2
    exit 2
fi
PYTHON=${PYTHON:-python}
if [ -z "${METHODS:-}" ]; then
    METHODS=$(cd "$ZOO" && ls *.yaml | sed 's/\.yaml$//' | grep -v '^cluster_head$' | tr '\n' ' ')
fi

failed=()
for method in $METHODS; do
    if [ ! -f "$ZOO/$method.yaml" ]; then
        echo "error: $ZOO/$method.yaml does not exist" >&2
        failed+=("$method")
        continue
    fi
    echo "=== $method ($DATASET): $*"
    start=$(date +%s)
    if "$PYTHON" -m solo_poisoncam.solo_adapter.pretrain --config-path "$ZOO" --config-name "$method.yaml" "$@"; then
        echo "=== $method done in $(( $(date +%s) - start ))s"
    else
        echo "=== $method FAILED after $(( $(date +%s) - start ))s" >&2
        failed+=("$method")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
echo "all done: $METHODS"
