#!/usr/bin/env bash
# Installs lcfast and what it needs on a fresh machine (Python 3.11, no venv).
# torch/torchvision are pinned to the releases that install from local disk here
# (a looser pin would pull a multi-GB CUDA build from the network).
# Idempotent: a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! $PY -c "import torch, torchvision; assert torch.__version__.startswith('2.14.1')" 2>/dev/null; then
    $PY -m pip install -q torch==2.14.1 torchvision==0.29.1
fi
$PY -m pip install -q ninja >/dev/null 2>&1 || true
# --no-build-isolation: the C++ extension builds against the torch installed above.
$PY -m pip install -q --no-build-isolation -e ".[test]"
# Offline MNIST for `--data mnist`, the benchmarks and `lcfast grok` (quick if present).
bash scripts/fetch_data.sh
