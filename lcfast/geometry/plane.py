"""2-D affine slices of input space."""
from __future__ import annotations

import dataclasses

import torch

__all__ = ["Plane"]


def _tensor(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be a finite floating-point tensor")
    return t.detach().to(torch.float64)


@dataclasses.dataclass(frozen=True)
class Plane:
    """The slice ``x(s, t) = origin + s*u + t*v`` of input space.

    Args:
        origin, u, v: tensors of the point shape ``S`` (no batch dimension).

    Example:
        >>> p = Plane(torch.zeros(2), torch.tensor([1., 0.]), torch.tensor([0., 1.]))
        >>> p.at(torch.tensor([[0.5, 2.0]])).tolist()
        [[0.5, 2.0]]
    """

    origin: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    anchors: torch.Tensor | None = None   # (3, 2) (s, t) of the points given to `through`

    def __post_init__(self):
        o, u, v = (_tensor(n, getattr(self, n)) for n in ("origin", "u", "v"))
        if not (o.shape == u.shape == v.shape):
            raise ValueError(f"origin, u, v must have the same shape, got {tuple(o.shape)}, {tuple(u.shape)}, "
                             f"{tuple(v.shape)}")
        object.__setattr__(self, "origin", o)
        object.__setattr__(self, "u", u)
        object.__setattr__(self, "v", v)

    @property
    def shape(self) -> torch.Size:
        """The point shape ``S``."""
        return self.origin.shape

    @staticmethod
    def through(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> "Plane":
        """The plane through three points of shape ``S`` (the paper's slices): origin at
        their centroid, ``u`` along ``b - a`` and ``v`` the orthonormal completion with
        ``c - a``, so ``(s, t)`` are Euclidean input-space coordinates.  ``anchors``
        holds the ``(3, 2)`` coordinates of ``a, b, c``.

        Raises:
            ValueError: the points are (nearly) collinear or of different shapes.
        """
        a, b, c = (_tensor(n, x) for n, x in (("a", a), ("b", b), ("c", c)))
        if not (a.shape == b.shape == c.shape):
            raise ValueError("a, b, c must have the same shape")
        o = (a + b + c) / 3
        e1 = (b - a).flatten()
        n1 = e1.norm()
        if n1 == 0:
            raise ValueError("a and b coincide: no plane through them")
        e1 = e1 / n1
        w = (c - a).flatten()
        e2 = w - (w @ e1) * e1
        if e2.norm() <= 1e-12 * w.norm().clamp(min=1e-300):
            raise ValueError("a, b, c are collinear: no unique plane through them")
        e2 = e2 / e2.norm()
        P = torch.stack([a.flatten(), b.flatten(), c.flatten()]) - o.flatten()
        anchors = torch.stack([P @ e1, P @ e2], 1)
        return Plane(o, e1.reshape(a.shape), e2.reshape(a.shape), anchors)

    def at(self, st: torch.Tensor) -> torch.Tensor:
        """Points of the plane: ``st (n, 2)`` -> ``(n, *S)`` float64."""
        st = st.to(torch.float64)
        return (self.origin.flatten() + st[:, :1] * self.u.flatten() + st[:, 1:] * self.v.flatten()) \
            .reshape(-1, *self.shape)

    def default_extent(self, margin: float = 0.25) -> tuple[float, float, float, float]:
        """``(s0, s1, t0, t1)``: the anchors' bounding box grown by ``margin`` of its size
        on every side (``(-1, 1, -1, 1)`` without anchors)."""
        if self.anchors is None:
            return (-1.0, 1.0, -1.0, 1.0)
        lo, hi = self.anchors.min(0).values, self.anchors.max(0).values
        m = margin * (hi - lo).max()
        return (float(lo[0] - m), float(hi[0] + m), float(lo[1] - m), float(hi[1] + m))
