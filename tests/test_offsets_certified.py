"""The offsets engine's accuracy report and certified mode (issue 10, item 3).

The engine carries a rounding band per neuron (``lcfast/engine/offsets/band.py``, the
tolerance rule's ``K u S`` for its own centre and offsets arithmetic); a neuron with a
vertex value inside it is *ambiguous*.  ``certified=True`` recomputes the points with an
ambiguous neuron in float64, so the counts must equal the float64 oracle's exactly,
while the plain low-precision counts differ on some of the same cases (the test can
fail) and some points are certified without recomputation (the band is not vacuous).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import zoo
import lcfast
from lcfast.engine.intercept import ModelCall
from lcfast.engine.offsets import offsets_local_complexity
from lcfast.engine.offsets.runner import Float64Model
from lcfast.neighborhood import random_frames
from lcfast.testing import float64_oracle
from test_offsets_lowp import _oracle


def test_certified_equals_float64_on_placed_models():
    plain_wrong = {}
    for name in ("mlp", "cnn", "resnet18"):
        model, x, dirs = _oracle(name)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        plain_wrong[name] = 0
        for r in (1e-3, 5e-3):
            ref = float64_oracle(model, x, radius=r, directions=dirs, dtype=torch.float64).counts
            for dtype in (torch.bfloat16, torch.float16):
                plain = offsets_local_complexity(model, x, radius=r, directions=dirs, dtype=dtype)
                cert = offsets_local_complexity(model, x, radius=r, directions=dirs, dtype=dtype, certified=True)
                assert torch.equal(cert.counts, ref), (name, r, dtype)
                plain_wrong[name] += int((plain.counts != ref).any(1).sum())
                # every point the plain run got wrong was flagged (here: placed models, all are)
                assert cert.meta["certified_recomputed"] == plain.meta["ambiguous_points"]
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    # low precision alone is off on these models (not necessarily on each: since the bf16
    # input offsets are rounded once, the MLP's plain bf16 counts equal float64's): the check
    # has teeth
    assert sum(plain_wrong.values()) > 0, plain_wrong


MODELS = {"mlp": (zoo.mlp, (20,), 24), "cnn": (zoo.cnn, (3, 16, 16), 24),
          "resnet18": (zoo.resnet18, (3, 32, 32), 3), "vit": (zoo.small_vit, (3, 32, 32), 4)}


@pytest.mark.parametrize("name", list(MODELS))
def test_unflagged_points_keep_their_low_precision_counts(name):
    """On unplaced models some points have no ambiguous neuron: their bf16/fp16/fp32 counts
    are kept, and the certified counts still equal float64's."""
    make, shape, n = MODELS[name]
    model = make()
    x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(7))
    dirs = random_frames(shape, 6, 0, torch.arange(n))
    kept = seen = 0
    for r in (1e-2, 1e-1):
        ref = float64_oracle(model, x, radius=r, directions=dirs, dtype=torch.float64).counts
        seen += int(ref.sum())
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            cert = offsets_local_complexity(model, x, radius=r, directions=dirs, dtype=dtype, certified=True)
            assert torch.equal(cert.counts, ref), (name, r, dtype)
            assert cert.meta["unbounded_sites"] == {}
            kept += n - cert.meta["certified_recomputed"]
    assert seen > 0
    # ResNet18 (32x32) has ~1e5 neurons per point: the background of neurons inside the
    # band (tolerance.AMBIGUOUS_BACKGROUND) flags every point there, measured
    assert kept > 0 or name == "resnet18"


def test_accuracy_report_and_its_merge_over_chunks():
    model = zoo.cnn()
    x = torch.randn(12, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    one = lcfast.local_complexity(model, x, radius=0.1, n_dirs=6, backend="offsets")
    chunked = lcfast.local_complexity(model, x, radius=0.1, n_dirs=6, backend="offsets", chunk_size=5)
    assert torch.equal(one.counts, chunked.counts)
    for res in (one, chunked):
        m = res.meta
        assert set(m["ambiguous_per_site"]) == set(res.sites)
        assert m["ambiguous_neurons"] == sum(m["ambiguous_per_site"].values())
        assert 0 <= m["ambiguous_points"] <= 12 and m["unbounded_sites"] == {}
        assert "K=32" in m["accuracy_rule"]
    assert one.meta["ambiguous_per_site"] == chunked.meta["ambiguous_per_site"]


def test_site_without_a_band_is_unbounded_and_recomputed():
    """A site fed by LayerNorm (a smooth op: no band) is reported by name; certified mode
    recomputes every point, and the counts equal float64's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
    x = torch.randn(5, 8)
    dirs = random_frames((8,), 3, 0, torch.arange(5))
    res = offsets_local_complexity(model, x, radius=0.3, directions=dirs, dtype=torch.bfloat16, certified=True)
    assert list(res.meta["unbounded_sites"]) == [res.names[0]] and res.meta["certified_recomputed"] == 5
    assert res.names[1] in res.meta["ambiguous_per_site"]
    ref = float64_oracle(model, x, radius=0.3, directions=dirs, dtype=torch.float64).counts
    assert torch.equal(res.counts, ref)


def test_certified_arguments():
    model = zoo.mlp()
    x = torch.randn(2, 20)
    dirs = random_frames((20,), 2, 0, torch.arange(2))
    with pytest.raises(ValueError, match="certified"):
        offsets_local_complexity(model, x, radius=[0.1, 0.2], directions=dirs, certified=True)
    with pytest.raises(ValueError, match="certified"):
        offsets_local_complexity(model, x, radius=0.1, directions=dirs, certified=1)
    with pytest.raises(ValueError, match="forward=/extra="):
        Float64Model()(ModelCall(model, None, {}, 2))
    f64 = Float64Model()
    copy = f64(model)
    assert copy is f64(model) and copy is not model  # one copy per measured model
    assert next(model.parameters()).dtype == torch.float32 and next(copy.parameters()).dtype == torch.float64
