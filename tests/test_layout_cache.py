"""The per-model cache of the batch-layout probe (lcfast/engine/layout_cache.py): a
repeated call skips the probe and counts the same; anything the layout can depend on
(attributes such as ``batch_first``, train/eval, hooks, an instance ``forward``, the
input shape, the sites) is a miss; a stale layout raises instead of counting; the
cache keeps no model alive."""
import gc
import weakref

import pytest
import torch
import torch.nn as nn

import lcfast
from lcfast.engine import layout_cache
from test_batch_dim import P, SeqFirstAttention, brute_force


def lc(model, x, **kw):
    return lcfast.local_complexity(model, x, radius=0.3, n_dirs=P, dtype=torch.float64, backend="reference", **kw)


@pytest.fixture(autouse=True)
def empty_cache():
    layout_cache.clear()
    yield
    layout_cache.clear()


def test_second_call_uses_the_cache_and_counts_the_same():
    torch.manual_seed(0)
    model, x = SeqFirstAttention().eval(), 0.1 * torch.randn(4, 24)
    first, second = lc(model, x), lc(model, x, chunk_size=1)
    assert first.meta["layout_probe"] == "run" and second.meta["layout_probe"] == "cached"
    truth = brute_force(model, x, 0.3)
    assert torch.equal(first.counts, truth) and torch.equal(second.counts, truth) and truth.sum() > 0


def test_what_changes_the_layout_is_a_miss():
    torch.manual_seed(0)
    model, x = SeqFirstAttention().eval(), 0.1 * torch.randn(3, 24)
    assert lc(model, x).meta["layout_probe"] == "run"
    model.train()  # the training flag of every module
    assert lc(model, x).meta["layout_probe"] == "run"
    model.eval()  # back to a structure seen before: its entry is still there
    assert lc(model, x).meta["layout_probe"] == "cached"
    changes = [
        lambda: setattr(model.attn, "dropout", 0.0 + 1e-9),  # a plain attribute
        lambda: model.lin.register_forward_hook(lambda m, a, o: None),  # a module hook
        lambda: setattr(model, "forward", model.forward),  # an instance-level forward
    ]
    for change in changes:
        change()
        assert lc(model, x).meta["layout_probe"] == "run"
        assert lc(model, x).meta["layout_probe"] == "cached"
    handle = nn.modules.module.register_module_forward_hook(lambda m, a, o: None)  # a global hook
    try:
        assert lc(model, x).meta["layout_probe"] == "run"
    finally:
        handle.remove()
    assert lc(model, x).meta["layout_probe"] == "cached"
    assert lc(model, x, sites=[nn.Linear]).meta["layout_probe"] == "run"  # other sites
    assert lc(model, x.float()[:, :24]).meta["layout_probe"] == "cached"  # same call (cast to float64)


def test_batch_first_flip_is_a_miss_and_counts_right():
    """``batch_first`` decides where the batch is (issue 11 item 1): flipping it must
    not reuse the sequence-first layout."""
    torch.manual_seed(0)
    model, x = SeqFirstAttention().eval(), 0.1 * torch.randn(4, 24)
    lc(model, x)
    model.attn.batch_first = True  # now attention mixes the batch (T = 2P rows), unlike the truth
    res = lc(model, x)
    assert res.meta["layout_probe"] == "run"


def test_forward_and_extra_calls_are_not_cached():
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(4, 8), nn.ReLU()), torch.randn(3, 4)
    fwd = lambda m, v: m(v)  # noqa: E731
    assert lc(model, x, forward=fwd).meta["layout_probe"] == "run"
    assert lc(model, x, forward=fwd).meta["layout_probe"] == "run"


def test_a_stale_layout_raises_instead_of_counting():
    torch.manual_seed(0)
    model, x = SeqFirstAttention().eval(), 0.1 * torch.randn(2, 24)
    lc(model, x)
    (entries,) = layout_cache._CACHE.values()
    for entry in entries.values():
        for k in entry["layouts"]:
            entry["layouts"][k] = 2  # the wrong dimension: (T, B, H) has H = 5 rows there
    with pytest.raises(RuntimeError, match="batch-layout probe found the batch in dimension 2"):
        lc(model, x)


def test_cache_keeps_no_model_alive_and_is_bounded():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    model.forward = model.forward  # a bound method of the model, held only by id in the key
    for d in range(layout_cache.MAX_ENTRIES + 3):  # one entry per input width
        m = nn.Sequential(nn.Linear(d + P, 8), nn.ReLU())
        model[0] = m[0]
        lc(model, torch.randn(2, d + P))
    assert len(layout_cache._CACHE[model]) == layout_cache.MAX_ENTRIES
    ref = weakref.ref(model)
    del model, m
    gc.collect()
    assert ref() is None and len(layout_cache._CACHE) == 0


def test_environment_switch_turns_it_off(monkeypatch):
    model, x = nn.Sequential(nn.Linear(4, 8), nn.ReLU()), torch.randn(3, 4)
    monkeypatch.setenv("LCFAST_LAYOUT_CACHE", "0")
    assert lc(model, x).meta["layout_probe"] == "run" and lc(model, x).meta["layout_probe"] == "run"


def test_chunk_probe_is_cached_with_the_layouts():
    """The one-point chunk-size probe runs once per model and call; later calls size
    their chunks from the stored bytes per row (per backend) and count the same."""
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4)), torch.randn(7, 6)
    first = lcfast.local_complexity(model, x, radius=0.3, n_dirs=P, backend="reference")
    again = lcfast.local_complexity(model, x, radius=0.3, n_dirs=P, backend="reference")
    assert "chunk_probe" not in first.meta and again.meta["chunk_probe"] == "cached"
    assert torch.equal(first.counts, again.counts)
    (entries,) = layout_cache._CACHE.values()
    (entry,) = entries.values()
    assert entry["bytes_per_row/reference"] > 0
    other = lcfast.local_complexity(model, x, radius=0.3, n_dirs=P, backend="native") \
        if "native" in lcfast.available_backends("cpu") else None
    if other is not None:  # another backend probes for itself
        assert "chunk_probe" not in other.meta and torch.equal(other.counts, first.counts)
    given = lcfast.local_complexity(model, x, radius=0.3, n_dirs=P, backend="reference", chunk_size=2)
    assert "chunk_probe" not in given.meta and torch.equal(given.counts, first.counts)
