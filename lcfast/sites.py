"""Which calls of a forward pass are *sites*, and what they are called.

A site (docs/design.md#definition) is, by default, the input of every elementwise
nonlinearity call of the forward pass, in module form (``nn.ReLU``) or functional
form (``F.relu``, ``torch.relu``, ``x.relu()``, ...).  Calls are caught with a
:class:`torch.overrides.TorchFunctionMode`, so a model whose ``forward`` calls
``F.relu`` is measured exactly like one built from ``nn.ReLU`` modules, and a module
called twice gives two sites.  Alternatively the user names modules (by name or
type) whose **outputs** are sites.

Names are ``"<owner>#k"``: ``owner`` is the activation module's qualified name
(``"layer1.0.relu"``) or, for a functional call, the innermost running module's
name plus the function (``"block.relu"``, or ``"relu"`` at the root); ``k`` counts
the calls of that owner within one forward, from 1 (``"layer1.0.relu#2"`` is the
second call of torchvision BasicBlock's shared ReLU).

This module only finds and names sites; what happens at a site (counting crossings,
applying the activation, possibly fused) is the backend's business, passed in as a
:class:`SiteHandler`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = [
    "ActCall",
    "SiteHandler",
    "SiteInterceptor",
    "SiteSpec",
    "ACTIVATION_MODULES",
    "is_nonlinearity",
]

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


def is_nonlinearity(func) -> bool:
    """Whether calls of ``func`` are activation sites."""
    return func in _TABLE


def _func_name(func) -> str:
    name = getattr(func, "__name__", None) or str(func)
    return name.rstrip("_")


@dataclasses.dataclass
class ActCall:
    """One caught nonlinearity call.

    Attributes:
        kind: ``"relu"``, ``"leaky_relu"``, ``"gelu"``, ``"gelu_tanh"``, ``"silu"``,
            ``"mish"``, ``"elu"``, ``"tanh"``, ``"sigmoid"`` or ``"other"``.
        slope: negative slope for ``"leaky_relu"`` (0 otherwise).
        inplace: whether the call writes into its input.
        func, args, kwargs: the call itself; ``args[0]`` is the pre-activation.
        batch_dim: the dimension of ``args[0]`` that holds the vertex batch.
    """

    kind: str
    slope: float
    inplace: bool
    func: Callable
    args: tuple
    kwargs: dict
    batch_dim: int = 0

    def run(self) -> torch.Tensor:
        """Apply the activation exactly as the model asked for it."""
        return self.func(*self.args, **self.kwargs)


class SiteHandler:
    """What a backend does at a site.  ``pre`` always has the vertex batch in
    dimension 0: shape ``(n * V, *F)`` with the ``V`` vertices of each point
    contiguous (point-major)."""

    def count(self, pre: torch.Tensor, V: int) -> torch.Tensor:
        """Crossed neurons per point: ``(n*V, *F) -> LongTensor (n,)``."""
        raise NotImplementedError

    def count_act(self, pre: torch.Tensor, V: int, call: ActCall) -> torch.Tensor:
        """Count crossings at an activation site and return the activation output
        (what ``call.run()`` returns, same layout as the model expects).  Records
        the counts with :meth:`record`.  The default counts, then calls."""
        self.record(self.count(pre, V))
        return call.run()

    # -- filled in by the interceptor -------------------------------------
    def record(self, counts: torch.Tensor) -> None:  # pragma: no cover - replaced
        raise RuntimeError("record() used outside a SiteInterceptor")


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


def _batch_dim(t: torch.Tensor, rows: int) -> int | None:
    if t.dim() == 0:
        return None
    if t.shape[0] == rows:
        return 0
    hits = [d for d in range(1, t.dim()) if t.shape[d] == rows]
    return hits[0] if len(hits) == 1 else None


class SiteInterceptor(TorchFunctionMode):
    """Context manager that runs while the vertex batch goes through the model.

    Each site call is handed to ``handler`` and its counts collected in call order.
    After the forward, :attr:`names`, :attr:`neurons` and :meth:`counts` describe
    the sites seen.  Module hooks (global, so the model's own hook dicts are never
    touched) keep the stack of running modules for naming; all hooks are removed on
    exit, also on exceptions.

    Args:
        model: the model being run (its module names are used).
        spec: which calls are sites.
        handler: the backend's :class:`SiteHandler`.
        rows: number of rows of the vertex batch (``n * V``).
        V: vertices per point.
    """

    def __init__(self, model: nn.Module, spec: SiteSpec, handler: SiteHandler, rows: int, V: int):
        super().__init__()
        self.model = model
        self.spec = spec
        self.handler = handler
        self.rows = rows
        self.V = V
        self.names: list[str] = []
        self.neurons: list[int] = []
        self._counts: list[torch.Tensor] = []
        self._calls: dict[str, int] = {}
        self._stack: list[nn.Module] = []
        self._modname = {m: n for n, m in model.named_modules()}
        self._handles: list[Any] = []
        handler.record = self._record

    # -- naming -----------------------------------------------------------
    def _next_name(self, owner: str) -> str:
        k = self._calls.get(owner, 0) + 1
        self._calls[owner] = k
        return f"{owner}#{k}"

    def _record(self, counts: torch.Tensor) -> None:
        self._counts.append(counts)

    def _add_site(self, owner: str, t: torch.Tensor, bdim: int) -> str:
        name = self._next_name(owner)
        self.names.append(name)
        self.neurons.append(t.numel() // t.shape[bdim])
        return name

    # -- hooks ------------------------------------------------------------
    def _pre_hook(self, module, args):
        if module in self._modname:
            self._stack.append(module)

    def _post_hook(self, module, args, output):
        if module in self._modname and self._stack and self._stack[-1] is module:
            self._stack.pop()
        if not self.spec.activations and module in self.spec.modules:
            self._module_output_site(module, output)

    def _module_output_site(self, module, output):
        name = self.spec.modules[module]
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"sites: module {name!r} returned {type(output).__name__}, expected a Tensor")
        bdim = _batch_dim(output, self.rows)
        if bdim is None:
            raise ValueError(
                f"sites: output of module {name!r} has shape {tuple(output.shape)}, with no dimension "
                f"of the vertex batch size {self.rows}")
        self._add_site(name, output, bdim)
        with torch._C.DisableTorchFunction():
            pre = output.movedim(bdim, 0) if bdim else output
            self._record(self.handler.count(pre, self.V))

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

    # -- the function mode -------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        entry = _TABLE.get(func) if self.spec.activations else None
        if entry is None or not args or not isinstance(args[0], torch.Tensor):
            return func(*args, **kwargs)
        pre = args[0]
        bdim = _batch_dim(pre, self.rows)
        if bdim is None or not pre.is_floating_point():
            return func(*args, **kwargs)  # not a per-sample tensor: not a site
        kind_fn, slope_fn, inplace_fn = entry
        owner_mod = self._stack[-1] if self._stack else self.model
        owner = self._modname.get(owner_mod, "")
        if not isinstance(owner_mod, ACTIVATION_MODULES):
            fname = _func_name(func)
            owner = f"{owner}.{fname}" if owner else fname
        self._add_site(owner, pre, bdim)
        call = ActCall(kind_fn(args, kwargs), slope_fn(args, kwargs), inplace_fn(args, kwargs),
                       func, args, kwargs, bdim)
        if bdim != 0:
            call.kind = "other"  # fused kernels want batch-major data
            self._record(self.handler.count(pre.movedim(bdim, 0), self.V))
            return call.run()
        return self.handler.count_act(pre, self.V, call)

    # -- results -----------------------------------------------------------
    def counts(self, n: int, device=None) -> torch.Tensor:
        """``LongTensor (n, L)`` of the sites seen, in call order."""
        if len(self._counts) != len(self.names):
            raise RuntimeError("internal error: a site handler did not record its counts")
        if not self._counts:
            return torch.zeros(n, 0, dtype=torch.long, device=device)
        return torch.stack([c.to(torch.long) for c in self._counts], dim=1)
