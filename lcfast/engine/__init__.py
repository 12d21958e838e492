"""Vertex propagation engines (backends).  See :mod:`lcfast.engine.base`."""
from __future__ import annotations

import importlib

import torch

from .base import Backend

__all__ = ["BACKENDS", "get_backend", "available_backends", "Backend"]

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
