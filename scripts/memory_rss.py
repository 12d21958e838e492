"""Resident memory of repeated ``lcfast.local_complexity`` calls (issue 11 item 9).

Measures, for ``--calls`` calls of ``--points`` MNIST-sized points through the paper's
784-200x4-10 MLP in one process, each call's peak RSS (VmHWM, reset before the call
through /proc/self/clear_refs) and the RSS after it, plus the time and load.

    python3 scripts/memory_rss.py --points 40000 --calls 4          # the issue's target
    MALLOC_TRIM_THRESHOLD_=0 python3 scripts/memory_rss.py ...       # glibc returns freed memory at once
"""
from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

import lcfast  # noqa: E402
from lcfast.train.models import mlp  # noqa: E402


def _status(key: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _heap_rss() -> int:
    """Resident bytes of the brk heap (``[heap]``): where glibc keeps freed small and
    mid-size blocks; anonymous mmaps (large blocks, thread arenas) are the rest."""
    total, in_heap = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if "-" in line.split()[0] and len(line.split()) >= 5:
                in_heap = line.rstrip().endswith("[heap]")
            elif in_heap and line.startswith("Rss:"):
                total += int(line.split()[1]) * 1024
    return total


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=40000)
    p.add_argument("--calls", type=int, default=4)
    p.add_argument("--backend", default="native")
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--random", action="store_true", help="random points instead of MNIST")
    p.add_argument("--trim", choices=["none", "call", "chunk"], default="none",
                   help="diagnostic: glibc malloc_trim(0) after each call / after each chunk")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), mlp())
    if a.random:
        x = torch.rand(a.points, 1, 28, 28)
    else:
        from lcfast.datasets import load_mnist
        x, _ = load_mnist(train=True, n=a.points)
    if a.trim == "chunk":
        from lcfast.engine.native import NativeBackend
        run_chunk, libc = NativeBackend.run_chunk, ctypes.CDLL("libc.so.6")

        def trimmed(self, *args, **kw):
            try:
                return run_chunk(self, *args, **kw)
            finally:
                libc.malloc_trim(0)
        NativeBackend.run_chunk = trimmed
    import lcfast.engine.native as native
    trimmed_s = [0.0, 0]  # seconds in, and calls of, the backend's malloc_trim during a call
    if native._TRIM is not None:
        trim = native._TRIM

        def timed_trim(pad):
            t0 = time.perf_counter()
            try:
                return trim(pad)
            finally:
                trimmed_s[0] += time.perf_counter() - t0
                trimmed_s[1] += 1
        native._TRIM = timed_trim
    GiB = 1 << 30
    print(f"{a.calls} calls x {tuple(x.shape)} points, backend={a.backend}, chunk_size={a.chunk_size}, "
          f"threads={torch.get_num_threads()}, MALLOC_TRIM_THRESHOLD_={os.environ.get('MALLOC_TRIM_THRESHOLD_')}, "
          f"LCFAST_CHUNK_BYTES={os.environ.get('LCFAST_CHUNK_BYTES')}, "
          f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_')}, trim={a.trim}")
    print(f"before: RSS {_status('VmRSS') / GiB:.3f} GiB; load {os.getloadavg()[0]:.1f}")
    peaks = []
    for i in range(a.calls):
        can_reset = _reset_peak()
        trimmed_s[:] = [0.0, 0]
        t = time.perf_counter()
        res = lcfast.local_complexity(model, x, radius=0.005, n_dirs=25, seed=i, backend=a.backend,
                                      chunk_size=a.chunk_size)
        dt = time.perf_counter() - t
        peak, rss, heap = _status("VmHWM"), _status("VmRSS"), _heap_rss()
        if a.trim == "call":
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        peaks.append(peak)
        print(f"call {i + 1}: peak RSS {peak / GiB:.3f} GiB{'' if can_reset else ' (process peak)'}, "
              f"after {rss / GiB:.3f} GiB (brk heap {heap / GiB:.3f}), {dt:.1f} s "
              f"({trimmed_s[0]:.2f} s in {trimmed_s[1]} malloc_trim), mean LC {res.total.double().mean():.2f}, "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
    print(f"max peak {max(peaks) / GiB:.3f} GiB; last - first peak {(peaks[-1] - peaks[0]) / 2**20:+.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
