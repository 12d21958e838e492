"""The model is left exactly as found, also when the call raises."""
import pytest
import torch
import torch.nn as nn

import lcfast
import zoo


def snapshot(model):
    return dict(
        state={k: v.clone() for k, v in model.state_dict().items()},
        training={n: m.training for n, m in model.named_modules()},
        hooks={n: (list(m._forward_hooks), list(m._forward_pre_hooks), list(m._backward_hooks))
               for n, m in model.named_modules()},
        requires_grad={n: p.requires_grad for n, p in model.named_parameters()},
        dtypes={n: p.dtype for n, p in model.named_parameters()},
        grads={n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
    )


def assert_same(a, b):
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k
        assert a["state"][k].dtype == b["state"][k].dtype
    for key in ("training", "hooks", "requires_grad", "dtypes"):
        assert a[key] == b[key], key
    for n in a["grads"]:
        ga, gb = a["grads"][n], b["grads"][n]
        assert (ga is None and gb is None) or torch.equal(ga, gb)


def prepared_resnet():
    model = zoo.resnet18()
    model.train()
    model.layer2.eval()  # mixed flags
    model.fc.weight.requires_grad_(False)
    model.layer1.register_forward_hook(lambda m, i, o: None)
    model.conv1.register_forward_pre_hook(lambda m, i: None)
    out = model(torch.randn(2, 3, 32, 32))  # BatchNorm in train mode would update stats: not here
    out.sum().backward()
    return model


@pytest.mark.parametrize("dtype", [None, torch.float64])
def test_model_unchanged(dtype):
    model = prepared_resnet()
    before = snapshot(model)
    x = torch.randn(2, 3, 32, 32)
    x0 = x.clone()
    lcfast.local_complexity(model, x, radius=1e-2, n_dirs=3, dtype=dtype, backend="reference")
    assert_same(before, snapshot(model))
    assert torch.equal(x, x0)


class Exploding(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 7)
        self.bn = nn.BatchNorm1d(7)
        self.calls = 0

    def forward(self, x):
        h = torch.relu(self.bn(self.lin(x)))
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("boom")
        return h


def test_model_unchanged_when_call_raises():
    model = Exploding()
    model.train()
    model.lin.register_forward_hook(lambda m, i, o: None)
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        lcfast.local_complexity(model, torch.randn(6, 5), radius=0.1, n_dirs=2, chunk_size=2,
                                backend="reference")
    assert_same(before, snapshot(model))
    # no hook or function mode leaks out of the failed call
    from torch.overrides import _get_current_function_mode_stack
    assert not _get_current_function_mode_stack()
    assert not nn.modules.module._global_forward_hooks
    assert not nn.modules.module._global_forward_pre_hooks


def test_eval_mode_is_used_batchnorm_running_stats():
    """BatchNorm must use running statistics: counts do not depend on which other
    points share the batch (they would in train mode)."""
    model = zoo.cnn()
    model.train()
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    a = lcfast.local_complexity(model, x, radius=0.02, n_dirs=3, chunk_size=5, backend="reference")
    b = lcfast.local_complexity(model, x, radius=0.02, n_dirs=3, chunk_size=1, backend="reference")
    assert torch.equal(a.counts, b.counts)
    assert model.training and all(m.training for m in model.modules())


class SelfUpdating(nn.Module):
    """Buffers changed by the model's own forward: an in-place call counter, a custom
    running mean updated in place, and a buffer replaced by a new tensor."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 7)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("running", torch.zeros(7))
        self.register_buffer("last", torch.zeros(7))

    def forward(self, x):
        h = self.lin(x)
        self.calls += 1
        self.running.mul_(0.9).add_(0.1 * h.detach().mean(0))
        self.last = h.detach().mean(0)
        return torch.relu(h)


@pytest.mark.parametrize("backend", ["reference", "native"])
def test_buffers_changed_by_the_forward_are_restored(backend):
    if backend not in lcfast.available_backends("cpu"):
        pytest.skip(f"{backend} not available")
    model = SelfUpdating()
    last = model.last
    before = snapshot(model)
    lcfast.local_complexity(model, torch.randn(4, 5), radius=0.1, n_dirs=2, chunk_size=2, backend=backend)
    assert_same(before, snapshot(model))
    assert model.last is last


class FailsLater(SelfUpdating):
    def forward(self, x):
        out = super().forward(x)  # buffers already changed
        if int(self.calls) > 1:
            raise RuntimeError("boom")
        return out


def test_buffers_restored_when_call_raises():
    model = FailsLater()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        lcfast.local_complexity(model, torch.randn(4, 5), radius=0.1, n_dirs=2, chunk_size=2, backend="reference")
    assert_same(before, snapshot(model))
