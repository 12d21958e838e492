"""The backend policy (lcfast/engine/policy.py, issue 14 item 7): what ``auto`` picks
per device class, and the fallback when a backend's first chunk fails."""
from __future__ import annotations

import warnings

import pytest
import torch

import lcfast
from lcfast.engine import BACKENDS, policy
from lcfast.engine.base import Backend
from lcfast.engine.reference import ReferenceBackend

import zoo


def test_auto_on_cuda_skips_triton_until_verified(monkeypatch):
    assert policy.VERIFIED_TRITON == frozenset()  # no GPU check has passed yet
    assert policy.auto_order("cuda", "NVIDIA H200") == ("native", "reference")
    assert "triton" not in policy.auto_order("cuda", "NVIDIA A100-SXM4-80GB")
    assert policy.auto_order("cpu", "cpu") == ("native", "reference")
    monkeypatch.setattr(policy, "VERIFIED_TRITON", frozenset({"NVIDIA H200"}))
    assert policy.auto_order("cuda", "NVIDIA H200")[0] == "triton"
    assert "triton" not in policy.auto_order("cuda", "NVIDIA H100 80GB HBM3")


class _FirstChunkFails(ReferenceBackend):
    """A backend whose kernels fail to compile: every call raises, as a Triton
    ``CompilationError`` or a CUDA launch error would, before any result."""

    name = "broken"
    calls = 0

    def run_chunk(self, *args, **kwargs):
        type(self).calls += 1
        raise RuntimeError("simulated: kernel failed to compile for this GPU")


class _LaterChunkFails(ReferenceBackend):
    name = "flaky"

    def __init__(self):
        self.n = 0

    def run_chunk(self, *args, **kwargs):
        self.n += 1
        if self.n > 1:
            raise RuntimeError("simulated failure in chunk 2")
        return super().run_chunk(*args, **kwargs)


@pytest.fixture
def broken_backend(monkeypatch):
    monkeypatch.setitem(BACKENDS, "broken", f"{__name__}:_FirstChunkFails")
    monkeypatch.setitem(policy.FALLBACK, "broken", "reference")
    _FirstChunkFails.calls = 0


def test_first_chunk_failure_falls_back_with_warning(broken_backend):
    m, x = zoo.mlp(), torch.randn(7, 20)
    ref = lcfast.local_complexity(m, x, radius=0.05, n_dirs=3, backend="reference", chunk_size=3)
    with pytest.warns(RuntimeWarning, match="'broken' failed on its first chunk; falling back to 'reference'"):
        res = lcfast.local_complexity(m, x, radius=0.05, n_dirs=3, backend="broken", chunk_size=3)
    assert torch.equal(res.counts, ref.counts)
    assert res.meta["backend"] == "reference"
    assert res.meta["fallback"] and "broken -> reference" in res.meta["fallback"][0]
    assert _FirstChunkFails.calls == 1  # tried once, then every chunk ran on the reference


def test_auto_chunked_first_chunk_failure(broken_backend):
    """With chunk_size=None the first chunk is the 1-point size probe: it falls back too."""
    m, x = zoo.cnn(), torch.randn(3, 3, 16, 16)
    with pytest.warns(RuntimeWarning, match="falling back"):
        res = lcfast.local_complexity(m, x, radius=0.05, n_dirs=2, backend="broken")
    ref = lcfast.local_complexity(m, x, radius=0.05, n_dirs=2, backend="reference")
    assert torch.equal(res.counts, ref.counts)


def test_failure_after_first_chunk_is_raised():
    eng = policy.FallbackEngine([_LaterChunkFails(), ReferenceBackend()])
    m = zoo.mlp()
    from lcfast.sites import SiteSpec
    spec = SiteSpec.resolve(m, "activations")
    d = torch.randn(2, 20)
    eng.run_chunk(m, torch.randn(1, 20), d, 0.1, spec)
    with pytest.raises(RuntimeError, match="chunk 2"):
        eng.run_chunk(m, torch.randn(1, 20), d, 0.1, spec)
    assert eng.name == "flaky" and eng.meta == {}


def test_out_of_memory_is_not_a_compile_failure():
    class _OOM(Backend):
        name = "oom"

        def run_chunk(self, *args, **kwargs):
            raise torch.OutOfMemoryError("simulated OOM")
    eng = policy.FallbackEngine([_OOM(), ReferenceBackend()])
    with pytest.raises(torch.OutOfMemoryError):
        eng.run_chunk(None, None, None, 0.1, None)


def test_last_backend_failure_is_raised_and_model_untouched(broken_backend, monkeypatch):
    monkeypatch.setitem(BACKENDS, "broken2", f"{__name__}:_FirstChunkFails")
    monkeypatch.setitem(policy.FALLBACK, "broken", "broken2")  # a chain of only failing backends
    monkeypatch.setitem(policy.FALLBACK, "broken2", "broken")  # (a cycle: each tried once)
    m = zoo.mlp()
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(RuntimeError, match="simulated"):
            lcfast.local_complexity(m, torch.randn(2, 20), n_dirs=2, backend="broken", chunk_size=1)
    assert m.training and all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    assert _FirstChunkFails.calls == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_auto_on_cuda_without_cuda_never_picks_triton():
    assert policy.device_class(torch.device("cuda")) == "cuda (not available)"
    assert policy.engine_for("auto", torch.device("cuda")).name in ("native", "reference")


def test_named_backend_unavailable_and_unknown():
    with pytest.raises(ValueError, match="backend must be one of"):
        policy.engine_for("cuda-magic", torch.device("cpu"))
    if policy.why_unavailable("triton", torch.device("cpu")) is not None:
        with pytest.raises(RuntimeError, match="not available"):
            policy.engine_for("triton", torch.device("cpu"))


def test_auto_on_cpu_runs_native_or_reference():
    res = lcfast.local_complexity(zoo.mlp(), torch.randn(2, 20), n_dirs=2)
    assert res.meta["backend"] == ("native" if "native" in lcfast.available_backends("cpu") else "reference")
    assert "fallback" not in res.meta
