"""Bad input gets a clear error naming the argument (docs/design.md#api-contract)."""
import math

import pytest
import torch
import torch.nn as nn

import lcfast
import zoo


@pytest.fixture(scope="module")
def model():
    return zoo.mlp(d_in=30)


X = torch.randn(3, 30)


@pytest.mark.parametrize("kwargs, exc, pattern", [
    (dict(radius=0), ValueError, "radius"),
    (dict(radius=-1e-3), ValueError, "radius"),
    (dict(radius=math.inf), ValueError, "radius"),
    (dict(radius=math.nan), ValueError, "radius"),
    (dict(radius="0.1"), ValueError, "radius"),
    (dict(n_dirs=0), ValueError, "n_dirs"),
    (dict(n_dirs=31), ValueError, "n_dirs"),
    (dict(n_dirs=2.5), TypeError, "n_dirs"),
    (dict(directions=torch.randn(4, 29)), ValueError, "directions"),
    (dict(directions=torch.randn(2, 4, 30)), ValueError, "directions"),
    (dict(directions=torch.full((2, 30), math.nan)), ValueError, "directions"),
    (dict(ids=[0, 1]), ValueError, "ids"),
    (dict(ids=torch.tensor([0.0, 1.0, 2.0])), ValueError, "ids"),
    (dict(backend="cuda-magic"), ValueError, "backend"),
    (dict(dtype=torch.int32), TypeError, "dtype"),
    (dict(chunk_size=0), ValueError, "chunk_size"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(sites="relus"), ValueError, "sites"),
    (dict(sites=[]), ValueError, "sites"),
    (dict(sites=["nope"]), ValueError, "sites"),
    (dict(sites=[nn.Conv2d]), ValueError, "sites"),
])
def test_bad_arguments(model, kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        lcfast.local_complexity(model, X, **kwargs)


def test_bad_x(model):
    with pytest.raises(TypeError, match="x"):
        lcfast.local_complexity(model, X.numpy())
    with pytest.raises(ValueError, match="x"):
        lcfast.local_complexity(model, torch.randn(30))
    bad = X.clone()
    bad[1, 3] = math.nan
    with pytest.raises(ValueError, match="x contains NaN"):
        lcfast.local_complexity(model, bad, n_dirs=2)
    bad[1, 3] = math.inf
    with pytest.raises(ValueError, match="x contains NaN"):
        lcfast.local_complexity(model, bad, n_dirs=2)
    with pytest.raises(TypeError, match="x must be a floating"):
        lcfast.local_complexity(model, torch.ones(3, 30, dtype=torch.long))


def test_bad_model():
    with pytest.raises(TypeError, match="model"):
        lcfast.local_complexity(lambda t: t, X)


def test_model_without_site():
    with pytest.raises(ValueError, match="no site"):
        lcfast.local_complexity(nn.Linear(30, 4), X, n_dirs=2)
    with pytest.raises(ValueError, match="no site"):
        lcfast.local_complexity(nn.Linear(30, 4), X[:0], n_dirs=2)


def test_empty_input_gives_empty_result(model):
    res = lcfast.local_complexity(model, X[:0], n_dirs=2, backend="reference")
    assert res.counts.shape == (0, 3)
    assert res.total.shape == (0,)
    assert res.sites == ["1#1", "3#1", "5#1"]
    assert res.neurons.tolist() == [33, 33, 33]
    print(res.summary())


def test_unavailable_backend_says_why(model):
    from lcfast.engine import why_unavailable
    for name in ("native", "triton"):
        why = why_unavailable(name, torch.device("cpu"))
        if why is None:
            continue
        with pytest.raises(RuntimeError, match=name):
            lcfast.local_complexity(model, X, n_dirs=2, backend=name)
