"""backend="triton" end to end on CPU under the Triton interpreter: vs the reference
backend and the float64 oracle on an MLP, a CNN, ResNet-style blocks, ResNet18 and
a small ViT; fused paths actually taken; the model left as found."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before lcfast's kernels are imported

import pytest  # noqa: E402

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1":  # pragma: no cover
    pytest.skip("TRITON_INTERPRET is set to something else", allow_module_level=True)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torchvision.models.resnet import BasicBlock, Bottleneck  # noqa: E402

import lcfast  # noqa: E402
from lcfast.api import naive_low_precision  # noqa: E402
from lcfast.engine import get_backend, why_unavailable  # noqa: E402
from lcfast.engine.base import model_guard  # noqa: E402
from lcfast.engine.reference import ReferenceBackend  # noqa: E402
from lcfast.engine.triton import TritonBackend  # noqa: E402
from lcfast.neighborhood import random_frames  # noqa: E402
from lcfast.sites import SiteSpec  # noqa: E402
from lcfast.testing import assert_counts_match, float64_oracle  # noqa: E402

import zoo  # noqa: E402

R = 0.5  # large enough that many neurons are crossed (the check can fail)


def resnet_blocks():
    torch.manual_seed(0)
    ds = nn.Sequential(nn.Conv2d(8, 12, 1, stride=2, bias=False), nn.BatchNorm2d(12))
    m = nn.Sequential(BasicBlock(8, 12, stride=2, downsample=ds),
                      Bottleneck(12, 3, downsample=nn.Sequential(nn.Conv2d(12, 12, 1, bias=False),
                                                                 nn.BatchNorm2d(12))),
                      BasicBlock(12, 12))
    return zoo.randomize_bn(m)


def run_chunk(backend, model, x, P, seed=0):
    """One chunk through ``backend`` on the same frames (no chunk sizing)."""
    with model_guard(model, torch.device("cpu"), x.dtype) as m:
        d = random_frames(tuple(x.shape[1:]), P, seed, torch.arange(x.shape[0]), dtype=x.dtype)
        return backend.run_chunk(m, x, d, R, SiteSpec.resolve(model, "activations"))


CASES = {
    # name: (factory, input, P, fused kinds expected)
    "mlp": (lambda: zoo.mlp(), lambda: torch.randn(3, 20), 3, {"linear_act", "mlp"}),
    "cnn": (lambda: zoo.cnn(), lambda: torch.randn(2, 3, 16, 16), 2, {"bn_act"}),
    "resnet_blocks": (resnet_blocks, lambda: torch.randn(2, 8, 9, 9), 2, {"bn_act", "bn_add_act"}),
    "resnet18": (lambda: zoo.resnet18(), lambda: torch.randn(1, 3, 32, 32), 1, {"bn_act", "bn_add_act"}),
    "vit": (lambda: zoo.small_vit(), lambda: torch.randn(1, 3, 32, 32), 2, {"mlp"}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_triton_vs_reference_and_float64(name):
    make, inp, P, kinds = CASES[name]
    torch.manual_seed(1)
    model, x = make(), inp()
    res = lcfast.local_complexity(model, x, radius=R, n_dirs=P, backend="triton")
    ref = lcfast.local_complexity(model, x, radius=R, n_dirs=P, backend="reference")
    assert res.meta["backend"] == "triton"
    assert res.sites == ref.sites and torch.equal(res.neurons, ref.neurons)
    assert int(ref.counts.sum()) > 0
    oracle = float64_oracle(model, x, radius=R, n_dirs=P)
    assert not oracle.unknown_ops
    assert_counts_match(res.counts, oracle)
    # against the reference: differ only on neurons ambiguous in float64
    assert bool(((res.counts - ref.counts).abs() <= oracle.ambiguous).all())
    be = TritonBackend()
    run_chunk(be, model, x, P)
    assert kinds <= set(be.last_fused), be.last_fused


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet_blocks"])
def test_epilogue_only_is_exact(name):
    """Without block fusion the epilogue sees the reference's pre-activations: ReLU
    models give identical counts (first tier of docs/design.md#testing)."""
    make, inp, P, _ = CASES[name]
    torch.manual_seed(2)
    model, x = make(), inp()
    be = TritonBackend(fuse_blocks=False)
    got = run_chunk(be, model, x, P)
    exp = run_chunk(ReferenceBackend(), model, x, P)
    assert got.names == exp.names and got.neurons == exp.neurons
    assert torch.equal(got.counts, exp.counts)
    assert be.last_fused == {}


def test_channels_last_and_functional():
    torch.manual_seed(3)
    m = resnet_blocks().to(memory_format=torch.channels_last)
    x = torch.randn(2, 8, 9, 9).to(memory_format=torch.channels_last)
    res = lcfast.local_complexity(m, x, radius=R, n_dirs=2, backend="triton")
    assert_counts_match(res.counts, float64_oracle(m, x, radius=R, n_dirs=2))
    f = zoo.functional_net()
    x = torch.randn(4, 10)
    res = lcfast.local_complexity(f, x, radius=R, n_dirs=3, backend="triton")
    ref = lcfast.local_complexity(f, x, radius=R, n_dirs=3, backend="reference")
    assert res.sites == ref.sites
    # tanh/gelu outputs differ from torch's in the last bits: compare with float64
    assert_counts_match(res.counts, float64_oracle(f, x, radius=R, n_dirs=3))


class InplaceNet(nn.Module):
    """Uses the in-place result through the *input* name, and an ELU (count-only path)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 9), nn.Linear(9, 9), nn.Linear(9, 2)

    def forward(self, x):
        h = self.a(x)
        F.relu(h, inplace=True)
        h2 = self.b(h)
        return self.c(F.elu(h2))


def test_inplace_and_unfused_kinds_exact():
    torch.manual_seed(4)
    m, x = InplaceNet(), torch.randn(5, 6)
    got = lcfast.local_complexity(m, x, radius=R, n_dirs=2, backend="triton")
    exp = lcfast.local_complexity(m, x, radius=R, n_dirs=2, backend="reference")
    assert got.sites == exp.sites == ["relu#1", "elu#1"]
    assert torch.equal(got.counts, exp.counts)


def test_module_output_sites_use_count_kernel():
    m, x = zoo.mlp(), torch.randn(4, 20)
    got = lcfast.local_complexity(m, x, radius=R, n_dirs=3, sites=[nn.Linear], backend="triton")
    exp = lcfast.local_complexity(m, x, radius=R, n_dirs=3, sites=[nn.Linear], backend="reference")
    assert got.sites == exp.sites and torch.equal(got.counts, exp.counts)


def test_large_V_falls_back_and_hooks_prevent_fusion():
    torch.manual_seed(5)
    m, x = zoo.mlp(d_in=70), torch.randn(2, 70)
    res = lcfast.local_complexity(m, x, radius=R, n_dirs=65, backend="triton")  # V = 130 > 128
    ref = lcfast.local_complexity(m, x, radius=R, n_dirs=65, backend="reference")
    assert torch.equal(res.counts, ref.counts)  # unfused: epilogue on the reference's values
    seen = []
    h = m[0].register_forward_hook(lambda mod, a, out: seen.append(out.shape))
    try:
        be = TritonBackend()
        run_chunk(be, m, x[:1], 3)
        assert seen and seen[0] == (6, 33)  # the hooked Linear really ran
        assert be.last_fused == {"linear_act": 1, "mlp": 1}  # Linear 0 + ReLU 1 left unfused
    finally:
        h.remove()
    be = TritonBackend()
    run_chunk(be, m, x[:1], 3)
    assert be.last_fused == {"linear_act": 2, "mlp": 1}
    try:
        pass
    finally:
        h.remove()


class Boom(nn.Module):
    def __init__(self):
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 5), nn.ReLU())

    def forward(self, x):
        self.seq(x)
        raise RuntimeError("boom")


def test_model_left_as_found():
    m = resnet_blocks().train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    lcfast.local_complexity(m, torch.randn(1, 8, 9, 9), radius=R, n_dirs=1, backend="triton")
    assert all(mod.training for mod in m.modules())
    assert all("forward" not in mod.__dict__ for mod in m.modules())
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    b = Boom()
    with pytest.raises(RuntimeError, match="boom"):
        lcfast.local_complexity(b, torch.randn(2, 4), radius=R, n_dirs=1, backend="triton")
    assert all("forward" not in mod.__dict__ for mod in b.modules())


def test_chunking_and_empty():
    m, x = zoo.cnn(), torch.randn(3, 3, 16, 16)
    a = lcfast.local_complexity(m, x, radius=R, n_dirs=2, backend="triton", chunk_size=1)
    b = lcfast.local_complexity(m, x, radius=R, n_dirs=2, backend="triton")
    assert torch.equal(a.counts, b.counts)
    e = lcfast.local_complexity(m, x[:0], radius=R, n_dirs=2, backend="triton")
    assert e.counts.shape == (0, len(b.sites))


def test_bfloat16_runs_and_matches_reference_sites():
    m, x = zoo.mlp(), torch.randn(3, 20)
    with naive_low_precision():  # the kernels on naive bf16 vertices
        res = lcfast.local_complexity(m, x, radius=R, n_dirs=3, backend="triton", dtype=torch.bfloat16)
        ref = lcfast.local_complexity(m, x, radius=R, n_dirs=3, backend="reference", dtype=torch.bfloat16)
    assert res.meta["dtype"] == "bfloat16" and res.sites == ref.sites
    # bf16 vertices carry ~1e-2 relative noise: counts agree to within a few neurons
    assert int((res.counts - ref.counts).abs().max()) <= 0.1 * int(res.neurons.max())


def test_availability():
    assert why_unavailable("triton", torch.device("cpu")) is None  # interpreter set
    assert get_backend("auto", torch.device("cpu")).name != "triton"
    assert "CUDA" in TritonBackend.unavailable(torch.device("cuda")) or torch.cuda.is_available()
