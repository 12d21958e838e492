"""Fused block paths of the Triton backend: Linear->act, Conv->BN->act (with a ResNet
residual), transformer MLP (Linear->act->Linear).

How blocks are found: before the vertex batch goes through the model, every module
whose *type* has a known forward is inspected (exact types only, so a subclass
with its own ``forward`` is never second-guessed):

* ``nn.Sequential`` (and subclasses that keep ``Sequential.forward``, e.g.
  torchvision ``MLPBlock``): runs ``Linear, act`` become one fused GEMM
  (:mod:`lcfast.ops.triton_linear_crossing_act`); ``Linear, act, [Dropout...],
  Linear`` (the second Linear not followed by an act) becomes the MLP-block op;
  ``BatchNorm, act`` becomes the folded-BN epilogue after the convolution that
  precedes it.
* torchvision ``BasicBlock`` / ``Bottleneck`` / ``ResNet`` (stem): every
  ``bn -> relu`` is the folded-BN epilogue, and the block tail
  ``bn -> + identity -> relu`` is one pass with the residual added in-kernel.

Such modules get an instance-level ``forward`` for the duration of the forward
pass (removed afterwards, also on exceptions: the model is left as found).  A
fused act module is not called, so the site is reported with
:meth:`lcfast.engine.intercept.SiteInterceptor.add_site` (named ``"<act module>#k"``,
as if the module had been called).  Modules with
their own hooks are never fused (their hooks would not fire), and every fused
step falls back to the plain module calls when its input is not the vertex batch
in dim 0 or its dtype/device/shape is not handled; those calls then go through the
ordinary per-site epilogue.  Only used for ``sites="activations"``.
"""
from __future__ import annotations

import contextlib
import math
import types
from typing import Iterator

import torch
import torch.nn as nn

from ..acts import GEMM_DTYPES, KERNEL_DTYPES, module_act

__all__ = ["act_spec", "plan_sequential", "fused_forwards", "FuseContext"]


def _no_hooks(m: nn.Module) -> bool:
    return not (m._forward_hooks or m._forward_pre_hooks) and "forward" not in m.__dict__


def act_spec(m: nn.Module) -> tuple[str, float] | None:
    """``(kind, slope)`` of an activation module (exact type, no hooks) that the Triton
    backend fuses (:mod:`lcfast.acts`), else ``None``."""
    hit = module_act(m) if _no_hooks(m) else None
    if hit is None or "triton" not in hit[0].fused_by:
        return None
    return hit[0].kind, hit[1]


def _is_linear(m) -> bool:
    return type(m) is nn.Linear and _no_hooks(m)


def _is_bn(m) -> bool:
    return (type(m) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d) and _no_hooks(m)
            and m.running_mean is not None and m.running_var is not None)


def _is_passthrough(m) -> bool:
    return type(m) in (nn.Dropout, nn.Identity) and _no_hooks(m)


def plan_sequential(seq: nn.Sequential) -> list[tuple] | None:
    """Steps of a Sequential (``("module", i)``, ``("linear_act", i, j)``,
    ``("mlp", i, j, k)``, ``("bn_act", i, j)``), or ``None`` when nothing fuses."""
    mods = list(seq._modules.values())
    steps: list[tuple] = []
    i = 0
    while i < len(mods):
        m = mods[i]
        nxt = mods[i + 1] if i + 1 < len(mods) else None
        if _is_linear(m) and nxt is not None and act_spec(nxt) is not None:
            k = i + 2
            while k < len(mods) and _is_passthrough(mods[k]):
                k += 1
            after = mods[k + 1] if k + 1 < len(mods) else None
            if (k < len(mods) and _is_linear(mods[k]) and act_spec(nxt)[0] != "leaky_relu"
                    and (after is None or act_spec(after) is None)):
                steps.append(("mlp", i, i + 1, k))
                i = k + 1
            else:
                steps.append(("linear_act", i, i + 1))
                i += 2
            continue
        if _is_bn(m) and nxt is not None and act_spec(nxt) is not None:
            steps.append(("bn_act", i, i + 1))
            i += 2
            continue
        steps.append(("module", i))
        i += 1
    return steps if any(s[0] != "module" for s in steps) else None


class FuseContext:
    """What the fused forwards need: the interceptor (sites are reported to it) and ``V``."""

    def __init__(self, interceptor, V: int, bn_cache: dict | None = None):
        self.interceptor, self.V = interceptor, V
        #: folded (scale, shift) per BN module; the backend keeps it across the chunks
        #: of one measurement (weights do not change during it)
        self.bn_cache = {} if bn_cache is None else bn_cache
        #: fused steps that ran, by kind ("linear_act", "mlp", "bn_act", "bn_add_act")
        self.stats: dict[str, int] = {}
        from ..ops.triton_linear_crossing_act import MAX_FUSED_V
        self.max_v = MAX_FUSED_V

    def _site(self, act_mod: nn.Module, neurons: int, counts: torch.Tensor, kind: str) -> None:
        self.stats[kind] = self.stats.get(kind, 0) + 1
        self.interceptor.add_site(act_mod, counts, neurons)

    def _batch(self, x, act: nn.Module) -> bool:
        """``x`` holds the batch in dim 0 and so does the site of ``act`` (by the batch-layout
        probe, docs/design.md#batch-dimension: ``T = rows`` in dim 0 is not a batch)."""
        return (isinstance(x, torch.Tensor) and x.dim() >= 2 and x.shape[0] == self.interceptor.rows
                and self.interceptor.planned_batch_dim(act) in (0, NotImplemented))

    # -- Linear -> act ------------------------------------------------------
    def _gemm_ok(self, x, act, *lins) -> bool:
        """The fused GEMM handles ``x`` ``(rows, *T, K)`` in float32/bf16/fp16 with
        weights of the same dtype and device, and ``V <= MAX_FUSED_V``."""
        return (self._batch(x, act) and x.dtype in GEMM_DTYPES and self.V <= self.max_v
                and x.shape[-1] == lins[0].in_features
                and all(lin.weight.dtype == x.dtype and lin.weight.device == x.device
                        and (lin.bias is None or lin.bias.dtype == x.dtype) for lin in lins))

    def linear_act(self, lin: nn.Linear, act: nn.Module, x):
        if not self._gemm_ok(x, act, lin):
            return act(lin(x))
        kind, slope = act_spec(act)
        T = math.prod(x.shape[1:-1])
        out, counts = torch.ops.lcfast.triton_linear_crossing_act(
            x.reshape(-1, x.shape[-1]), lin.weight, lin.bias, self.V, T, kind, slope)
        out = out.reshape(*x.shape[:-1], lin.out_features)
        self._site(act, out[0].numel(), counts, "linear_act")
        return out

    def mlp(self, lin1: nn.Linear, act: nn.Module, lin2: nn.Linear, x):
        if not self._gemm_ok(x, act, lin1, lin2) or lin2.in_features != lin1.out_features:
            return lin2(act(lin1(x)))
        kind, _ = act_spec(act)
        T = math.prod(x.shape[1:-1])
        out, counts = torch.ops.lcfast.triton_mlp_block(
            x.reshape(-1, x.shape[-1]), lin1.weight, lin1.bias, lin2.weight, lin2.bias, self.V, T, kind)
        self._site(act, math.prod(x.shape[1:-1]) * lin1.out_features, counts, "mlp")
        return out.reshape(*x.shape[:-1], lin2.out_features)

    # -- BN -> (+ residual) -> act -------------------------------------------
    def bn_act(self, bn, act: nn.Module, x, residual=None):
        spec = act_spec(act)
        ok = (spec is not None and _is_bn(bn) and not bn.training and self._batch(x, act)
              and x.dtype in KERNEL_DTYPES and x.shape[1] == bn.num_features
              and (residual is None or (isinstance(residual, torch.Tensor) and residual.shape == x.shape)))
        if not ok:
            y = bn(x)
            if residual is not None:
                y = y + residual
            return act(y)
        key = tuple((t.data_ptr(), t._version) for t in (bn.running_mean, bn.running_var, bn.weight, bn.bias)
                    if t is not None)
        hit = self.bn_cache.get(bn)
        if hit is None or hit[0] != key:
            from ..ops.triton_bn_crossing_act import fold_bn
            hit = self.bn_cache[bn] = (key, fold_bn(bn))
        scale, shift = hit[1]
        out, counts = torch.ops.lcfast.triton_bn_crossing_act(x, self.V, scale, shift, residual, spec[0], spec[1])
        self._site(act, out[0].numel(), counts, "bn_act" if residual is None else "bn_add_act")
        return out


# ---------------------------------------------------------------------------
# Forward replacements
# ---------------------------------------------------------------------------


def _sequential_forward(seq, steps, ctx: FuseContext):
    mods = list(seq._modules.values())

    def forward(self, x):
        for st in steps:
            if st[0] == "module":
                x = mods[st[1]](x)
            elif st[0] == "linear_act":
                x = ctx.linear_act(mods[st[1]], mods[st[2]], x)
            elif st[0] == "mlp":
                x = ctx.mlp(mods[st[1]], mods[st[2]], mods[st[3]], x)
            else:
                x = ctx.bn_act(mods[st[1]], mods[st[2]], x)
        return x
    return forward


def _basic_forward(ctx: FuseContext):
    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = ctx.bn_act(self.bn1, self.relu, out)
        out = self.conv2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        return ctx.bn_act(self.bn2, self.relu, out, residual=identity)
    return forward


def _bottleneck_forward(ctx: FuseContext):
    def forward(self, x):
        identity = x
        out = ctx.bn_act(self.bn1, self.relu, self.conv1(x))
        out = ctx.bn_act(self.bn2, self.relu, self.conv2(out))
        out = self.conv3(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        return ctx.bn_act(self.bn3, self.relu, out, residual=identity)
    return forward


def _resnet_forward(ctx: FuseContext):
    def forward(self, x):
        x = ctx.bn_act(self.bn1, self.relu, self.conv1(x))
        x = self.maxpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)
    return forward


def _torchvision_types():
    try:
        from torchvision.models import resnet
    except Exception:  # torchvision missing or broken: no ResNet fusion
        return {}
    return {resnet.BasicBlock: ("bn1", "bn2"), resnet.Bottleneck: ("bn1", "bn2", "bn3"),
            resnet.ResNet: ("bn1",)}


def _forward_for(m: nn.Module, ctx: FuseContext, tv: dict):
    if "forward" in m.__dict__:
        return None
    t = type(m)
    if isinstance(m, nn.Sequential) and t.forward is nn.Sequential.forward:
        steps = plan_sequential(m)
        return None if steps is None else _sequential_forward(m, steps, ctx)
    if t in tv:
        if not all(_is_bn(getattr(m, b)) for b in tv[t]) or act_spec(m.relu) != ("relu", 0.0):
            return None
        from torchvision.models import resnet
        if t is resnet.BasicBlock:
            return _basic_forward(ctx)
        if t is resnet.Bottleneck:
            return _bottleneck_forward(ctx)
        return _resnet_forward(ctx)
    return None


@contextlib.contextmanager
def fused_forwards(model: nn.Module, ctx: FuseContext) -> Iterator[int]:
    """Give fusable modules of ``model`` a fused instance ``forward`` while inside;
    yields how many modules were patched.  Always restores the model."""
    tv = _torchvision_types()
    patched: list[nn.Module] = []
    try:
        for m in model.modules():
            fwd = _forward_for(m, ctx, tv)
            if fwd is not None:
                m.__dict__["forward"] = types.MethodType(fwd, m)
                patched.append(m)
        yield len(patched)
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)
