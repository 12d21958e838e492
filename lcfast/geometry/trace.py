"""Run a model's own forward on points of a plane with forward-mode AD, and stop at a
*switch* (a call whose output is piecewise linear in its input) to read off every
unit's affine map there.

This is the one place where the geometry package couples to lcfast's site machinery
(:class:`lcfast.sites.SiteInterceptor`, its naming ``owner#k``) and lists which
activation kinds are piecewise linear.  Switches are the lcfast activation sites of
piecewise-linear kind (ReLU, LeakyReLU) and max pooling calls (which are not lcfast
sites; they are named like sites after their module, ``"features.2#1"``).  Every other
call on an input-dependent tensor must be affine (``_AFFINE``); anything else raises a
``ValueError`` naming the call.
"""
from __future__ import annotations

import copy
import dataclasses

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn as nn
import torch.nn.functional as F

from ..acts import by_kind
from ..engine.intercept import SiteHandler, SiteInterceptor
from ..sites import SiteSpec, parse_activation

__all__ = ["PIECEWISE_LINEAR", "Switch", "Payload", "Tracer", "float64_copy", "run_to", "site_values",
           "Segment", "chain_segments", "run_segment"]

#: Catalogue kinds (:mod:`lcfast.acts`, ``piecewise_linear``) with one switch at 0,
#: which the partition supports (relu6 / hardtanh switch at two other points: not yet).
PIECEWISE_LINEAR = frozenset(k for k in ("relu", "leaky_relu") if by_kind[k].piecewise_linear)

_MAXPOOL = frozenset({"max_pool1d", "max_pool2d", "max_pool1d_with_indices", "max_pool2d_with_indices"})
# Calls that are affine in each input-dependent tensor argument (names with the dunder
# underscores stripped); "get" are property getters (x.shape, x.dtype, ...).
_AFFINE = frozenset("""
linear conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d batch_norm
avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d
dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout
flatten unflatten view view_as reshape reshape_as permute transpose t contiguous squeeze unsqueeze
expand expand_as getitem setitem cat concat concatenate stack add radd iadd sub rsub isub neg pos
mul rmul imul div truediv itruediv matmul rmatmul mm bmm addmm sum mean pad clone to float double
type_as size dim get numel chunk split narrow select repeat flip roll unbind movedim moveaxis
pixel_shuffle pixel_unshuffle identity len format repr is_floating_point is_contiguous
""".split())
_BILINEAR = frozenset("mul rmul imul matmul rmatmul mm bmm addmm".split())
_DIVIDE = frozenset("div truediv itruediv".split())
_TRAINING_FLAG = {"batch_norm": (5, "training"), "dropout": (2, "training"), "dropout1d": (2, "training"),
                  "dropout2d": (2, "training"), "dropout3d": (2, "training"),
                  "alpha_dropout": (2, "training"), "feature_alpha_dropout": (2, "training")}


@dataclasses.dataclass
class Switch:
    """One switch of the forward pass.  ``lc_site``: it is an lcfast site (counted by
    ``local_complexity``); ``neurons``: units per point."""

    name: str
    kind: str           # "relu", "leaky_relu" or "maxpool"
    lc_site: bool
    neurons: int


@dataclasses.dataclass
class Payload:
    """Affine maps of every unit of a switch at ``n`` points.

    ``value, ds, dt``: ``(n, M, Kc)``: the ``Kc`` candidates of each of ``M`` units
    (ReLU: ``z`` only, ``Kc = 1``, its other candidate is 0; max pooling: the window),
    their values and derivatives along the plane's two directions.  ``valid``: ``(M, Kc)`` (padding of a pooling window
    is not a candidate) or ``None``.
    """

    switch: Switch
    value: torch.Tensor
    ds: torch.Tensor
    dt: torch.Tensor
    valid: torch.Tensor | None = None


class _Stop(Exception):
    def __init__(self, payload):
        super().__init__("stop")
        self.payload = payload


def _name(func) -> str:
    return (getattr(func, "__name__", None) or str(func)).strip("_")


def _arg(args, kwargs, pos, key, default):
    if key in kwargs:
        return kwargs[key]
    return args[pos] if len(args) > pos else default


def _tangent(t):
    return isinstance(t, torch.Tensor) and t.is_floating_point() and fwAD.unpack_dual(t).tangent is not None


def _flat(args, kwargs):
    out = []
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, (list, tuple)):
            out.extend(a)
        else:
            out.append(a)
    return out


def _split_dual(t: torch.Tensor, n: int):
    p, d = fwAD.unpack_dual(t)
    p = p.detach().reshape(2 * n, -1)
    d = d.reshape(2 * n, -1) if d is not None else torch.zeros_like(p)
    return p[:n], d[:n], d[n:]


class _Handler(SiteHandler):
    def __init__(self, tracer: "Tracer"):
        self.tracer = tracer

    def handle(self, site, call):
        self.tracer._activation(site.batch_major(), call)
        zeros = torch.zeros(site.value.shape[site.batch_dim] // site.V, dtype=torch.long)
        return (site.value if call is None else call.run()), zeros


class Tracer(SiteInterceptor):
    """Forward of ``2n`` rows (``n`` points, twice: tangents ``s`` then ``t``); raises
    ``_Stop`` with the :class:`Payload` of switch number ``target`` (None: run through).
    After the run, :attr:`switches` lists the switches seen in call order."""

    def __init__(self, model: nn.Module, n: int, target: int | None, strict: bool = True):
        super().__init__(model, SiteSpec.resolve(model, "activations"), _Handler(self), rows=2 * n, V=1)
        self.n = n
        self.strict = strict
        self.target = target
        self.switches: list[Switch] = []
        self.record: list | None = None
        self.plane = None   # (input primal, (origin, u, v), st, pid): see _on_plane
        self._pool_calls: dict[str, int] = {}

    def _stop_here(self, sw: Switch) -> bool:
        self.switches.append(sw)
        return self.target is not None and len(self.switches) - 1 == self.target

    def _activation(self, pre, call):
        name = self.names[-1]
        kind = call.kind if call is not None else "other"
        if self.record is not None:
            self.record.append(_split_dual(pre, self.n)[0])
        if not self.strict:
            return
        if kind not in PIECEWISE_LINEAR:
            raise ValueError(f"geometry: site {name!r} is a {kind!r} activation, which is not piecewise linear "
                             f"(exact partitions need {sorted(PIECEWISE_LINEAR)} or max pooling)")
        sw = Switch(name, kind, True, self.neurons[-1])
        if self._stop_here(sw):
            v, ds, dt = _split_dual(pre, self.n)
            raise _Stop(Payload(sw, v[..., None], ds[..., None], dt[..., None]))

    def _maxpool(self, func, name, args, kwargs):
        x = args[0]
        if _arg(args, kwargs, 5, "ceil_mode", False):
            raise ValueError(f"geometry: {name} with ceil_mode=True is not supported")
        owner_mod = self._stack[-1] if self._stack else self.model
        owner = self.module_name(owner_mod)
        if not isinstance(owner_mod, (nn.MaxPool1d, nn.MaxPool2d)):
            owner = f"{owner}.{name}" if owner else name
        k = self._pool_calls[owner] = self._pool_calls.get(owner, 0) + 1
        one_d = name.startswith("max_pool1d")
        out = func(*args, **kwargs)
        o = out[0] if isinstance(out, tuple) else out
        sw = Switch(f"{owner}#{k}", "maxpool", False, o.numel() // o.shape[0])
        if not self._stop_here(sw):
            return out
        k = _arg(args, kwargs, 1, "kernel_size", None)
        stride = _arg(args, kwargs, 2, "stride", None) or k
        pad = _arg(args, kwargs, 3, "padding", 0)
        dil = _arg(args, kwargs, 4, "dilation", 1)
        if one_d:
            x = x.unsqueeze(2)
            k, stride, pad, dil = [(1, a if isinstance(a, int) else a[0]) for a in (k, stride, pad, dil)]
        p, d = fwAD.unpack_dual(x)
        p = p.detach()
        pads = (pad, pad) if isinstance(pad, int) else tuple(pad)
        fpad = (pads[1], pads[1], pads[0], pads[0])
        # padding never wins: mark it with a validity mask (unfold a ones image)
        ones = F.pad(torch.ones_like(p[:1]), fpad)
        wins = []
        for t in (F.pad(p, fpad), F.pad(d, fpad), ones):
            u = F.unfold(t, k, dilation=dil, stride=stride)        # (rows, C*kk, L)
            kk = (k * k) if isinstance(k, int) else k[0] * k[1]
            u = u.reshape(t.shape[0], t.shape[1], kk, -1).permute(0, 1, 3, 2)  # (rows, C, L, kk)
            wins.append(u.reshape(t.shape[0], -1, kk))
        n = self.n
        raise _Stop(Payload(sw, wins[0][:n], wins[1][:n], wins[1][n:], valid=wins[2][0] > 0.5))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if parse_activation(func, args, kwargs) is not None:
            return super().__torch_function__(func, types, args, kwargs)
        if not self.strict:
            return func(*args, **kwargs)
        dual = [a for a in _flat(args, kwargs) if _tangent(a)]
        if not dual:
            return func(*args, **kwargs)
        name = _name(func)
        if name in _MAXPOOL:
            return self._maxpool(func, name, args, kwargs)
        if name in _FIRST and self.plane is not None:
            fast = self._on_plane(func, args, kwargs)
            if fast is not None:
                return fast
        if name not in _AFFINE:
            raise ValueError(f"geometry: the model calls {name!r} on an input-dependent tensor; it is not known "
                             f"to be affine or piecewise linear, so no exact partition can be computed")
        if name in _BILINEAR and len(dual) > 1:
            raise ValueError(f"geometry: {name!r} multiplies two input-dependent tensors (not piecewise linear)")
        if name in _DIVIDE and len(args) > 1 and _tangent(args[1]):
            raise ValueError(f"geometry: {name!r} divides by an input-dependent tensor (not piecewise linear)")
        if name in _TRAINING_FLAG and _arg(args, kwargs, *_TRAINING_FLAG[name], False):
            raise ValueError(f"geometry: {name!r} runs in training mode (batch-dependent)")
        return func(*args, **kwargs)


_FIRST = frozenset({"linear", "conv1d", "conv2d", "conv3d"})





def _plane_op(self, func, args, kwargs):
    """A linear/conv call on (a contiguous view of) the model's input: the input rows
    are ``origin + s*u + t*v`` of a few planes, so the op runs on the ``3N`` basis
    rows only and the ``2n`` dual rows are assembled from them (the same affine map,
    summed in another order).  Returns None when the call is not on the input."""
    inp, (o, u, v), st, pid = self.plane
    p, d = fwAD.unpack_dual(args[0])
    if p.data_ptr() != inp.data_ptr() or p.numel() != inp.numel() or not p.is_contiguous():
        return None
    N = o.shape[0]
    basis = torch.cat([o, u, v]).reshape(3 * N, *p.shape[1:])
    args2, kw2 = list(args), dict(kwargs)
    bias = kw2.pop("bias", None) if "bias" in kw2 else (args2[2] if len(args2) > 2 else None)
    if len(args2) > 2:
        args2[2] = None
    args2[0] = basis
    y = func(*args2, **kw2)
    yo, yu, yv = y[:N], y[N:2 * N], y[2 * N:]
    if bias is not None:
        yo = yo + bias.reshape(-1, *([1] * (y.dim() - 2)))
    shape = (-1,) + (1,) * (y.dim() - 1)
    ys, yt = yu[pid], yv[pid]
    prim = yo[pid] + st[:, 0].reshape(shape) * ys + st[:, 1].reshape(shape) * yt
    return fwAD.make_dual(torch.cat([prim, prim]), torch.cat([ys, yt]))


Tracer._on_plane = _plane_op


def float64_copy(model: nn.Module) -> nn.Module:
    """A float64, eval-mode, ``requires_grad=False`` copy of ``model`` (the user's model
    is left untouched)."""
    m = copy.deepcopy(model)
    m.eval()
    m.double()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def run_to(model: nn.Module, basis, st: torch.Tensor, pid: torch.Tensor, target: int | None,
           record: list | None = None):
    """Forward ``model`` (a :func:`float64_copy`) at points ``st (n, 2)`` of planes
    ``pid (n,)``, with the tangents of the planes' two directions.

    The first elementwise op on a dual tensor in a process imports ``torch._dynamo``
    (torch's forward-AD decompositions): a one-off 18-27 s on the loaded 2-core box
    (measured, load ~17).

    Args:
        basis: ``(origin, u, v)``, each ``(N, *S)`` float64: plane ``p`` is
            ``origin[p] + s*u[p] + t*v[p]``.

    Returns:
        ``(payload, switches, output)``: the :class:`Payload` of switch ``target``
        (``None`` when the forward ends first or ``target`` is None); the switches
        seen; the output's ``(value, ds, dt)`` each ``(n, O)`` (``None`` when stopped).
        With ``record`` (a list), the pre-activations ``(n, M)`` of every lcfast site
        are appended to it.
    """
    o, u, v = basis
    n = st.shape[0]
    shape = (-1,) + (1,) * (o.dim() - 1)
    ds, dt = u[pid], v[pid]
    x = o[pid] + st[:, 0].reshape(shape) * ds + st[:, 1].reshape(shape) * dt
    tracer = Tracer(model, n, target)
    tracer.record = record
    with torch.no_grad(), fwAD.dual_level():
        dual = fwAD.make_dual(torch.cat([x, x]), torch.cat([ds, dt]))
        tracer.plane = (fwAD.unpack_dual(dual).primal, basis, st, pid)
        try:
            with tracer:
                out = model(dual)
        except _Stop as s:
            return s.payload, tracer.switches, None
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"geometry: the model returned {type(out).__name__}, expected a Tensor")
        return None, tracer.switches, _split_dual(out, n)


def site_values(model: nn.Module, x: torch.Tensor) -> tuple[list[str], list[torch.Tensor]]:
    """Pre-activations of every lcfast site (any activation kind) at points ``x (n, *S)``
    of a :func:`float64_copy`: ``(names, [(n, M_l)])``."""
    n = x.shape[0]
    tracer = Tracer(model, n, None, strict=False)
    tracer.record = []
    z = torch.zeros_like(x)
    with torch.no_grad(), fwAD.dual_level():
        with tracer:
            model(fwAD.make_dual(torch.cat([x, x]), torch.cat([z, z])))
    return list(tracer.names), tracer.record


@dataclasses.dataclass
class Segment:
    """The modules from just after one switch up to and including the next (an
    ``nn.ReLU`` / ``nn.LeakyReLU`` module), of a model that is a plain chain; ``shape``:
    the activation's output shape per point; ``slope``: its negative slope."""

    modules: nn.Sequential
    shape: tuple[int, ...]
    slope: float


def chain_segments(model: nn.Module, switches: list[Switch], x0: torch.Tensor) -> list[Segment] | None:
    """Split ``model`` (a :func:`float64_copy`) at its switches when it is a plain chain:
    nested ``nn.Sequential`` containers (no hooks) of leaf modules whose only switches
    are ``nn.ReLU`` / ``nn.LeakyReLU`` leaves, each called once (the switches of one
    traced forward, ``switches``, name exactly these leaves in this order).  Then each
    region's affine map can be carried from one switch to the next instead of re-running
    the forward from the input.  ``x0 (1, *S)``: one input point (for the shapes).
    Returns None for any other model (the engine then runs from the input)."""
    names = {m: n for n, m in model.named_modules()}
    leaves: list[nn.Module] = []

    def walk(m):
        if m._forward_hooks or m._forward_pre_hooks:
            raise LookupError
        if type(m) is nn.Sequential:
            for c in m:
                walk(c)
        else:
            leaves.append(m)

    try:
        walk(model)
    except LookupError:
        return None
    acts = [i for i, m in enumerate(leaves) if type(m) in (nn.ReLU, nn.LeakyReLU)]
    if (not switches or len({id(m) for m in leaves}) != len(leaves) or len(acts) != len(switches)
            or any(sw.name != f"{names.get(leaves[i])}#1" or not sw.lc_site for sw, i in zip(switches, acts))):
        return None
    segs, start, x = [], 0, x0
    with torch.no_grad():
        for i in acts:
            mods = nn.Sequential(*leaves[start:i + 1])
            x = mods(x)
            segs.append(Segment(mods, tuple(x.shape[1:]), float(getattr(leaves[i], "negative_slope", 0.0))))
            start = i + 1
    return segs


def run_segment(seg: Segment, abc: torch.Tensor) -> Payload:
    """Maps at a segment's switch from the maps ``a + b*s + c*t`` of its input,
    ``abc = (a, b, c)`` stacked ``(3, n, *S_in)``: the :class:`Payload` with ``value``
    at ``s = t = 0``.  The calls are checked as in :func:`run_to` (affine up to the
    segment's one switch)."""
    n = abc.shape[1]
    tracer = Tracer(seg.modules, n, 0)
    with torch.no_grad(), fwAD.dual_level():
        try:
            with tracer:
                seg.modules(fwAD.make_dual(abc[[0, 0]].flatten(0, 1), abc[1:].flatten(0, 1)))
        except _Stop as s:
            if tracer.switches[0].name != f"{len(seg.modules) - 1}#1":
                raise RuntimeError(f"geometry: unexpected switch {tracer.switches[0].name!r} in a chain segment")
            return s.payload
    raise RuntimeError("geometry: a chain segment ended without its switch")
