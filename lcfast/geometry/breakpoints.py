"""Exact 1-D breakpoints of a piecewise-linear network along a segment."""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from . import engine
from . import polygons as pg
from .partition import _check_model
from .plane import Plane, _tensor
from .trace import float64_copy

__all__ = ["Breakpoints", "breakpoints"]


@dataclasses.dataclass
class Breakpoints:
    """Where units switch along ``x(tau) = a + tau * (b - a)``, ``tau`` in ``[0, 1]``.

    Attributes:
        tau: ``(B,)`` float64 sorted positions.
        switch: ``(B,)`` long, index into :attr:`names`.
        unit: ``(B,)`` long, the unit (flat neuron index; max pooling: window) that switches.
        names: switch names (lcfast sites ``owner#k`` and max pooling calls).
    """

    tau: torch.Tensor
    switch: torch.Tensor
    unit: torch.Tensor
    names: list[str]

    def __len__(self):
        return int(self.tau.numel())

    def at(self, name: str) -> torch.Tensor:
        """``(B_name,)`` sorted positions of switch ``name``."""
        return self.tau[self.switch == self.names.index(name)]


def breakpoints(model: nn.Module, a: torch.Tensor, b: torch.Tensor) -> Breakpoints:
    """Exact positions in ``[0, 1]`` where a neuron of the segment ``a -> b`` switches.

    The segment is the strip ``[0, 1] x [-1, 1]`` of a plane whose second direction is
    zero, so every switching line is ``tau = const`` and the 2-D machinery applies.

    Args:
        model: a piecewise-linear ``nn.Module`` (see :func:`partition`).
        a, b: endpoints of the point shape ``S``.

    Returns:
        :class:`Breakpoints` (a unit that switches several times appears several times).

    Example:
        >>> bp = breakpoints(model, x[0], x[1])   # doctest: +SKIP
        >>> bp.tau.shape, bp.names                # doctest: +SKIP
    """
    _check_model(model)
    a, b = _tensor("a", a), _tensor("b", b)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    plane = Plane(a, b - a, torch.zeros_like(a))
    poly = pg.rectangle(0.0, 1.0, -1.0, 1.0)
    sl = engine.Slices(plane.origin[None], plane.u[None], plane.v[None], poly[None], torch.tensor([4]))
    res = engine.run(float64_copy(model), sl, (1.0, 1.0))
    names = [s.name for s in res.switches]
    taus, sw, units = [], [], []
    for i, name in enumerate(names):
        seg, unit, _ = res.knots[name]
        taus.append(seg[:, :, 0].mean(1))
        sw.append(torch.full_like(unit, i))
        units.append(unit)
    tau, sw, unit = torch.cat(taus), torch.cat(sw), torch.cat(units)
    order = torch.argsort(tau, stable=True)
    return Breakpoints(tau[order], sw[order], unit[order], names)
