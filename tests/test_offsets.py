"""The centre + offsets engine against the float64 vertex push (lcfast.testing's oracle):
the zoo models, torchvision resnet18 / resnet50 / vit_b_16 (small inputs), float64 and
float32 offsets; the antisymmetric breaks; bad input; the model left as found."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision

import zoo
from lcfast.engine.offsets import OffsetsBackend, OffsetsError, offsets_local_complexity
from lcfast.neighborhood import random_frames
from lcfast.sites import SiteSpec
from lcfast.testing import assert_counts_match, float64_oracle

MODELS = {
    "mlp": (zoo.mlp, (20,)),
    "mlp_leaky": (lambda: zoo.mlp(act=lambda: nn.LeakyReLU(0.2)), (20,)),
    "mlp_gelu": (lambda: zoo.mlp(act=nn.GELU), (20,)),
    "cnn": (zoo.cnn, (3, 16, 16)),
    "functional_net": (zoo.functional_net, (10,)),
    "resnet18": (zoo.resnet18, (3, 32, 32)),
    "small_vit": (zoo.small_vit, (3, 32, 32)),
}


def _tv(name):
    def make():
        with torch.random.fork_rng():
            torch.manual_seed(0)
            if name == "vit_b_16":
                return torchvision.models.vit_b_16(image_size=32, num_classes=10)
            return zoo.randomize_bn(getattr(torchvision.models, name)(num_classes=10))
    return make


TORCHVISION = {"tv_resnet18": (_tv("resnet18"), (3, 32, 32)), "tv_resnet50": (_tv("resnet50"), (3, 32, 32)),
               "tv_vit_b_16": (_tv("vit_b_16"), (3, 32, 32))}


def _data(shape, n, P, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    return x, random_frames(shape, P, seed, torch.arange(n))


def _check(model, x, dirs, radius, dtype):
    """The offsets engine against float64 with the tolerance rule of ``dtype``."""
    oracle = float64_oracle(model, x, radius=radius, directions=dirs, dtype=dtype)
    res = offsets_local_complexity(model, x, radius=radius, directions=dirs, dtype=dtype)
    assert res.names == oracle.sites and torch.equal(torch.tensor(res.neurons), oracle.neurons)
    assert_counts_match(res.counts, oracle)
    return res, oracle


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(MODELS))
def test_zoo_equals_float64(name, dtype):
    make, shape = MODELS[name]
    model = make()
    nz = 0
    for radius in ((1e-3, 0.5) if "resnet" in name else (1e-3, 0.05, 0.5)):
        x, dirs = _data(shape, 2 if "resnet" in name else 7, 5)
        res, oracle = _check(model, x, dirs, radius, dtype)
        if dtype == torch.float64:
            assert torch.equal(res.counts, oracle.counts)  # no neuron within float64 rounding of zero here
        nz += int(oracle.counts.sum())
    assert nz > 0  # not vacuous


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_torchvision_equals_float64(name):
    make, shape = TORCHVISION[name]
    model = make()
    x, dirs = _data(shape, 2, 3)
    total = 0
    for radius in (1e-2, 0.3):
        res, oracle = _check(model, x, dirs, radius, torch.float32)
        total += int(oracle.counts.sum())
    assert total > 0


def test_rows_per_point_antisymmetric_mlp():
    """No crossing: every op carries P offset rows (1 + P rows per point)."""
    model = zoo.mlp()
    x, dirs = _data((20,), 4, 6)
    res = offsets_local_complexity(model, x, radius=1e-6, directions=dirs, dtype=torch.float64)
    assert res.counts.sum() == 0
    assert res.meta["rows_per_point"] == 1 + 6
    assert res.meta["antisymmetric_points"] == 4 and res.meta["breaks"] == {}
    # a large radius crosses neurons: dense afterwards, the break recorded per point
    res = offsets_local_complexity(model, x, radius=5.0, directions=dirs, dtype=torch.float64)
    assert res.meta["breaks"].get("crossing", 0) == 4 and res.meta["antisymmetric_points"] == 0
    assert 1 + 6 < res.meta["rows_per_point"] <= 1 + 12


class _Residual(nn.Module):
    """Linear -> ReLU -> (x + Linear(ReLU(Linear x))) -> ReLU: a residual add of two
    tensors that carry the same low-rank basis block."""

    def __init__(self, d=12):
        super().__init__()
        self.inp, self.f1, self.f2 = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        return torch.relu(h + self.f2(torch.relu(self.f1(h))))


def test_low_rank_symmetric_part():
    """A point that crosses a few neurons carries ``1 + P + K`` rows (``K`` the crossed
    neurons so far), not ``1 + 2P``; a residual add keeps one set of basis columns for
    the block both operands share; counts and every vertex value equal the vertex push."""
    from lcfast.engine.offsets.runner import input_tensor
    from lcfast.engine.offsets.tensor import OffsetContext
    torch.manual_seed(2)
    model = _Residual().double().eval()
    x, dirs = _data((12,), 1, 8)
    x, dirs, r = x.double(), dirs.double(), 0.2
    with torch.no_grad():
        h = torch.relu(model.inp(input_tensor(x, dirs, r, torch.float64, OffsetContext(1, 8, torch.float64))))
        assert h.coef is not None and h.K == 2  # low rank: two crossed neurons, two unit rows (not 2P)
        g = model.f2(torch.relu(model.f1(h)))
        assert len(g.blocks) == 2 and g.blocks[0] == h.blocks[0]  # the branch crossed neurons too
        out = h + g
        # h's block is g's first block: one set of columns in the sum, not two
        assert out.blocks == g.blocks and out.K == g.K == 4
        v = torch.cat([x + r * dirs[0], x - r * dirs[0]])
        assert torch.allclose(torch.relu(out).vertices(), model(v), rtol=0, atol=1e-13)
    res = offsets_local_complexity(model, x, radius=r, directions=dirs, dtype=torch.float64)
    oracle = float64_oracle(model, x, radius=r, directions=dirs, dtype=torch.float64)
    assert torch.equal(res.counts, oracle.counts) and int(res.counts.sum()) > 0
    assert res.meta["rows_per_point"] < 1 + 2 * 8 and res.meta["symmetric_part"]["low_rank_ops"] > 0


def test_argmax_switch_breaks_antisymmetry():
    """A max-pool window whose argmax at a vertex differs from the centre's, with no
    crossing anywhere: antisymmetry breaks there and the pooled values stay exact."""
    pool = nn.Sequential(nn.MaxPool1d(2), nn.ReLU())
    x = torch.tensor([[[1.0, 0.999, 3.0, 2.0]]], dtype=torch.float64)
    dirs = torch.tensor([[[0.0, 1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0, 0.0]]], dtype=torch.float64)
    res = offsets_local_complexity(pool, x, radius=0.01, directions=dirs, dtype=torch.float64)
    assert res.meta["breaks"] == {"argmax": 1}
    assert res.counts.tolist() == [[0]]
    # values of every vertex equal the vertex push
    from lcfast.engine.offsets.runner import input_tensor
    from lcfast.engine.offsets.tensor import OffsetContext
    ctx = OffsetContext(1, 2, torch.float64)
    with torch.no_grad():
        out = pool(input_tensor(x, dirs, 0.01, torch.float64, ctx))
        v = torch.cat([x + 0.01 * dirs, x - 0.01 * dirs])
        assert torch.allclose(out.vertices(), pool(v), rtol=0, atol=1e-15)
    assert out.s is not None and out.bidx.tolist() == [0]  # broken: a symmetric part


def test_max_pool_exact_ties_are_not_switches():
    """Windows whose tied elements have no offsets (a ReLU's dead zeros, equal constants)
    are cleared without evaluating the vertices, since pooling breaks ties by scan order
    at every vertex as at the centre; a tie with an element that moves is still a switch.
    Values and indices equal pooling the vertices."""
    import torch.nn.functional as F
    from lcfast.engine.offsets.runner import input_tensor
    from lcfast.engine.offsets.tensor import OffsetContext
    # windows (0, 1): zeros, (2, 3): equal constants, (4, 5): 1.0 moving vs 1.0 fixed (a
    # switch at the vertex that lowers element 4), (6, 7): an ordinary window
    x = torch.tensor([[[0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.5, 1.0]]], dtype=torch.float64)
    dirs = torch.zeros(2, 1, 8, dtype=torch.float64)
    dirs[0, 0, 4], dirs[1, 0, 7] = 1.0, 1.0
    r = 0.01
    ctx = OffsetContext(1, 2, torch.float64)
    with torch.no_grad():
        out, idx = F.max_pool1d(input_tensor(x, dirs, r, torch.float64, ctx), 2, return_indices=True)
        v = torch.cat([x + r * dirs, x - r * dirs])
        want, want_idx = F.max_pool1d(v, 2, return_indices=True)
    assert torch.allclose(out.vertices(), want, rtol=0, atol=1e-15) and torch.equal(idx, want_idx)
    assert ctx.breaks == {"argmax": 1} and out.bidx.tolist() == [0]
    # without the moving tie: nothing breaks, and the tied windows keep the first element
    x2 = x.clone()
    x2[0, 0, 4] = 2.0
    ctx = OffsetContext(1, 2, torch.float64)
    with torch.no_grad():
        out, idx = F.max_pool1d(input_tensor(x2, dirs, r, torch.float64, ctx), 2, return_indices=True)
        want, want_idx = F.max_pool1d(torch.cat([x2 + r * dirs, x2 - r * dirs]), 2, return_indices=True)
    assert torch.allclose(out.vertices(), want, rtol=0, atol=1e-15) and torch.equal(idx, want_idx)
    assert ctx.breaks == {} and out.s is None and want_idx[:, 0, :2].eq(torch.tensor([0, 2])).all()


def test_max_pool_indices_materialised_only_when_returned(monkeypatch):
    """``nn.MaxPool2d``/``F.max_pool2d`` without indices: the rule is told (the vertex batch's
    int64 indices would be dropped by ATen) and returns a stride-0 placeholder; asked for,
    the indices are real and equal pooling the vertices."""
    import torch.nn.functional as F
    from lcfast.engine.offsets import nonlinear
    from lcfast.engine.offsets.runner import input_tensor
    from lcfast.engine.offsets.tensor import OffsetContext
    seen = []
    op = torch.ops.aten.max_pool2d_with_indices.default
    real = nonlinear.RULES[op]
    monkeypatch.setitem(nonlinear.RULES, op, lambda *a: seen.append(real(*a)[1]) or (real(*a)))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    d = torch.randn(2, 4, 3, 8, 8, generator=g, dtype=torch.float64)
    for fn in (nn.MaxPool2d(2), lambda t: F.max_pool2d(t, 2), lambda t: torch.max_pool2d(t, 2)):
        ctx = OffsetContext(2, 4, torch.float64)
        with torch.no_grad():
            fn(input_tensor(x, d, 0.1, torch.float64, ctx))
        assert seen[-1].stride() == (0, 0, 0, 0) and not ctx.pool_indices_unused
    ctx = OffsetContext(2, 4, torch.float64)
    with torch.no_grad():
        _, idx = nn.MaxPool2d(2, return_indices=True)(input_tensor(x, d, 0.1, torch.float64, ctx))
        v = torch.cat([x[:, None] + 0.1 * d, x[:, None] - 0.1 * d], 1).reshape(-1, 3, 8, 8)
    assert idx.stride() != (0, 0, 0, 0) and torch.equal(idx, F.max_pool2d(v, 2, return_indices=True)[1])


def test_centre_sign_differs_from_all_vertices():
    """The centre's sign differs from the common sign of all its vertices (no crossing):
    the centre is not the midpoint after a GELU at its minimum.  ReLU must take
    ``relu(z) - relu(c)`` there, not the case split of the centre."""
    lin = nn.Linear(1, 1).double()
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin.bias.fill_(0.1699)  # GELU's minimum is about -0.16997 at -0.7518
    model = nn.Sequential(nn.GELU(), lin, nn.ReLU())
    x = torch.tensor([[-0.7518]], dtype=torch.float64)
    dirs = torch.tensor([[1.0]], dtype=torch.float64)
    res = offsets_local_complexity(model, x, radius=0.5, directions=dirs, dtype=torch.float64)
    oracle = float64_oracle(model, x, radius=0.5, directions=dirs, dtype=torch.float64)
    assert torch.equal(res.counts, oracle.counts) and res.counts.tolist() == [[0, 0]]
    from lcfast.engine.offsets.runner import input_tensor
    from lcfast.engine.offsets.tensor import OffsetContext
    with torch.no_grad():
        pre = model[1](model[0](input_tensor(x, dirs, 0.5, torch.float64, OffsetContext(1, 1, torch.float64))))
        assert bool((pre.c < 0).all()) and bool((pre.vertices() > 0).all())  # the situation under test
        out = model[2](pre)
        v = torch.cat([x + 0.5 * dirs[0], x - 0.5 * dirs[0]])
        assert torch.allclose(out.vertices(), model(v), rtol=0, atol=1e-15)


def test_antisymmetric_centre_is_the_midpoint():
    """While antisymmetric, a centre-sign flip cannot happen: the centre is exactly the
    midpoint of each vertex pair (rounding is monotone), so only crossings break it at a
    ReLU.  Checked on a leaky MLP where every point keeps antisymmetry to the end."""
    model = zoo.mlp(act=lambda: nn.LeakyReLU(0.1))
    x, dirs = _data((20,), 5, 4)
    res = offsets_local_complexity(model, x, radius=1e-5, directions=dirs, dtype=torch.float32)
    assert res.counts.sum() == 0 and res.meta["antisymmetric_points"] == 5


def test_backend_chunk_and_module_sites():
    model = zoo.mlp()
    x, dirs = _data((20,), 6, 5)
    spec = SiteSpec.resolve(model, [nn.Linear])
    with torch.no_grad():
        res = OffsetsBackend(torch.float64).run_chunk(model.double().eval(), x.double(), dirs.double(), 0.1, spec)
    oracle = float64_oracle(model, x, radius=0.1, directions=dirs, sites=[nn.Linear], dtype=torch.float64)
    assert torch.equal(res.counts, oracle.counts)


def test_shared_directions_and_P1():
    model = zoo.cnn()
    x, _ = _data((3, 16, 16), 3, 1)
    for P in (1, 3):
        dirs = random_frames((3, 16, 16), P, 0, torch.arange(1))[0]
        _check(model, x, dirs, 0.2, torch.float64)


def test_model_left_as_found():
    model = zoo.cnn().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, dirs = _data((3, 16, 16), 2, 3)
    offsets_local_complexity(model, x, radius=0.1, directions=dirs, dtype=torch.bfloat16)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_input():
    model = zoo.mlp()
    x, dirs = _data((20,), 2, 3)
    with pytest.raises(ValueError, match="radius"):
        offsets_local_complexity(model, x, radius=0.0, directions=dirs)
    with pytest.raises(ValueError, match="directions"):
        offsets_local_complexity(model, x, radius=0.1, directions=dirs[:, :, :5])
    with pytest.raises(TypeError, match="dtype"):
        offsets_local_complexity(model, x, radius=0.1, directions=dirs, dtype=torch.int32)


class _MixesBatch(nn.Module):
    def forward(self, x):
        return torch.relu(x.cumsum(0))


class _SumsBatch(nn.Module):
    def forward(self, x):
        return torch.relu(x - x.sum(0, keepdim=True))


@pytest.mark.parametrize("model", [_MixesBatch(), _SumsBatch()])
def test_ops_mixing_vertices_raise(model):
    """An op that mixes the vertices of a point is never silently wrong."""
    x, dirs = _data((4,), 2, 2)
    with pytest.raises(OffsetsError):
        offsets_local_complexity(model, x, radius=0.1, directions=dirs)


class _Unknown(nn.Module):
    """``torch.cumsum`` along features has no rule: the verified general fallback."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 6)

    def forward(self, x):
        return torch.relu(self.lin(x).cumsum(1) * 0.5)


def test_unknown_op_general_fallback():
    model = _Unknown()
    x, dirs = _data((6,), 4, 3)
    _check(model, x, dirs, 0.3, torch.float64)


def test_tf32_flag():
    """``tf32=True`` allows TF32 only inside the offsets' linear ops on CUDA (the flags
    are restored after, and the centre's ops never see them); elsewhere a no-op; it
    needs float32 offsets.  (The accuracy it costs is measured by
    benchmarks/gpu_offsets_check.py's ``offsets-tf32`` on a GPU.)"""
    from lcfast.engine.offsets.tensor import OffsetContext
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    ctx = OffsetContext(1, 2, torch.float32, tf32=True)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        with ctx.offset_math(torch.device("cuda")):
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        with ctx.offset_math(torch.device("cpu")), OffsetContext(1, 2, torch.float32).offset_math(torch.device("cuda")):
            assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    model = zoo.mlp()
    x, dirs = _data((20,), 3, 4)
    with pytest.raises(ValueError, match="tf32"):
        offsets_local_complexity(model, x, radius=0.1, directions=dirs, dtype=torch.bfloat16, tf32=True)
    res = offsets_local_complexity(model, x, radius=0.1, directions=dirs, dtype=torch.float32, tf32=True)
    plain = offsets_local_complexity(model, x, radius=0.1, directions=dirs, dtype=torch.float32)
    assert torch.equal(res.counts, plain.counts) and res.meta["tf32_offsets"] is False  # CPU: no TF32
