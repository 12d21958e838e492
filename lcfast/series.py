"""LC over a series of training checkpoints, as one tidy table (the paper's workflow).

Every checkpoint is measured on the same points with the same frames (frames depend
only on ``(seed, id)``, and ids are the point indices), through
:func:`lcfast.measure_dataset` (streaming, out-of-memory halving, ranks).  One row per
``(step, point set, site)``, the site ``"total"`` included::

    {"step": 1000, "points": "test", "site": "1#1", "n": 1000, "neurons": 200,
     "mean": 12.3, "ci_low": 11.9, "ci_high": 12.7, "density": 0.0615}

(mean and 99% confidence interval of the mean, as :meth:`lcfast.LCResult.summary`).
"""
from __future__ import annotations

import copy
import csv
import glob
import json
import os
import re
from typing import Any, Iterable, Mapping

import torch
import torch.nn as nn

from .scale import measure_dataset

__all__ = ["checkpoint_files", "load_state_dict", "measure_series", "save_table", "COLUMNS"]

COLUMNS = ("step", "points", "site", "n", "neurons", "mean", "ci_low", "ci_high", "density")


def checkpoint_files(pattern: str) -> list[tuple[int, str]]:
    """``(step, path)`` of the files matching a glob pattern, by step; the step is the
    last integer in the file name (``ckpt/step000200.pt`` -> 200).

    Raises:
        ValueError: no file matches, a name holds no integer, or two files share a step.
    """
    out = []
    for path in glob.glob(pattern):
        nums = re.findall(r"\d+", os.path.basename(path))
        if not nums:
            raise ValueError(f"checkpoints: no step number in the file name {path!r}")
        out.append((int(nums[-1]), path))
    if not out:
        raise ValueError(f"checkpoints: no file matches {pattern!r}")
    out.sort()
    for (a, p), (b, q) in zip(out, out[1:]):
        if a == b:
            raise ValueError(f"checkpoints: {p!r} and {q!r} have the same step {a}")
    return out


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model weights in a checkpoint file: a bare ``state_dict``, or a dict holding
    one under ``"model"`` (as ``lcfast grok`` writes).  Loaded with ``weights_only=True``
    on the CPU."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{os.fspath(path)!r} holds neither a state_dict nor {{'model': state_dict}}")
    return dict(obj)


def measure_series(model: nn.Module, checkpoints: str | Iterable[tuple[int, Any]],
                   points: torch.Tensor | Mapping[str, Any], **kwargs) -> list[dict[str, Any]]:
    """Measure ``model`` with the weights of every checkpoint on the same points.

    Args:
        model: the architecture; each checkpoint is loaded (strictly) into a copy, the
            model itself is left as found.
        checkpoints: a glob pattern (see :func:`checkpoint_files`) or ``(step, c)``
            pairs, ``c`` a file path or a ``state_dict``.
        points: a tensor ``(N, *S)`` (named ``"points"``) or ``{name: tensor or data set}``.
        **kwargs: passed to :func:`lcfast.measure_dataset` (``radius``, ``n_dirs``,
            ``seed``, ``backend``, ``workers``, ``block_size``, ...; no ``checkpoint``).

    Returns:
        rows with the keys :data:`COLUMNS`, by step, point set, then site (``"total"``
        last).

    Example:
        >>> rows = measure_series(net, "ckpt/step*.pt", {"test": x}, radius=0.005)  # doctest: +SKIP
        >>> save_table(rows, "lc_series.csv")                                       # doctest: +SKIP
    """
    if "checkpoint" in kwargs:
        raise TypeError("measure_series: 'checkpoint' is not accepted (one measurement per checkpoint)")
    series = checkpoint_files(checkpoints) if isinstance(checkpoints, str) else list(checkpoints)
    sets = {"points": points} if isinstance(points, torch.Tensor) else dict(points)
    if not series or not sets:
        raise ValueError("checkpoints and points must not be empty")
    work = copy.deepcopy(model)
    rows = []
    for step, ck in series:
        state = ck if isinstance(ck, Mapping) else load_state_dict(ck)
        try:
            work.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f"checkpoint of step {step} does not fit the model: {e}") from None
        for name, x in sets.items():
            summary = measure_dataset(work, x, **kwargs).summary()
            rows += [{"step": int(step), "points": name, "n": summary.n_points, **row} for row in summary.rows]
    return [{k: r[k] for k in COLUMNS} for r in rows]


def save_table(rows: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """Write rows as CSV (``.csv``) or a JSON list (any other suffix)."""
    if os.fspath(path).endswith(".csv"):
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)
    else:
        with open(path, "w") as f:
            json.dump(rows, f, indent=1)
