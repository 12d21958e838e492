"""The native backend does not keep memory across chunks and calls (issue 11 item 9).

* In a fresh process, three calls whose layer outputs are 1-16 MB (the sizes glibc moves
  from mmap to its brk heap once it raises its mmap threshold) leave the heap's resident
  size bounded.  Measured (MiB after each call; see lcfast/engine/native.py): before the
  fix 532, 471, 639 (929 after a 4th call); reference cycle broken only 243, 288, 227;
  with malloc_trim per chunk too 136, 135, 135.
* The peak RSS of later calls does not grow over the first call's (MNIST MLP, 700
  points in three chunks, five calls), read with a fixed mmap threshold so that it is the calls' live
  memory (see PEAK_GROWTH_MIB), and a control call that keeps one more 26 MB block
  shows.  History (default malloc settings, peak MiB per call, 2-core CPU): before the
  frame blocks (lcfast.engine.chunking.FrameBlocks) and the trim before each forward
  857, 877, 884, 931, 884 (+74), 882, 882, 884, 884, 884 (+2) and 881, 930, 931, 933,
  931 (+52) in three runs; after 788, 788, 788, 775, 782 (+0) and 788 x 5 (+0).
* Frames drawn in blocks equal the frames drawn at once, bit for bit.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lcfast.engine import available_backends
from lcfast.engine.chunking import FrameBlocks
from lcfast.neighborhood import random_frames

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


def _run_fresh(script: str, **malloc) -> list[float]:
    """The numbers ``script`` prints, run in a fresh process under glibc's default
    malloc settings (the dynamic mmap threshold that causes the growth), or the
    ``MALLOC_*_`` settings given."""
    if not _glibc():
        pytest.skip("no glibc malloc_trim")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_"):
        env.pop(k, None)
    env.update({k: str(v) for k, v in malloc.items()})
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return [float(v) for v in out.stdout.split()]


@pytest.mark.skipif(not sys.platform.startswith("linux") or "native" not in available_backends("cpu"),
                    reason="measures the glibc heap of the native CPU backend")
def test_native_heap_stays_bounded_across_calls():
    heap = _run_fresh(SCRIPT)
    assert len(heap) == 3
    assert max(heap) < 256, f"brk heap resident MiB after each call: {heap}"


PEAK_SCRIPT = r"""
import sys, torch, lcfast
from lcfast.train.models import mlp

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Flatten(), mlp())
x = torch.rand(700, 1, 28, 28)
held = []
for i in range(6):
    if i == 5:  # the control: a 26 MB buffer (one frame block) kept from one call to the next
        held.append(torch.ones(327 * 25 * 784))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    lcfast.local_complexity(model, x, radius=0.005, n_dirs=25, seed=i, backend="native")
    print(status("VmHWM"))
"""

#: MiB the peak RSS of a later call may exceed the first call's.  The peak is read with
#: glibc's mmap threshold fixed at 1 MiB (MALLOC_MMAP_THRESHOLD_): every large block is
#: then mapped and unmapped with its tensor, so the peak is the live memory of the call,
#: not where glibc's *dynamic* threshold happened to place the 13-51 MB buffers (that
#: retention is test_native_heap_stays_bounded_across_calls's).  Measured (peak MiB per
#: call, MNIST MLP, 2-core CPU, 1 Dec 2026): 1,400 points, fixed threshold, three runs
#: 731.4-731.6 (growth <= 0.4); default threshold, nine runs, growth 0 to 42 from run to
#: run with no code change (e.g. 756, 772, 793, 787, 774): glibc placement, not a leak,
#: which made the old 32 MiB bound on the default settings fail one CI run in three.
#: Now 700 points (three chunks: the frame buffer is still reused across chunks):
#: fixed threshold, three runs 729.0-729.3 (growth <= 0.3), the control call +24.4.
PEAK_GROWTH_MIB = 8
#: the control call holds one more 26 MB frame block: it must show (>= this many MiB)
HELD_MIB = 20


@pytest.mark.skipif(not sys.platform.startswith("linux") or "native" not in available_backends("cpu"),
                    reason="reads the peak RSS (VmHWM) of a native CPU backend run")
def test_native_peak_rss_does_not_grow_across_calls():
    peaks = _run_fresh(PEAK_SCRIPT, MALLOC_MMAP_THRESHOLD_=1 << 20)
    assert len(peaks) == 6
    msg = f"peak RSS MiB per call: {[round(p, 1) for p in peaks]}"
    assert max(peaks[1:5]) - peaks[0] <= PEAK_GROWTH_MIB, msg
    assert peaks[5] - max(peaks[:5]) >= HELD_MIB, msg  # the measure sees one retained frame block


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_frame_blocks_equal_frames_drawn_at_once(dtype):
    S, P, seed = (1, 28, 28), 25, 3
    ids = torch.arange(1000, 1100)

    def draw(i):
        return random_frames(S, P, seed, i, dtype=dtype)

    blocks = FrameBlocks(draw, S, P, torch.device("cpu"), dtype)
    assert blocks.block is not None and blocks.block < 100  # drawn in several blocks
    whole = draw(ids)
    got = blocks(ids)
    assert got.shape == (100, P, *S) and got.dtype == dtype
    assert torch.equal(got, whole)
    again = blocks(ids[:60])  # a smaller chunk reuses the buffer
    assert again.data_ptr() == got.data_ptr()
    assert torch.equal(again, whole[:60])


def test_counts_equal_with_and_without_frame_blocks(monkeypatch):
    """The chunk loop through :class:`FrameBlocks` (MNIST-sized points, 60-point chunks:
    three blocks each, the buffer reused) gives the counts of frames drawn whole."""
    import lcfast
    import lcfast.engine.chunking as chunking
    from lcfast.train.models import mlp

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), mlp())
    x = torch.rand(130, 1, 28, 28)
    blocked = lcfast.local_complexity(model, x, radius=0.05, n_dirs=25, seed=1, chunk_size=60, backend="reference")
    monkeypatch.setattr(chunking, "FRAME_BLOCK_BYTES", {})
    whole = lcfast.local_complexity(model, x, radius=0.05, n_dirs=25, seed=1, chunk_size=60, backend="reference")
    assert blocked.total.sum() > 0
    assert torch.equal(blocked.counts, whole.counts)
