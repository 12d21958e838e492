"""The compiled extension ``lcfast._C`` (C++/CUDA kernels, see ``csrc/``): loads it and
says why not.  (The native *backend* that uses its ops is :mod:`lcfast.engine.native`;
the op wrappers are :mod:`lcfast.ops.native_crossing_act`.)

Importing this module never fails: :data:`ERROR` is ``None`` when the extension is
loaded (its ops are then in ``torch.ops.lcfast``), else the reason it is not, for
``backend="native"`` to report.
"""
from __future__ import annotations

import functools
import os

import torch

__all__ = ["ERROR", "available", "has_kernel"]


def _load() -> str | None:
    if os.environ.get("LCFAST_DISABLE_NATIVE", "0") == "1":
        return "disabled by LCFAST_DISABLE_NATIVE=1"
    try:
        from . import _C  # noqa: F401  (registers the lcfast::* ops with the dispatcher)
    except ImportError as e:
        return (f"the compiled extension lcfast._C could not be imported ({e}); build it with "
                "`pip install --no-build-isolation -e .` (a C++ compiler is needed; "
                "LCFAST_NO_EXT=1 skips it)")
    return None


#: ``None`` when the extension is loaded, else why not.
ERROR: str | None = _load()


def available() -> bool:
    return ERROR is None


@functools.lru_cache(maxsize=None)
def has_kernel(op: str, device_type: str) -> bool:
    """Whether ``lcfast::<op>`` has a kernel for ``device_type`` (``"cpu"``, ``"cuda"``)."""
    if ERROR is not None:
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if key is None:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"lcfast::{op}", key)
    except RuntimeError:  # an extension built before the op existed: no such schema
        return False
