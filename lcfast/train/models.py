"""The models of the paper's experiments (Humayun et al. 2024), in plain PyTorch.

* :func:`mlp`: the MNIST MLP (Linear/activation stack; ``depth`` counts *hidden*
  layers, i.e. activations, everywhere in lcfast: the default ``depth=4`` is
  784-200x4-10, four hidden ReLU layers of width 200 and a 10-way output layer),
  with an init scale (x8 in the paper's Figure 3).
* :func:`paper_cnn`: a 5 conv + 2 linear CNN for 32x32 images (BatchNorm optional).
* :func:`preact_resnet18`: pre-activation ResNet18 of base width 16, no BatchNorm.
* :class:`ModAddTransformer`: a one-layer transformer for ``a + b mod p`` whose LC is
  measured on its GELU MLP block with neighbourhoods in embedding space
  (:meth:`ModAddTransformer.embedded` is the module that takes embeddings).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn

__all__ = ["mlp", "paper_cnn", "preact_resnet18", "ModAddTransformer", "modadd_transformer", "ACTIVATIONS"]

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
}


def _act(act) -> nn.Module:
    """A fresh activation module from a name in ``ACTIVATIONS`` or a zero-argument factory."""
    if isinstance(act, str) and act.lower() in ACTIVATIONS:
        return ACTIVATIONS[act.lower()]()
    if callable(act) and not isinstance(act, (str, nn.Module)):
        m = act()
        if isinstance(m, nn.Module):
            return m
    raise ValueError(f"act must be one of {sorted(ACTIVATIONS)} or a callable returning an nn.Module, got {act!r}")


def _pos_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    return v


@torch.no_grad()
def _scale_init(model: nn.Module, init_scale: float) -> None:
    if isinstance(init_scale, bool) or not isinstance(init_scale, (int, float)) or not math.isfinite(init_scale) \
            or init_scale <= 0:
        raise ValueError(f"init_scale must be a finite number > 0, got {init_scale!r}")
    if init_scale != 1.0:
        for p in model.parameters():
            p.mul_(float(init_scale))


def mlp(in_dim: int = 784, width: int = 200, depth: int = 4, out_dim: int = 10,
        act: str | Callable[[], nn.Module] = "relu", init_scale: float = 1.0) -> nn.Sequential:
    """The paper's MNIST MLP: ``depth`` hidden layers (Linear + ``act``) of width
    ``width``, then a Linear output layer (default 784-200x4-10, i.e.
    784-200-200-200-200-10: four hidden ReLU layers).

    ``depth`` counts hidden layers (= activation sites) everywhere in lcfast (this
    function, :mod:`lcfast.zoo`, the grok presets, the tests' zoo); the model has
    ``depth + 1`` Linear layers.  Every parameter of the PyTorch default
    initialisation is multiplied by ``init_scale`` (the Omnigrok / paper Figure 3
    recipe, e.g. 8).

    Args:
        in_dim: input features ``D`` (784 for flattened MNIST).
        width: hidden width.
        depth: number of hidden layers (>= 1).
        out_dim: output features (classes).
        act: ``"relu"``, ``"leaky_relu"``, ``"gelu"``, ``"silu"``, ``"elu"``, ``"tanh"``,
            or a callable returning a fresh activation module (e.g. ``nn.ReLU``).
        init_scale: multiplier of the initial weights and biases (> 0).

    Returns:
        ``nn.Sequential`` of ``Linear, act, ..., Linear`` (``2 * depth + 1`` modules)
        mapping ``(N, in_dim)`` to ``(N, out_dim)``; flatten images first
        (``x.flatten(1)``).

    Example:
        >>> m = mlp()
        >>> m(torch.zeros(2, 784)).shape
        torch.Size([2, 10])
    """
    for name, v in (("in_dim", in_dim), ("width", width), ("depth", depth), ("out_dim", out_dim)):
        _pos_int(name, v)
    _act(act)
    layers: list[nn.Module] = []
    d = in_dim
    for _ in range(depth):
        layers += [nn.Linear(d, width), _act(act)]
        d = width
    layers.append(nn.Linear(d, out_dim))
    model = nn.Sequential(*layers)
    _scale_init(model, init_scale)
    return model


def paper_cnn(in_channels: int = 3, num_classes: int = 10, batchnorm: bool = False) -> nn.Sequential:
    """A 5 conv + 2 linear ReLU CNN for ``32 x 32`` inputs (the paper's CIFAR CNN shape).

    Convs (3x3, padding 1): 32, 64 (stride 2), 64, 128 (stride 2), 128 (stride 2)
    channels, each followed by optional BatchNorm and ReLU; then Flatten,
    Linear(2048, 256), ReLU, Linear(256, num_classes).

    Args:
        in_channels: input channels ``C``.
        num_classes: outputs.
        batchnorm: add ``BatchNorm2d`` after every conv.

    Returns:
        ``nn.Sequential`` mapping ``(N, C, 32, 32)`` to ``(N, num_classes)``.
    """
    _pos_int("in_channels", in_channels)
    _pos_int("num_classes", num_classes)
    spec = [(32, 1), (64, 2), (64, 1), (128, 2), (128, 2)]
    layers: list[nn.Module] = []
    c = in_channels
    for out, stride in spec:
        layers.append(nn.Conv2d(c, out, 3, stride=stride, padding=1, bias=not batchnorm))
        if batchnorm:
            layers.append(nn.BatchNorm2d(out))
        layers.append(nn.ReLU())
        c = out
    layers += [nn.Flatten(), nn.Linear(128 * 4 * 4, 256), nn.ReLU(), nn.Linear(256, num_classes)]
    return nn.Sequential(*layers)


class PreActBlock(nn.Module):
    """Pre-activation basic block without BatchNorm: ``x + conv(relu(conv(relu(x))))``.

    ``(N, c_in, H, W) -> (N, c_out, H / stride, W / stride)``.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride)

    def forward(self, x):
        out = self.relu1(x)
        sc = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.relu2(out))
        return out + sc


class PreActResNet18(nn.Module):
    """Pre-activation ResNet18 (2-2-2-2 blocks) without BatchNorm.

    ``(N, C, H, W) -> (N, num_classes)``; stage widths ``w, 2w, 4w, 8w``.
    """

    def __init__(self, width: int = 16, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        _pos_int("width", width)
        _pos_int("num_classes", num_classes)
        _pos_int("in_channels", in_channels)
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        stages = []
        c = width
        for i, mult in enumerate((1, 2, 4, 8)):
            out = width * mult
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(PreActBlock(c, out, stride), PreActBlock(out, out, 1)))
            c = out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = self.pool(self.relu(out)).flatten(1)
        return self.fc(out)


def preact_resnet18(width: int = 16, num_classes: int = 10, in_channels: int = 3) -> PreActResNet18:
    """Pre-activation ResNet18 of base width ``width`` without BatchNorm (the paper's
    CIFAR ResNet).  ``(N, in_channels, H, W) -> (N, num_classes)``."""
    return PreActResNet18(width, num_classes, in_channels)


# ---------------------------------------------------------------------------
# Modular addition transformer
# ---------------------------------------------------------------------------


class _Attention(nn.Module):
    """Causal multi-head self-attention. ``(N, T, d) -> (N, T, d)``."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.h = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x):
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.h)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        att = att.masked_fill(mask, float("-inf")).softmax(-1)
        return self.out((att @ v).transpose(1, 2).reshape(n, t, d))


class _Block(nn.Module):
    """Attention + GELU MLP, residual, no LayerNorm (as in Nanda et al.'s grokking model)."""

    def __init__(self, d_model: int, n_heads: int, d_mlp: int):
        super().__init__()
        self.attn = _Attention(d_model, n_heads)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_mlp), nn.GELU(), nn.Linear(d_mlp, d_model))

    def forward(self, x):
        x = x + self.attn(x)
        return x + self.mlp(x)


class _Embedded(nn.Module):
    """The transformer from embeddings on: ``(N, 3, d_model)`` float -> ``(N, p)`` logits.

    Shares parameters with its :class:`ModAddTransformer`; measure LC on it (its
    sites are the GELU calls of the MLP blocks)."""

    def __init__(self, parent: "ModAddTransformer"):
        super().__init__()
        self.blocks = parent.blocks
        self.unembed = parent.unembed

    def forward(self, h):
        for b in self.blocks:
            h = b(h)
        return self.unembed(h[:, -1])


class ModAddTransformer(nn.Module):
    """Transformer for ``a + b mod p`` on the sequence ``[a, b, =]``.

    Token ids ``0..p-1`` are numbers, ``p`` is ``=``.  Learned token and position
    embeddings, ``n_layers`` blocks of attention + GELU MLP (no LayerNorm), logits
    read at the last position.

    Args:
        p: modulus (outputs ``p`` classes).
        d_model, n_heads, d_mlp, n_layers: sizes.

    Shapes:
        ``forward``: ``(N, 3)`` long tokens -> ``(N, p)`` logits.
        ``embed``: ``(N, 3)`` long -> ``(N, 3, d_model)``.
        ``embedded``: module ``(N, 3, d_model)`` -> ``(N, p)`` (for LC in embedding space).
    """

    def __init__(self, p: int = 97, d_model: int = 128, n_heads: int = 4, d_mlp: int = 512, n_layers: int = 1):
        super().__init__()
        for name, v in (("p", p), ("d_model", d_model), ("n_heads", n_heads), ("d_mlp", d_mlp),
                        ("n_layers", n_layers)):
            _pos_int(name, v)
        self.p = p
        self.tok = nn.Embedding(p + 1, d_model)
        self.pos = nn.Parameter(torch.randn(3, d_model) / math.sqrt(d_model))
        nn.init.normal_(self.tok.weight, std=1 / math.sqrt(d_model))
        self.blocks = nn.ModuleList([_Block(d_model, n_heads, d_mlp) for _ in range(n_layers)])
        self.unembed = nn.Linear(d_model, p, bias=False)
        # a plain attribute (not a submodule) so parameters are not registered twice
        object.__setattr__(self, "_embedded", _Embedded(self))

    @property
    def embedded(self) -> nn.Module:
        """The module from embeddings to logits, sharing this model's parameters."""
        return self._embedded

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(N, 3)`` long -> ``(N, 3, d_model)`` token + position embeddings."""
        if tokens.dim() != 2 or tokens.shape[1] != 3 or tokens.dtype.is_floating_point:
            raise ValueError(f"tokens must be an integer tensor of shape (N, 3), got {tuple(tokens.shape)} "
                             f"{tokens.dtype}")
        return self.tok(tokens) + self.pos

    def forward(self, tokens):
        return self._embedded(self.embed(tokens))


def modadd_transformer(p: int = 97, d_model: int = 128, n_heads: int = 4, d_mlp: int = 512,
                       n_layers: int = 1) -> ModAddTransformer:
    """A :class:`ModAddTransformer` (``(N, 3)`` tokens -> ``(N, p)`` logits)."""
    return ModAddTransformer(p, d_model, n_heads, d_mlp, n_layers)
