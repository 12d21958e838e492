"""Vertex propagation engines (backends).  See :mod:`lcfast.engine.base`."""
from __future__ import annotations

import contextlib
import importlib
import warnings

import torch

from .base import Backend

__all__ = ["BACKENDS", "get_backend", "available_backends", "Backend", "check_compute_dtype",
           "naive_low_precision", "offset_ulps", "warn_if_offsets_unresolved", "OFFSET_ULPS_WARN"]

#: name -> "module:class"; loaded lazily so that a missing Triton or C++ extension
#: only matters when that backend is asked for.
BACKENDS = {
    "reference": "lcfast.engine.reference:ReferenceBackend",
    "native": "lcfast.engine.native:NativeBackend",
    "triton": "lcfast.engine.triton:TritonBackend",
    "offsets": "lcfast.engine.offsets:OffsetsBackend",
}


def _load(name: str):
    mod, cls = BACKENDS[name].split(":")
    try:
        return getattr(importlib.import_module(mod), cls), None
    except (ImportError, AttributeError) as e:
        return None, f"{name} backend could not be imported: {e}"


def why_unavailable(name: str, device: torch.device) -> str | None:
    """``None`` if backend ``name`` runs on ``device``, else the reason."""
    cls, err = _load(name)
    if cls is None:
        return err
    return cls.unavailable(device)


def available_backends(device="cpu") -> list[str]:
    device = torch.device(device)
    return [n for n in BACKENDS if why_unavailable(n, device) is None]


def get_backend(name: str, device: torch.device) -> Backend:
    """Instantiate backend ``name`` (or resolve ``"auto"``) for ``device``.

    Raises:
        ValueError: unknown name.
        RuntimeError: the backend exists but cannot run here (the message says why).
    """
    if name == "auto":
        from .policy import auto_order, device_class  # the auto policy lives there (issue 14)
        for cand in auto_order(device.type, device_class(device)):
            if why_unavailable(cand, device) is None:
                return _load(cand)[0]()
        raise RuntimeError(f"no backend can run on {device}")
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {['auto', *BACKENDS]}, got {name!r}")
    why = why_unavailable(name, device)
    if why is not None:
        raise RuntimeError(f"backend={name!r} is not available on {device}: {why}")
    return _load(name)[0]()


#: Compute dtypes the vertex-pushing backends measure as noise (docs/design.md#numerics):
#: naive bfloat16 counted 1,273 crossed neurons on ResNet18 at r = 1e-3 where float64
#: counts 16 (issue 11).  The centre + offsets engine is the way to measure in them.
NAIVE_NOISE_DTYPES = (torch.bfloat16, torch.float16)

_naive_low_precision = [False]  # set by naive_low_precision()


@contextlib.contextmanager
def naive_low_precision():
    """Allow :data:`NAIVE_NOISE_DTYPES` on the vertex-pushing backends inside the block.

    Only for studying that noise (tests of the kernels in low precision, of the
    tolerance rule); the counts are not local complexity at small radii.
    """
    old = _naive_low_precision[0]
    _naive_low_precision[0] = True
    try:
        yield
    finally:
        _naive_low_precision[0] = old


def low_precision_route(dtype: torch.dtype, backend: str) -> tuple[torch.dtype, torch.dtype | None]:
    """Where a low-precision compute dtype goes: ``(dtype the model runs in, offsets dtype)``.

    bfloat16/float16 with ``backend="auto"`` or ``"offsets"`` run the centre + offsets
    engine (:mod:`lcfast.engine.offsets`): the model and the centre in **float64**, the
    offsets in ``dtype``.  Why float64 (measured on an H200, ViT-B/16 at 224 px, 4
    points, r = 1e-3, benchmarks/results/nvidia-h200/README.md): around a float32 centre
    bf16/fp16 offsets were off by 4-6 of float64's 119 (outside max(1%, 2)); around a
    float64 centre they equal float64.  Cost of the float64 centre: ViT 1.33x -> 2.1x
    the bare float32 forward, ResNet18 224 2.7x -> 3.2x on the H200; +7-9% on the 2-core
    CPU (MLP, ResNet18 112 px).  ``offsets_local_complexity(centre_dtype=torch.float32)``
    keeps the cheaper centre.  Everything else is unchanged (``offsets dtype`` ``None``),
    and :func:`check_compute_dtype` then decides.
    """
    if dtype in NAIVE_NOISE_DTYPES and backend in ("auto", "offsets") and not _naive_low_precision[0]:
        return torch.float64, dtype
    return dtype, None


#: A vertex push warns when the typical offset per input value, ``r / sqrt(D)``, is
#: fewer than this many ulps of the points' values.  Measured on an H200 (torchvision
#: ResNet18, 224 px, ImageNet-normalised inputs, 16 points, float32 with TF32 off,
#: benchmarks/results/nvidia-h200/): at r = 1e-4 (2.2 ulps) the float32 push counted 27
#: crossings where float64 counts 20; at r = 1e-3 (22 ulps) 127 vs 126.
OFFSET_ULPS_WARN = 8.0


def offset_ulps(x: torch.Tensor, radius: float, dtype: torch.dtype) -> float:
    """The typical offset of a vertex per input value, ``r / sqrt(D)`` (a unit direction
    in ``D`` values), in ulps of the points' typical value in ``dtype`` (``eps * rms(x)``,
    from at most the first 64 points); ``inf`` for all-zero points."""
    D = max(1, x[0].numel()) if x.shape[0] else 1
    rms = float(x[:64].detach().double().pow(2).mean().sqrt()) if x.numel() else 0.0
    ulp = torch.finfo(dtype).eps * rms
    return float("inf") if ulp == 0 else radius / D ** 0.5 / ulp


def warn_if_offsets_unresolved(x: torch.Tensor, radius: float, dtype: torch.dtype, stacklevel: int = 2) -> None:
    """Warn, for a backend that pushes the vertices ``x +- r v`` in ``dtype``, when the
    offsets are within :data:`OFFSET_ULPS_WARN` ulps of the points' values (the vertices
    are then rounded and the counts drift from float64's)."""
    ulps = offset_ulps(x, radius, dtype)
    if ulps >= OFFSET_ULPS_WARN:
        return
    name, D = str(dtype).replace("torch.", ""), x[0].numel()
    warnings.warn(
        f"radius={radius:g} moves each of the D={D} input values by about r/sqrt(D) = "
        f"{radius / max(1, D) ** 0.5:.2g}, only {ulps:.1f} ulps of the points' values in {name}: "
        "the vertices are rounded and the counts drift from float64's (ResNet18 224 px at r=1e-4: 2.2 ulps in "
        "float32, 27 crossings where float64 finds 20). Use dtype=torch.float64, or backend='offsets', which "
        "keeps the offsets unrounded (19 there); the centre's own rounding remains.", UserWarning,
        stacklevel=stacklevel + 1)


def check_compute_dtype(dtype: torch.dtype, source: str = "dtype") -> None:
    """Refuse a compute dtype whose vertices would be pushed naively into rounding noise.

    The one place where this is decided: the centre + offsets engine will replace the
    refusal with a routing decision.

    Args:
        dtype: the compute dtype (given, or the model's).
        source: ``"dtype"`` when the user asked for it, ``"model"`` when it is the model's.

    Raises:
        ValueError: ``dtype`` is bfloat16/float16 (outside :func:`naive_low_precision`).
    """
    if dtype not in NAIVE_NOISE_DTYPES or _naive_low_precision[0]:
        return
    name = str(dtype).replace("torch.", "")
    where = f"dtype={name}" if source == "dtype" else f"the model's dtype {name} (dtype=None)"
    raise ValueError(
        f"{where} is not supported yet: the vertices x +- r*v differ from x by about r/sqrt(D) per value, "
        f"below {name}'s resolution, so pushing them in {name} counts rounding noise (naive bfloat16 found "
        "1,273 crossed neurons on ResNet18 at r=1e-3 where float64 finds 16). Use backend='auto' or "
        "'offsets' (centre in float64, offsets in this dtype), or measure in float32 or float64 "
        "(dtype=torch.float32 measures a float32 copy; the model is not changed).")
