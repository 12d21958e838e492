"""Whole data sets: streamed, resumable, safe on out-of-memory, spread over ``torch.distributed`` ranks.

:func:`measure_dataset` cuts a data set into blocks of consecutive indices and measures
each block with :func:`lcfast.local_complexity` (ids = data set indices, so the frame of
a point never depends on the block, the rank, the loader or the number of ranks).

* **Streaming.** A map-style data set is read through a ``torch.utils.data.DataLoader``
  (``workers`` processes decode and transform items off the main process; batches are
  pinned and copied asynchronously when the model is on CUDA); a block is assembled
  from its batches.  A tensor is sliced directly.
* **Checkpoints.** Each finished block is appended to a JSON-lines file
  (:mod:`lcfast.jsonl`) whose first line is the measurement's fingerprint
  (:mod:`lcfast.fingerprint`: settings, backend, model weights, data, frame generator).
  A rerun skips finished blocks; a checkpoint with another fingerprint is refused,
  naming what differs, unless ``overwrite=True``.
* **Out of memory.** :func:`lcfast.local_complexity` measures the points of a chunk that
  ran out of memory again with half the chunk (:func:`lcfast.oom.measure_halving`);
  nothing is lost, and later blocks start at the halved chunk size.
* **Ranks.** Under an initialised process group, blocks are dealt in *rounds*: in round
  ``k`` rank ``r`` of ``W`` takes block ``k*W + r``, or no block (empty work) in the
  last round when the blocks run out.  One ``all_gather_object`` first checks that
  every rank has the same fingerprint as rank 0 (a random-init model seeded
  differently is refused), and every round ends with one, so every rank makes the
  same number of collective calls (1 + rounds), and every rank returns the full result.
  An error on one rank (reading a block, measuring it, its checkpoint) is sent in the
  next gather and raised on every rank: no rank is left waiting.  Models whose forward makes collective calls
  (FSDP, DTensor-sharded) are refused: ranks chunk and resume independently, so their
  forwards would not pair up.  ``DistributedDataParallel`` is measured through its
  ``.module`` (same parameters).
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from . import jsonl
from .api import local_complexity
from .engine.base import model_device
from .fingerprint import differences, measurement_fingerprint, point_of
from .result import LCResult

__all__ = ["measure_dataset"]

_FORMAT = "lcfast.measure_dataset/2"
# points per DataLoader batch (unmeasured; 64 ImageNet images are 38 MB as float32)
_LOADER_BATCH = 64


def _collate(items) -> torch.Tensor:
    return torch.stack([point_of(it) for it in items])


def _refuse_sharded(model: torch.nn.Module) -> torch.nn.Module:
    """The model to measure: DDP unwrapped; FSDP / DTensor-sharded models refused."""
    if not dist.is_available():
        return model
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
    from torch.distributed.tensor import DTensor
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    sharded = any(isinstance(m, (FSDPModule, FullyShardedDataParallel)) for m in model.modules()) or any(
        isinstance(t, DTensor) for t in (*model.parameters(), *model.buffers()))
    if sharded:
        raise TypeError("model is sharded (FSDP or DTensor parameters): measure_dataset runs each rank's "
                        "forwards independently, so a sharded model's collective calls would not pair up "
                        "across ranks; measure an unsharded copy (e.g. from a full state dict) on every rank")
    return model


def _stream(data, blocks: list[tuple[int, int]], workers: int, device: torch.device) -> Iterator[torch.Tensor]:
    """The points of each block, ``(hi - lo, *S)`` on ``device`` for a data set (as given for a tensor)."""
    if isinstance(data, torch.Tensor):
        for lo, hi in blocks:
            yield data[lo:hi]
        return
    per_block = [list(range(b, min(hi, b + _LOADER_BATCH))) for lo, hi in blocks for b in range(lo, hi, _LOADER_BATCH)]
    loader = iter(DataLoader(data, batch_sampler=per_block, num_workers=workers, collate_fn=_collate,
                             pin_memory=device.type == "cuda"))
    for lo, hi in blocks:
        parts = [next(loader).to(device, non_blocking=True) for _ in range(math.ceil((hi - lo) / _LOADER_BATCH))]
        yield torch.cat(parts)


def _gather(world: int, value: Any, error: Exception | None) -> list[Any]:
    """``all_gather_object`` of every rank's ``value``; a rank whose work failed sends
    its error instead, and then every rank raises (the failed one its own error), so
    that no rank is left waiting in a later collective."""
    got: list[Any] = [None] * world
    dist.all_gather_object(got, ("error", f"{type(error).__name__}: {error}") if error else ("ok", value))
    failed = [f"rank {r}: {msg}" for r, (kind, msg) in enumerate(got) if kind == "error"]
    if error is not None:
        raise error
    if failed:
        raise RuntimeError(f"measure_dataset stopped on every rank: {'; '.join(failed)}")
    return [v for _, v in got]


def _same_on_every_rank(world: int, fp: dict[str, str] | None, error: Exception | None) -> None:
    """Refuse (on every rank alike) ranks whose model, data or settings differ from rank 0's."""
    got = _gather(world, fp, error)
    bad = {r: differences(got[0], g) for r, g in enumerate(got) if g != got[0]}
    if bad:
        raise ValueError("ranks measure different things, so their blocks would not form one result: "
                         + "; ".join(f"rank {r} vs rank 0: {', '.join(d)}" for r, d in bad.items())
                         + " (seed a random-init model the same on every rank)")


def _open_checkpoint(path: str, fp: dict[str, str], overwrite: bool) -> dict[int, dict]:
    """Finished blocks of the checkpoint at ``path`` (``lo -> result dict``); a new file when none."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    header = {"format": _FORMAT, "fingerprint": fp}
    try:
        records = jsonl.read(path) if os.path.exists(path) and not overwrite else []
    except ValueError as e:
        raise ValueError(f"checkpoint {e}; pass overwrite=True to start afresh") from None
    if not records:
        jsonl.start(path, header)
        return {}
    old = records[0].get("fingerprint") if records[0].get("format") == _FORMAT else None
    if old != fp:
        what = "; ".join(differences(old, fp)) if isinstance(old, dict) else "an older lcfast checkpoint format"
        raise ValueError(f"checkpoint {path!r} was made for another measurement: {what}. Pass overwrite=True "
                         "to start afresh, or use another checkpoint path")
    return {int(r["lo"]): r["result"] for r in records[1:]}


def measure_dataset(model: torch.nn.Module, data, *, block_size: int = 1024, checkpoint: str | None = None,
                    overwrite: bool = False, workers: int = 0, id_offset: int = 0, progress: bool = False,
                    distributed: bool | None = None, **kwargs) -> LCResult:
    """LC of every point of a data set: streamed, resumable, optionally distributed.

    Args:
        model: any ``nn.Module`` (left exactly as found); not FSDP/DTensor-sharded.
        data: a tensor ``(N, *S)`` or a map-style dataset whose items are ``x`` or
            ``(x, ...)`` with ``x`` a tensor of shape ``S``
            (e.g. :class:`lcfast.image_folder.ImageFiles`).
        block_size: points per block (the unit of checkpointing and of work sharing).
        checkpoint: path prefix of the JSON-lines checkpoint (one file per rank,
            ``<checkpoint>.rank<r>.jsonl``); ``None`` keeps nothing.
        overwrite: start the checkpoint afresh instead of refusing one made for another
            measurement (other settings, backend, weights, data or frames).
        workers: ``DataLoader`` worker processes reading a data set (0: in this
            process; a tensor is sliced directly, without workers).
        id_offset: ids are ``id_offset + index``.
        progress: tqdm bar over blocks (rank 0 only).
        distributed: split blocks over the ranks of the default process group
            (default: whenever one is initialised).
        **kwargs: passed to :func:`lcfast.local_complexity` (``radius``, ``n_dirs``,
            ``seed``, ``sites``, ``backend``, ``dtype``, ``chunk_size``, ...; not
            ``ids``/``directions``).

    Returns:
        :class:`LCResult` over all ``N`` points (``counts (N, L)``, ``ids (N,)`` =
        ``id_offset + arange(N)``), in data set order, on every rank.

    Raises:
        ValueError: bad ``block_size``/``workers``, a checkpoint made for another
            measurement, or ranks that measure different models/data/settings (the
            message names what differs).
        TypeError: ``ids``/``directions`` given, data without ``__len__``, a sharded model.

    Example:
        >>> res = measure_dataset(model, x, block_size=256, checkpoint="runs/lc")  # doctest: +SKIP
    """
    for bad in ("ids", "directions", "x"):
        if bad in kwargs:
            raise TypeError(f"measure_dataset: {bad!r} is not accepted (ids come from the data set indices)")
    if isinstance(kwargs.get("radius"), (list, tuple)):
        raise TypeError("measure_dataset: radius must be one number (a checkpoint holds one result per block); "
                        "call it once per radius")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an int >= 0, got {workers!r}")
    try:
        N = len(data)
    except TypeError:
        raise TypeError("data must be a tensor or a map-style dataset with __len__") from None
    model = _refuse_sharded(model)
    if distributed is None:
        distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)

    blocks = [(lo, min(N, lo + block_size)) for lo in range(0, N, block_size)]
    rounds = [[blocks[i] if i < len(blocks) else None for i in range(k, k + world)]
              for k in range(0, len(blocks), world)]
    # forward=/extra= (issue 11 item 6) pass through; the fingerprint keeps the forward's name
    # and the extra inputs' names (a callable and tensors are not settings)
    forward, extra = kwargs.pop("forward", None), kwargs.pop("extra", None) or {}
    done: dict[int, dict] = {}
    path = f"{checkpoint}.rank{rank}.jsonl" if checkpoint is not None else None
    fp = error = None
    try:
        if path is not None or distributed:
            fp = measurement_fingerprint(model, data, kwargs, block_size=block_size, id_offset=id_offset,
                                         forward=None if forward is None else getattr(forward, "__qualname__",
                                                                                      repr(forward)),
                                         extra=sorted(extra))
        if path is not None:
            done = _open_checkpoint(path, fp, overwrite)
    except Exception as e:  # noqa: BLE001 - under ranks, reported to all of them first
        if not distributed:
            raise
        error = e
    if distributed:
        _same_on_every_rank(world, fp, error)
    pending = [rd[rank] for rd in rounds if rd[rank] is not None and rd[rank][0] not in done]
    stream = _stream(data, pending, workers, model_device(model, torch.device("cpu")))
    size = kwargs.pop("chunk_size", None)

    def measure(x, ids):
        nonlocal size  # after an out-of-memory error, later blocks start at the halved size
        rows = ids - id_offset
        ex = {k: (v[rows] if isinstance(v, torch.Tensor) else v) for k, v in extra.items()} or None
        res = local_complexity(model, x, ids=ids, chunk_size=size, forward=forward, extra=ex, **kwargs)
        size = res.meta.get("chunk_size_after_oom", size)
        return res.to_dict()

    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(blocks), desc="lcfast blocks", unit="block")
    try:
        for rd in rounds:
            mine, error = rd[rank], None
            if mine is not None and mine[0] not in done:
                lo, hi = mine
                try:
                    done[lo] = measure(next(stream), torch.arange(id_offset + lo, id_offset + hi))
                except Exception as e:  # noqa: BLE001 - under ranks, reported to all of them first
                    if not distributed:
                        raise
                    error = e
                else:
                    if path is not None:
                        jsonl.append(path, {"lo": lo, "hi": hi, "result": done[lo]})
            if distributed:  # the round's one collective (None: empty work)
                got = _gather(world, None if mine is None else done.get(mine[0]), error)
                done.update({b[0]: res for b, res in zip(rd, got) if b is not None})
            if bar is not None:
                bar.update(sum(b is not None for b in rd))
    finally:
        stream.close()  # stops DataLoader workers at once, also on errors
        if bar is not None:
            bar.close()

    if not blocks:  # N == 0
        if not isinstance(data, torch.Tensor):
            raise ValueError("data is empty and not a tensor: there is nothing to measure")
        return local_complexity(model, data, forward=forward, extra=extra or None, **kwargs)
    return LCResult.concat([LCResult.from_dict(done[lo]) for lo, _ in blocks])
