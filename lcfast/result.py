"""The result of a measurement: :class:`LCResult`."""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np
import torch

__all__ = ["LCResult", "Summary", "bootstrap_mean_ci", "CI_LEVEL", "CI_METHOD"]

#: Confidence level of :meth:`LCResult.summary` intervals and how they are computed.
CI_LEVEL = 0.99
CI_METHOD = "bootstrap"
#: Bootstrap resamples (percentile interval) and the fixed seed that makes a summary
#: reproducible.  2000 resamples put 10 in each 0.5% tail.
_RESAMPLES = 2000
_SEED = 0
#: A column is resampled through its histogram (a multinomial draw over its distinct
#: values: cost ``resamples x K``, not ``resamples x N``); with more than this many
#: distinct values they are pooled into this many equal-width bins, each represented
#: by the mean of its values (exact for counts spanning <= 256 values).  Measured
#: (2 loaded cores, load ~1): 512 bins x 2000 resamples 0.16 s per column; indexing
#: resamples instead took ~4 s for 40,000 points.
_MAX_BINS = 256


def _histogram(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values (or bin means) of ``v`` ``(N,)`` float64 and their counts."""
    vals, cnt = np.unique(v, return_counts=True)
    if vals.size > _MAX_BINS:
        lo, hi = vals[0], vals[-1]
        b = np.minimum(((v - lo) * (_MAX_BINS / (hi - lo))).astype(np.int64), _MAX_BINS - 1)
        cnt = np.bincount(b, minlength=_MAX_BINS)
        sums = np.bincount(b, weights=v, minlength=_MAX_BINS)
        keep = cnt > 0
        vals, cnt = sums[keep] / cnt[keep], cnt[keep]
    return vals, cnt


def bootstrap_mean_ci(values: torch.Tensor, level: float = CI_LEVEL, resamples: int = _RESAMPLES,
                      seed: int = _SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Percentile-bootstrap confidence interval of the mean of each column.

    Every resample mean is a mean of the data, so the interval lies within
    ``[min, max]`` of each column: never below zero for counts (the normal interval
    ``mean +- z s / sqrt(N)`` does go negative on skewed counts).  A fixed generator
    makes it reproducible.

    Args:
        values: ``(N, C)`` numbers, ``N >= 1``.
        level: coverage, e.g. 0.99.
        resamples: bootstrap resamples.
        seed: generator seed.

    Returns:
        ``(low, high)``, each float64 ``(C,)``.

    Example:
        >>> lo, hi = bootstrap_mean_ci(torch.tensor([[0.], [0.], [1.], [4.]]))
        >>> bool(lo[0] >= 0) and bool(hi[0] <= 4)
        True
    """
    v = values.detach().to(torch.float64).cpu().numpy()
    n = v.shape[0]
    if n < 1:
        raise ValueError("values must hold at least one row")
    rng = np.random.default_rng(seed)
    means = []
    for col in v.T:
        vals, cnt = _histogram(col)
        draws = rng.multinomial(n, cnt / n, size=resamples)  # (resamples, K) resampled histograms
        means.append(torch.from_numpy(draws.astype(np.float64) @ vals) / n)
    means = torch.stack(means, 1)
    a = (1 - level) / 2
    q = torch.quantile(means, torch.tensor([a, 1 - a], dtype=torch.float64), dim=0)
    return q[0], q[1]


@dataclasses.dataclass
class Summary:
    """Per-site statistics of an :class:`LCResult` (printable as a table).

    ``rows`` holds one dict per site plus a final ``"total"`` row, with keys
    ``site``, ``neurons``, ``mean``, ``ci_low``, ``ci_high`` (99% percentile-bootstrap
    interval of the mean, :func:`bootstrap_mean_ci`: within the data's range, so never
    negative) and ``density`` (mean crossed neurons / neurons).
    """

    rows: list[dict[str, Any]]
    n_points: int
    radius: float
    n_dirs: int

    def __str__(self) -> str:
        w = max([len("site")] + [len(r["site"]) for r in self.rows])
        head = f"{'site':<{w}}  {'neurons':>9}  {'mean LC':>10}  {f'{CI_LEVEL:.0%} CI ({CI_METHOD})':>23}  {'density':>9}"
        lines = [f"LC over {self.n_points} points (r={self.radius:g}, P={self.n_dirs})", head, "-" * len(head)]
        for r in self.rows:
            if r["site"] == "total":
                lines.append("-" * len(head))
            ci = f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
            lines.append(f"{r['site']:<{w}}  {r['neurons']:>9d}  {r['mean']:>10.3f}  {ci:>23}  {r['density']:>9.2e}")
        return "\n".join(lines)

    __repr__ = __str__


@dataclasses.dataclass
class LCResult:
    """Local complexity of ``N`` points at ``L`` sites.

    Attributes:
        counts: ``LongTensor (N, L)``: crossed neurons of point ``n`` at site ``l``.
        sites: ``L`` site names, e.g. ``"layer1.0.relu#1"``.
        neurons: ``LongTensor (L,)``: neurons per site (for densities).
        ids: ``LongTensor (N,)``: the global sample ids the frames were drawn for.
        radius, n_dirs: the neighbourhood (``r``, ``P``).
        meta: backend, dtype, seed, device and timing information.
    """

    counts: torch.Tensor
    sites: list[str]
    neurons: torch.Tensor
    ids: torch.Tensor
    radius: float
    n_dirs: int
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def total(self) -> torch.Tensor:
        """``LongTensor (N,)``: LC of each point, the sum over sites."""
        return self.counts.sum(1)

    def __len__(self) -> int:
        return self.counts.shape[0]

    def summary(self) -> Summary:
        """Per-site mean, 99% bootstrap confidence interval of the mean and density."""
        n = self.counts.shape[0]
        names = [*self.sites, "total"]
        neurons = [*(int(v) for v in self.neurons), int(self.neurons.sum()) if len(self.sites) else 0]
        cols = torch.cat([self.counts, self.total[:, None]], 1).double()
        if n:
            means = (cols.sum(0) / n).tolist()
            lows, highs = (t.tolist() for t in bootstrap_mean_ci(cols))
        else:
            means = lows = highs = [math.nan] * len(names)
        rows = []
        for name, neu, mean, lo, hi in zip(names, neurons, means, lows, highs):
            rows.append(dict(site=name, neurons=neu, mean=mean, ci_low=lo, ci_high=hi,
                             density=mean / neu if neu else math.nan))
        return Summary(rows, n, self.radius, self.n_dirs)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; :meth:`from_dict` inverts it exactly."""
        return dict(
            format="lcfast.LCResult/1",
            counts=self.counts.cpu().tolist(),
            sites=list(self.sites),
            neurons=self.neurons.cpu().tolist(),
            ids=self.ids.cpu().tolist(),
            radius=self.radius,
            n_dirs=self.n_dirs,
            meta=self.meta,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LCResult":
        L = len(d["sites"])
        counts = torch.tensor(d["counts"], dtype=torch.long).reshape(-1, L)
        return cls(counts=counts, sites=list(d["sites"]),
                   neurons=torch.tensor(d["neurons"], dtype=torch.long).reshape(L),
                   ids=torch.tensor(d["ids"], dtype=torch.long).reshape(-1),
                   radius=float(d["radius"]), n_dirs=int(d["n_dirs"]), meta=dict(d.get("meta", {})))

    def save(self, path) -> None:
        """Write :meth:`to_dict` as JSON."""
        with open(path, "w") as f:
            json.dump(self.to_dict(), f)

    @classmethod
    def load(cls, path) -> "LCResult":
        with open(path) as f:
            return cls.from_dict(json.load(f))

    @staticmethod
    def concat(parts: list["LCResult"]) -> "LCResult":
        """Join results of disjoint point sets measured with the same settings."""
        if not parts:
            raise ValueError("parts must not be empty")
        first = parts[0]
        for p in parts[1:]:
            if p.sites != first.sites or p.radius != first.radius or p.n_dirs != first.n_dirs:
                raise ValueError("parts: results measured with different sites, radius or n_dirs")
        return LCResult(torch.cat([p.counts for p in parts]), first.sites, first.neurons,
                        torch.cat([p.ids for p in parts]), first.radius, first.n_dirs, _concat_meta(parts))


#: ints in ``LCResult.meta`` that are settings of the call, not counts over its points
#: (kept from the first part by :meth:`LCResult.concat`)
_SETTING_INTS = ("seed", "chunk_size_after_oom")


def _concat_meta(parts: list[LCResult]) -> dict:
    """The meta of joined parts: the engines' reports over points (ambiguous neurons,
    recomputed points, breaks, rows per point, ...) merged by the chunk rules of
    :func:`lcfast.engine.base.merge_chunk_meta` (counts summed, per-point figures
    averaged), ``seconds`` summed, everything else from the first part."""
    from .engine.base import merge_chunk_meta
    acc: dict = {}
    for p in parts:
        merge_chunk_meta(acc, {k: v for k, v in p.meta.items() if k not in _SETTING_INTS}, p.counts.shape[0])
    acc.pop("_points", None)
    meta = {**parts[0].meta, **acc}
    if all(isinstance(p.meta.get("seconds"), (int, float)) for p in parts):
        meta["seconds"] = sum(p.meta["seconds"] for p in parts)
    return meta
