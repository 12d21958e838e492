"""Chunking, ids and determinism never change a point's counts."""
import torch

import lcfast
import zoo


def test_chunk_size_invariance():
    model = zoo.cnn()
    x = torch.randn(11, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    runs = [lcfast.local_complexity(model, x, radius=0.02, n_dirs=5, chunk_size=c, backend="reference")
            for c in (1, 7, 11, None)]
    for r in runs[1:]:
        assert torch.equal(r.counts, runs[0].counts)
    assert runs[0].counts.sum() > 0


def test_ids_subsets_give_same_per_point_counts():
    model = zoo.mlp()
    x = torch.randn(9, 20, generator=torch.Generator().manual_seed(1))
    ids = torch.arange(100, 109)
    full = lcfast.local_complexity(model, x, radius=0.1, n_dirs=3, ids=ids, backend="reference")
    sel = torch.tensor([7, 2, 4])
    part = lcfast.local_complexity(model, x[sel], radius=0.1, n_dirs=3, ids=ids[sel], backend="reference")
    assert torch.equal(part.counts, full.counts[sel])
    assert part.ids.tolist() == ids[sel].tolist()
    # a different id gives a different frame
    other = lcfast.local_complexity(model, x, radius=0.1, n_dirs=3, backend="reference")
    f1 = lcfast.random_frames((20,), 3, 0, ids)
    f2 = lcfast.random_frames((20,), 3, 0, torch.arange(9))
    assert not torch.allclose(f1, f2)
    assert other.counts.shape == full.counts.shape


def test_deterministic_and_seed_dependent():
    model = zoo.mlp()
    x = torch.randn(6, 20, generator=torch.Generator().manual_seed(2))
    a = lcfast.local_complexity(model, x, radius=0.2, n_dirs=4, seed=5, backend="reference")
    b = lcfast.local_complexity(model, x, radius=0.2, n_dirs=4, seed=5, backend="reference")
    assert torch.equal(a.counts, b.counts)
    fa = lcfast.random_frames((20,), 4, 5, torch.arange(6))
    fb = lcfast.random_frames((20,), 4, 6, torch.arange(6))
    assert not torch.allclose(fa, fb)


def test_frames_are_orthonormal():
    """Frames are computed once in float32 (every dtype sees the same directions), so the
    float64 copy is orthonormal to float32 accuracy, ~1e-6 (lcfast.frames)."""
    f = lcfast.random_frames((3, 5, 7), 25, 0, torch.arange(3)).reshape(3, 25, -1)
    gram = f @ f.transpose(1, 2)
    assert torch.allclose(gram, torch.eye(25, dtype=torch.float64).expand(3, 25, 25), atol=2e-6)
    s = lcfast.shared_frame((3, 5, 7), 4, seed=1).reshape(4, -1)
    assert torch.allclose(s @ s.T, torch.eye(4, dtype=torch.float64), atol=2e-6)


def test_shared_directions_option_matches_explicit_frame():
    model = zoo.mlp()
    x = torch.randn(5, 20, generator=torch.Generator().manual_seed(3))
    a = lcfast.local_complexity(model, x, radius=0.2, n_dirs=4, seed=9, shared_directions=True,
                                backend="reference")
    frame = lcfast.shared_frame((20,), 4, seed=9)
    b = lcfast.local_complexity(model, x, radius=0.2, directions=frame.float(), backend="reference")
    assert torch.equal(a.counts, b.counts)
    assert a.meta["directions"] == "shared"


def test_noncontiguous_and_channels_last_inputs():
    model = zoo.cnn()
    base = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    ref = lcfast.local_complexity(model, base, radius=0.02, n_dirs=3, backend="reference")
    cl = base.to(memory_format=torch.channels_last)
    nc = torch.randn(4, 3, 16, 32).clone()[..., ::2]
    nc.copy_(base)
    assert not nc.is_contiguous()
    for xx in (cl, nc):
        r = lcfast.local_complexity(model, xx, radius=0.02, n_dirs=3, backend="reference")
        assert torch.equal(r.counts, ref.counts)
