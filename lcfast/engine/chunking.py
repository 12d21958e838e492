"""How many points one forward measures: the memory budget, the size probe and the plan.

A measurement runs its first chunk (one point) under a :class:`SizeProbe`, which
records the largest tensor the forward makes; :class:`ChunkPlan` turns that into
points per chunk for the rest.  A given ``chunk_size`` skips the probe.  Chunking
never changes a result (frames depend only on ``(seed, id)``).

Later work extends the plan here, not in the loop: rows per point other than ``2P``
(``rows_per_point``), a lower budget.  After an out-of-memory error the chunk loop
(``lcfast.api._run``, through :func:`lcfast.oom.measure_halving`) halves the chunk and
stores the smaller size in :attr:`ChunkPlan.size` (and :attr:`ChunkPlan.after_oom`).
"""
from __future__ import annotations

import math
import mmap
import os
from typing import Callable

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

__all__ = ["ChunkPlan", "FrameBlocks", "SizeProbe", "available_ram", "memory_budget", "points_per_chunk", "MAX_ROWS",
           "FRAME_BLOCK_BYTES"]

#: Largest batch (rows) of one forward, per device type.  CPU: 2 cores saturate well
#: below this.  CUDA: not measured (set without a GPU).
MAX_ROWS = {"cpu": 16384, "cuda": 1 << 16}


# (limit, usage) files of the process's memory cgroup, v2 then v1: in a container
# MemAvailable shows the host's memory, and the OOM killer acts at the cgroup's limit
_CGROUP_FILES = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                 ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def available_ram() -> int | None:
    """Bytes of RAM this process may still take before the OOM killer: ``MemAvailable``,
    lowered to the memory cgroup's ``limit - usage`` when there is a limit (``None``:
    not known)."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    for limit_file, usage_file in _CGROUP_FILES:
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:  # v1 "no limit" is ~2^63
            room = max(0, limit - usage)
            avail = room if avail is None else min(avail, room)
            break
    return avail


def memory_budget(device: torch.device) -> int:
    """Bytes one chunk may use: 40% of free GPU memory, or on CPU 25% of available RAM
    (:func:`available_ram`: the cgroup limit counts) shared by the processes of this
    machine (torchrun's ``LOCAL_WORLD_SIZE``), capped at 2 GiB (larger CPU batches were
    not faster in our measurements and the 10,000-point MNIST run must stay under
    4 GiB).  ``LCFAST_CHUNK_BYTES`` overrides."""
    env = os.environ.get("LCFAST_CHUNK_BYTES")
    if env:
        return int(env)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.4)
    avail = available_ram()
    cap = 2 << 30
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return min(cap, avail // 4 // local) if avail else cap


class SizeProbe(TorchFunctionMode):
    """Records the largest tensor any call of the forward returns (:attr:`max_bytes`)."""

    def __init__(self):
        super().__init__()
        self.max_bytes = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):  # custom ops may return tuples
            if isinstance(t, torch.Tensor):
                self.max_bytes = max(self.max_bytes, t.numel() * t.element_size())
        return out


def points_per_chunk(peak_bytes_per_row: float, input_bytes_per_point: int, rows_per_point: int,
                     device: torch.device, max_rows: int | None = None) -> int:
    """How many points fit the memory budget.  Live memory of a forward is taken as
    4x its largest intermediate (input, output, a residual and a workspace), plus the
    points' inputs twice (centres and directions).

    Args:
        peak_bytes_per_row: the probe's largest tensor divided by the rows it had.
        input_bytes_per_point: bytes of one point's input row.
        rows_per_point: batch rows one point needs (``2P`` vertices).
        device: where the forward runs (its budget, its :data:`MAX_ROWS`).
        max_rows: cap on rows per forward (default :data:`MAX_ROWS` of the device).
    """
    if max_rows is None:
        max_rows = MAX_ROWS.get(device.type, 1 << 16)
    per_point = rows_per_point * (4 * peak_bytes_per_row + 2 * input_bytes_per_point / rows_per_point) + 1
    n = int(memory_budget(device) // per_point)
    return max(1, min(n, max(1, max_rows // rows_per_point)))


class ChunkPlan:
    """Points per chunk of one measurement.

    Args:
        n_points: ``N``.
        rows_per_point: batch rows per point (``2P``).
        input_bytes_per_point: bytes of one point in the compute dtype.
        device: where the forward runs.
        size: points per chunk given by the user, or ``None`` (then probe first).

    Example:
        >>> plan = ChunkPlan(10, 4, 80, torch.device("cpu"), size=4)
        >>> plan.needs_probe, plan.size
        (False, 4)
    """

    #: points measured under the probe when no size is given
    probe_points = 1

    def __init__(self, n_points: int, rows_per_point: int, input_bytes_per_point: int, device: torch.device,
                 size: int | None = None):
        self.n_points, self.rows_per_point = n_points, rows_per_point
        self.input_bytes_per_point, self.device = input_bytes_per_point, device
        #: points per chunk; ``None`` until :meth:`calibrate` when not given
        self.size = size
        #: points per chunk after an out-of-memory error halved it (``None``: never)
        self.after_oom: int | None = None

    @property
    def needs_probe(self) -> bool:
        return self.size is None

    def calibrate(self, probe: SizeProbe, points: int) -> int:
        """Set :attr:`size` from a probe that watched the forward of ``points`` points."""
        rows = max(1, points * self.rows_per_point)
        return self.calibrate_bytes(probe.max_bytes / rows)

    def calibrate_bytes(self, peak_bytes_per_row: float) -> int:
        """Set :attr:`size` from the largest intermediate per row (a probe's, possibly of an
        earlier call: the budget is read now)."""
        self.size = points_per_chunk(peak_bytes_per_row, self.input_bytes_per_point, self.rows_per_point,
                                     self.device)
        return self.size


#: Bytes of one block of per-point frames (float64, ``P * D`` per point) drawn at once, per
#: device type (absent: the whole chunk at once).  Drawing a frame costs ~40 bytes per
#: direction element in temporaries (float32 Gaussians, their float64 copy, two
#: CholeskyQR2 passes, the transposed copy, the cast): 180 MB for a 327-point MNIST
#: chunk at P = 25, more than the MLP's forward (~100 MB), and glibc placed those
#: 26 MB blocks differently from call to call, so the peak RSS of a call moved by
#: +-49 MB (2 x 26 MB).  Measured (2-core CPU, MNIST MLP 784-200x4-10, issue 11 item
#: 9; docs/design.md#memory): see benchmarks/results/memory-native-mlp-*.  CUDA: not
#: measured (left whole: a block per few points would mean many small launches).
FRAME_BLOCK_BYTES = {"cpu": 4 << 20}


def _empty(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.empty(numel, dtype=dtype, device=device)


def _mapped(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A CPU buffer in its own private anonymous mapping, unmapped when the last tensor
    on it goes: glibc would put a block of 1-32 MB on its heap (its mmap threshold rises
    up to 32 MB), where its place, and whether its pages stay resident after the free,
    changed from call to call (see :data:`FRAME_BLOCK_BYTES`)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    mapped = mmap.mmap(-1, max(1, numel * itemsize), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return torch.frombuffer(mapped, dtype=dtype, count=numel)


#: per-call buffer allocators by device type (default: ``torch.empty``)
_EMPTY = {"cpu": _mapped}


class FrameBlocks:
    """A chunk's per-point frames, drawn block by block into one buffer kept for the call.

    ``draw(ids)`` is the frame generator (:func:`lcfast.neighborhood.random_frames` with
    the call's seed, shape, device and dtype); frames depend only on ``(seed, id)``, so
    drawing in blocks gives the same frames.  Chunks no larger than a block are returned
    as drawn (no copy).  The buffer is made at the first larger chunk (the plan's
    largest), reused by the later chunks and freed with this object (the end of the call).

    Args:
        draw: ``LongTensor (k,) -> (k, P, *S)``.
        shape: ``S``.
        n_dirs: ``P``.
        device: where frames are drawn (its :data:`FRAME_BLOCK_BYTES`).
        dtype: the frames' dtype.

    Example:
        >>> blocks = FrameBlocks(lambda ids: torch.zeros(len(ids), 2, 3), (3,), 2, torch.device("cpu"), torch.float32)
        >>> blocks(torch.arange(5)).shape
        torch.Size([5, 2, 3])
    """

    def __init__(self, draw: Callable[[torch.Tensor], torch.Tensor], shape, n_dirs: int, device: torch.device,
                 dtype: torch.dtype):
        self.draw, self.shape, self.device, self.dtype = draw, tuple(shape), torch.device(device), dtype
        per_point = n_dirs * math.prod(self.shape)
        limit = FRAME_BLOCK_BYTES.get(self.device.type)
        #: points per block (``None``: the whole chunk)
        self.block = None if limit is None else max(1, limit // (8 * per_point))
        self.per_point = per_point
        self.n_dirs = n_dirs
        self._buf: torch.Tensor | None = None

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """``(n,)`` ids -> ``(n, P, *S)`` frames (a view of the buffer when drawn in blocks:
        valid until the next call)."""
        n = int(ids.numel())
        if self.block is None or n <= self.block:
            return self.draw(ids)
        if self._buf is None or self._buf.numel() < n * self.per_point:
            self._buf = None  # the old buffer goes first
            self._buf = _EMPTY.get(self.device.type, _empty)(n * self.per_point, self.dtype, self.device)
        out = self._buf[: n * self.per_point].view(n, self.n_dirs, *self.shape)
        for lo in range(0, n, self.block):
            out[lo:lo + self.block].copy_(self.draw(ids[lo:lo + self.block]))
        return out
