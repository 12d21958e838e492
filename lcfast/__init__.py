"""lcfast: fast local complexity (LC) of deep networks.

>>> import lcfast, torch
>>> res = lcfast.local_complexity(model, x)          # doctest: +SKIP
>>> print(res.summary())                             # doctest: +SKIP

See docs/design.md for the measure and the contract every backend serves.
"""
from .api import local_complexity
from .engine import available_backends
from .frames import random_frames, shared_frame
from .neighborhood import vertices
from .result import LCResult, Summary
from .scale import measure_dataset

__version__ = "0.1.0"

__all__ = [
    "local_complexity",
    "measure_dataset",
    "LCResult",
    "Summary",
    "available_backends",
    "random_frames",
    "shared_frame",
    "vertices",
    "__version__",
]


def __getattr__(name):
    # submodules with heavier imports load on first use: lcfast.train, lcfast.testing, ...
    if name in ("train", "testing", "plot", "datasets", "bench", "geometry", "zoo", "series"):
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'lcfast' has no attribute {name!r}")
