"""Low precision that tells the truth: bfloat16 / float16 offsets with a float32 centre
against float64, at r in {1e-4, 1e-3, 5e-3} (issue 10, item 3).

Criterion (summed over the points): total LC within max(1%, 2 neurons) of float64,
every site within max(2%, 2 neurons).  Random-init models put few hyperplanes near a
random point, so the MLP, CNN and ResNet18 here have their first layer *placed* near
the data (bias or BatchNorm mean chosen so that many first-site neurons pass within
~1e-3 of the points, as training does near data): hundreds of crossings at these
radii, and a naive bfloat16 vertex push is far off (the last test shows it fails the
same check, so the check can fail).
"""
from __future__ import annotations

import pytest
import torch

import zoo
import lcfast
from lcfast.api import naive_low_precision
from lcfast.engine.offsets import offsets_local_complexity
from lcfast.neighborhood import random_frames
from lcfast.testing import float64_oracle, low_precision_criterion as within

RADII = (1e-4, 1e-3, 5e-3)




def placed_mlp():
    """MLP 784-200x4-10; first-layer hyperplanes within ~3e-4 of 8 points near x0."""
    g = torch.Generator().manual_seed(1)
    m = zoo.mlp(784, 200, 4, 10)
    x0 = torch.rand(784, generator=g)
    x = x0 + 1e-3 * torch.randn(8, 784, generator=g)
    with torch.no_grad():
        m[0].bias.copy_(-m[0].weight @ x0 + 3e-4 * torch.randn(200, generator=g))
    return m, x


def _flat_image(g, n, hw):
    x0 = torch.rand(3, 1, 1, generator=g).expand(3, hw, hw)
    return x0, x0 + 1e-3 * torch.randn(n, 3, hw, hw, generator=g)


def placed_cnn():
    """zoo.cnn (conv, BatchNorm, max pooling); conv biases put the first site's interior
    neurons near zero at a flat image x0, points are x0 plus 1e-3 noise."""
    g = torch.Generator().manual_seed(2)
    m = zoo.cnn()
    x0, x = _flat_image(g, 4, 16)
    conv, bn = m[0], m[1]
    with torch.no_grad():
        # bn(conv(x0)) = 0 in the interior when conv(x0) = mean - beta * sqrt(var + eps) / gamma
        target = bn.running_mean - bn.bias * torch.sqrt(bn.running_var + bn.eps) / bn.weight
        s = (conv.weight * x0[:, :3, :3]).sum((1, 2, 3))
        conv.bias.copy_(target - s + 1e-4 * torch.randn(conv.out_channels, generator=g))
    return m, x


def placed_resnet18():
    """zoo.resnet18 at 32x32; bn1's running mean puts the stem's interior neurons near zero."""
    g = torch.Generator().manual_seed(3)
    m = zoo.resnet18()
    x0, x = _flat_image(g, 2, 32)
    with torch.no_grad():
        s = (m.conv1.weight * x0[:, :7, :7]).sum((1, 2, 3))
        bn = m.bn1
        bn.running_mean.copy_(s + bn.bias * torch.sqrt(bn.running_var + bn.eps) / bn.weight
                              + 1e-4 * torch.randn(64, generator=g))
    return m, x


def vit():
    return zoo.small_vit(), torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))


CASES = {"mlp": (placed_mlp, 25), "cnn": (placed_cnn, 10), "resnet18": (placed_resnet18, 8), "vit": (vit, 10)}


def _oracle(name):
    make, P = CASES[name]
    model, x = make()
    dirs = random_frames(x.shape[1:], P, 0, torch.arange(x.shape[0]))
    return model, x, dirs


@pytest.mark.parametrize("name", list(CASES))
def test_low_precision_offsets_match_float64(name):
    model, x, dirs = _oracle(name)
    seen = 0
    for r in RADII:
        ref = float64_oracle(model, x, radius=r, directions=dirs, dtype=torch.float64).counts
        seen += int(ref.sum())
        for dtype in (torch.bfloat16, torch.float16):
            res = offsets_local_complexity(model, x, radius=r, directions=dirs, dtype=dtype)
            why = within(res.counts, ref)
            assert why is None, f"{name} r={r} {dtype}: {why}"
            assert res.meta["offsets_dtype"] == str(dtype)[6:] and res.meta["centre_dtype"] == "float32"
    if name != "vit":
        assert seen >= 100  # the placed models cross many neurons: the check has teeth


@pytest.mark.parametrize("name", ["mlp", "resnet18"])
def test_naive_low_precision_push_fails_the_same_check(name):
    model, x, dirs = _oracle(name)
    failures = 0
    for r in RADII:
        ref = float64_oracle(model, x, radius=r, directions=dirs, dtype=torch.float64).counts
        with naive_low_precision():  # the refused naive push, allowed here to show its noise
            naive = lcfast.local_complexity(model, x, radius=r, directions=dirs, backend="reference",
                                            dtype=torch.bfloat16)
        failures += within(naive.counts, ref) is not None
    assert failures >= 2


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_several_radii_in_one_pass(name):
    """radius=[...]: the antisymmetric points' counts at the smaller radii come from the
    pass at the largest radius; the rest are rerun.  Each radius is checked against
    float64 with the same criterion, and against the single-radius float32 run.
    (Unplaced zoo models: some points stay antisymmetric, so the one-pass path runs.)"""
    make, shape = (zoo.mlp, (20,)) if name == "mlp" else (zoo.cnn, (3, 16, 16))
    model = make()
    x = torch.randn(16, *shape, generator=torch.Generator().manual_seed(5))
    dirs = random_frames(shape, 6, 0, torch.arange(16))
    radii = [0.003, 0.01, 0.001] if name == "cnn" else [0.01, 0.03, 0.003]
    many = offsets_local_complexity(model, x, radius=radii, directions=dirs, dtype=torch.float32)
    assert [m.meta["radius"] for m in many] == radii
    assert sum(m.meta["scaled_points"] for m in many) > 0  # the one-pass path was used
    seen = 0
    for r, res in zip(radii, many):
        oracle = float64_oracle(model, x, radius=r, directions=dirs, dtype=torch.float64)
        assert torch.equal(res.counts, oracle.counts)
        seen += int(oracle.counts.sum())
    assert seen > 0


def test_local_complexity_routes_bf16_to_offsets():
    """``lcfast.local_complexity(dtype=bf16)`` (backend auto) runs the offsets engine with a
    float64 centre (lcfast.engine.low_precision_route says why): totals within max(1%, 2)
    of float64, rows per point reported."""
    import lcfast
    model = zoo.cnn()
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    exact = lcfast.local_complexity(model, x, radius=0.05, n_dirs=6, backend="reference", dtype=torch.float64)
    res = lcfast.local_complexity(model, x, radius=0.05, n_dirs=6, dtype=torch.bfloat16)
    assert res.meta["backend"] == "offsets" and res.meta["offsets_dtype"] == "bfloat16"
    assert res.meta["centre_dtype"] == "float64" and res.meta["dtype"] == "bfloat16"
    assert 1 + 6 <= res.meta["rows_per_point"] <= 1 + 2 * 6  # centre + P antisymmetric rows, + P once broken
    tot, ref = int(res.counts.sum()), int(exact.counts.sum())
    assert ref > 20 and abs(tot - ref) <= max(0.01 * ref, 2), (tot, ref)
