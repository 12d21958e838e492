"""The one interception protocol: which calls of a forward are sites, their names, and
what a backend does at each.

A :class:`SiteInterceptor` is a :class:`torch.overrides.TorchFunctionMode` active
while a batch goes through the user's model.  It alone decides what a site is, for
every backend:

* ``sites="activations"``: every call of a function of the activation catalogue
  (:mod:`lcfast.acts`) whose first argument is a floating tensor carrying the batch
  (where: the batch-layout probe, :func:`probe_layouts`, found it by provenance
  before the first chunk, docs/design.md#batch-dimension; a handler may instead
  recognise the batch by type with :meth:`SiteHandler.batch_dim`);
* ``sites=[modules]``: the output of each named module (a global forward hook).

At each site it builds a :class:`Site` (name, the *untouched* argument tensor, its
batch dimension, neurons) and hands it to :meth:`SiteHandler.handle`, which returns
``(out, counts)``: ``out`` replaces the call's result (activation sites) or the
module's output (module-output sites); ``counts`` ``(n,)`` are collected in call
order.  A backend that computes a site outside the mode's view (a fused block kernel)
reports it with :meth:`SiteInterceptor.add_site` (and may ask
:meth:`SiteInterceptor.planned_batch_dim` first).  A model called through ``forward=``
/ ``extra=`` is handed to backends as a :class:`ModelCall`.

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

__all__ = ["ActCall", "Site", "SiteHandler", "SiteInterceptor", "size_batch_dim", "probe_layouts",
           "decide_layouts", "ModelCall"]


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


def call_model(model: nn.Module, batch, **extra):
    """The default ``forward=``: ``model(batch, **extra)``."""
    return model(batch, **extra)


class ModelCall(nn.Module):
    """The user's model called as ``forward(model, batch, **extra)``, each per-point extra
    input repeated for the rows the engine propagates for that point.

    Backends call it like the model (``call(batch)``); interceptors name sites on the
    wrapped model (:attr:`inner`), so names do not change.

    Args:
        model: the model.
        forward: ``(model, batch, **extra) -> output`` (default :func:`call_model`).
        extra: ``{name: (n, ...) tensor}`` per point, in point order; other values are
            passed unchanged.
        n: points in the batch.

    Example:
        >>> call = ModelCall(model, lambda m, v, mask: m(pixel_values=v, attention_mask=mask), {"mask": m2}, 2)
        >>> call(v)  # v (2*V, *S); the mask rows (2, T) become (2*V, T), V rows per point
    """

    def __init__(self, model: nn.Module, forward: Callable | None, extra: dict, n: int):
        super().__init__()
        self.inner = model
        self._call = forward or call_model
        self._extra, self._n = dict(extra), n

    def forward(self, batch):
        rows = batch.shape[0]
        if rows % self._n:
            raise RuntimeError(f"internal error: {rows} batch rows for {self._n} points")
        per = rows // self._n
        extra = {k: (v.repeat_interleave(per, dim=0) if isinstance(v, torch.Tensor) else v)
                 for k, v in self._extra.items()}
        return self._call(self.inner, batch, **extra)


class SiteHandler:
    """What a backend does at a site.  Subclasses implement :meth:`count`, or override
    :meth:`handle` (fused count + activation, other representations of the batch)."""

    def batch_dim(self, value: torch.Tensor, rows: int):
        """Where ``value`` holds the batch of ``rows`` rows: an ``int``, or ``None`` (not
        a per-sample tensor, so not a site).  Override to recognise a batch by its type
        (e.g. a tensor subclass carrying centre and offsets).  The default,
        ``NotImplemented``, leaves it to the interceptor: the layout the batch-layout
        probe found for this site (:func:`probe_layouts`), or, for an interceptor built
        without layouts, :func:`size_batch_dim`."""
        return NotImplemented

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
        if isinstance(model, ModelCall):  # the model called through forward=/extra=
            model = model.inner
        # sites named by module are looked up by name on the model that runs (it may be a
        # cast copy of the model they were resolved on)
        self.model, self.spec, self.handler, self.rows, self.V = model, spec.on(model), handler, rows, V
        #: batch dimension per site key (``"<owner>#j"``, ``j`` counting the owner's
        #: activation calls on floating tensors, sites or not), from :func:`probe_layouts`
        self.layouts: dict[str, int | None] | None = spec.layouts
        self._candidates: dict[str, int] = {}
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
        self._candidates[owner_name] = self._candidates.get(owner_name, 0) + 1
        k = self._calls[owner_name] = self._calls.get(owner_name, 0) + 1
        self._owners.append((owner_name, k, False))
        self.neurons.append(int(neurons))
        self._counts.append(counts)
        return f"{owner_name}#{k}"

    def planned_batch_dim(self, owner: nn.Module):
        """The probed batch dimension of the next call of activation module ``owner``
        (asked by a fused kernel before it computes that site itself): an ``int``,
        ``None`` (not a site), or ``NotImplemented`` without a probe."""
        if self.layouts is None:
            return NotImplemented
        name = self.module_name(owner)
        return self.layouts.get(f"{name}#{self._candidates.get(name, 0) + 1}", NotImplemented)

    def _batch_dim(self, owner: str, value: torch.Tensor) -> int | None:
        """The batch dimension of ``value`` at the next call owned by ``owner``
        (docs/design.md#batch-dimension): the handler's answer when it recognises the
        batch by type, else the probed layout of this site, checked against the shape."""
        j = self._candidates[owner] = self._candidates.get(owner, 0) + 1
        typed = self.handler.batch_dim(value, self.rows)
        if typed is not NotImplemented:
            return typed
        if self.layouts is None:
            return size_batch_dim(value, self.rows)
        key = f"{owner}#{j}"
        if key not in self.layouts:
            raise RuntimeError(
                f"site {key!r} (shape {tuple(value.shape)}) was not seen by the batch-layout probe: the "
                "model calls different activations for different batch sizes (data-dependent control flow?)")
        dim = self.layouts[key]
        if dim is not None and (value.dim() <= dim or value.shape[dim] != self.rows):
            raise RuntimeError(
                f"site {key!r}: the batch-layout probe found the batch in dimension {dim}, but this call has "
                f"shape {tuple(value.shape)} for a batch of {self.rows} rows")
        return dim

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
            batch_dim = self._batch_dim(name, output)
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
        if not pre.is_floating_point():
            return func(*args, **kwargs)
        owner_mod = self._stack[-1] if self._stack else self.model
        owner = self.module_name(owner_mod)
        if not isinstance(owner_mod, ACTIVATION_MODULES):
            fname = (getattr(func, "__name__", None) or str(func)).rstrip("_")
            owner = f"{owner}.{fname}" if owner else fname
        batch_dim = self._batch_dim(owner, pre)
        if batch_dim is None:
            return func(*args, **kwargs)  # not a per-sample tensor: not a site
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


# ---------------------------------------------------------------------------
# Where each site holds the batch: the batch-layout probe (docs/design.md#batch-dimension)
# ---------------------------------------------------------------------------


class _LayoutRecorder(SiteInterceptor):
    """Runs a forward with no site at all, recording the shape of every candidate site
    value under its key (``"<owner>#j"``)."""

    def __init__(self, model: nn.Module, spec: SiteSpec, rows: int, V: int):
        super().__init__(model, spec, SiteHandler(), rows, V)
        self.layouts = None
        self.shapes: dict[str, tuple[int, ...]] = {}

    def _batch_dim(self, owner, value):
        j = self._candidates[owner] = self._candidates.get(owner, 0) + 1
        self.shapes[f"{owner}#{j}"] = tuple(int(d) for d in value.shape)
        return None

    def _module_output_site(self, module, output):
        if isinstance(output, torch.Tensor):
            self._batch_dim(self.spec.modules[module], output)
        return None


def _record(model: nn.Module, spec: SiteSpec, V: int, run: Callable[[int], Any], k: int, fake: bool):
    recorder = _LayoutRecorder(model, spec, k * V, V)
    if fake:
        from torch._subclasses.fake_tensor import FakeTensorMode
        with FakeTensorMode(allow_non_fake_inputs=True), recorder:
            run(k)
    else:
        with recorder:
            run(k)
    return k * V, recorder.shapes


def probe_layouts(model: nn.Module, spec: SiteSpec, V: int, run: Callable[[int], Any]) -> dict[str, int | None]:
    """Find where every site holds the batch, by provenance rather than by size.

    The forward runs for two batch sizes (2 and 3 points under a ``FakeTensorMode``:
    shapes only, no arithmetic; if the model cannot run on fake tensors, e.g. it reads
    a value with ``.item()``, for real with 1 and 2 points).  The batch dimension of a
    site is the one dimension whose size follows the batch; a dimension that merely has
    the batch's size in one run (sequence length ``T = 2P``) does not move.

    Args:
        model: the model as it will be measured.
        spec: the resolved sites.
        V: rows per point.
        run: ``run(k)`` runs the model's forward on a batch of ``k`` points (``k*V``
            rows), exactly as a chunk will.

    Returns:
        ``{site key: batch dim, or None when the tensor does not carry the batch}``.

    Raises:
        ValueError: a site whose batch is folded with another dimension, or whose
            batch dimension cannot be decided (the message names the site).
        RuntimeError: the sites differ between the two batch sizes.
    """
    try:
        a, b = (_record(model, spec, V, run, k, fake=True) for k in (2, 3))
    except Exception:  # noqa: BLE001 - any op or model code that fake tensors do not support
        a, b = (_record(model, spec, V, run, k, fake=False) for k in (1, 2))
    return decide_layouts(a, b)


def decide_layouts(a: tuple[int, dict], b: tuple[int, dict]) -> dict[str, int | None]:
    """Batch dimension per site from its shapes at two batch sizes.

    Args:
        a, b: ``(rows, {site key: shape})`` of two forwards with different rows.

    Returns:
        ``{key: dim}``: the one dimension that has the batch size in both runs, or
        ``None`` for a value whose shape does not depend on the batch.

    Example:
        >>> decide_layouts((100, {"relu#1": (50, 100, 8)}), (150, {"relu#1": (50, 150, 8)}))
        {'relu#1': 1}
    """
    (ra, sa), (rb, sb) = a, b
    if sa.keys() != sb.keys():
        diff = sorted(set(sa) ^ set(sb))
        raise RuntimeError(f"the model calls different activations for batches of {ra} and {rb} rows "
                           f"({diff[:5]}): lcfast cannot tell where their batch is")
    out: dict[str, int | None] = {}
    for key, shape_a in sa.items():
        shape_b = sb[key]
        moved = [d for d in range(len(shape_a)) if len(shape_a) == len(shape_b) and shape_a[d] != shape_b[d]]
        if len(shape_a) == len(shape_b) and not moved:
            out[key] = None  # not a per-sample tensor
        elif len(moved) == 1 and shape_a[moved[0]] == ra and shape_b[moved[0]] == rb:
            out[key] = moved[0]
        elif len(moved) == 1 and shape_a[moved[0]] % ra == 0 and shape_a[moved[0]] // ra * rb == shape_b[moved[0]]:
            d, t = moved[0], shape_a[moved[0]] // ra
            raise ValueError(
                f"site {key!r}: its batch is folded with another dimension (dimension {d} has {t} rows per "
                f"batch row, e.g. a (B*T, F) activation), so lcfast cannot tell which rows belong to which "
                f"point. Keep the batch as its own dimension at the activation (e.g. reshape to (B, T, F) "
                f"before it), or pass sites=[...] naming modules whose outputs keep it")
        else:
            raise ValueError(
                f"site {key!r}: cannot decide its batch dimension: its shape is {shape_a} for a batch of {ra} "
                f"rows and {shape_b} for {rb} rows")
    return out
