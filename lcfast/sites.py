"""What a site is, as the user says it: the ``sites=`` argument and the calls that are
activations.

A site (docs/design.md#definition) is, by default, the input of every elementwise
nonlinearity call of the forward pass, in module form (``nn.ReLU``) or functional
form (``F.relu``, ``torch.relu``, ``x.relu()``, ...), or, when the user names modules
(by name or type), each such module's **output**.  :class:`SiteSpec` resolves the
``sites=`` argument; :func:`parse_activation` recognises an activation call.  Catching
the calls, naming the sites and handing them to a backend is
:mod:`lcfast.engine.intercept`'s job.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from .acts import ACTIVATION_MODULES, lookup_call

__all__ = ["SiteSpec", "ACTIVATION_MODULES", "parse_activation"]


def parse_activation(func, args: tuple, kwargs: dict) -> tuple[str, float, bool] | None:
    """``(kind, slope, inplace)`` when ``func(*args, **kwargs)`` is a call of the
    activation catalogue (:mod:`lcfast.acts`) on a tensor, else ``None``."""
    if not args or not isinstance(args[0], torch.Tensor):
        return None
    hit = lookup_call(func, args, kwargs)
    if hit is None:
        return None
    act, call = hit
    return act.kind, call.slope(args, kwargs), call.inplace(args, kwargs)


@dataclasses.dataclass
class SiteSpec:
    """Resolved ``sites=`` argument: ``"activations"`` or the modules whose outputs
    are sites."""

    activations: bool
    modules: dict[nn.Module, str]  # module -> qualified name (only when not activations)
    #: batch dimension per site key, found by lcfast.engine.intercept.probe_layouts
    #: (``None``: not probed; interceptors then fall back to the size rule)
    layouts: dict[str, int | None] | None = None

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

    def on(self, model: nn.Module) -> "SiteSpec":
        """The same sites on ``model``, looked up by module name (e.g. on a cast copy of
        the model they were resolved on); ``self`` when they are ``model``'s own."""
        if self.activations:
            return self
        named = dict(model.named_modules())
        if all(named.get(n) is m for m, n in self.modules.items()):
            return self
        missing = [n for n in self.modules.values() if n not in named]
        if missing:
            raise ValueError(f"sites: model has no module named {missing[0]!r}")
        return SiteSpec(False, {named[n]: n for n in self.modules.values()}, self.layouts)
