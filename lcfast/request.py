"""Request validation for :func:`lcfast.local_complexity` (all of it, here): the
arguments checked and normalised into a :class:`_Request` (model unwrapped from
``torch.compile``, scalars from 0-d tensors, ``ids`` as a CPU ``LongTensor``,
``directions`` reshaped to ``(P, *S)`` / ``(N, P, *S)``), with one warning when given
directions are far from orthonormal.  Errors are ``TypeError`` / ``ValueError`` naming
the argument."""
from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from typing import Callable, Mapping

import torch
import torch.nn as nn


def _all_finite(t: torch.Tensor) -> bool:
    """One reduction pass, no boolean temporary (min/max propagate NaN; +-inf shows).
    Measured: 141 ms -> 17 ms for (1000, 25, 784) float32 frames on 2 loaded cores."""
    lo, hi = torch.aminmax(t.detach())
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


@dataclasses.dataclass
class _Request:
    """The checked arguments."""

    model: nn.Module
    x: torch.Tensor          # (N, *S)
    radius: float
    seed: int
    ids: torch.Tensor        # (N,) long, CPU
    directions: torch.Tensor | None  # (P, *S) or (N, P, *S), or None
    shared: bool             # directions (given or drawn) are one frame for all points
    P: int
    sites: object
    backend: str
    dtype: torch.dtype | None
    chunk_size: int | None
    compiled: bool
    forward: Callable | None = None
    extra: dict | None = None  # {name: (N, ...) tensor or any value}
    certified: bool = False  # the offsets engine, its unresolved points recomputed in float64
    radii: tuple[float, ...] | None = None  # radius=[...]: every radius, in the order given (radius: the largest)

    @property
    def N(self) -> int:
        return self.x.shape[0]

    @property
    def S(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


def _validate(model, x, radius, n_dirs, seed, ids, directions, sites, backend, dtype, chunk_size,
              shared_directions, check_directions, forward=None, extra=None, certified=False) -> _Request:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    compiled = False
    orig = getattr(model, "_orig_mod", None)
    if isinstance(orig, nn.Module) and type(model).__name__ == "OptimizedModule":
        # torch.compile(model): sites are found by intercepting calls, which a compiled
        # graph hides, so the original module (same parameters) is measured.
        model, compiled = orig, True
    _refuse_torchscript(model)
    if any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
        raise ValueError("model has tensors on the meta device (shapes without data): materialise it first, "
                         "e.g. model.to_empty(device='cpu') then load_state_dict(...)")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (N, *S), got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"x must have shape (N, *S) with a batch dimension, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating tensor, got dtype {x.dtype}")
    N, S = x.shape[0], tuple(x.shape[1:])
    D = math.prod(S)
    if D == 0:
        raise ValueError(f"x must have a non-empty point shape, got {tuple(x.shape)}")
    if N and not _all_finite(x):
        raise ValueError("x contains NaN or infinite values")
    radii = None
    if isinstance(radius, (list, tuple)):  # several radii (issue 10 item 4): one result per radius
        if not radius or not all(_radius_ok(_scalar(r)) for r in radius):
            raise ValueError(f"radius must be a finite number > 0 or a non-empty list of them, got {radius!r}")
        if certified is True:
            raise ValueError("certified=True takes one radius (the rounding band of one pass describes only its "
                             f"largest radius), got radius={radius!r}")
        radii = tuple(float(_scalar(r)) for r in radius)
        radius = max(radii)
    n_dirs, seed, chunk_size = (_scalar(v) for v in (n_dirs, seed, chunk_size))
    radius = _scalar(radius)
    if not _radius_ok(radius):
        raise ValueError(f"radius must be a finite number > 0, got {radius!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral)
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or an int >= 1, got {chunk_size!r}")
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    if not isinstance(check_directions, bool):
        raise TypeError(f"check_directions must be a bool, got {check_directions!r}")

    ids_t = _checked_ids(ids, N)

    if directions is not None:
        directions, shared = _shaped_directions(directions, N, S)
        P = directions.shape[0] if shared else directions.shape[1]
        if P < 1:
            raise ValueError("directions must hold at least one direction (P >= 1)")
        if directions.numel() and not _all_finite(directions):
            raise ValueError("directions contains NaN or infinite values")
        if check_directions and directions.numel():
            _warn_if_not_orthonormal(directions, shared, P)
    else:
        if isinstance(n_dirs, bool) or not isinstance(n_dirs, numbers.Integral):
            raise TypeError(f"n_dirs must be an int, got {n_dirs!r}")
        if not 1 <= n_dirs <= D:
            raise ValueError(f"n_dirs must be in [1, D={D}] (D = input dimension), got {n_dirs}")
        P = int(n_dirs)
        shared = bool(shared_directions)
    if forward is not None and not callable(forward):
        raise TypeError(f"forward must be a callable (model, batch, **extra) -> output, got {forward!r}")
    _check_certified(certified, backend, forward, extra)
    return _Request(model=model, x=x, radius=float(radius), radii=radii, seed=int(seed), ids=ids_t,
                    directions=directions,
                    shared=shared, P=P, sites=sites, backend=backend, dtype=dtype, chunk_size=chunk_size,
                    compiled=compiled, forward=forward, extra=_checked_extra(extra, N), certified=certified)


def _radius_ok(r) -> bool:
    return not isinstance(r, bool) and isinstance(r, numbers.Real) and math.isfinite(r) and r > 0


#: Backends ``certified=True`` runs on: it is a mode of the offsets engine, and ``"auto"``
#: then routes to it (lcfast.api._plan).
CERTIFIED_BACKENDS = ("auto", "offsets")


def _check_certified(certified, backend: str, forward, extra) -> None:
    """``certified`` is a bool; ``True`` needs the offsets engine and no ``forward=``/``extra=``
    (its float64 recomputation of a chunk's flagged points calls the model directly).
    ValueError throughout, as :func:`lcfast.engine.offsets.offsets_local_complexity` raises."""
    if not isinstance(certified, bool):
        raise ValueError(f"certified must be a bool, got {certified!r}")
    if not certified:
        return
    if backend not in CERTIFIED_BACKENDS:
        raise ValueError(f"certified=True is a mode of the offsets engine: it needs backend='offsets' or 'auto', "
                         f"got backend={backend!r}")
    if forward is not None or extra is not None:
        raise ValueError("certified=True does not support forward=/extra= (the float64 recomputation of a "
                         "chunk's flagged points calls the model without them)")


def _checked_extra(extra, N: int) -> dict | None:
    """``extra`` as a dict; every tensor in it must hold one row per point ``(N, ...)``."""
    if extra is None:
        return None
    if not isinstance(extra, Mapping) or not all(isinstance(k, str) for k in extra):
        raise TypeError(f"extra must be a dict {{name: (N, ...) tensor}}, got {type(extra).__name__}")
    for k, v in extra.items():
        if isinstance(v, torch.Tensor) and (v.dim() == 0 or v.shape[0] != N):
            raise ValueError(f"extra[{k!r}] must have one row per point, shape ({N}, ...), got {tuple(v.shape)}")
    return dict(extra)


def _refuse_torchscript(model: nn.Module) -> None:
    """A TorchScript module runs its operations in the TorchScript interpreter, where
    lcfast's interception cannot see them: its sites would be silently missing."""
    for name, m in model.named_modules():
        if isinstance(m, torch.jit.ScriptModule):
            what = "model is" if not name else f"submodule {name!r} is"
            raise TypeError(
                f"{what} a TorchScript module (torch.jit.script/trace): its operations run in the TorchScript "
                "interpreter, out of lcfast's sight, so its activations cannot be found. Measure the original "
                "nn.Module instead (the weights load into it: original.load_state_dict(scripted.state_dict())); "
                "torch.compile'd models are fine")


def _scalar(value):
    """A 0-d tensor as the Python number it holds (``radius=torch.tensor(0.1)``); any
    other value unchanged."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_complex():
        return value.item()
    return value


def _checked_ids(ids, N: int) -> torch.Tensor:
    """``ids`` as a CPU ``LongTensor (N,)`` (default ``arange(N)``); errors name ``ids``."""
    if ids is None:
        return torch.arange(N, dtype=torch.long)
    try:
        ids_t = torch.as_tensor(ids)
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        # strings, ragged lists, integers beyond int64 ("Overflow when unpacking long")
        raise TypeError(f"ids must be {N} integers in the int64 range (one per point), got {ids!r:.80}: {e}") \
            from None
    if ids_t.numel() == 0 and ids_t.dim() == 1:
        ids_t = ids_t.to(torch.long)  # ids=[] (N = 0) is an empty float tensor by default
    if ids_t.dtype.is_floating_point or ids_t.dtype.is_complex or ids_t.dtype == torch.bool \
            or ids_t.dim() != 1 or ids_t.numel() != N:
        raise ValueError(f"ids must be {N} integers (one per point), got {tuple(ids_t.shape)} {ids_t.dtype}")
    return ids_t.to(torch.long).cpu()


def _shaped_directions(directions, N: int, S: tuple[int, ...]) -> tuple[torch.Tensor, bool]:
    """``(directions as (P, *S) or (N, P, *S), shared)``; flat ``(P, D)`` / ``(N, P, D)``
    rows are reshaped (a point shape that matches as given wins)."""
    if not isinstance(directions, torch.Tensor) or not directions.is_floating_point():
        raise TypeError("directions must be a floating tensor of shape (P, *S) or (N, P, *S)")
    D = math.prod(S)
    shape = tuple(directions.shape)
    if directions.dim() == len(S) + 1 and shape[1:] == S:
        return directions, True
    if directions.dim() == len(S) + 2 and shape[0] == N and shape[2:] == S:
        return directions, False
    if directions.dim() == 2 and shape[1] == D:
        return directions.reshape(shape[0], *S), True
    if directions.dim() == 3 and shape[0] == N and shape[2] == D:
        return directions.reshape(N, shape[1], *S), False
    s = ", ".join(map(str, S))
    raise ValueError(f"directions must have shape (P, {s}) or (N={N}, P, {s}), or flat (P, D={D}) or "
                     f"(N={N}, P, D={D}), got {shape}")


#: Relative deviation from orthonormal (a norm off 1, a cosine off 0) above which
#: given directions draw a warning: far above float32 rounding of a QR frame (~1e-7).
#: For directions given in a dtype whose machine epsilon is larger (bfloat16: 7.8e-3)
#: that epsilon is the threshold: rounding a unit vector to it moves a norm or a
#: cosine by up to about eps / 2.
ORTHONORMAL_TOL = 1e-3


def _warn_if_not_orthonormal(directions: torch.Tensor, shared: bool, P: int) -> None:
    """One warning naming the worst norm or inner product of ``directions`` (``(P, *S)``
    or ``(N, P, *S)``) when it deviates by more than :data:`ORTHONORMAL_TOL` (or the
    directions' dtype epsilon, when larger)."""
    frames = directions.detach().reshape(1 if shared else directions.shape[0], P, -1)
    dt = torch.float64 if frames.dtype == torch.float64 else torch.float32
    worst_norm = worst_cos = (0.0, 0, 0, 0)  # (deviation, point, i, j)
    # blocks of ~2^24 direction values (64 MB in float32): few batched products (one for
    # 1,000 MNIST points: 0.04 s where 64-point blocks took 0.12 s on the 2-core CPU), and
    # a bounded copy when the directions are bf16/fp16
    block = max(1, (1 << 24) // max(1, P * frames.shape[-1]))
    for lo in range(0, frames.shape[0], block):
        f = frames[lo:lo + block].to(dt)
        gram = f @ f.mT
        norms = gram.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()  # (b, P)
        dev = (norms - 1).abs()
        k = int(dev.argmax())
        if float(dev.flatten()[k]) > worst_norm[0]:
            worst_norm = (float(dev.flatten()[k]), lo + k // P, k % P, k % P)
        cos = (gram / (norms.unsqueeze(-1) * norms.unsqueeze(-2)).clamp_min(torch.finfo(dt).tiny)).abs()
        cos.diagonal(dim1=-2, dim2=-1).zero_()
        k = int(cos.argmax())
        if P > 1 and float(cos.flatten()[k]) > worst_cos[0]:
            b, rest = divmod(k, P * P)
            worst_cos = (float(cos.flatten()[k]), lo + b, *sorted(divmod(rest, P)))
    tol = max(ORTHONORMAL_TOL, torch.finfo(directions.dtype).eps)
    if max(worst_norm[0], worst_cos[0]) <= tol:
        return
    where = "" if shared else "point {}, "
    if worst_norm[0] >= worst_cos[0]:
        dev, n, i, _ = worst_norm
        norm = float(frames[n, i].to(dt).norm())
        what = f"norm {norm:.6g} ({where.format(n)}direction {i})"
    else:
        dev, n, i, j = worst_cos
        what = f"inner product (cosine) {dev:.3g} ({where.format(n)}directions {i} and {j})"
    warnings.warn(
        f"directions are not orthonormal: worst deviation {dev:.3g} > {tol:g}, {what}. "
        "They are used as given (unit vectors, scaled by radius); pass check_directions=False to "
        "silence this.", UserWarning,
        stacklevel=4)  # here, _validate, local_complexity, the user's call
