"""``partition(model, plane, extent)``: the exact linear regions of a 2-D slice."""
from __future__ import annotations

import functools
from typing import Sequence

import torch
import torch.nn as nn

from . import engine
from . import polygons as pg
from .plane import Plane
from .trace import float64_copy, run_to

__all__ = ["Partition", "partition", "extent_polygon"]


def extent_polygon(extent) -> torch.Tensor:
    """``(s0, s1, t0, t1)`` or a ``(K, 2)`` convex polygon -> ``(K, 2)`` float64, CCW."""
    if isinstance(extent, torch.Tensor) and extent.dim() == 2:
        poly = extent.detach().to(torch.float64)
        if poly.shape[1] != 2 or poly.shape[0] < 3 or not bool(torch.isfinite(poly).all()):
            raise ValueError(f"extent polygon must be a finite (K >= 3, 2) tensor, got {tuple(poly.shape)}")
    else:
        try:
            s0, s1, t0, t1 = (float(e) for e in extent)
        except (TypeError, ValueError):
            raise TypeError(f"extent must be (s0, s1, t0, t1) or a (K, 2) polygon tensor, got {extent!r}") \
                from None
        if not (s0 < s1 and t0 < t1):
            raise ValueError(f"extent must have s0 < s1 and t0 < t1, got {extent!r}")
        poly = pg.rectangle(s0, s1, t0, t1)
    a = pg.area(poly[None], torch.tensor([poly.shape[0]]))[0]
    if a == 0:
        raise ValueError("extent polygon has zero area")
    return poly if a > 0 else poly.flip(0)


class _Regions(Sequence):
    def __init__(self, verts, nv):
        self._v, self._n = verts, nv

    def __len__(self):
        return self._v.shape[0]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self._v[i, : int(self._n[i])]


class Partition:
    """The exact partition of a convex polygon of a 2-D slice into the model's linear
    regions (made by :func:`partition`).

    Attributes:
        plane: the :class:`Plane`; ``polygon``: the extent ``(K, 2)``.
        verts: ``(R, K, 2)`` float64 packed region polygons (CCW) in ``(s, t)``;
            ``nv (R,)`` their vertex counts.
        switches: the switches (sites and max pooling calls) in call order.
        sites: names of the lcfast sites (as ``local_complexity(...).sites``).
        crossed: ``{site: int}`` neurons whose zero set meets the polygon (not
            identically zero there).
    """

    def __init__(self, model64: nn.Module, plane: Plane, polygon: torch.Tensor, res: engine.Result,
                 sl: engine.Slices, size):
        self.plane, self.polygon = plane, polygon
        self.verts, self.nv = res.verts, res.nv
        self.switches = res.switches
        self.sites = [s.name for s in res.switches if s.lc_site]
        self.crossed = {k: int(v[0]) for k, v in res.crossed.items()}
        self._knots = res.knots
        self._model, self._sl, self._size = model64, sl, size

    @property
    def n_regions(self) -> int:
        """Number of linear regions."""
        return int(self.verts.shape[0])

    @property
    def regions(self) -> Sequence[torch.Tensor]:
        """Sequence of ``(K_i, 2)`` float64 polygons (views of :attr:`verts`)."""
        return _Regions(self.verts, self.nv)

    @functools.cached_property
    def areas(self) -> torch.Tensor:
        """``(R,)`` region areas in ``(s, t)`` units."""
        return pg.area(self.verts, self.nv)

    @functools.cached_property
    def interior(self) -> torch.Tensor:
        """``(R, 2)`` one interior point per region (its vertex mean)."""
        return pg.centroid(self.verts, self.nv)

    @functools.cached_property
    def output_maps(self) -> torch.Tensor:
        """``(R, O, 3)``: the output on region ``i`` is ``a + b*s + c*t`` per output."""
        return engine.output_maps(self._model, self._sl, self.verts, self.nv, torch.zeros_like(self.nv))

    def affine(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's affine map on region ``i`` in slice coordinates.

        Returns:
            ``(A, b)``: ``A (O, 2)``, ``b (O,)`` float64 with
            ``model(plane.at(st)).flatten(1) == st @ A.T + b`` for ``st`` in region ``i``.
        """
        m = self.output_maps[i]
        return m[:, 1:].clone(), m[:, 0].clone()

    @functools.cached_property
    def slopes(self) -> torch.Tensor:
        """``(R,)`` Frobenius norm of each region's ``A`` (the paper's colouring)."""
        return self.output_maps[..., 1:].flatten(1).norm(dim=1)

    @functools.cached_property
    def patterns(self) -> torch.Tensor:
        """``(R, sum of neurons over sites)`` bool: the sign pattern (pre-activation > 0)
        of every lcfast site's neurons on each region, sites concatenated in order."""
        st = self.interior
        pid = torch.zeros(self.n_regions, dtype=torch.long)
        out = []
        for idx in engine._chunks(self.n_regions, 2048):
            rec: list = []
            run_to(self._model, self._sl.basis, st[idx], pid[idx], None, record=rec)
            out.append(torch.cat([r > 0 for r in rec], 1))
        return torch.cat(out)

    @property
    def knots(self) -> dict[str, torch.Tensor]:
        """``{switch name: (E, 2, 2)}``: the segments of every unit's zero set (max
        pooling: its switching lines) inside the polygon."""
        return {k: v[0] for k, v in self._knots.items()}

    @property
    def knot_units(self) -> dict[str, torch.Tensor]:
        """``{switch name: (E,)}``: the unit (flat neuron index) of each knot segment."""
        return {k: v[1] for k, v in self._knots.items()}

    @functools.cached_property
    def boundary(self) -> torch.Tensor:
        """``(B, 2, 2)`` decision-boundary segments: where the top output changes."""
        m = self.output_maps
        if m.shape[1] < 2:
            return torch.zeros(0, 2, 2, dtype=torch.float64)
        segs = []
        for idx in engine._chunks(self.n_regions, 8192):
            segs.append(engine.cells(self.verts[idx], self.nv[idx], m[idx], None, self._size)[4])
        return torch.cat(segs)

    def plot(self, ax=None, color: str = "slope", knots: bool = True, boundary: bool = True,
             sites: Sequence[str] | None = None, cmap: str = "viridis"):
        """Draw the partition (see :func:`lcfast.geometry.plotting.plot_partition`)."""
        from .plotting import plot_partition  # noqa: PLC0415
        return plot_partition(self, ax=ax, color=color, knots=knots, boundary=boundary, sites=sites, cmap=cmap)

    def __repr__(self):
        return f"Partition({self.n_regions} regions, {len(self.switches)} switches)"


def _check_model(model):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")


def partition(model: nn.Module, plane: Plane, extent=None, *, max_regions: int | None = 5_000_000) -> Partition:
    """The exact partition of a polygon of a 2-D slice into the model's linear regions.

    Args:
        model: a piecewise-linear ``nn.Module`` (Linear, Conv, average/max pooling,
            BatchNorm in eval, residual adds, ReLU/LeakyReLU, reshapes); run in eval
            mode in float64 on a copy (the model is not changed).
        plane: the slice, its points of the model's input shape ``S``.
        extent: ``(s0, s1, t0, t1)`` or a ``(K, 2)`` convex polygon in ``(s, t)``
            (default: :meth:`Plane.default_extent`).
        max_regions: raise ``ValueError`` beyond this many regions.

    Returns:
        :class:`Partition`.

    Example:
        >>> part = partition(model, Plane.through(x[0], x[1], x[2]))   # doctest: +SKIP
        >>> part.n_regions, part.regions[0].shape                      # doctest: +SKIP
        (91234, torch.Size([5, 2]))
    """
    _check_model(model)
    if not isinstance(plane, Plane):
        raise TypeError(f"plane must be a geometry.Plane, got {type(plane).__name__}")
    poly = extent_polygon(plane.default_extent() if extent is None else extent)
    size = tuple(float(x) for x in (poly.max(0).values - poly.min(0).values))
    m64 = float64_copy(model)
    sl = engine.Slices(plane.origin[None], plane.u[None], plane.v[None], poly[None],
                       torch.tensor([poly.shape[0]]))
    res = engine.run(m64, sl, size, max_regions=max_regions)
    return Partition(m64, plane, poly, res, sl, size)
