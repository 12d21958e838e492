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


# ---------------------------------------------------------------------------
# issue 11 item 7: numbers as 0-d tensors, empty ids, bad ids, meta models
# ---------------------------------------------------------------------------

def test_zero_dim_tensors_are_numbers(model):
    a = lcfast.local_complexity(model, X, radius=torch.tensor(0.1), n_dirs=torch.tensor(3), seed=torch.tensor(2),
                                chunk_size=torch.tensor(2), backend="reference")
    b = lcfast.local_complexity(model, X, radius=0.1, n_dirs=3, seed=2, chunk_size=2, backend="reference")
    assert torch.equal(a.counts, b.counts) and a.radius == float(torch.tensor(0.1))
    with pytest.raises(ValueError, match="radius"):
        lcfast.local_complexity(model, X, radius=torch.tensor(-0.1))


def test_no_point_with_empty_ids(model):
    res = lcfast.local_complexity(model, X[:0], n_dirs=2, ids=[], backend="reference")
    assert res.counts.shape == (0, 3)


@pytest.mark.parametrize("ids", [[0, 1, 2 ** 70], ["a", "b", "c"], [[0], [1, 2], [3]]])
def test_bad_ids_name_ids(model, ids):
    with pytest.raises((TypeError, ValueError), match="ids"):
        lcfast.local_complexity(model, X, n_dirs=2, ids=ids)


def test_meta_model_is_refused_clearly():
    with torch.device("meta"):
        m = zoo.mlp(d_in=30)
    with pytest.raises(ValueError, match="meta device"):
        lcfast.local_complexity(m, X, n_dirs=2)


def test_tracker_n_dirs_is_checked():
    from lcfast.train.tracker import LCTracker
    with pytest.raises(ValueError, match="n_dirs"):
        LCTracker(zoo.mlp(d_in=30), {"train": X}, n_dirs=0)
    with pytest.raises(TypeError, match="n_dirs"):
        LCTracker(zoo.mlp(d_in=30), {"train": X}, n_dirs=2.7)


# ---------------------------------------------------------------------------
# issue 11 item 2: naive low precision is refused (it counts rounding noise)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_dtype_is_refused(model, dtype):
    """A vertex-pushing backend refuses bf16/fp16 (it would count rounding noise); auto
    and offsets route it to the centre + offsets engine (centre float64)."""
    with pytest.raises(ValueError, match="dtype.*rounding noise"):
        lcfast.local_complexity(model, X, n_dirs=2, dtype=dtype, backend="reference")
    low = zoo.mlp(d_in=30).to(dtype)  # dtype=None: the model's own dtype
    with pytest.raises(ValueError, match="model's dtype.*rounding noise"):
        lcfast.local_complexity(low, X.to(dtype), n_dirs=2, backend="reference")
    for backend in ("auto", "offsets"):
        res = lcfast.local_complexity(model, X, n_dirs=2, dtype=dtype, backend=backend)
        assert res.meta["backend"] == "offsets" and res.meta["offsets_dtype"] == str(dtype)[6:]
        assert res.meta["centre_dtype"] == "float64" and res.meta["rows_per_point"] >= 1
    from lcfast.api import naive_low_precision
    with naive_low_precision():  # the escape hatch for studying the noise
        assert lcfast.local_complexity(model, X, n_dirs=2, dtype=dtype, backend="reference").counts.shape == (3, 3)


def test_cli_low_precision_dtype_is_refused(tmp_path, capsys):
    from lcfast.cli import main
    rc = main(["--model", "mnist-mlp", "--data", "random", "--points", "2", "--dirs", "2", "--dtype", "bfloat16",
               "--backend", "reference", "--out", str(tmp_path / "x.json"), "--no-progress"])
    assert rc == 2 and "bfloat16" in capsys.readouterr().err and not (tmp_path / "x.json").exists()
