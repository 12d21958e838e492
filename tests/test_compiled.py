"""Compiled and scripted models (issue 11 item 5): a ``torch.compile``d model, submodule
or forward is measured through the original Python code (compiled code would hide the
activation calls); a TorchScript model is refused with an error that says why."""
import copy

import pytest
import torch
import torch.nn as nn

import lcfast

BACKENDS = [b for b in ("reference", "native") if b in lcfast.available_backends("cpu")]


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 8), nn.ReLU()), nn.Linear(8, 2))


X = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))


def plain_counts(backend):
    return lcfast.local_complexity(mlp(), X, radius=0.3, n_dirs=2, backend=backend).counts


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_submodule(backend):
    model = mlp()
    compiled = torch.compile(model[2])
    model[2] = compiled
    res = lcfast.local_complexity(model, X, radius=0.3, n_dirs=2, backend=backend)
    assert torch.equal(res.counts, plain_counts(backend)) and res.counts.sum() > 0
    assert model[2] is compiled  # left as found


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_forward(backend):
    model = mlp()
    model.forward = torch.compile(model.forward)
    res = lcfast.local_complexity(model, X, radius=0.3, n_dirs=2, backend=backend)
    assert torch.equal(res.counts, plain_counts(backend)) and res.sites == ["1#1", "2.1#1"]


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_model_is_refused_with_the_reason(how):
    model = mlp().eval()
    scripted = torch.jit.script(model) if how == "script" else torch.jit.trace(model, X)
    with pytest.raises(TypeError, match="model is a TorchScript module.*original nn.Module"):
        lcfast.local_complexity(scripted, X, radius=0.3, n_dirs=2)


def test_torchscript_submodule_is_refused_naming_it():
    model = mlp().eval()
    model[2] = torch.jit.script(copy.deepcopy(model[2]))
    with pytest.raises(TypeError, match="submodule '2' is a TorchScript module"):
        lcfast.local_complexity(model, X, radius=0.3, n_dirs=2)
