"""Frictions met porting the paper's code: sites with another dtype, flat directions,
non-orthonormal directions, module-output site names."""
import copy
import warnings

import pytest
import torch
import torch.nn as nn

import lcfast
import zoo


def test_module_sites_with_another_dtype():
    model = zoo.mlp()  # float32
    x = torch.randn(3, 20, generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for sites in ([nn.Linear], ["0", "4"]):
        got = lcfast.local_complexity(model, x, radius=0.3, n_dirs=3, sites=sites, dtype=torch.float64,
                                      backend="reference")
        # the same measurement on a float64 copy the user made themselves
        exp = lcfast.local_complexity(copy.deepcopy(model).double(), x, radius=0.3, n_dirs=3, sites=sites,
                                      backend="reference")
        assert got.sites == exp.sites and torch.equal(got.counts, exp.counts)
        assert got.meta["dtype"] == "float64"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert next(model.parameters()).dtype == torch.float32


def test_flat_directions_equal_shaped_ones():
    model = zoo.cnn()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    D = 3 * 16 * 16
    frames = lcfast.random_frames((3, 16, 16), 4, 0, torch.arange(2))  # (2, 4, 3, 16, 16)
    shaped = lcfast.local_complexity(model, x, radius=0.05, directions=frames, backend="reference")
    flat = lcfast.local_complexity(model, x, radius=0.05, directions=frames.reshape(2, 4, D), backend="reference")
    assert torch.equal(shaped.counts, flat.counts) and flat.n_dirs == 4
    shared = frames[0]
    a = lcfast.local_complexity(model, x, radius=0.05, directions=shared, backend="reference")
    b = lcfast.local_complexity(model, x, radius=0.05, directions=shared.reshape(4, D), backend="reference")
    assert torch.equal(a.counts, b.counts)
    with pytest.raises(ValueError, match="directions"):
        lcfast.local_complexity(model, x, radius=0.05, directions=torch.randn(4, D + 1), backend="reference")


def test_non_orthonormal_directions_warn_once_naming_the_worst():
    model = zoo.mlp()
    x = torch.randn(3, 20, generator=torch.Generator().manual_seed(2))
    frames = lcfast.random_frames((20,), 3, 0, torch.arange(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # orthonormal (to float32 rounding): no warning
        lcfast.local_complexity(model, x, radius=0.1, directions=frames, backend="reference")
    scaled = frames.clone()
    scaled[1, 2] *= 1.01  # one norm 1% off
    with pytest.warns(UserWarning, match=r"norm.*1\.01.*point 1, direction 2") as rec:
        lcfast.local_complexity(model, x, radius=0.1, directions=scaled, backend="reference")
    ortho = [w for w in rec if "orthonormal" in str(w.message)]
    assert len(ortho) == 1 and ortho[0].filename == __file__  # stacklevel: the user's call
    skew = frames.clone()
    skew[0, 1] = (skew[0, 1] + 0.01 * skew[0, 0])
    skew[0, 1] /= skew[0, 1].norm()  # unit norm, but not orthogonal to direction 0
    with pytest.warns(UserWarning, match=r"inner product.*point 0, directions 0 and 1"):
        lcfast.local_complexity(model, x, radius=0.1, directions=skew, backend="reference")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lcfast.local_complexity(model, x, radius=0.1, directions=scaled, check_directions=False,
                                backend="reference")
    for dtype in (torch.bfloat16, torch.float16):  # rounding a frame to a short dtype is not a deviation
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            small = lcfast.random_frames((20,), 3, 0, torch.arange(40))
            lcfast.local_complexity(model, torch.randn(40, 20), radius=0.1, directions=small.to(dtype),
                                    dtype=torch.float32, backend="reference")
    with pytest.raises(TypeError, match="check_directions"):
        lcfast.local_complexity(model, x, radius=0.1, directions=frames, check_directions="yes")


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(torch.relu(self.lin(torch.relu(self.lin(x)))))


def test_module_output_names():
    x = torch.randn(2, 4)
    res = lcfast.local_complexity(Twice(), x, radius=0.1, n_dirs=2, sites=["lin", "head"], backend="reference")
    assert res.sites == ["lin#1", "lin#2", "head"]  # "#k" only for a module called more than once
    acts = lcfast.local_complexity(Twice(), x, radius=0.1, n_dirs=2, backend="reference")
    assert acts.sites == ["relu#1", "relu#2"]  # activation names keep "#k" always
