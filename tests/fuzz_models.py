"""Random small models for the differential fuzzer (tests/test_fuzz.py).

A model is described by a :class:`ModelSpec`: plain data (an input kind and shape, a
tuple of :class:`Block` s, a weight seed), so hypothesis can shrink it and print it.
:func:`build` turns it into an ``nn.Module`` whose every activation call goes through
:meth:`_Part.site`, which -- when the model's ``recorder`` is switched on -- stores the
pre-activation with its batch dimension first.  The generator therefore *knows* each
site and its batch dimension; the brute force in the test needs neither lcfast's site
finder nor module hooks (which miss functional calls).

Grammar (state kinds: ``img`` ``(C, H, W)``, ``seq`` ``(T, E)``, ``flat`` ``(F,)``):

* ``act_input`` -- an activation on the raw input (first block only);
* img: ``conv`` (Conv2d [+BatchNorm2d] + act, in layouts ``nchw``, ``channels_last``,
  ``nhwc`` (permuted) and ``cbhw`` (batch in dim 1)), ``pool`` (max/avg 2x2),
  ``resblock`` (conv-bn-act-conv-bn + skip, act), ``tokens`` (to seq), ``flatten``;
* seq: ``attn`` (pre-LN ``nn.MultiheadAttention``, batch-first or sequence-first, +
  MLP), ``tokmlp`` (MLP on tokens); their MLP site is in layout ``batch``
  ``(B, T, H)``, ``seqfirst`` ``(T, B, H)`` or ``folded`` ``(B*T, H)``; ``conv1d``
  (transpose, Conv1d + act, transpose back), ``meanpool`` / ``flatten`` (to flat);
* flat: ``linear`` (Linear [+BatchNorm1d] + act, batch-first ``bf`` or features-first
  ``ff`` ``(F, B)`` via ``addmm`` on the transposed batch), ``resmlp`` (x + MLP(x)).
* the head: ``Linear(F, 3)`` (no site).

Activation forms: :data:`ACTS` (modules, in-place modules, functional, in-place
functional, tensor methods).

Known lcfast bugs (issue 11 item 1) depend on layouts whose non-batch sizes equal the
vertex-batch size ``k * 2P`` (always even), and on folded batches.  ``safe=True``
keeps every non-batch size of a batch-not-first site odd and leaves out ``folded``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import strategies as st

# ---------------------------------------------------------------------------
# Activations: name -> (factory of a module or None, callable(x, module) -> y)
# ---------------------------------------------------------------------------

ACTS: dict[str, tuple[Any, Any]] = {
    "nn.ReLU": (lambda: nn.ReLU(), None),
    "nn.ReLU(inplace)": (lambda: nn.ReLU(inplace=True), None),
    "F.relu": (None, lambda x: F.relu(x)),
    "F.relu(inplace)": (None, lambda x: F.relu(x, inplace=True)),
    "torch.relu": (None, lambda x: torch.relu(x)),
    "Tensor.relu": (None, lambda x: x.relu()),
    "Tensor.relu_": (None, lambda x: x.relu_()),
    "nn.LeakyReLU(0.2)": (lambda: nn.LeakyReLU(0.2), None),
    "F.leaky_relu(0.1,inplace)": (None, lambda x: F.leaky_relu(x, 0.1, inplace=True)),
    "nn.GELU": (lambda: nn.GELU(), None),
    "F.gelu(tanh)": (None, lambda x: F.gelu(x, approximate="tanh")),
    "F.silu": (None, lambda x: F.silu(x)),
    "torch.tanh": (None, lambda x: torch.tanh(x)),
    "nn.ELU": (lambda: nn.ELU(), None),
    "F.hardtanh": (None, lambda x: F.hardtanh(x)),
}

LAYOUTS_BATCH_NOT_FIRST = {"cbhw", "seqfirst", "ff"}


@dataclasses.dataclass(frozen=True)
class Block:
    """One grammar block: ``name`` and its parameters (sorted key/value pairs)."""

    name: str
    params: tuple = ()

    def get(self, key, default=None):
        return dict(self.params).get(key, default)

    def __repr__(self):
        return f"Block({self.name!r}, {dict(self.params)!r})"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A whole model: input ``kind`` and point shape ``shape``, blocks, weight seed,
    and whether it is left in train mode (lcfast must measure it in eval mode)."""

    kind: str
    shape: tuple
    blocks: tuple
    seed: int = 0
    train_mode: bool = False

    def features(self) -> list[str]:
        """Grammar features used (for coverage reports)."""
        out = [f"input:{self.kind}"]
        for b in self.blocks:
            out.append(f"block:{b.name}")
            for k, v in b.params:
                if k in ("layout", "bn", "pool", "batch_first", "to"):
                    out.append(f"{b.name}.{k}={v}")
                if k.startswith("act"):
                    out.append(f"act:{v}")
        if self.train_mode:
            out.append("model:train_mode")
        return out


# ---------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------


class Recorder:
    """Shared by the parts of one model: ``values`` is ``None`` (off) or a list that
    receives one float64 ``(B, neurons)`` tensor per site call, in call order."""

    def __init__(self):
        self.values: list[torch.Tensor] | None = None


class _Part(nn.Module):
    def __init__(self, rec: Recorder, b: Block | None = None, shape: tuple = ()):
        super().__init__()
        self._rec = [rec]  # a list: not a submodule, not in the state dict

    def site(self, t: torch.Tensor, bdim: int, act: str, mod: nn.Module | None, fold: int = 1) -> torch.Tensor:
        """Record ``t`` (batch in ``bdim``; ``fold`` consecutive rows per sample when
        the batch is folded, batch-major) and apply activation ``act``."""
        rec = self._rec[0].values
        if rec is not None:
            z = t.detach().movedim(bdim, 0)
            rec.append(z.reshape(z.shape[0] // fold, -1).to(torch.float64, copy=True))
        return mod(t) if mod is not None else ACTS[act][1](t)


def _act_module(act: str):
    make = ACTS[act][0]
    return make() if make is not None else None


class ActInput(_Part):
    def __init__(self, rec, b: Block, shape):
        super().__init__(rec)
        self.act = b.get("act")
        self.m = _act_module(self.act)

    def forward(self, x):
        return self.site(x, 0, self.act, self.m)


class Conv(_Part):
    def __init__(self, rec, b: Block, shape):
        super().__init__(rec)
        c, _, _ = shape
        k = b.get("k")
        self.conv = nn.Conv2d(c, b.get("cout"), k, padding=k // 2)
        self.bn = nn.BatchNorm2d(b.get("cout")) if b.get("bn") else None
        self.layout, self.act = b.get("layout"), b.get("act")
        self.m = _act_module(self.act)

    def forward(self, x):
        if self.layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        y = self.conv(x)
        if self.bn is not None:
            y = self.bn(y)
        if self.layout == "nhwc":
            return self.site(y.permute(0, 2, 3, 1), 0, self.act, self.m).permute(0, 3, 1, 2)
        if self.layout == "cbhw":
            return self.site(y.transpose(0, 1), 1, self.act, self.m).transpose(0, 1)
        return self.site(y, 0, self.act, self.m)


class Pool(_Part):
    def __init__(self, rec, b: Block, shape):
        super().__init__(rec)
        self.pool = nn.MaxPool2d(2) if b.get("pool") == "max" else nn.AvgPool2d(2)

    def forward(self, x):
        return self.pool(x)


class ResBlock(_Part):
    def __init__(self, rec, b: Block, shape):
        super().__init__(rec)
        c = shape[0]
        self.c1, self.c2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.b1, self.b2 = nn.BatchNorm2d(c), nn.BatchNorm2d(c)
        self.a1, self.a2 = b.get("act1"), b.get("act2")
        self.m1, self.m2 = _act_module(self.a1), _act_module(self.a2)

    def forward(self, x):
        h = self.site(self.b1(self.c1(x)), 0, self.a1, self.m1)
        return self.site(self.b2(self.c2(h)) + x, 0, self.a2, self.m2)


class Tokens(_Part):
    def forward(self, x):  # (B, C, H, W) -> (B, H*W, C)
        return x.flatten(2).transpose(1, 2)


class Flatten(_Part):
    def forward(self, x):
        return x.flatten(1)


class MeanPool(_Part):
    def forward(self, x):  # (B, T, E) -> (B, E)
        return x.mean(1)


class TokenMLP(_Part):
    """``x + W2 act(W1 LN(x))`` on ``(B, T, E)`` with the site in ``layout``."""

    def __init__(self, rec, b: Block, shape):
        super().__init__(rec)
        _, e = shape
        self.ln = nn.LayerNorm(e)
        self.l1, self.l2 = nn.Linear(e, b.get("hidden")), nn.Linear(b.get("hidden"), e)
        self.layout, self.act = b.get("layout"), b.get("act")
        self.m = _act_module(self.act)

    def forward(self, x):
        B, T, E = x.shape
        h = self.ln(x)
        if self.layout == "seqfirst":
            z = self.site(self.l1(h.transpose(0, 1)), 1, self.act, self.m).transpose(0, 1)
        elif self.layout == "folded":
            z = self.site(self.l1(h.reshape(B * T, E)), 0, self.act, self.m, fold=T).reshape(B, T, -1)
        else:
            z = self.site(self.l1(h), 0, self.act, self.m)
        return x + self.l2(z)


class Attn(TokenMLP):
    """Pre-LN attention (``nn.MultiheadAttention``, batch- or sequence-first), then
    the token MLP."""

    def __init__(self, rec, b: Block, shape):
        super().__init__(rec, b, shape)
        e = shape[1]
        self.ln0 = nn.LayerNorm(e)
        self.batch_first = bool(b.get("batch_first"))
        self.attn = nn.MultiheadAttention(e, b.get("heads"), batch_first=self.batch_first)

    def forward(self, x):
        h = self.ln0(x)
        if self.batch_first:
            a = self.attn(h, h, h, need_weights=False)[0]
        else:
            s = h.transpose(0, 1)  # (T, B, E)
            a = self.attn(s, s, s, need_weights=False)[0].transpose(0, 1)
        return super().forward(x + a)


class Conv1dBlock(_Part):
    def __init__(self, rec, b: Block, shape):
        super().__init__(rec)
        _, e = shape
        k = b.get("k")
        self.conv = nn.Conv1d(e, b.get("cout"), k, padding=k // 2)
        self.act = b.get("act")
        self.m = _act_module(self.act)

    def forward(self, x):  # (B, T, E) -> (B, E, T) -> conv -> (B, T, E')
        return self.site(self.conv(x.transpose(1, 2)), 0, self.act, self.m).transpose(1, 2)


class LinearBlock(_Part):
    def __init__(self, rec, b: Block, shape):
        super().__init__(rec)
        self.lin = nn.Linear(shape[0], b.get("fout"))
        self.bn = nn.BatchNorm1d(b.get("fout")) if b.get("bn") else None
        self.layout, self.act = b.get("layout"), b.get("act")
        self.m = _act_module(self.act)

    def forward(self, x):
        if self.layout == "ff":  # features-first: (F', B) = b + W x^T
            z = torch.addmm(self.lin.bias[:, None], self.lin.weight, x.t())
            if self.bn is not None:
                z = self.bn(z.t()).t()
            return self.site(z, 1, self.act, self.m).t()
        z = self.lin(x)
        if self.bn is not None:
            z = self.bn(z)
        return self.site(z, 0, self.act, self.m)


class ResMLP(_Part):
    def __init__(self, rec, b: Block, shape):
        super().__init__(rec)
        f = shape[0]
        self.l1, self.l2 = nn.Linear(f, b.get("hidden")), nn.Linear(b.get("hidden"), f)
        self.act = b.get("act")
        self.m = _act_module(self.act)

    def forward(self, x):
        return x + self.l2(self.site(self.l1(x), 0, self.act, self.m))


PARTS = {
    "act_input": ActInput, "conv": Conv, "pool": Pool, "resblock": ResBlock, "tokens": Tokens,
    "flatten": Flatten, "meanpool": MeanPool, "tokmlp": TokenMLP, "attn": Attn, "conv1d": Conv1dBlock,
    "linear": LinearBlock, "resmlp": ResMLP,
}


def out_shape(kind: str, shape: tuple, b: Block) -> tuple[str, tuple]:
    """State kind and shape after block ``b``."""
    n = b.name
    if n == "conv":
        return "img", (b.get("cout"), *shape[1:])
    if n == "pool":
        return "img", (shape[0], shape[1] // 2, shape[2] // 2)
    if n == "tokens":
        return "seq", (shape[1] * shape[2], shape[0])
    if n == "flatten":
        return "flat", (math.prod(shape),)
    if n == "meanpool":
        return "flat", (shape[1],)
    if n == "conv1d":
        return "seq", (shape[0], b.get("cout"))
    if n == "linear":
        return "flat", (b.get("fout"),)
    return kind, shape


class FuzzModel(nn.Module):
    """The model of a :class:`ModelSpec`: blocks, then flatten and a ``Linear(F, 3)``
    head.  ``recorder.values`` switches site recording on (a list) or off (``None``)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.recorder = Recorder()
        torch.manual_seed(spec.seed)
        parts, kind, shape = [], spec.kind, spec.shape
        for b in spec.blocks:
            parts.append(PARTS[b.name](self.recorder, b, shape))
            kind, shape = out_shape(kind, shape, b)
        self.body = nn.Sequential(*parts)
        self.head = nn.Linear(math.prod(shape), 3)
        g = torch.Generator().manual_seed(spec.seed + 1)
        for m in self.modules():  # BatchNorm that is not the identity in eval mode
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.data.uniform_(0.5, 1.5, generator=g)
                m.bias.data.normal_(0, 0.3, generator=g)
        self.train(spec.train_mode)

    def forward(self, x):
        return self.head(self.body(x).flatten(1))

    def record(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Run ``x`` ``(B, *S)`` and return each site's pre-activation, ``(B, neurons)``
        float64, in call order."""
        self.recorder.values = []
        try:
            self(x)
            return self.recorder.values
        finally:
            self.recorder.values = None


def build(spec: ModelSpec) -> FuzzModel:
    return FuzzModel(spec)


# ---------------------------------------------------------------------------
# The hypothesis strategy
# ---------------------------------------------------------------------------

ACT_NAMES = sorted(ACTS)


@st.composite
def model_specs(draw, safe: bool = True, max_blocks: int = 4) -> ModelSpec:
    """A random :class:`ModelSpec` with at least one site.

    ``safe``: no folded batch, and every non-batch size of a batch-not-first site is
    odd (so it never equals the vertex-batch size; issue 11 item 1)."""
    kind = draw(st.sampled_from(["img", "seq", "flat"]))
    if kind == "img":
        shape = (draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    elif kind == "seq":
        shape = (draw(st.integers(1, 5)), draw(st.integers(1, 8)))
    else:
        shape = (draw(st.integers(1, 12)),)
    in_kind, in_shape = kind, shape
    act = st.sampled_from(ACT_NAMES)
    blocks = []
    if draw(st.integers(0, 5)) == 0:
        blocks.append(Block("act_input", (("act", draw(act)),)))
    n_sites = len(blocks)
    for _ in range(draw(st.integers(1, max_blocks))):
        if kind == "img":
            name = draw(st.sampled_from(["conv", "conv", "pool", "resblock", "tokens", "flatten"]))
            if name == "pool" and min(shape[1:]) < 2:
                name = "conv"
            if name == "conv":
                layout = draw(st.sampled_from(["nchw", "channels_last", "nhwc", "cbhw"]))
                cout = draw(st.integers(1, 5))
                if layout == "cbhw" and safe:
                    cout |= 1
                    if shape[1] % 2 == 0 or shape[2] % 2 == 0:
                        layout = "nchw"
                b = Block("conv", (("act", draw(act)), ("bn", draw(st.booleans())), ("cout", cout),
                                   ("k", draw(st.sampled_from([1, 3]))), ("layout", layout)))
            elif name == "pool":
                b = Block("pool", (("pool", draw(st.sampled_from(["max", "avg"]))),))
            elif name == "resblock":
                b = Block("resblock", (("act1", draw(act)), ("act2", draw(act))))
            else:
                b = Block(name)
        elif kind == "seq":
            name = draw(st.sampled_from(["attn", "tokmlp", "conv1d", "meanpool", "flatten"]))
            if name in ("attn", "tokmlp"):
                layouts = ["batch", "seqfirst"] + ([] if safe else ["folded"])
                layout = draw(st.sampled_from(layouts))
                hidden = draw(st.integers(1, 9))
                if layout == "seqfirst" and safe:
                    hidden |= 1
                    if shape[0] % 2 == 0:
                        layout = "batch"
                params = [("act", draw(act)), ("hidden", hidden), ("layout", layout)]
                if name == "attn":
                    e = shape[1]
                    heads = draw(st.sampled_from([h for h in range(1, e + 1) if e % h == 0]))
                    params += [("batch_first", draw(st.booleans())), ("heads", heads)]
                b = Block(name, tuple(sorted(params)))
            elif name == "conv1d":
                b = Block("conv1d", (("act", draw(act)), ("cout", draw(st.integers(1, 6))),
                                     ("k", draw(st.sampled_from([1, 3])))))
            else:
                b = Block(name)
        else:
            name = draw(st.sampled_from(["linear", "linear", "resmlp"]))
            if name == "linear":
                layout = draw(st.sampled_from(["bf", "ff"]))
                fout = draw(st.integers(1, 12))
                if layout == "ff" and safe:
                    fout |= 1
                b = Block("linear", (("act", draw(act)), ("bn", draw(st.booleans())), ("fout", fout),
                                     ("layout", layout)))
            else:
                b = Block("resmlp", (("act", draw(act)), ("hidden", draw(st.integers(1, 9)))))
        blocks.append(b)
        n_sites += sum(1 for k, _ in b.params if k.startswith("act"))
        kind, shape = out_shape(kind, shape, b)
    if n_sites == 0:  # lcfast refuses a model without sites: end with a linear site
        if kind != "flat":
            blocks.append(Block("flatten"))
            kind, shape = out_shape(kind, shape, blocks[-1])
        blocks.append(Block("linear", (("act", draw(act)), ("bn", False), ("fout", draw(st.integers(1, 8))),
                                       ("layout", "bf"))))
    return ModelSpec(kind=in_kind, shape=in_shape, blocks=tuple(blocks), seed=draw(st.integers(0, 2**16)),
                     train_mode=draw(st.booleans()))
