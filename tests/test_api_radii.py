"""``lcfast.local_complexity(radius=[r1, r2, ...])`` (issue 10 item 4): one result per
radius, on the same frames.  The offsets engine derives every radius from one
propagation where a point stays antisymmetric (its vertex values scale with ``r``) and
reruns the others; it answers to the tolerance rule against float64 at every radius.
The vertex-pushing backends run once per radius and equal single-radius calls bit for bit."""
from __future__ import annotations

import math

import pytest
import torch

import lcfast
import zoo
from lcfast.testing import assert_counts_match, float64_oracle


def _mlp():
    torch.manual_seed(0)
    return zoo.mlp(40, 32, 3, 5), torch.randn(30, 40, generator=torch.Generator().manual_seed(1))


def test_offsets_radius_list_meets_float64_at_every_radius():
    model, x = _mlp()
    radii = [0.05, 2e-3, 0.01]  # not sorted: results come back in the order given
    res = lcfast.local_complexity(model, x, radius=radii, n_dirs=6, seed=2, backend="offsets", chunk_size=11)
    assert isinstance(res, list) and [r.radius for r in res] == radii
    rerun = res[0].meta["rerun_points_per_radius"]
    # points still antisymmetric at the largest radius were derived, not rerun
    assert rerun["0.05"] == 0 and rerun["0.002"] < x.shape[0]
    for r, got in zip(radii, res):
        assert got.counts.shape == (x.shape[0], len(got.sites))
        assert_counts_match(got.counts, float64_oracle(model, x, radius=r, n_dirs=6, seed=2, dtype=torch.float32))
    assert [int(r.counts.sum()) > 0 for r in res] == [True, True, True]


@pytest.mark.parametrize("backend", ["reference", "native"])
def test_vertex_push_radius_list_equals_single_calls(backend):
    if backend not in lcfast.engine.available_backends("cpu"):
        pytest.skip(f"{backend} not built here")
    model, x = _mlp()
    radii = (0.5, 0.05)
    res = lcfast.local_complexity(model, x, radius=radii, n_dirs=4, backend=backend)
    for r, got in zip(radii, res):
        one = lcfast.local_complexity(model, x, radius=r, n_dirs=4, backend=backend)
        assert torch.equal(got.counts, one.counts) and got.radius == r


def test_one_element_list_is_a_list():
    model, x = _mlp()
    res = lcfast.local_complexity(model, x[:3], radius=[0.05], n_dirs=4, backend="offsets")
    assert isinstance(res, list) and len(res) == 1 and res[0].radius == 0.05


@pytest.mark.parametrize("radius", [[], [0.1, -1.0], [0.1, math.nan], [0.1, True], ["0.1"]])
def test_bad_radius_lists(radius):
    model, x = _mlp()
    with pytest.raises(ValueError, match="radius"):
        lcfast.local_complexity(model, x, radius=radius)


def test_radius_list_refused_with_certified_and_by_measure_dataset():
    model, x = _mlp()
    with pytest.raises(ValueError, match="certified=True takes one radius"):
        lcfast.local_complexity(model, x, radius=[0.1, 0.01], backend="offsets", certified=True)
    with pytest.raises(TypeError, match="radius must be one number"):
        lcfast.measure_dataset(model, x, radius=[0.1, 0.01])
