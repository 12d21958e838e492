"""Track local complexity (and accuracy, adversarial accuracy) during training.

Three lines in a training loop::

    tracker = LCTracker(model, {"train": x_tr, "test": x_te}, log_path="lc.jsonl", total_steps=steps)
    for step in range(steps + 1):
        tracker.maybe_log(step)          # measures only at scheduled steps
        ...                              # the user's training step

Guarantees:

* **No disturbance.** Around each measurement the global RNG states (torch CPU and
  CUDA, numpy, python ``random``), every module's ``training`` flag and the grad
  mode are saved and restored (:class:`lcfast.train.state.preserved_state`), parameters and their ``.grad`` are never written
  (PGD differentiates with respect to the input only).  Training with and without
  a tracker gives bitwise the same weights (tested).
* **Crash-safe log.** One JSON object per line, written with a single ``write``,
  flushed and fsynced.  Re-opening the same file (``resume=True``) reads it back,
  drops a torn last line, and skips steps already logged, so a restarted run
  neither loses nor duplicates records.

Record format (one line per logged step)::

    {"step": 100, "elapsed": 12.3, "log_seconds": 0.8,
     "lc": {"train": {"0.005": {"mean": .., "ci_low": .., "ci_high": ..,
                                "sites": {"1#1": [mean, ci_low, ci_high], ...}}}, ...},
     "acc": {"train": 1.0, "test": 0.87},
     "adv_acc": {"test": {"0.03": 0.4, "0.06": 0.1}},
     "extra": {"loss": 0.01}}

The first line of a new file is ``{"meta": {...}}`` (settings, for plots).
"""
from __future__ import annotations

import math
import numbers
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from .. import jsonl
from ..api import local_complexity
from ..frames import random_frames
from .pgd import accuracy, adversarial_accuracy
from .schedule import log_schedule, resolve_schedule
from .state import preserved_state

# log_schedule and preserved_state live in .schedule and .state; named here too, where
# they were before the split
__all__ = ["LCTracker", "read_log", "log_schedule", "preserved_state"]

# frames cached per point set when they fit in this many bytes (MNIST: 1,000 points
# x 25 x 784 x 4 B = 78 MB per set).  Drawing 1,000 MNIST frames (QR of 784 x 25)
# took 0.68 s on 2 CPU cores vs 0.25 s for the LC measurement itself with the old
# generator; the counter-based one (lcfast.frames) takes 0.48 s of CPU on one thread
# (30 Nov 2026, loaded VM), still worth caching.
_FRAME_CACHE_BYTES = 1 << 30


def read_log(path: str | os.PathLike, repair: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read a tracker JSONL file.

    Args:
        path: the file.
        repair: fix a torn last line in place (:func:`lcfast.jsonl.repair`).

    Returns:
        ``(meta, records)``: the meta dict (``{}`` if none) and the step records in
        file order.

    Raises:
        ValueError: a malformed line that is not the torn last line.
    """
    meta: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    for obj in jsonl.read(path, repair=repair):
        if "meta" in obj and "step" not in obj:
            meta = obj["meta"]
        else:
            records.append(obj)
    return meta, records


def _fmt(r: float) -> str:
    return f"{r:g}"


class LCTracker:
    """Measures LC of named point sets at scheduled steps and appends JSONL records.

    Args:
        model: the trained model (used for accuracy and PGD; for LC unless
            ``lc_model`` is given).
        points: ``{name: x}`` with ``x`` of shape ``(N_k, *S)``, e.g. train, test and
            random points.  Frames of set ``k`` use ids ``offset_k + arange(N_k)``,
            offsets being cumulative set sizes in the given order (or ``ids``).
        log_path: JSONL file (``None``: keep records in memory only).
        radius: ``r`` or a sequence of radii.
        n_dirs: ``P``.
        seed: frame seed.
        schedule: ``"log"`` (:func:`~lcfast.train.schedule.log_schedule` of
            ``total_steps``, ``n_logs``), an iterable of steps, or a callable
            ``step -> bool`` (:func:`~lcfast.train.schedule.resolve_schedule`).
        total_steps, n_logs: for the log schedule.
        labels: ``{name: y}`` ``(N_k,)`` to log accuracy of those sets.
        adversarial: ``{"set": name, "eps": [..], "steps": 10, "step_size": None,
            "clamp": (0, 1), "n": None}`` to log PGD accuracy on that labelled set.
        lc_model: module whose LC is measured (default ``model``).
        lc_input: callable ``(name, x) -> input of lc_model`` applied at log time
            (e.g. token embeddings); frames are then not cached.
        sites, backend, dtype, chunk_size, forward: passed to :func:`lcfast.local_complexity`.
        extra: ``{set name: {input name: (N_k, ...) tensor}}`` per-point extra inputs of
            each set, passed as ``extra=`` to :func:`lcfast.local_complexity`.
        ids: ``{name: LongTensor (N_k,)}`` explicit frame ids.
        cache_frames: compute each set's frames once (when they fit 1 GiB).
        tensorboard_dir: also write scalars there when ``torch.utils.tensorboard``
            (the ``tensorboard`` package) is available; a warning otherwise.
        resume: re-open an existing ``log_path`` and skip logged steps; ``False``
            starts the file anew.
        meta: extra settings stored in the file's first line.
    """

    def __init__(self, model: nn.Module, points: Mapping[str, torch.Tensor], *,
                 log_path: str | os.PathLike | None = None,
                 radius: float | Sequence[float] = 0.005, n_dirs: int = 25, seed: int = 0,
                 schedule: str | Iterable[int] | Callable[[int], bool] = "log",
                 total_steps: int | None = None, n_logs: int = 100,
                 labels: Mapping[str, torch.Tensor] | None = None,
                 adversarial: Mapping[str, Any] | None = None,
                 lc_model: nn.Module | None = None,
                 lc_input: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
                 sites="activations", backend: str = "auto", dtype: torch.dtype | None = None,
                 chunk_size: int | None = None,
                 forward: Callable | None = None,
                 extra: Mapping[str, Mapping[str, Any]] | None = None,
                 ids: Mapping[str, torch.Tensor] | None = None,
                 cache_frames: bool = True,
                 tensorboard_dir: str | os.PathLike | None = None,
                 resume: bool = True, meta: Mapping[str, Any] | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(points, Mapping) or not points:
            raise ValueError("points must be a non-empty dict {name: tensor (N, *S)}")
        for k, x in points.items():
            if not isinstance(k, str) or not isinstance(x, torch.Tensor) or x.dim() < 2:
                raise ValueError(f"points[{k!r}] must be a tensor of shape (N, *S)")
            if lc_input is None and not x.is_floating_point():
                raise TypeError(f"points[{k!r}] must be floating (or pass lc_input= to embed it)")
        self.model = model
        self.lc_model = lc_model if lc_model is not None else model
        self.lc_input = lc_input
        self.points = dict(points)
        radii = [radius] if isinstance(radius, numbers.Real) else list(radius)
        if not radii or any(isinstance(r, bool) or not isinstance(r, numbers.Real) or not math.isfinite(r) or r <= 0
                            for r in radii):
            raise ValueError(f"radius must be a number > 0 or a non-empty sequence of them, got {radius!r}")
        self.radii = [float(r) for r in radii]
        if isinstance(n_dirs, bool) or not isinstance(n_dirs, numbers.Integral):
            raise TypeError(f"n_dirs must be an int (directions per point), got {n_dirs!r}")
        if n_dirs < 1:
            raise ValueError(f"n_dirs must be >= 1 (directions per point), got {n_dirs}")
        self.n_dirs, self.seed = int(n_dirs), int(seed)
        self.sites, self.backend, self.dtype, self.chunk_size = sites, backend, dtype, chunk_size
        self.forward, self.extra = forward, dict(extra or {})
        for k in self.extra:
            if k not in self.points:
                raise ValueError(f"extra[{k!r}]: no point set named {k!r} (sets: {list(self.points)})")
        self.labels = dict(labels or {})
        for k, y in self.labels.items():
            if k not in self.points:
                raise ValueError(f"labels[{k!r}]: no point set named {k!r} (sets: {list(self.points)})")
            if y.shape != (self.points[k].shape[0],) or y.dtype.is_floating_point:
                raise ValueError(f"labels[{k!r}] must be integers of shape ({self.points[k].shape[0]},)")
        self.adversarial = None
        if adversarial:
            adv = dict(adversarial)
            name = adv.get("set")
            if name not in self.labels:
                raise ValueError(f"adversarial['set'] must name a labelled set ({list(self.labels)}), got {name!r}")
            if "eps" not in adv:
                raise ValueError("adversarial must give 'eps' (a list of L-inf radii)")
            adv.setdefault("steps", 10)
            adv.setdefault("step_size", None)
            adv.setdefault("clamp", (0.0, 1.0))
            adv.setdefault("n", None)
            adv["eps"] = [float(e) for e in (adv["eps"] if isinstance(adv["eps"], Sequence) else [adv["eps"]])]
            self.adversarial = adv

        self._should, self.schedule = resolve_schedule(schedule, total_steps, n_logs)

        # frame ids and cached frames
        self.ids: dict[str, torch.Tensor] = {}
        off = 0
        for k, x in self.points.items():
            n = x.shape[0]
            if ids is not None and k in ids:
                t = torch.as_tensor(ids[k], dtype=torch.long)
                if t.shape != (n,):
                    raise ValueError(f"ids[{k!r}] must have shape ({n},), got {tuple(t.shape)}")
                self.ids[k] = t
            else:
                self.ids[k] = torch.arange(off, off + n, dtype=torch.long)
            off += n
        self._frames: dict[str, torch.Tensor] = {}
        self.cache_frames = cache_frames and lc_input is None

        # log file
        self.log_path = Path(log_path) if log_path is not None else None
        self.records: list[dict[str, Any]] = []
        self.logged: set[int] = set()
        self.meta = dict(meta or {})
        self.meta.update(radii=self.radii, n_dirs=self.n_dirs, seed=self.seed, sets=list(self.points),
                         sizes={k: int(v.shape[0]) for k, v in self.points.items()},
                         adversarial=({k: (list(v) if isinstance(v, tuple) else v) for k, v in self.adversarial.items()}
                                      if self.adversarial else None))
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            if resume and self.log_path.exists():
                old_meta, recs = read_log(self.log_path, repair=True)
                self.records = recs
                self.logged = {int(r["step"]) for r in recs}
                if old_meta:
                    self.meta = {**self.meta, **old_meta}
                elif not recs:
                    self._append({"meta": self.meta})
            else:
                jsonl.start(self.log_path, {"meta": self.meta})
        self._t0 = time.perf_counter() - (self.records[-1].get("elapsed", 0.0) if self.records else 0.0)

        self._tb = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415
            except ImportError as e:  # the tensorboard package is missing
                warnings.warn(f"TensorBoard output disabled: {e}", stacklevel=2)
            else:
                self._tb = SummaryWriter(str(tensorboard_dir))

    # ------------------------------------------------------------------
    def should_log(self, step: int) -> bool:
        """True when ``step`` is scheduled and not yet in the log."""
        return int(step) not in self.logged and bool(self._should(int(step)))

    def maybe_log(self, step: int, **extra: float) -> dict[str, Any] | None:
        """Log ``step`` if it is scheduled and not logged yet.

        Args:
            step: the training step (e.g. optimizer steps taken so far).
            **extra: scalars stored under ``"extra"`` (e.g. ``loss=...``).

        Returns:
            the record, or ``None`` when nothing was logged.
        """
        if not self.should_log(step):
            return None
        return self.log(step, **extra)

    def log(self, step: int, **extra: float) -> dict[str, Any]:
        """Measure now and append a record for ``step`` (even if unscheduled).
        A step already in the log is not written again (its old record is returned)."""
        step = int(step)
        if step in self.logged:
            return next(r for r in self.records if int(r["step"]) == step)
        t0 = time.perf_counter()
        with preserved_state(self.model, self.lc_model):
            rec = self._measure(step)
        rec["extra"] = {k: float(v) for k, v in extra.items()}
        rec["log_seconds"] = time.perf_counter() - t0
        rec["elapsed"] = time.perf_counter() - self._t0
        self._append(rec)
        self.records.append(rec)
        self.logged.add(step)
        self._write_tb(rec)
        return rec

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    # ------------------------------------------------------------------
    def _frames_for(self, name: str, x: torch.Tensor) -> torch.Tensor | None:
        if not self.cache_frames:
            return None
        if name not in self._frames:
            S = tuple(x.shape[1:])
            nbytes = x.shape[0] * self.n_dirs * math.prod(S) * 4
            if nbytes > _FRAME_CACHE_BYTES or self.n_dirs > math.prod(S):
                return None
            dt = self.dtype or next((p.dtype for p in self.lc_model.parameters() if p.is_floating_point()),
                                    torch.float32)
            self._frames[name] = random_frames(S, self.n_dirs, self.seed, self.ids[name], dtype=dt)
        return self._frames[name]

    def _measure(self, step: int) -> dict[str, Any]:
        rec: dict[str, Any] = {"step": step, "lc": {}}
        with torch.no_grad():
            for name, x in self.points.items():
                xin = self.lc_input(name, x) if self.lc_input is not None else x
                frames = self._frames_for(name, xin)
                per_r = {}
                # every radius in one call (the offsets engine derives them from one propagation)
                results = local_complexity(self.lc_model, xin.detach(), radius=list(self.radii), n_dirs=self.n_dirs,
                                           seed=self.seed, ids=self.ids[name], directions=frames, sites=self.sites,
                                           backend=self.backend, dtype=self.dtype, chunk_size=self.chunk_size,
                                           forward=self.forward, extra=self.extra.get(name))
                for r, res in zip(self.radii, results):
                    rec.setdefault("lc_backend", res.meta.get("backend"))
                    rows = res.summary().rows
                    tot = rows[-1]
                    per_r[_fmt(r)] = dict(mean=tot["mean"], ci_low=tot["ci_low"], ci_high=tot["ci_high"],
                                          sites={row["site"]: [row["mean"], row["ci_low"], row["ci_high"]]
                                                 for row in rows[:-1]})
                rec["lc"][name] = per_r
            if self.labels:
                rec["acc"] = {k: accuracy(self.model, self.points[k], y) for k, y in self.labels.items()}
        if self.adversarial:
            adv = self.adversarial
            k = adv["set"]
            x, y = self.points[k], self.labels[k]
            if adv["n"] is not None:
                x, y = x[:adv["n"]], y[:adv["n"]]
            accs = adversarial_accuracy(self.model, x, y, adv["eps"], steps=adv["steps"],
                                        step_size=adv["step_size"], clamp=adv["clamp"], seed=self.seed)
            rec["adv_acc"] = {k: {_fmt(e): a for e, a in accs.items()}}
        return rec

    def _append(self, obj: dict[str, Any]) -> None:
        if self.log_path is None:
            return
        jsonl.append(self.log_path, obj)

    def _write_tb(self, rec: dict[str, Any]) -> None:
        if self._tb is None:
            return
        s = rec["step"]
        for name, per_r in rec["lc"].items():
            for r, d in per_r.items():
                self._tb.add_scalar(f"lc/{name}/r={r}", d["mean"], s)
        for name, a in rec.get("acc", {}).items():
            self._tb.add_scalar(f"acc/{name}", a, s)
        for name, per_e in rec.get("adv_acc", {}).items():
            for e, a in per_e.items():
                self._tb.add_scalar(f"adv_acc/{name}/eps={e}", a, s)
        for k, v in rec.get("extra", {}).items():
            self._tb.add_scalar(f"extra/{k}", v, s)
        self._tb.flush()
