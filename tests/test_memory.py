"""The native backend does not keep memory across chunks and calls (issue 11 item 9):
in a fresh process, three calls whose layer outputs are 1-16 MB (the sizes glibc moves
from mmap to its brk heap once it raises its mmap threshold) leave the heap's resident
size bounded.  Measured (MiB after each call; see lcfast/engine/native.py): before the
fix 532, 471, 639 (929 after a 4th call); reference cycle broken only 243, 288, 227;
with malloc_trim per chunk too 136, 135, 135."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lcfast.engine import available_backends

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r'''
import torch, lcfast
nn = torch.nn

def heap_rss():
    total, in_heap = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5:
                in_heap = line.rstrip().endswith("[heap]")
            elif in_heap and line.startswith("Rss:"):
                total += int(parts[1]) * 1024
    return total

torch.manual_seed(0)
m = nn.Sequential(nn.Linear(16, 4000), nn.ReLU(), nn.Linear(4000, 4), nn.ReLU(), nn.Linear(4, 4000), nn.ReLU(),
                  nn.Linear(4000, 2))
x = torch.randn(600, 16)
for i in range(3):
    lcfast.local_complexity(m, x, radius=0.01, n_dirs=5, seed=i, chunk_size=100, backend="native")
    print(heap_rss() / 2**20)
'''


def _glibc() -> bool:
    import lcfast.engine.native as native
    return native._TRIM is not None


@pytest.mark.skipif(not sys.platform.startswith("linux") or "native" not in available_backends("cpu"),
                    reason="measures the glibc heap of the native CPU backend")
def test_native_heap_stays_bounded_across_calls():
    if not _glibc():
        pytest.skip("no glibc malloc_trim")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_"):
        env.pop(k, None)  # glibc's defaults: the dynamic mmap threshold that causes the growth
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    heap = [float(v) for v in out.stdout.split()]
    assert len(heap) == 3
    assert max(heap) < 256, f"brk heap resident MiB after each call: {heap}"
