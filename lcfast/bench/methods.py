"""A method (baseline or lcfast backend) set up on a prepared workload: which
methods exist on a device, and their setup = warm-up + check before any timing."""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

import torch
import torch.nn as nn

from .baselines import BASELINES, bare_forward, paper_method, torch_compile
from .checks import check_counts
from .prepared import Prepared, sync

__all__ = ["Method", "available_methods", "excluded_backends", "prepare_method", "INTERPRETER_ONLY"]


@dataclasses.dataclass
class Method:
    """A prepared, checked method.  ``timed()`` runs it once and synchronises the
    device.  ``info`` goes into the results (variant, check, first-call time)."""

    name: str
    run: Callable[[], Any]
    device: torch.device
    info: dict

    def timed(self):
        out = self.run()
        sync(self.device)
        return out


INTERPRETER_ONLY = ("available on the CPU only through the Triton interpreter (TRITON_INTERPRET=1), "
                    "a correctness tool: not timed")


def excluded_backends(device: torch.device | str) -> dict[str, str]:
    """Backends that report available on ``device`` but are not benchmarked, with why."""
    if torch.device(device).type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return {"triton": INTERPRETER_ONLY}
    return {}


def available_methods(device: torch.device | str, backends=None, baselines=BASELINES) -> list[str]:
    """The baselines, then every lcfast backend available on ``device`` (other than the
    reference, which is a baseline, and :func:`excluded_backends`), optionally
    restricted to ``backends``."""
    from ..engine import available_backends
    skip = excluded_backends(device)
    avail = [b for b in available_backends(torch.device(device)) if b != "reference" and b not in skip]
    if backends is not None:
        unknown = [b for b in backends if b not in avail and b != "reference"]
        if unknown:
            from ..engine import why_unavailable
            raise ValueError("backends not available on {}: {}".format(
                device, "; ".join(f"{b}: {why_unavailable(b, torch.device(device)) if b in _all_backends() else 'unknown backend'}"
                                  for b in unknown)))
        avail = [b for b in avail if b in backends]
    return [*baselines, *avail]


def _all_backends():
    from ..engine import BACKENDS
    return BACKENDS


def _warmed(m: "Method", warm: bool) -> "Method":
    """One untimed run of an unchecked method (or record that there was none)."""
    if warm:
        t0 = time.perf_counter()
        m.run()
        sync(m.device)
        m.info["first_call_s"] = time.perf_counter() - t0
    else:
        m.info["warmup"] = "none"
    return m


def prepare_method(p: Prepared, name: str) -> Method:
    """Set up method ``name`` on ``p``, run it once (warm-up; compile happens here) and
    check its counts.  Raises :class:`CheckFailed` when the counts are wrong.

    When the workload has ``warmup = false`` (runs of several seconds, where a warm-up
    changes nothing measurable but costs the CPU budget), the bare forward and the
    reference get no untimed run: the reference's timed run provides the counts the
    later methods are checked against.  Methods that are checked always run once
    before timing."""
    info: dict = {}
    exact = False
    warm = p.workload.warmup
    if name == "bare-forward":
        run = bare_forward(p)
        info["check"] = "no counts (floor)"
        return _warmed(Method(name, run, p.device, info), warm)
    if name == "reference":
        def run():
            r = p.lc(p.model, "reference")
            p._ref = (r.counts.cpu(), list(r.sites))
            return p._ref
        info["check"] = "is the reference"
        return _warmed(Method(name, run, p.device, info), warm)
    if name == "torch.compile":
        run, first = torch_compile(p, info)
    elif name == "paper":
        run = paper_method(p)
        # Same model, same vertex batch per chunk: the same pre-activations, so the
        # counts must be bit-identical -- except where a module picks another kernel
        # under the engine's TorchFunctionMode: nn.MultiheadAttention takes its fused
        # fast path only when no mode is active (measured on a 2-layer torchvision ViT:
        # GELU inputs differ by up to 1.3e-6), so there the float64 rule applies.
        mha = any(isinstance(m, nn.MultiheadAttention) for m in p.model.modules())
        exact = not mha
        if mha:
            info["exact_waived"] = "nn.MultiheadAttention fast path runs only outside the engine's TorchFunctionMode"
        t0 = time.perf_counter()
        first = run()
        info["first_call_s"] = time.perf_counter() - t0
    else:
        def run(_b=name):
            r = p.lc(p.model, _b)
            return r.counts.cpu(), list(r.sites)
        t0 = time.perf_counter()
        first = run()
        sync(p.device)
        info["first_call_s"] = time.perf_counter() - t0
    try:
        info.update(check_counts(p, name, first[0], first[1], exact))
    except BaseException:
        fin = info.pop("finalizer", None)
        if fin:  # e.g. the compile baseline's hooks: never leave them on the model
            fin()
        raise
    return Method(name, run, p.device, info)
