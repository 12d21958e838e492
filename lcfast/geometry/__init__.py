"""Exact geometry of piecewise-linear networks on low-dimensional slices.

* :class:`Plane`, :func:`partition`: the exact linear regions of a 2-D slice
  (knots, decision boundary, affine maps, plots);
* :func:`breakpoints`: exact 1-D breakpoints along a segment;
* :func:`exact_local_complexity`: exact LC for ``P = 2`` neighbourhoods;
* :func:`deformation`: eccentricity and diameter of the embedded neighbourhood graph.
"""
from .plane import Plane
from .partition import Partition, partition

__all__ = ["Plane", "Partition", "partition"]
from .breakpoints import Breakpoints, breakpoints  # noqa: E402

__all__ += ["Breakpoints", "breakpoints"]
from .deformation import Deformation, deformation  # noqa: E402
from .exact import exact_local_complexity  # noqa: E402

__all__ += ["Deformation", "deformation", "exact_local_complexity"]
