"""Paper models: shapes, init scale, sites, LC runs on each, bad arguments."""
import pytest
import torch
import torch.nn as nn

import lcfast
from lcfast.train import models


def test_mlp_default_is_784_200x4_10():
    lin = [l for l in models.mlp() if isinstance(l, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in lin] == [(784, 200)] + [(200, 200)] * 3 + [(200, 10)]
    assert sum(isinstance(l, nn.ReLU) for l in models.mlp()) == 4  # depth = hidden layers


def test_mlp_structure_and_shape():
    m = models.mlp(784, 200, 3, 10)
    assert isinstance(m, nn.Sequential)
    lin = [l for l in m if isinstance(l, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in lin] == [(784, 200), (200, 200), (200, 200), (200, 10)]
    assert sum(isinstance(l, nn.ReLU) for l in m) == 3
    assert m(torch.rand(5, 784)).shape == (5, 10)
    res = lcfast.local_complexity(m, torch.rand(3, 784), n_dirs=4)
    assert res.counts.shape == (3, 3) and res.neurons.tolist() == [200, 200, 200]


@pytest.mark.parametrize("act,cls", [("gelu", nn.GELU), ("tanh", nn.Tanh), ("leaky_relu", nn.LeakyReLU)])
def test_mlp_activation(act, cls):
    m = models.mlp(6, 7, 3, 2, act=act)
    assert sum(isinstance(l, cls) for l in m) == 3


def test_mlp_activation_factory():
    m = models.mlp(6, 7, 2, 2, act=lambda: nn.LeakyReLU(0.2))
    acts = [l for l in m if isinstance(l, nn.LeakyReLU)]
    assert len(acts) == 2 and acts[0] is not acts[1] and acts[0].negative_slope == 0.2
    with pytest.raises(ValueError, match="act"):
        models.mlp(act=lambda: 3)


def test_mlp_init_scale_multiplies_every_parameter():
    torch.manual_seed(3)
    a = models.mlp(10, 8, 3, 4)
    torch.manual_seed(3)
    b = models.mlp(10, 8, 3, 4, init_scale=8)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pb, 8 * pa, rtol=0, atol=0)


@pytest.mark.parametrize("kw", [dict(depth=0), dict(width=-1), dict(act="nope"), dict(init_scale=0),
                                dict(init_scale=float("nan"))])
def test_mlp_bad_arguments(kw):
    with pytest.raises(ValueError, match=next(iter(kw)) if "act" not in kw else "act"):
        models.mlp(**kw)


@pytest.mark.parametrize("bn", [False, True])
def test_paper_cnn(bn):
    m = models.paper_cnn(3, 10, batchnorm=bn)
    convs = [l for l in m if isinstance(l, nn.Conv2d)]
    lins = [l for l in m if isinstance(l, nn.Linear)]
    assert len(convs) == 5 and len(lins) == 2
    assert any(isinstance(l, nn.BatchNorm2d) for l in m) == bn
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert models.paper_cnn(1, 7)(torch.rand(1, 1, 32, 32)).shape == (1, 7)


def test_preact_resnet18_no_batchnorm():
    m = models.preact_resnet18(width=16, num_classes=10)
    assert not any(isinstance(l, nn.modules.batchnorm._BatchNorm) for l in m.modules())
    n_blocks = sum(isinstance(l, models.PreActBlock) for l in m.modules())
    n_convs = sum(isinstance(l, nn.Conv2d) and l.kernel_size == (3, 3) for l in m.modules())
    assert n_blocks == 8 and n_convs == 17  # stem + 16 in blocks: ResNet18's 17 conv + 1 fc
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert m.layer4[1].conv2.out_channels == 128
    res = lcfast.local_complexity(m, torch.rand(1, 3, 32, 32), n_dirs=2)
    assert len(res.sites) == 17  # 2 ReLUs per block + the final one


def test_modadd_transformer_shapes_and_embedded_view():
    torch.manual_seed(0)
    m = models.modadd_transformer(p=11, d_model=16, n_heads=4, d_mlp=24)
    tok = torch.tensor([[1, 2, 11], [10, 10, 11]])
    logits = m(tok)
    assert logits.shape == (2, 11)
    h = m.embed(tok)
    assert h.shape == (2, 3, 16)
    torch.testing.assert_close(m.embedded(h), logits)
    # the view shares the parameters and is not registered twice
    assert len(list(m.parameters())) == len({id(p) for p in m.parameters()})
    assert not any(k.startswith("_embedded") for k in m.state_dict())
    res = lcfast.local_complexity(m.embedded, h.detach(), radius=0.01, n_dirs=5)
    assert res.counts.shape == (2, 1) and res.neurons.tolist() == [3 * 24]  # the GELU site, all positions
    with pytest.raises(ValueError, match="tokens"):
        m.embed(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible"):
        models.modadd_transformer(p=5, d_model=10, n_heads=4)
