"""The result of a measurement: :class:`LCResult`."""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import torch

__all__ = ["LCResult", "Summary"]

# two-sided 99% normal quantile
_Z99 = 2.5758293035489004


@dataclasses.dataclass
class Summary:
    """Per-site statistics of an :class:`LCResult` (printable as a table).

    ``rows`` holds one dict per site plus a final ``"total"`` row, with keys
    ``site``, ``neurons``, ``mean``, ``ci_low``, ``ci_high`` (99% normal interval of
    the mean) and ``density`` (mean crossed neurons / neurons).
    """

    rows: list[dict[str, Any]]
    n_points: int
    radius: float
    n_dirs: int

    def __str__(self) -> str:
        w = max([len("site")] + [len(r["site"]) for r in self.rows])
        head = f"{'site':<{w}}  {'neurons':>9}  {'mean LC':>10}  {'99% CI':>23}  {'density':>9}"
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
        """Per-site mean, 99% confidence interval of the mean and density."""
        n = self.counts.shape[0]
        cols = [(name, self.counts[:, i], int(self.neurons[i])) for i, name in enumerate(self.sites)]
        cols.append(("total", self.total, int(self.neurons.sum()) if len(self.sites) else 0))
        rows = []
        for name, c, neu in cols:
            c = c.double()
            mean = c.mean().item() if n else math.nan
            std = c.std().item() if n > 1 else 0.0
            half = _Z99 * std / math.sqrt(n) if n else math.nan
            rows.append(dict(site=name, neurons=neu, mean=mean, ci_low=mean - half, ci_high=mean + half,
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
                        torch.cat([p.ids for p in parts]), first.radius, first.n_dirs, dict(first.meta))
