"""Frames as factors (issue 10 item 5, ``W V = mix (W gauss)``): lcfast.frames'
FactoredFrames multiply out to random_frames bit for bit, and the offsets engine that
takes them (the mix applied after the first dense layer, or to the input where that is
cheaper or the first op is not linear) meets the tolerance rule against float64 on the
frames random_frames gives."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import lcfast
import zoo
from lcfast.engine.offsets import OffsetsBackend
from lcfast.engine.offsets.tensor import Layout, OffsetContext, OffsetTensor, RowMix
from lcfast.frames import FactoredFrames, factorable, factored_frames, random_frames
from lcfast.testing import assert_counts_match, float64_oracle


@pytest.mark.parametrize("shape,P,n", [((784,), 25, 60), ((3, 16, 16), 25, 7), ((40,), 5, 30), ((3, 64, 64), 7, 3)])
def test_factored_frames_are_random_frames(shape, P, n):
    ids = torch.arange(100, 100 + n)
    f = factored_frames(shape, P, 4, ids)
    assert isinstance(f, FactoredFrames) and f.gauss.shape == (n, P, *shape) and f.mix.shape == (n, P, P)
    q = random_frames(shape, P, 4, ids, dtype=torch.float32)
    assert torch.equal(f.dense(), q)
    assert torch.equal(f.dense(torch.float64), random_frames(shape, P, 4, ids))
    # the exact-arithmetic norms of the rows of mix @ gauss (the band's scale), and the
    # mix's rounding scale, which bounds them (|mix| |gauss| >= |mix gauss|)
    assert (f.row_norms - 1).abs().max() < 2e-6
    assert bool((f.mix_l1 >= f.row_norms * (1 - 1e-12)).all())
    assert bool((f.mix.triu(1) == 0).all())
    sub = f.select(torch.tensor([n - 1, 0]))
    assert torch.equal(sub.dense(), q[[n - 1, 0]])


def test_not_factorable_below_one_pass():
    """Two CholeskyQR passes (D < 8 P) have no single factor: None, and the engine's
    caller draws random_frames."""
    assert not factorable((50,), 25) and factorable((200,), 25)
    assert factored_frames((50,), 25, 0, torch.arange(3)) is None
    assert factored_frames((200,), 25, 0, torch.arange(3)) is not None


FIRST_OPS = {
    # first op dense and narrowing: the mix goes after it
    "mlp": (lambda: nn.Sequential(nn.Flatten(), zoo.mlp(192, 64, 3, 10)), (3, 8, 8), "output of the first linear op"),
    # first op a convolution that widens (3 -> 16 channels): the mix goes on the input
    "cnn": (zoo.cnn, (3, 16, 16), "input"),
    # the first op is a nonlinearity: the input is multiplied out where it is first read
    "relu_first": (lambda: nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(192, 32), nn.ReLU(), nn.Linear(32, 3)),
                   (3, 8, 8), "input"),
    "small_vit": (zoo.small_vit, (3, 32, 32), "input"),
}


@pytest.mark.parametrize("name", list(FIRST_OPS))
def test_default_call_uses_factors_and_meets_tolerance(name):
    make, shape, where = FIRST_OPS[name]
    torch.manual_seed(0)
    model = make()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(12, *shape, generator=g)
    for r in (1e-3, 0.05):
        res = lcfast.local_complexity(model, x, radius=r, n_dirs=6, seed=2, backend="offsets", chunk_size=5)
        assert res.meta["frames_mix"] == where
        oracle = float64_oracle(model, x, radius=r, n_dirs=6, seed=2, dtype=torch.float32)
        assert res.sites == oracle.sites
        assert_counts_match(res.counts, oracle)
    assert int(res.counts.sum()) > 0


def test_mlp_wide_radius_equal_to_multiplied_out_frames():
    """On the MNIST MLP the factored path and the frames multiplied out agree point by
    point (both meet float64's rule; here they are also equal, and report the same band)."""
    torch.manual_seed(1)
    model = zoo.mlp(784, 200, 2, 10).eval()
    x = torch.rand(40, 784)
    f = factored_frames((784,), 25, 0, torch.arange(40))
    from lcfast.sites import SiteSpec
    spec = SiteSpec.resolve(model, "activations")
    with torch.no_grad():
        a = OffsetsBackend().run_chunk(model, x, f, 0.05, spec)
        b = OffsetsBackend().run_chunk(model, x, f.dense(), 0.05, spec)
    assert a.meta["frames_mix"] == "output of the first linear op" and "frames_mix" not in b.meta
    assert int(a.counts.sum()) > 0
    assert torch.equal(a.counts, b.counts)
    oracle = float64_oracle(model, x, radius=0.05, directions=f.dense(torch.float64), dtype=torch.float32)
    assert_counts_match(a.counts, oracle)


def test_factors_not_used_where_they_do_not_apply():
    """float64 models, shared frames, given directions and D < 8 P run as before
    (no ``frames_mix`` in the report)."""
    torch.manual_seed(0)
    model = zoo.mlp(40, 16, 2, 3)
    x = torch.randn(4, 40)
    assert "frames_mix" not in lcfast.local_complexity(model.double(), x.double(), n_dirs=4,
                                                       backend="offsets").meta
    model.float()
    assert "frames_mix" not in lcfast.local_complexity(model, x, n_dirs=4, backend="offsets",
                                                       shared_directions=True).meta
    assert "frames_mix" not in lcfast.local_complexity(model, x, n_dirs=8, backend="offsets").meta  # 40 < 8 * 8
    assert lcfast.local_complexity(model, x, n_dirs=4, backend="offsets").meta["frames_mix"] != "unused"


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 3), P=st.integers(2, 5), f_in=st.integers(1, 9), f_out=st.integers(1, 9),
       first=st.sampled_from(["linear", "relu", "view"]), seed=st.integers(0, 2**31 - 1))
def test_pending_mix_rule_equals_vertices(n, P, f_in, f_out, first, seed):
    """Property (the offset rules' own test, tests/test_offsets_rules.py): a pending
    RowMix on the input, through a first op that applies it after (a narrowing dense
    layer) or before (widening, a nonlinearity, a view then a layer), gives the vertex
    values of the op on the multiplied-out vertices, in float64."""
    g = torch.Generator().manual_seed(seed)
    d = dict(generator=g, dtype=torch.float64)
    c, raw = torch.randn(n, f_in, **d), torch.randn(n, P, f_in, **d)
    t = torch.randn(n, P, P, **d).tril() * 0.1
    w, b = torch.randn(f_out, f_in, **d), torch.randn(f_out, **d)
    rows = t @ raw
    mix = RowMix(t, rows.norm(dim=2).amax(1), (t.abs() @ raw.norm(dim=2, keepdim=True))[..., 0].amax(1))
    ctx = OffsetContext(n, P, torch.float64, track_band=True, u_offsets=2.0 ** -53)
    x = OffsetTensor(c, raw.reshape(-1, f_in), None, None, Layout(0), ctx, scale=mix)
    verts = torch.cat([c[:, None] + rows, c[:, None] - rows], 1).reshape(-1, f_in)
    ops = {"linear": lambda v: F.linear(v, w, b), "relu": lambda v: F.linear(F.relu(v), w, b),
           "view": lambda v: F.linear(v.view(v.shape[0], 1, f_in).flatten(1), w, b)}
    with torch.no_grad():
        out = ops[first](x)
    expect = ops[first](verts)
    got = out.vertices()
    assert torch.allclose(got, expect, rtol=0, atol=1e-12 * (1 + float(expect.abs().max())))
    after = first != "relu" and f_out <= f_in
    assert ctx.frames_mix == ("output of the first linear op" if after else "input")
    assert out.band is not None and bool((out.band >= 0).all())
