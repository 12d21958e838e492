"""The activation catalogue: one row per activation kind, the one place that lists them.

A row says which PyTorch functions and modules produce the kind, its kernel code (the
``Act`` enum of ``csrc/crossing_act.h`` and the ``ACT`` constexpr of
:func:`lcfast.kernels.triton_act.apply_act`; ``tests/test_acts.py`` parses both and
checks them against this table), which kernel families implement it, which backends
fuse it at a site, the dtypes those kernels take, whether it is piecewise linear, and
a slot for the offsets engine's rule.  :mod:`lcfast.sites` (what is an activation
call), :mod:`lcfast.engine.blocks`, the native and Triton launchers read it.

Adding an activation is one row of :data:`CATALOGUE`; a kernel for it also needs its
code in the C++ enum and/or the Triton ``apply_act`` (the test says which).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Act", "Call", "CATALOGUE", "KINDS", "KERNEL_DTYPES", "GEMM_DTYPES", "ACTIVATION_MODULES",
           "by_kind", "lookup_call", "module_act", "kernel_codes", "fused_kinds"]

#: dtypes of the crossing kernels (native op, Triton epilogue): every floating dtype
#: with a kernel.
KERNEL_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
#: dtypes of the fused Triton GEMM (``tl.dot`` has no float64 path).
GEMM_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)

_NATIVE, _TRITON = "native", "triton"
_BOTH = frozenset((_NATIVE, _TRITON))


def _no(args, kwargs):
    return False


def _zero(args, kwargs):
    return 0.0


def _any(args, kwargs):
    return True


def _leaky_slope(args, kwargs) -> float:
    if len(args) > 1 and not isinstance(args[1], bool):
        return float(args[1])
    return float(kwargs.get("negative_slope", 0.01))


def _gelu_approx(args, kwargs) -> str:
    return kwargs.get("approximate", args[1] if len(args) > 1 else "none")


@dataclasses.dataclass(frozen=True)
class Call:
    """One function that produces a kind, and how to read its arguments.

    Attributes:
        func: the function (``F.relu``, ``torch.Tensor.relu_``, ...).
        inplace: ``(args, kwargs) -> bool``, whether the call writes into ``args[0]``.
        slope: ``(args, kwargs) -> float``, the negative slope (``leaky_relu``).
        match: ``(args, kwargs) -> bool``, whether this call is this kind (``F.gelu``
            is ``"gelu"`` or ``"gelu_tanh"`` by its ``approximate`` argument).
    """

    func: Callable
    inplace: Callable = _no
    slope: Callable = _zero
    match: Callable = _any


def _calls(*funcs, inplace=False, slope=_zero, match=_any) -> tuple[Call, ...]:
    """Rows' shorthand.  ``inplace``: ``False`` never, ``True`` always, ``"kw"`` the
    ``inplace=`` keyword, an int ``i`` the keyword or a bool positional argument ``i``."""
    if inplace is True:
        rule = _any
    elif inplace is False:
        rule = _no
    else:
        pos = None if inplace == "kw" else inplace

        def rule(args, kwargs, _pos=pos):
            if "inplace" in kwargs:
                return bool(kwargs["inplace"])
            return _pos is not None and len(args) > _pos and isinstance(args[_pos], bool) and bool(args[_pos])
    return tuple(Call(f, rule, slope, match) for f in funcs if f is not None)


def _g(obj, name):
    """``obj.name`` or ``None`` (some aliases exist only in some torch versions)."""
    return getattr(obj, name, None)


@dataclasses.dataclass(frozen=True)
class Act:
    """One activation kind.

    Attributes:
        kind: its name (also the ``act`` string of the kernels).
        fn: the PyTorch function computing it with default parameters, ``(*) -> (*)``.
        calls: the functions whose calls are this kind (module forms call one of them).
        modules: ``nn.Module`` classes that are this kind (exact type; a call caught
            inside one is named after the module).
        module_match: ``module -> bool`` for modules whose kind depends on an attribute
            (``nn.GELU(approximate=...)``).
        code: kernel code (C++ ``Act`` enum, Triton ``ACT``), ``None`` without a kernel.
        kernels: kernel families implementing the code: ``"native"``, ``"triton"``.
        fused_by: backends whose site handler runs it fused (count + activation in one
            pass): the native backend fuses only kinds whose output is bit-identical to
            PyTorch's CPU kernels (GELU's is not: its libm erf differs in the last bits).
        dtypes: dtypes the kernels take for it (empty without a kernel).
        piecewise_linear: the function is piecewise linear (the crossing of a neuron is
            then exactly where its linear piece changes).
        offsets_rule: how the kind maps a centre + offsets pair (the offsets engine fills
            it; ``None`` until then: the engine falls back to ``f(c + d) - f(c)``).
    """

    kind: str
    fn: Callable
    calls: tuple[Call, ...] = ()
    modules: tuple[type, ...] = ()
    module_match: Callable[[nn.Module], bool] = lambda m: True
    code: int | None = None
    kernels: frozenset = frozenset()
    fused_by: frozenset = frozenset()
    dtypes: tuple[torch.dtype, ...] = ()
    piecewise_linear: bool = False
    offsets_rule: Callable | None = None


_T = torch.Tensor
_nn = torch._C._nn

#: One row per kind.
CATALOGUE: tuple[Act, ...] = (
    # kernel code 0: count only (no activation); no PyTorch call is this kind
    Act("identity", lambda z: z, code=0, kernels=_BOTH, dtypes=KERNEL_DTYPES, piecewise_linear=True),
    Act("relu", torch.relu, code=1, kernels=_BOTH, fused_by=_BOTH, dtypes=KERNEL_DTYPES, piecewise_linear=True,
        modules=(nn.ReLU,),
        calls=(_calls(F.relu, inplace=1) + _calls(torch.relu, _g(_T, "relu"))
               + _calls(torch.relu_, _g(F, "relu_"), _g(_T, "relu_"), inplace=True))),
    Act("leaky_relu", F.leaky_relu, code=2, kernels=_BOTH, fused_by=_BOTH, dtypes=KERNEL_DTYPES,
        piecewise_linear=True, modules=(nn.LeakyReLU,),
        calls=(_calls(F.leaky_relu, inplace=2, slope=_leaky_slope)
               + _calls(_g(F, "leaky_relu_"), _g(_nn, "leaky_relu_"), inplace=True, slope=_leaky_slope)
               + _calls(_g(_nn, "leaky_relu"), slope=_leaky_slope))),
    Act("gelu", F.gelu, code=3, kernels=_BOTH, fused_by=frozenset((_TRITON,)), dtypes=KERNEL_DTYPES,
        modules=(nn.GELU,), module_match=lambda m: m.approximate != "tanh",
        calls=_calls(F.gelu, match=lambda a, k: _gelu_approx(a, k) != "tanh")),
    Act("gelu_tanh", functools.partial(F.gelu, approximate="tanh"), code=4, kernels=_BOTH,
        fused_by=frozenset((_TRITON,)), dtypes=KERNEL_DTYPES,
        modules=(nn.GELU,), module_match=lambda m: m.approximate == "tanh",
        calls=_calls(F.gelu, match=lambda a, k: _gelu_approx(a, k) == "tanh")),
    Act("silu", F.silu, code=5, kernels=frozenset((_TRITON,)), fused_by=frozenset((_TRITON,)), dtypes=KERNEL_DTYPES,
        modules=(nn.SiLU,), calls=_calls(F.silu, inplace=1)),
    Act("tanh", torch.tanh, code=6, kernels=frozenset((_TRITON,)), fused_by=frozenset((_TRITON,)),
        dtypes=KERNEL_DTYPES, modules=(nn.Tanh,),
        calls=(_calls(F.tanh, torch.tanh, _g(_T, "tanh")) + _calls(_g(torch, "tanh_"), _g(_T, "tanh_"), inplace=True))),
    Act("sigmoid", torch.sigmoid, code=7, kernels=frozenset((_TRITON,)), fused_by=frozenset((_TRITON,)),
        dtypes=KERNEL_DTYPES, modules=(nn.Sigmoid,),
        calls=(_calls(F.sigmoid, torch.sigmoid, _g(_T, "sigmoid"))
               + _calls(_g(torch, "sigmoid_"), _g(_T, "sigmoid_"), inplace=True))),
    # no kernel: counted, then the model's own call runs
    Act("mish", F.mish, modules=(nn.Mish,), calls=_calls(F.mish, inplace=1)),
    Act("elu", F.elu, modules=(nn.ELU,), calls=_calls(F.elu, inplace=2) + _calls(_g(F, "elu_"), inplace=True)),
    Act("selu", F.selu, modules=(nn.SELU,),
        calls=_calls(F.selu, inplace=1) + _calls(torch.selu) + _calls(_g(torch, "selu_"), inplace=True)),
    Act("celu", F.celu, modules=(nn.CELU,),
        calls=_calls(F.celu, inplace=1) + _calls(torch.celu) + _calls(_g(torch, "celu_"), inplace=True)),
    Act("softplus", F.softplus, modules=(nn.Softplus,), calls=_calls(F.softplus, inplace="kw")),
    Act("hardswish", F.hardswish, modules=(nn.Hardswish,), calls=_calls(F.hardswish, inplace="kw")),
    Act("hardsigmoid", F.hardsigmoid, piecewise_linear=True, modules=(nn.Hardsigmoid,),
        calls=_calls(F.hardsigmoid, inplace="kw")),
    Act("logsigmoid", F.logsigmoid, modules=(nn.LogSigmoid,), calls=_calls(F.logsigmoid, inplace="kw")),
    Act("softsign", F.softsign, modules=(nn.Softsign,), calls=_calls(F.softsign, inplace="kw")),
    Act("tanhshrink", F.tanhshrink, modules=(nn.Tanhshrink,), calls=_calls(F.tanhshrink, inplace="kw")),
    Act("relu6", F.relu6, piecewise_linear=True, modules=(nn.ReLU6,), calls=_calls(F.relu6, inplace="kw")),
    Act("hardtanh", F.hardtanh, piecewise_linear=True, modules=(nn.Hardtanh,),
        calls=_calls(F.hardtanh, inplace="kw") + _calls(_g(F, "hardtanh_"), inplace=True)),
    Act("prelu", lambda z: F.prelu(z, z.new_full((1,), 0.25)), piecewise_linear=True, modules=(nn.PReLU,),
        calls=_calls(F.prelu, torch.prelu, inplace="kw")),
    # in eval mode (how LC is measured) rrelu is leaky_relu with slope (lower + upper) / 2
    Act("rrelu", F.rrelu, piecewise_linear=True, modules=(nn.RReLU,), calls=_calls(F.rrelu, inplace="kw")),
)

#: kind -> row
by_kind: dict[str, Act] = {a.kind: a for a in CATALOGUE}
#: every kind, in catalogue order
KINDS: tuple[str, ...] = tuple(by_kind)

_BY_FUNC: dict[Callable, list[tuple[Act, Call]]] = {}
for _act in CATALOGUE:
    for _call in _act.calls:
        _BY_FUNC.setdefault(_call.func, []).append((_act, _call))

#: Module classes that *are* an activation (a call caught inside one is named after it).
ACTIVATION_MODULES: tuple[type, ...] = tuple(dict.fromkeys(m for a in CATALOGUE for m in a.modules))


def lookup_call(func, args: tuple, kwargs: dict) -> tuple[Act, Call] | None:
    """The row and call entry of ``func(*args, **kwargs)``, or ``None`` when ``func``
    is not an activation of the catalogue."""
    for act, call in _BY_FUNC.get(func, ()):
        if call.match(args, kwargs):
            return act, call
    return None


def module_act(m: nn.Module) -> tuple[Act, float] | None:
    """``(row, negative slope)`` of an activation module by its *exact* type (a
    subclass may have its own ``forward``), else ``None``."""
    for act in CATALOGUE:
        if type(m) in act.modules and act.module_match(m):
            return act, float(getattr(m, "negative_slope", 0.0))
    return None


def kernel_codes(family: str) -> dict[str, int]:
    """``kind -> code`` of the kinds the ``family`` kernels (``"native"``, ``"triton"``) implement."""
    return {a.kind: a.code for a in CATALOGUE if family in a.kernels}


def fused_kinds(backend: str) -> tuple[str, ...]:
    """Kinds the ``backend``'s site handler runs fused."""
    return tuple(a.kind for a in CATALOGUE if backend in a.fused_by)
