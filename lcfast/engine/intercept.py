"""The one interception protocol: which calls of a forward are sites, their names, and
what a backend does at each.

A :class:`SiteInterceptor` is a :class:`torch.overrides.TorchFunctionMode` active
while a batch goes through the user's model.  It alone decides what a site is, for
every backend:

* ``sites="activations"``: every call of a function of the activation catalogue
  (:mod:`lcfast.acts`) whose first argument is a floating tensor carrying the batch
  (the handler's :meth:`SiteHandler.batch_dim` says where, or that it is not a batch);
* ``sites=[modules]``: the output of each named module (a global forward hook).

At each site it builds a :class:`Site` (name, the *untouched* argument tensor, its
batch dimension, neurons) and hands it to :meth:`SiteHandler.handle`, which returns
``(out, counts)``: ``out`` replaces the call's result (activation sites) or the
module's output (module-output sites); ``counts`` ``(n,)`` are collected in call
order.  A backend that computes a site outside the mode's view (a fused block kernel)
reports it with :meth:`SiteInterceptor.add_site`.

Extending it (no other interception mechanism is needed):

* a handler that receives something other than a dense ``(n*V, *F)`` vertex batch
  (e.g. a tensor subclass carrying a centre and offsets) overrides
  :meth:`SiteHandler.batch_dim` to recognise it and :meth:`SiteHandler.handle` to
  count and activate it; ``site.value`` is the argument exactly as the model passed it;
* a handler that needs raw site values (geometry) reads ``site.value`` in ``handle``.

Names (stable, documented in :func:`lcfast.local_complexity`): an activation site is
``"<owner>#k"``, ``owner`` the activation module's qualified name (``"layer1.0.relu"``)
or, for a functional call, the innermost running module's name plus the function
(``"block.relu"``, ``"relu"`` at the root), ``k`` counting that owner's calls from 1.
A module-output site is the module's name (``"fc1"``) when the module ran once in the
forward, ``"fc1#1"``, ``"fc1#2"``, ... when it ran more than once.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from ..sites import ACTIVATION_MODULES, SiteSpec, parse_activation

__all__ = ["ActCall", "Site", "SiteHandler", "SiteInterceptor", "size_batch_dim"]


@dataclasses.dataclass
class ActCall:
    """One caught activation call.

    Attributes:
        kind: the catalogue kind (:data:`lcfast.acts.KINDS`, e.g. ``"relu"``,
            ``"gelu_tanh"``, ``"elu"``).
        slope: negative slope for ``"leaky_relu"`` (0 otherwise).
        inplace: whether the call writes into its input.
        func, args, kwargs: the call itself; ``args[0]`` is the site value.
    """

    kind: str
    slope: float
    inplace: bool
    func: Callable
    args: tuple
    kwargs: dict

    def run(self) -> torch.Tensor:
        """Apply the activation exactly as the model asked for it."""
        return self.func(*self.args, **self.kwargs)


@dataclasses.dataclass
class Site:
    """One site of one forward.

    Attributes:
        name: the site's name while the forward runs (``"<owner>#k"``; a module-output
            site of a module that runs only once is renamed ``"<module>"`` at the end:
            read the final names from :attr:`SiteInterceptor.names`).
        value: the argument (activation site) or output (module-output site) exactly
            as the model produced it: any layout, possibly a tensor subclass.
        batch_dim: the dimension of ``value`` holding the batch (from
            :meth:`SiteHandler.batch_dim`).
        V: rows per point of the batch (vertices per point).
        neurons: elements per batch row (``value.numel() // value.shape[batch_dim]``).
    """

    name: str
    value: torch.Tensor
    batch_dim: int
    V: int
    neurons: int

    def batch_major(self) -> torch.Tensor:
        """``value`` with the batch in dimension 0: ``(n*V, *F)`` (a view)."""
        return self.value.movedim(self.batch_dim, 0) if self.batch_dim else self.value


def size_batch_dim(t: torch.Tensor, rows: int) -> int | None:
    """The dimension of ``t`` of size ``rows``: 0 if it has it, else the only other one;
    ``None`` when there is none or the choice is ambiguous."""
    if t.dim() == 0:
        return None
    if t.shape[0] == rows:
        return 0
    hits = [d for d in range(1, t.dim()) if t.shape[d] == rows]
    return hits[0] if len(hits) == 1 else None


class SiteHandler:
    """What a backend does at a site.  Subclasses implement :meth:`count`, or override
    :meth:`handle` (fused count + activation, other representations of the batch)."""

    def batch_dim(self, value: torch.Tensor, rows: int) -> int | None:
        """Where ``value`` holds the batch of ``rows`` rows; ``None``: not a per-sample
        tensor, so not a site.  Default: :func:`size_batch_dim`.  Override to recognise
        a batch by its type rather than its size."""
        return size_batch_dim(value, rows)

    def count(self, pre: torch.Tensor, V: int) -> torch.Tensor:
        """Crossed neurons per point: ``pre`` ``(n*V, *F)`` batch-major -> ``LongTensor (n,)``."""
        raise NotImplementedError

    def handle(self, site: Site, call: ActCall | None) -> tuple[Any, torch.Tensor]:
        """Count the site and produce its result.

        Args:
            site: the site (``site.value`` untouched).
            call: the activation call, or ``None`` at a module-output site.

        Returns:
            ``(out, counts)``: ``out`` what the model continues with (``call.run()``'s
            result, or ``site.value`` at a module-output site); ``counts``
            ``LongTensor (n,)``.  The default counts with :meth:`count`, then runs
            the call.
        """
        counts = self.count(site.batch_major(), site.V)
        return (site.value if call is None else call.run()), counts


class SiteInterceptor(TorchFunctionMode):
    """Finds, names and handles the sites while a batch goes through ``model``.

    Module hooks (global, so the model's own hook dicts are never touched) keep the
    stack of running modules for naming and catch module-output sites; all are removed
    on exit, also on exceptions.  After the forward, :attr:`names`, :attr:`neurons` and
    :meth:`counts` describe the sites seen.

    Args:
        model: the model being run (its module names are used).
        spec: which calls are sites (:class:`lcfast.sites.SiteSpec`).
        handler: the backend's :class:`SiteHandler`.
        rows: rows of the batch (``n * V`` for a vertex batch).
        V: rows per point.

    Example:
        >>> interceptor = SiteInterceptor(model, SiteSpec.resolve(model, "activations"), handler, n * V, V)
        >>> with interceptor:
        ...     model(v)
        >>> interceptor.counts(n).shape  # (n, L)
    """

    def __init__(self, model: nn.Module, spec: SiteSpec, handler: SiteHandler, rows: int, V: int):
        super().__init__()
        # sites named by module are looked up by name on the model that runs (it may be a
        # cast copy of the model they were resolved on)
        self.model, self.spec, self.handler, self.rows, self.V = model, spec.on(model), handler, rows, V
        self.neurons: list[int] = []
        self._owners: list[tuple[str, int, bool]] = []  # (owner, k, module-output site)
        self._counts: list[torch.Tensor] = []
        self._calls: dict[str, int] = {}
        self._stack: list[nn.Module] = []
        self._module_names = {m: n for n, m in model.named_modules()}
        self._handles: list[Any] = []

    # -- sites ---------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Site names in call order (see the module doc for the rules)."""
        return [owner if (module_output and self._calls[owner] == 1) else f"{owner}#{k}"
                for owner, k, module_output in self._owners]

    def module_name(self, module: nn.Module) -> str:
        """Qualified name of ``module`` in the model (``""`` for the root)."""
        return self._module_names.get(module, "")

    def _new_site(self, owner: str, value: torch.Tensor, batch_dim: int, module_output: bool) -> Site:
        k = self._calls[owner] = self._calls.get(owner, 0) + 1
        self._owners.append((owner, k, module_output))
        neurons = value.numel() // value.shape[batch_dim]
        self.neurons.append(neurons)
        return Site(f"{owner}#{k}", value, batch_dim, self.V, neurons)

    def add_site(self, owner: nn.Module, counts: torch.Tensor, neurons: int) -> str:
        """Record an activation site computed outside the mode (a fused block kernel):
        named as if ``owner``, the activation module, had been called.

        Args:
            owner: the activation module the site belongs to.
            counts: ``LongTensor (n,)``.
            neurons: elements per batch row of the site.

        Returns:
            the site's name.
        """
        owner_name = self.module_name(owner)
        k = self._calls[owner_name] = self._calls.get(owner_name, 0) + 1
        self._owners.append((owner_name, k, False))
        self.neurons.append(int(neurons))
        self._counts.append(counts)
        return f"{owner_name}#{k}"

    def _handle(self, site: Site, call: ActCall | None):
        out, counts = self.handler.handle(site, call)
        self._counts.append(counts)
        return out

    # -- hooks ---------------------------------------------------------------
    def _pre_hook(self, module, args):
        if module in self._module_names:
            self._stack.append(module)

    def _post_hook(self, module, args, output):
        if module in self._module_names and self._stack and self._stack[-1] is module:
            self._stack.pop()
        if not self.spec.activations and module in self.spec.modules:
            return self._module_output_site(module, output)
        return None

    def _module_output_site(self, module, output):
        name = self.spec.modules[module]
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"sites: module {name!r} returned {type(output).__name__}, expected a Tensor")
        with torch._C.DisableTorchFunction():
            batch_dim = self.handler.batch_dim(output, self.rows)
            if batch_dim is None:
                raise ValueError(
                    f"sites: output of module {name!r} has shape {tuple(output.shape)}, with no dimension "
                    f"of the batch size {self.rows}")
            out = self._handle(self._new_site(name, output, batch_dim, True), None)
        return None if out is output else out

    def __enter__(self):
        reg = nn.modules.module
        self._handles = [
            reg.register_module_forward_pre_hook(self._pre_hook),
            reg.register_module_forward_hook(self._post_hook),
        ]
        try:
            return super().__enter__()
        except BaseException:
            self._remove()
            raise

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._remove()

    def _remove(self):
        for h in self._handles:
            h.remove()
        self._handles = []

    # -- the function mode -----------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        parsed = parse_activation(func, args, kwargs) if self.spec.activations else None
        if parsed is None:
            return func(*args, **kwargs)
        pre = args[0]
        batch_dim = self.handler.batch_dim(pre, self.rows)
        if batch_dim is None or not pre.is_floating_point():
            return func(*args, **kwargs)  # not a per-sample tensor: not a site
        owner_mod = self._stack[-1] if self._stack else self.model
        owner = self.module_name(owner_mod)
        if not isinstance(owner_mod, ACTIVATION_MODULES):
            fname = (getattr(func, "__name__", None) or str(func)).rstrip("_")
            owner = f"{owner}.{fname}" if owner else fname
        call = ActCall(*parsed, func, args, kwargs)
        return self._handle(self._new_site(owner, pre, batch_dim, False), call)

    # -- results ---------------------------------------------------------------
    def counts(self, n: int, device=None) -> torch.Tensor:
        """``LongTensor (n, L)`` of the sites seen, in call order."""
        if len(self._counts) != len(self._owners):
            raise RuntimeError("internal error: a site handler did not return its counts")
        if not self._counts:
            return torch.zeros(n, 0, dtype=torch.long, device=device)
        return torch.stack([c.to(torch.long) for c in self._counts], dim=1)
