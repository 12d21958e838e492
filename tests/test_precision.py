"""float32 counts equal float64 counts on the zoo models (issue: foundation)."""
import pytest
import torch
import torch.nn as nn

import lcfast
import zoo

MODELS = {
    "mlp-relu": (lambda: zoo.mlp(act=nn.ReLU), (20,)),
    "mlp-leaky": (lambda: zoo.mlp(act=nn.LeakyReLU), (20,)),
    "mlp-gelu": (lambda: zoo.mlp(act=nn.GELU), (20,)),
    "cnn-maxpool": (zoo.cnn, (3, 16, 16)),
    "functional": (zoo.functional_net, (10,)),
    "resnet18": (zoo.resnet18, (3, 32, 32)),
    "resnet50": (zoo.resnet50, (3, 32, 32)),
    "vit": (zoo.small_vit, (3, 32, 32)),
}


@pytest.mark.parametrize("radius", [1e-3, 5e-3])
@pytest.mark.parametrize("name", list(MODELS))
def test_float32_equals_float64(name, radius):
    make, shape = MODELS[name]
    model = make()
    n = 3 if name.startswith("resnet") else 64
    x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(7))
    P = 4 if name in ("resnet50",) else 6
    r32 = lcfast.local_complexity(model, x, radius=radius, n_dirs=P, backend="reference")
    r64 = lcfast.local_complexity(model, x, radius=radius, n_dirs=P, backend="reference", dtype=torch.float64)
    assert r32.sites == r64.sites
    assert r32.meta["dtype"] == "float32" and r64.meta["dtype"] == "float64"
    assert torch.equal(r32.counts, r64.counts)
    assert r64.counts.sum() > 0  # the comparison is not vacuous
