"""The baselines every lcfast backend is timed against, each a callable on a
:class:`~lcfast.bench.prepared.Prepared` workload:

* ``bare-forward``: the model's forward of the ``N * 2P`` vertex batch, building the
  vertices included, no counting (the physical floor);
* ``reference``: ``lcfast.local_complexity(..., backend="reference")`` (set up in
  :mod:`lcfast.bench.methods`);
* ``torch.compile``: the vertex forward plus the reference's counting in forward
  pre-hooks of the activation modules, ``torch.compile``-d as one function;
* ``paper``: the published method re-implemented (Humayun et al.'s
  ``local_complexity.py``).
"""
from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn as nn

from .prepared import Prepared

__all__ = ["BASELINES", "bare_forward", "paper_method", "torch_compile", "HookCountingForward",
           "activation_modules"]

#: baselines, in the order they run (the reference first among the counting methods,
#: so that every later method can be checked against it)
BASELINES = ("bare-forward", "reference", "torch.compile", "paper")


def bare_forward(p: Prepared) -> Callable[[], None]:
    from ..engine.base import model_guard
    from ..neighborhood import vertices
    w = p.workload

    def run():
        # model_guard: eval mode, no_grad and (CUDA float32) TF32 off, exactly as the
        # engines measure -- the floor must compute what they compute.
        with model_guard(p.model, p.device, p.dtype) as m:
            for lo, hi in p.chunks():
                m(vertices(p.x[lo:hi], p.frames[lo:hi], w.radius))
    return run


def activation_modules(model: nn.Module):
    from ..sites import ACTIVATION_MODULES
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ACTIVATION_MODULES)]


def paper_method(p: Prepared) -> Callable[[], tuple[torch.Tensor, list[str]]]:
    """The published method (grok-adversarial ``local_complexity.py``), re-implemented:
    forward hooks fill an activation buffer with each site's full tensor, then
    ``sign`` per vertex, ``!=`` the first vertex, ``any`` over vertices, ``sum`` over
    neurons, ``.cpu()`` per site into a host table.  The hooks sit on the activation
    modules' inputs (the paper hooked ``nn.Linear`` outputs of its MLP: the same
    tensors); an in-place activation's input is cloned, else the buffer would hold
    its output; a module called twice fills two entries."""
    from ..engine.base import model_guard
    from ..neighborhood import vertices
    w, V = p.workload, p.V
    acts = activation_modules(p.model)

    def run():
        buffer: dict[str, torch.Tensor] = {}
        calls: dict[str, int] = {}

        def hook_for(name, inplace):
            def hook(module, args):
                k = calls[name] = calls.get(name, 0) + 1
                buffer[f"{name}#{k}"] = args[0].clone() if inplace else args[0]
            return hook

        handles = [m.register_forward_pre_hook(hook_for(n, bool(getattr(m, "inplace", False)))) for n, m in acts]
        try:
            parts, names = [], None
            with model_guard(p.model, p.device, p.dtype) as m:
                for lo, hi in p.chunks():
                    buffer.clear()
                    calls.clear()
                    m(vertices(p.x[lo:hi], p.frames[lo:hi], w.radius))
                    n = hi - lo
                    table = torch.zeros(n, len(buffer), dtype=torch.long)  # on the host
                    for i, act in enumerate(buffer.values()):
                        s = torch.sign(act).reshape(n, V, -1)
                        match = (s[:, 1:] != s[:, :1]).any(dim=1)
                        table[:, i] = match.sum(dim=-1).cpu()
                    names = list(buffer)
                    parts.append(table)
            buffer.clear()
            return torch.cat(parts), names or []
        finally:
            for h in handles:
                h.remove()
    return run


class HookCountingForward(nn.Module):
    """Vertex forward + the reference's crossing count in forward pre-hooks of the
    activation modules, as one module a user can ``torch.compile``:
    ``(n*V, *S) -> (n, L)`` counts."""

    def __init__(self, model: nn.Module, V: int):
        super().__init__()
        from ..engine.reference import crossing_counts
        self.model, self.V = model, V
        self._counts: list[torch.Tensor] = []
        self._names = [n for n, _ in activation_modules(model)]
        self._handles = [m.register_forward_pre_hook(self._hook) for _, m in activation_modules(model)]
        self._crossing = crossing_counts

    def _hook(self, module, args):
        self._counts.append(self._crossing(args[0], self.V))

    def forward(self, v):
        self._counts.clear()
        self.model(v)
        out = torch.stack(self._counts, dim=1)
        self._counts.clear()
        return out

    def close(self):
        for h in self._handles:
            h.remove()


def _compiled_counting(p: Prepared, info: dict) -> Callable[[], tuple[torch.Tensor, list[str]]]:
    from ..engine.base import model_guard
    from ..neighborhood import vertices
    w = p.workload
    wrapper = HookCountingForward(p.model, p.V)
    compiled = torch.compile(wrapper)
    # the names the engine would give (every activation module, per call)
    _, ref_names = p.reference()

    def run():
        parts = []
        with model_guard(p.model, p.device, p.dtype):
            for lo, hi in p.chunks():
                parts.append(compiled(vertices(p.x[lo:hi], p.frames[lo:hi], w.radius)).cpu())
        counts = torch.cat(parts)
        # module pre-hooks see each call, in call order: same order as the engine's sites
        return counts, list(ref_names) if counts.shape[1] == len(ref_names) else [f"site{i}" for i in range(counts.shape[1])]
    info["finalizer"] = wrapper.close
    return run


def torch_compile(p: Prepared, info: dict):
    """The compiled baseline: the vertex forward plus the reference's crossing count in
    activation pre-hooks, ``torch.compile``-d as one module.  (``local_complexity(
    torch.compile(model))`` is no compile baseline: sites are found by intercepting
    calls, which a compiled graph hides, so the engine measures ``model._orig_mod``.)"""
    run = _compiled_counting(p, info)
    t0 = time.perf_counter()
    try:
        first = run()
    except BaseException:
        info.pop("finalizer")()
        raise
    info["variant"] = "torch.compile(vertex forward + reference crossing count in activation pre-hooks)"
    info["first_call_s"] = time.perf_counter() - t0
    return run, first
