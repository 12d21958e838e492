"""The batch dimension of a site is found by provenance, not by a size coincidence
(issue 11 item 1, docs/design.md#batch-dimension).

Each model here has a site where some other dimension has the batch's size for the
one-point probe chunk (``2P`` rows); the brute force below knows the true layout and
pushes one point at a time in float64, with no lcfast code.
"""
import copy
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before lcfast's kernels are imported

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import lcfast
from lcfast.neighborhood import random_frames

P = 3  # 2P = 6 vertices per point


class SeqFirstAttention(nn.Module):
    """PyTorch's default sequence-first attention ``(T, B, E)`` with ``T = 2P``, then a
    ReLU on ``(T, B, H)``."""

    def __init__(self, T=2 * P, E=4, H=5):
        super().__init__()
        self.T, self.E = T, E
        self.attn = nn.MultiheadAttention(E, 1)  # batch_first=False
        self.lin = nn.Linear(E, H)
        nn.init.zeros_(self.lin.bias)  # pre-activations near zero: many crossings

    def forward(self, x):
        h = x.view(x.shape[0], self.T, self.E).transpose(0, 1)  # (T, B, E)
        a, _ = self.attn(h, h, h, need_weights=False)
        return F.relu(self.lin(a)).sum(0)

    def sites(self, x):  # truth for one point: (T, 1, H) -> T*H neurons
        h = x.view(1, self.T, self.E).transpose(0, 1)
        a, _ = self.attn(h, h, h, need_weights=False)
        return [self.lin(a).reshape(-1)]


class FeaturesFirst(nn.Module):
    """An activation applied to an ``(F, B)`` tensor with ``F = 2P``."""

    def __init__(self, d=4, f=2 * P):
        super().__init__()
        self.lin = nn.Linear(d, f)

    def forward(self, x):
        return torch.relu(self.lin(x).t()).t()

    def sites(self, x):
        return [self.lin(x).reshape(-1)]


class Folded(nn.Module):
    """A ``(B*T, F)`` activation: the batch folded with the sequence."""

    def __init__(self, T=3, E=2):
        super().__init__()
        self.T, self.E = T, E
        self.lin = nn.Linear(E, 5)

    def forward(self, x):
        h = self.lin(x.reshape(x.shape[0] * self.T, self.E))
        return torch.relu(h).reshape(x.shape[0], -1)


def brute_force(model, x, radius):
    """float64, one point at a time, sign vectors from the model's own ``sites``."""
    model = copy.deepcopy(model).double()
    dirs = random_frames(tuple(x.shape[1:]), P, 0, torch.arange(x.shape[0]), dtype=torch.float64)
    out = []
    for i in range(x.shape[0]):
        xi = x[i:i + 1].double()
        per_site = None
        for s in (+1, -1):
            for p in range(P):
                zs = model.sites(xi + s * radius * dirs[i, p].unsqueeze(0))
                per_site = [[z] for z in zs] if per_site is None else [a + [z] for a, z in zip(per_site, zs)]
        row = []
        for zs in per_site:
            z = torch.stack(zs)
            mn, mx = z.amin(0), z.amax(0)
            row.append(int((~((mn > 0) | (mx < 0) | ((mn == 0) & (mx == 0)))).sum()))
        out.append(row)
    return torch.tensor(out)


BACKENDS = [b for b in ("reference", "native") if b in lcfast.available_backends("cpu")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("make", [SeqFirstAttention, FeaturesFirst])
@pytest.mark.parametrize("chunk_size", [None, 1, 3])
def test_size_coincidence_does_not_fool_the_batch_dim(make, backend, chunk_size):
    torch.manual_seed(0)
    model = make().eval()
    x = 0.1 * torch.randn(4, 24) if make is SeqFirstAttention else torch.randn(4, 4)
    res = lcfast.local_complexity(model, x, radius=0.3, n_dirs=P, backend=backend, chunk_size=chunk_size,
                                  dtype=torch.float64)
    truth = brute_force(model, x, 0.3)
    assert res.counts.shape == truth.shape and res.neurons.tolist() == [model.sites(x[:1])[0].numel()]
    assert torch.equal(res.counts, truth)
    assert truth.sum() > 0


def test_folded_batch_is_refused_naming_the_site():
    with pytest.raises(ValueError, match=r"site 'relu#1'.*batch is folded"):
        lcfast.local_complexity(Folded(), torch.randn(4, 6), radius=0.1, n_dirs=P)


def test_decide_layouts():
    from lcfast.engine.intercept import decide_layouts
    assert decide_layouts((6, {"a#1": (6, 6, 4), "b#1": (7,)}), (12, {"a#1": (6, 12, 4), "b#1": (7,)})) \
        == {"a#1": 1, "b#1": None}
    with pytest.raises(ValueError, match="'a#1'.*cannot decide its batch"):
        decide_layouts((6, {"a#1": (6, 6)}), (12, {"a#1": (12, 12)}))  # an outer product of the batch
    with pytest.raises(RuntimeError, match="different activations"):
        decide_layouts((6, {"a#1": (6,)}), (12, {}))


class ReadsAValue(nn.Module):
    """Cannot run on fake tensors (``.item()``): the probe runs it for real."""

    def __init__(self):
        super().__init__()
        self.lin = FeaturesFirst()

    def forward(self, x):
        scale = float(x.abs().max().item() > -1)
        return self.lin(x * scale)

    def sites(self, x):
        return self.lin.sites(x)


def test_model_that_fake_tensors_cannot_run():
    torch.manual_seed(1)
    model = ReadsAValue()
    x = torch.randn(3, 4)
    res = lcfast.local_complexity(model, x, radius=0.3, n_dirs=P, dtype=torch.float64, backend="reference")
    assert torch.equal(res.counts, brute_force(model, x, 0.3))


class SeqFirstMLP(nn.Module):
    """An ``nn.Sequential`` MLP (a block the triton backend fuses) on ``(T, B, E)``
    tokens with ``T = 2P``."""

    def __init__(self, T=2 * P, E=4):
        super().__init__()
        self.T, self.E = T, E
        self.mlp = nn.Sequential(nn.Linear(E, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x):
        return self.mlp(x.view(x.shape[0], self.T, self.E).transpose(0, 1).contiguous()).sum(0)


@pytest.mark.skipif("triton" not in lcfast.available_backends("cpu") or os.environ.get("TRITON_INTERPRET") != "1",
                    reason="triton backend not available on CPU")
def test_fused_block_asks_the_probe():
    torch.manual_seed(0)
    model, x = SeqFirstMLP(), torch.randn(3, 2 * P * 4)
    ref = lcfast.local_complexity(model, x, radius=0.3, n_dirs=P, backend="reference", chunk_size=1)
    res = lcfast.local_complexity(model, x, radius=0.3, n_dirs=P, backend="triton", chunk_size=1)
    assert res.neurons.tolist() == ref.neurons.tolist() == [2 * P * 8]
    assert torch.equal(res.counts, ref.counts) and ref.counts.sum() > 0
