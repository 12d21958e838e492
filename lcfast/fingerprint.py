"""What a measurement depends on, as a few short strings: the identity of a checkpoint.

:func:`measurement_fingerprint` returns a dict with one entry per ingredient, so that a
mismatch can be reported by name (:func:`differences`):

* ``settings``: the arguments of :func:`lcfast.local_complexity` after normalisation
  (defaults filled in, so ``radius=0.005`` equals leaving it out; ``radius=1`` is
  ``radius=1.0``; ``dtype=None`` resolved to the model's dtype; module types in
  ``sites`` by name), plus the data set blocking (``block_size``, ``id_offset``).
* ``backend``: the backend that runs (``"auto"`` resolved) and the device type
  (frames are drawn on the model's device, and are reproducible per device type).
* ``model``: a hash of every parameter's and buffer's name, dtype, shape and bytes
  (blake2b; 0.33 s for ResNet18's 45 MB on the shared 2-core CPU at load 3.7; on GPU
  one copy to the host, unmeasured), and the module types (swapping ``ReLU`` for
  ``GELU`` changes no parameter).
* ``data``: the number of points and a hash of a few items (first, last and evenly
  spaced ones): cheap, but a change confined to other items is not seen.
* ``frames``: :data:`lcfast.frames.FRAMES_VERSION`.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import numbers
from typing import Any

import torch
import torch.nn as nn

from . import frames as _frames
from .api import local_complexity
from .engine import get_backend
from .engine.base import _model_dtype, model_device

__all__ = ["measurement_fingerprint", "differences", "model_digest", "data_digest", "point_of"]

# local_complexity arguments that never change a count (chunk_size: tested in the
# backend tests) or that measure_dataset supplies itself
_NOT_SETTINGS = ("model", "x", "ids", "directions", "chunk_size", "progress")
# items of the data set hashed for its fingerprint (unmeasured choice: 8 decodes of an
# ImageNet JPEG take ~0.1 s)
_DATA_PROBES = 8

_NAMES = {"settings": "measurement settings", "backend": "backend or device", "model": "model weights, buffers or modules",
          "data": "data (length or sampled items)", "frames": "frame generator version"}


def point_of(item) -> torch.Tensor:
    """The point of a data set item: ``x`` itself or the first element of ``(x, ...)``."""
    x = item[0] if isinstance(item, (tuple, list)) else item
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"data items must be tensors or (tensor, ...) tuples, got {type(x).__name__}")
    return x


def _hash_tensor(h, t: torch.Tensor) -> None:
    t = t.detach()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def model_digest(model: nn.Module) -> str:
    """Hex digest of the model's modules (types), parameters and buffers (names and bytes)."""
    h = hashlib.blake2b(digest_size=16)
    for name, m in model.named_modules():
        h.update(f"{name}:{type(m).__module__}.{type(m).__qualname__};".encode())
    for kind, items in (("p", model.named_parameters()), ("b", model.named_buffers())):
        for name, t in items:
            h.update(f"{kind}:{name}".encode())
            _hash_tensor(h, t)
    return h.hexdigest()


def data_digest(data) -> str:
    """``"<N>:<hex digest>"`` of a tensor ``(N, *S)`` or map-style data set (a few items hashed)."""
    n = len(data)
    h = hashlib.blake2b(digest_size=16)
    for i in sorted({round(k * (n - 1) / (_DATA_PROBES - 1)) for k in range(_DATA_PROBES)} if n else ()):
        _hash_tensor(h, point_of(data[i]))
    return f"{n}:{h.hexdigest()}"


def _plain(v):
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        return float(v)
    if isinstance(v, type):
        return f"{v.__module__}.{v.__qualname__}"
    if isinstance(v, (list, tuple)):
        return [_plain(e) for e in v]
    return str(v)


def measurement_fingerprint(model: nn.Module, data, settings: dict[str, Any], **blocking: Any) -> dict[str, str]:
    """The identity of a measurement of ``model`` over ``data``.

    Args:
        model: the ``nn.Module`` measured (not modified).
        data: tensor ``(N, *S)`` or map-style data set of such points.
        settings: keyword arguments for :func:`lcfast.local_complexity` (not ``ids``,
            ``directions``); unknown names raise ``TypeError``.
        **blocking: further plain values that define the checkpoint (``block_size``,
            ``id_offset``), stored with the settings.

    Returns:
        ``{"settings", "backend", "model", "data", "frames"}``: JSON-able strings.
    """
    sig = inspect.signature(local_complexity)
    try:
        bound = sig.bind(model, None, **settings)
    except TypeError as e:
        raise TypeError(f"settings: {e}") from None
    bound.apply_defaults()
    args = dict(bound.arguments)
    if args.get("certified") is False:  # added later: left out at its default, older checkpoints still match
        del args["certified"]
    fallback = data.device if isinstance(data, torch.Tensor) else torch.device("cpu")
    device = model_device(model, fallback)
    backend = get_backend(args.pop("backend"), device).name
    if args["dtype"] is None:
        args["dtype"] = _model_dtype(model)
    for k, v in args.items():  # radius=1 is radius=1.0
        if isinstance(sig.parameters[k].default, float) and isinstance(v, numbers.Real) and not isinstance(v, bool):
            args[k] = float(v)
    norm = {k: _plain(v) for k, v in args.items() if k not in _NOT_SETTINGS}
    norm.update({k: _plain(v) for k, v in blocking.items()})
    return dict(settings=json.dumps(norm, sort_keys=True), backend=f"{backend} on {device.type}",
                model=model_digest(model), data=data_digest(data), frames=str(_frames.FRAMES_VERSION))


def differences(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """Readable descriptions of the ingredients that differ between two fingerprints."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if k == "settings" and a is not None and b is not None:
            sa, sb = json.loads(a), json.loads(b)
            out += [f"setting {s}={sa.get(s)!r} (now {sb.get(s)!r})"
                    for s in sorted(set(sa) | set(sb)) if sa.get(s) != sb.get(s)]
        elif k in ("backend", "frames"):
            out.append(f"{_NAMES[k]} {a!r} (now {b!r})")
        else:
            out.append(_NAMES.get(k, k))
    return out
