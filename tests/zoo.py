"""Small models shared by the tests (every backend is checked on these).

Each factory is seeded so that a model is the same in every test that builds it.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from lcfast.train import models


def _seeded(fn):
    def wrap(*a, seed=0, **k):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return fn(*a, **k)
    wrap.__name__ = fn.__name__
    return wrap


@_seeded
def mlp(d_in=20, width=33, depth=3, d_out=5, act=nn.ReLU):
    """``(N, d_in) -> (N, d_out)``: ``depth`` hidden layers (Linear + ``act()``) of a
    non-power-of-two width, then a Linear output (:func:`lcfast.train.models.mlp`)."""
    return models.mlp(d_in, width, depth, d_out, act)


@_seeded
def cnn(in_ch=3, width=12, n_cls=10):
    """``(N, 3, H, W) -> (N, n_cls)``: conv/ReLU/max-pool CNN with BatchNorm."""
    m = nn.Sequential(
        nn.Conv2d(in_ch, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.LazyLinear(n_cls),
    )
    m(torch.zeros(2, in_ch, 16, 16))  # materialise the lazy layer for 16x16 inputs
    randomize_bn(m)
    return m


class FunctionalNet(nn.Module):
    """Activations only in functional/method form: ``F.relu``, ``torch.tanh``,
    ``x.relu()``, ``F.gelu``, ``F.leaky_relu``."""

    def __init__(self, d_in=10, width=17):
        super().__init__()
        self.a = nn.Linear(d_in, width)
        self.b = nn.Linear(width, width)
        self.c = nn.Linear(width, width)
        self.d = nn.Linear(width, 3)

    def forward(self, x):
        h = F.relu(self.a(x))
        h = torch.tanh(self.b(h)).relu()
        h = F.leaky_relu(self.c(h), 0.1) + F.gelu(h)
        return self.d(h)


functional_net = _seeded(FunctionalNet)


def randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters for every BatchNorm."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


@_seeded
def resnet18(n_cls=10):
    return randomize_bn(torchvision.models.resnet18(num_classes=n_cls))


@_seeded
def resnet50(n_cls=10):
    return randomize_bn(torchvision.models.resnet50(num_classes=n_cls))


@_seeded
def small_vit(n_cls=10):
    """torchvision VisionTransformer: image 32, patch 8, 2 layers, GELU MLP blocks."""
    from torchvision.models.vision_transformer import VisionTransformer
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=24,
                             mlp_dim=40, num_classes=n_cls)


def copy_float64(model: nn.Module) -> nn.Module:
    import copy
    return copy.deepcopy(model).double()
