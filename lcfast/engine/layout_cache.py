"""A per-model cache of the batch-layout probe (:func:`lcfast.engine.intercept.probe_layouts`).

The probe runs the model's forward twice under fake tensors on every call; that is most
of a small call's time (MLP 784-200x4-10, 64 points on the 2-core CPU: 79 ms of 112 ms;
on an H200 a 512-point MLP call took 33-60 ms against a 0.7 ms bare forward).  A
tracker or ``measure_dataset`` calls the same model hundreds of times with the same
input shape, so the layouts are kept per model, keyed by everything they depend on:

* the call: point shape, dtype, device, rows per point, the sites asked for;
* the model's structure, read afresh on every call (~1 ms for ResNet50's 150
  modules): each module's name and type, its plain attributes (``training``,
  ``batch_first``, ``kernel_size`` ...), its parameter and buffer shapes, an
  instance-level ``forward`` and every forward hook (module and global), by identity.

Weights are not in the key (training changes them, not where the batch is).  A stale
entry cannot give a silent count: every chunk checks each site's shape against its
layout and raises when they disagree (``SiteInterceptor._batch_dim``).  Calls with
``forward=``/``extra=`` are never cached (their callables may hold the model).

The same entry keeps the chunk-size probe's bytes per row (per backend), so a repeated
call also skips the separate one-point probe chunk.  The cache holds no reference to the
model (a ``WeakKeyDictionary``), at most
:data:`MAX_ENTRIES` layouts per model.  :func:`clear` empties it; ``LCFAST_LAYOUT_CACHE=0``
turns it off (for a model whose layout follows state the key cannot see, e.g. a
global flag read in ``forward``).
"""
from __future__ import annotations

import os
import weakref
from collections import OrderedDict
from typing import Callable, Hashable

import torch
import torch.nn as nn
from torch.nn.modules import module as _module_mod

__all__ = ["structure_key", "cached_layouts", "clear", "MAX_ENTRIES"]

#: layouts kept per model (a tracker uses one or two input shapes; unmeasured beyond that)
MAX_ENTRIES = 8

_CACHE: "weakref.WeakKeyDictionary[nn.Module, OrderedDict]" = weakref.WeakKeyDictionary()
_PLAIN = (bool, int, float, str, type(None), torch.dtype, torch.device)
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_forward_hooks_always_called",
                 "_global_forward_hooks_with_kwargs")


def _plain(v) -> bool:
    return isinstance(v, _PLAIN) or (isinstance(v, (tuple, list)) and all(_plain(e) for e in v))


def _ident(f) -> tuple:
    """A callable by identity without holding it (it may be a bound method of the model):
    its ``id`` and its code object."""
    fn = getattr(f, "__func__", f)
    return id(f), getattr(fn, "__code__", None)


def _hooks(d) -> tuple:
    return tuple(_ident(h) for h in d.values()) if d else ()


def structure_key(model: nn.Module) -> tuple:
    """What the batch layout of ``model``'s sites can depend on, besides the input
    (see the module docstring).  Holds no reference to ``model`` or its callables."""
    parts = []
    for name, m in model.named_modules():
        attrs = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in vars(m).items()
                             if not k.startswith("_") and _plain(v)))
        shapes = tuple((k, tuple(t.shape), t.dtype) for store in (m._parameters, m._buffers)
                       for k, t in store.items() if t is not None)
        fwd = vars(m).get("forward")
        parts.append((name, type(m), attrs, shapes, _ident(fwd) if fwd is not None else None,
                      _hooks(m._forward_pre_hooks), _hooks(m._forward_hooks)))
    glob = tuple(_hooks(getattr(_module_mod, g, None)) for g in _GLOBAL_HOOKS)
    return tuple(parts), glob


def cached_layouts(model: nn.Module, call_key: Hashable, probe: Callable[[], dict]) -> tuple[dict, bool]:
    """``(entry, hit)``: the entry stored for ``model`` under ``call_key`` and its current
    structure, or a new one holding ``probe()``'s layouts (then stored).

    ``entry["layouts"]`` is ``{site key: batch dim}``; the caller may keep other facts of
    the same call in the entry (``lcfast.api`` keeps the chunk probe's bytes per row per
    backend, ``"bytes_per_row/<backend>"``), so a repeated call skips that probe too.

    Args:
        model: the user's model (the cache key; never the cast copy a call may use).
        call_key: what the call adds (point shape, dtype, device, rows per point, sites).
        probe: runs the probe (:func:`lcfast.engine.intercept.probe_layouts`).
    """
    if os.environ.get("LCFAST_LAYOUT_CACHE", "1") == "0":
        return {"layouts": probe()}, False
    key = (call_key, structure_key(model))
    try:
        entries = _CACHE.setdefault(model, OrderedDict())
    except TypeError:  # a model that cannot be weakly referenced: no cache
        return {"layouts": probe()}, False
    if key in entries:
        entries.move_to_end(key)
        return entries[key], True
    entry = entries[key] = {"layouts": dict(probe())}
    while len(entries) > MAX_ENTRIES:
        entries.popitem(last=False)
    return entry, False


def clear(model: nn.Module | None = None) -> None:
    """Forget the layouts of ``model`` (all models when ``None``)."""
    if model is None:
        _CACHE.clear()
    else:
        _CACHE.pop(model, None)
