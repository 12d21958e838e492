"""Counter-based frames (lcfast.frames): keyed on (seed, id, index) only."""
from __future__ import annotations

import math

import pytest
import torch

from lcfast.frames import FRAMES_VERSION, counter_frames, frame_keys, gaussian_frames


def _splitmix_py(z: int) -> int:
    """Independent pure-Python splitmix64 finaliser (the reference for the tensor code)."""
    m = (1 << 64) - 1
    z &= m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def test_integer_hash_matches_python():
    seed, ids = 12345, [0, 1, 2**40 + 7, 999]
    base = _splitmix_py(seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019)
    want = [_splitmix_py(i * 0x9E3779B97F4A7C15 + base) for i in ids]
    got = [k & ((1 << 64) - 1) for k in frame_keys(seed, ids).tolist()]
    assert got == want
    # first Gaussian pair of id 0 from the Box-Muller recipe, in float64 from Python ints
    h = _splitmix_py(want[0] + 0x9E3779B97F4A7C15)
    u1, u2 = ((h >> 40) + 0.5) * 2.0 ** -24, ((h & 0xFFFFFF) + 0.5) * 2.0 ** -24
    r = math.sqrt(-2 * math.log(u1))
    g = gaussian_frames(seed, [0], 1, 2)[0, 0]
    assert abs(g[0].item() - r * math.cos(2 * math.pi * u2)) < 1e-5
    assert abs(g[1].item() - r * math.sin(2 * math.pi * u2)) < 1e-5


def test_chunk_and_order_independent():
    full = counter_frames((3, 5, 7), 4, 7, torch.arange(10))
    part = counter_frames((3, 5, 7), 4, 7, torch.tensor([8, 2, 5]))
    assert torch.equal(part, full[[8, 2, 5]])
    assert not torch.equal(full[0], full[1])
    assert not torch.equal(counter_frames((3, 5, 7), 4, 8, torch.arange(1)), full[:1])


def test_same_frame_on_every_dtype():
    f32 = counter_frames((50,), 6, 0, torch.arange(3), dtype=torch.float32)
    for dt in (torch.float64, torch.bfloat16, torch.float16):
        assert torch.equal(counter_frames((50,), 6, 0, torch.arange(3), dtype=dt), f32.to(dt))


@pytest.mark.parametrize("D,P", [(784, 25), (17, 17), (300, 1)])
def test_orthonormal_and_gaussian(D, P):
    q = counter_frames((D,), P, 3, torch.arange(20)).double().reshape(20, P, D)
    err = (q @ q.mT - torch.eye(P, dtype=torch.float64)).abs().max().item()
    assert err < 5e-6
    g = gaussian_frames(3, torch.arange(50), D, P).double()
    n = g.numel()
    assert abs(g.mean().item()) < 5 / math.sqrt(n) and abs(g.std().item() - 1) < 5 * math.sqrt(2 / n)
    assert abs(((g.abs() < 1).double().mean().item()) - 0.6826895) < 5 * math.sqrt(0.22 / n)


def test_version_and_errors():
    assert FRAMES_VERSION.startswith("lcfast-frames-")
    with pytest.raises(ValueError, match="n_dirs"):
        counter_frames((4,), 5, 0, torch.arange(2))
    with pytest.raises(TypeError, match="seed"):
        counter_frames((4,), 2, 0.5, torch.arange(2))
    assert counter_frames((4,), 2, 0, torch.arange(0)).shape == (0, 2, 4)


def test_result_records_the_frame_generator():
    """Drawn frames name their generator in the result (they may change between
    versions); given directions do not."""
    import torch.nn as nn

    import lcfast
    from lcfast.neighborhood import FRAMES_VERSION as DRAWN  # the default generator's (this file's is counter_frames')
    model, x = nn.Sequential(nn.Linear(5, 7), nn.ReLU()), torch.randn(3, 5)
    assert lcfast.local_complexity(model, x, n_dirs=2).meta["frames_version"] == DRAWN
    assert lcfast.local_complexity(model, x, n_dirs=2, shared_directions=True).meta["frames_version"] == DRAWN
    given = lcfast.local_complexity(model, x, directions=torch.eye(5)[:2])
    assert "frames_version" not in given.meta and given.meta["directions"] == "given"
