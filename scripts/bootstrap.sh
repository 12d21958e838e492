#!/usr/bin/env bash
# Installs lcfast and what it needs on a fresh machine (Python 3.11, no venv).
# torch/torchvision are pinned to the releases that install from local disk here
# (a looser pin would pull a multi-GB CUDA build from the network).
# Idempotent: a second run only rebuilds what changed.  The editable install (which
# compiles the C++ extension) is skipped while build/bootstrap.stamp matches a hash of
# csrc/, setup.py, pyproject.toml, the interpreter, torch and LCFAST_NO_CUDA, and the
# interpreter finds this checkout's lcfast with its lcfast/_C*.so.  The checks read
# package metadata only (importing torch took minutes on a loaded 2-core box).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# prints: interpreter, torch version, torchvision version, folder of the lcfast it imports
# (from / so that this folder is not on sys.path)
probe() {
    (cd / && $PY -c "
import importlib.metadata as md, importlib.util as u, os, sys
def v(p):
    try:
        return md.version(p)
    except md.PackageNotFoundError:
        return '-'
s = u.find_spec('lcfast')
print(sys.executable, v('torch'), v('torchvision'), os.path.dirname(os.path.dirname(s.origin)) if s and s.origin else '-')")
}
read -r exe torch_v tv_v lcfast_at <<< "$(probe)"
if [[ $torch_v != 2.14.1* ]] || [[ $tv_v == - ]]; then
    $PY -m pip install -q torch==2.14.1 torchvision==0.29.1
    read -r exe torch_v tv_v lcfast_at <<< "$(probe)"
fi
STAMP=build/bootstrap.stamp
want=$( { find csrc setup.py pyproject.toml -type f -print0 | sort -z | xargs -0 sha256sum
          echo "$exe $torch_v LCFAST_NO_CUDA=${LCFAST_NO_CUDA:-}"; } | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ "$lcfast_at" = "$(pwd -P)" ] \
        && compgen -G "lcfast/_C*.so" >/dev/null; then
    echo "lcfast: editable install and C++ extension are current ($STAMP); not rebuilt"
else
    $PY -c "import ninja" 2>/dev/null || $PY -m pip install -q ninja >/dev/null 2>&1 || true
    # --no-build-isolation: the C++ extension builds against the torch installed above.
    $PY -m pip install -q --no-build-isolation -e ".[test]"
    mkdir -p build && echo "$want" > "$STAMP"
fi
# Offline MNIST for `--data mnist`, the benchmarks and `lcfast grok` (quick if present).
bash scripts/fetch_data.sh
