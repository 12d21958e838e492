"""What a site is, as the user says it: the ``sites=`` argument and the calls that are
activations.

A site (docs: the measure, section 1.3) is, by default, the input of every elementwise
nonlinearity call of the forward pass, in module form (``nn.ReLU``) or functional
form (``F.relu``, ``torch.relu``, ``x.relu()``, ...), or, when the user names modules
(by name or type), each such module's **output**.  :class:`SiteSpec` resolves the
``sites=`` argument; :func:`parse_activation` recognises an activation call.  Catching
the calls, naming the sites and handing them to a backend is
:mod:`lcfast.engine.intercept`'s job.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SiteSpec", "ACTIVATION_MODULES", "parse_activation"]

# ---------------------------------------------------------------------------
# The catalogue of elementwise nonlinearities.
# kind is what a fused kernel needs to know; "other" means "count, then call".
# ---------------------------------------------------------------------------


def _leaky_slope(args, kwargs) -> float:
    if len(args) > 1 and not isinstance(args[1], bool):
        return float(args[1])
    return float(kwargs.get("negative_slope", 0.01))


def _gelu_kind(args, kwargs) -> str:
    approx = kwargs.get("approximate", args[1] if len(args) > 1 else "none")
    return "gelu_tanh" if approx == "tanh" else "gelu"


def _inplace(args, kwargs, pos: int | None = None) -> bool:
    if "inplace" in kwargs:
        return bool(kwargs["inplace"])
    if pos is not None and len(args) > pos and isinstance(args[pos], bool):
        return bool(args[pos])
    return False


# func -> (kind(args, kwargs), slope(args, kwargs), inplace(args, kwargs))
_TABLE: dict[Any, tuple[Callable, Callable, Callable]] = {}


def _register(funcs: Sequence[Any], kind, slope=lambda a, k: 0.0, inplace=lambda a, k: False):
    kind_fn = kind if callable(kind) else (lambda a, k, _k=kind: _k)
    for f in funcs:
        if f is not None:
            _TABLE[f] = (kind_fn, slope, inplace)


def _g(obj, name):
    return getattr(obj, name, None)


_always = lambda a, k: True  # noqa: E731
_register([F.relu], "relu", inplace=lambda a, k: _inplace(a, k, 1))
_register([torch.relu, _g(torch.Tensor, "relu")], "relu")
_register([torch.relu_, _g(F, "relu_"), _g(torch.Tensor, "relu_")], "relu", inplace=_always)
_register([F.leaky_relu], "leaky_relu", _leaky_slope, lambda a, k: _inplace(a, k, 2))
_register([_g(F, "leaky_relu_"), _g(torch._C._nn, "leaky_relu_")], "leaky_relu", _leaky_slope, _always)
_register([_g(torch._C._nn, "leaky_relu")], "leaky_relu", _leaky_slope)
_register([F.gelu], _gelu_kind)
_register([F.silu], "silu", inplace=lambda a, k: _inplace(a, k, 1))
_register([F.mish], "mish", inplace=lambda a, k: _inplace(a, k, 1))
_register([F.elu], "elu", inplace=lambda a, k: _inplace(a, k, 2))
_register([_g(F, "elu_")], "elu", inplace=_always)
_register([F.selu, F.celu], "other", inplace=lambda a, k: _inplace(a, k, 1))
_register([torch.selu, torch.celu], "other")
_register([_g(torch, "selu_"), _g(torch, "celu_")], "other", inplace=_always)
_register([F.softplus, F.hardswish, F.hardsigmoid, F.logsigmoid, F.softsign, F.tanhshrink], "other",
          inplace=lambda a, k: _inplace(a, k, None))
_register([F.relu6, F.hardtanh], "other", inplace=lambda a, k: _inplace(a, k, None))
_register([_g(F, "hardtanh_")], "other", inplace=_always)
_register([F.prelu, torch.prelu, F.rrelu], "other", inplace=lambda a, k: _inplace(a, k, None))
_register([F.tanh, torch.tanh, _g(torch.Tensor, "tanh")], "tanh")
_register([_g(torch, "tanh_"), _g(torch.Tensor, "tanh_")], "tanh", inplace=_always)
_register([F.sigmoid, torch.sigmoid, _g(torch.Tensor, "sigmoid")], "sigmoid")
_register([_g(torch, "sigmoid_"), _g(torch.Tensor, "sigmoid_")], "sigmoid", inplace=_always)

#: Module classes that *are* a nonlinearity: a call caught inside one is named
#: after the module itself.
ACTIVATION_MODULES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.GELU, nn.SiLU, nn.Mish, nn.ELU,
    nn.SELU, nn.CELU, nn.Softplus, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Tanh,
    nn.Sigmoid, nn.LogSigmoid, nn.Softsign, nn.Tanhshrink,
)


def parse_activation(func, args: tuple, kwargs: dict) -> tuple[str, float, bool] | None:
    """``(kind, slope, inplace)`` when ``func(*args, **kwargs)`` is a call of the
    catalogue on a tensor, else ``None``."""
    entry = _TABLE.get(func)
    if entry is None or not args or not isinstance(args[0], torch.Tensor):
        return None
    kind_fn, slope_fn, inplace_fn = entry
    return kind_fn(args, kwargs), slope_fn(args, kwargs), inplace_fn(args, kwargs)


@dataclasses.dataclass
class SiteSpec:
    """Resolved ``sites=`` argument: ``"activations"`` or the modules whose outputs
    are sites."""

    activations: bool
    modules: dict[nn.Module, str]  # module -> qualified name (only when not activations)

    @staticmethod
    def resolve(model: nn.Module, sites) -> "SiteSpec":
        if isinstance(sites, str):
            if sites != "activations":
                raise ValueError(
                    f"sites must be 'activations' or a list of module names/types, got {sites!r}")
            return SiteSpec(True, {})
        if isinstance(sites, type):
            sites = [sites]
        try:
            items = list(sites)
        except TypeError:
            raise TypeError(
                f"sites must be 'activations' or a list of module names/types, got {type(sites).__name__}"
            ) from None
        if not items:
            raise ValueError("sites must not be empty: give module names or types, or 'activations'")
        named = dict(model.named_modules())
        chosen: dict[nn.Module, str] = {}
        for item in items:
            if isinstance(item, str):
                if item not in named:
                    raise ValueError(
                        f"sites: model has no module named {item!r} (known: {sorted(k for k in named if k)[:20]}...)")
                chosen.setdefault(named[item], item)
            elif isinstance(item, type) and issubclass(item, nn.Module):
                found = [(n, m) for n, m in named.items() if isinstance(m, item)]
                if not found:
                    raise ValueError(f"sites: model has no module of type {item.__name__}")
                for n, m in found:
                    chosen.setdefault(m, n)
            else:
                raise TypeError(f"sites entries must be module names (str) or nn.Module types, got {item!r}")
        # keep model order
        order = {m: i for i, (_, m) in enumerate(named.items())}
        return SiteSpec(False, dict(sorted(chosen.items(), key=lambda kv: order[kv[0]])))
