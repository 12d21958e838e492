"""measure_dataset reads data sets through DataLoader workers, and survives out-of-memory
errors by halving the chunk: both leave every count unchanged."""
import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import lcfast
from lcfast.image_folder import ImageFiles
from lcfast.oom import is_out_of_memory, measure_halving
from lcfast.scale import measure_dataset
import zoo

KW = dict(radius=0.3, n_dirs=3, backend="reference")


def _pngs(root, n=11):
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = root / ("cat" if i % 2 else "dog")
        sub.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)).save(sub / f"{i:02d}.png")
    return root


class InWorkers(ImageFiles):
    """Batched reads (the loader's) must happen in DataLoader worker processes."""

    def __getitems__(self, idx):
        if torch.utils.data.get_worker_info() is None:
            raise RuntimeError("read in the main process")
        return [self[i] for i in idx]


def test_workers_give_the_same_counts(tmp_path):
    ds = ImageFiles(_pngs(tmp_path), size=16)
    x = torch.stack([ds[i] for i in range(len(ds))])
    assert x.shape == (11, 3, 16, 16) and [p.parent.name for p in ds.files[:2]] == ["cat", "cat"]
    model = zoo.cnn(width=4)
    plain = lcfast.local_complexity(model, x, **KW)
    for workers in (0, 2):
        res = measure_dataset(model, ds, block_size=4, workers=workers, **KW)
        assert torch.equal(res.counts, plain.counts) and res.ids.tolist() == list(range(11)), workers
    res = measure_dataset(model, InWorkers(tmp_path, size=16), block_size=4, workers=2, **KW)
    assert torch.equal(res.counts, plain.counts)
    with pytest.raises(RuntimeError, match="main process"):
        measure_dataset(model, InWorkers(tmp_path, size=16), block_size=4, workers=0, **KW)


def test_image_files_bad_input(tmp_path):
    with pytest.raises(ValueError, match="root"):
        ImageFiles(tmp_path / "missing")
    with pytest.raises(ValueError, match="no image"):
        ImageFiles(tmp_path)
    with pytest.raises(ValueError, match="workers"):
        measure_dataset(zoo.mlp(), torch.randn(3, 20), workers=-1, **KW)


class OOMAbove(nn.Module):
    """Wraps a model; a batch of more than ``rows`` rows raises ``error`` (a simulated OOM)."""

    def __init__(self, inner, rows, error):
        super().__init__()
        self.inner, self.rows, self.error, self.raised = inner, rows, error, 0

    def forward(self, x):
        if x.shape[0] > self.rows:
            self.raised += 1
            raise self.error
        return self.inner(x)


ERRORS = {
    "cuda": torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    "cpu": RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: not enough memory: "
                        "you tried to allocate 1024 bytes."),
}


@pytest.mark.parametrize("kind", sorted(ERRORS))
@pytest.mark.parametrize("chunk_size", [None, 7])
def test_out_of_memory_halves_and_loses_nothing(kind, chunk_size):
    x = torch.randn(23, 20, generator=torch.Generator().manual_seed(1))
    plain = lcfast.local_complexity(OOMAbove(zoo.mlp(), 10 ** 9, ERRORS[kind]), x, **KW)
    model = OOMAbove(zoo.mlp(), 3 * 6, ERRORS[kind])  # 6 rows per point: at most 3 points per forward
    with pytest.warns(RuntimeWarning, match="out of memory"):
        res = measure_dataset(model, x, block_size=10, chunk_size=chunk_size, **KW)
    assert model.raised > 0
    assert torch.equal(res.counts, plain.counts) and res.ids.tolist() == list(range(23))
    # the failed forwards left the model as found: training flag, no hooks, same weights
    assert model.training and all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(a, b) for a, b in zip(model.inner.state_dict().values(), zoo.mlp().state_dict().values()))


def test_out_of_memory_at_one_point_and_other_errors():
    x = torch.randn(4, 20)
    # the layout probe (2 points) or the size probe (1 point) runs out: a clear error, not a raw OOM
    with pytest.raises(RuntimeError, match="out of memory with (one point|two points) per forward"):
        measure_dataset(OOMAbove(zoo.mlp(), 5, ERRORS["cuda"]), x, **KW)
    with pytest.raises(RuntimeError, match="out of memory with (one point|two points) per forward"):
        measure_dataset(OOMAbove(zoo.mlp(), 5, ERRORS["cuda"]), x, chunk_size=2, **KW)
    bug = RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    assert not is_out_of_memory(bug) and is_out_of_memory(MemoryError())
    model = OOMAbove(zoo.mlp(), 0, bug)
    with pytest.raises(RuntimeError, match="shapes cannot"):
        measure_dataset(model, x, **KW)
    # not retried by the out-of-memory rule (the layout probe's fake-tensor run raised first, then its real run)
    assert model.raised == 2


def test_measure_halving_spans():
    calls = []

    def measure(lo, hi, cs):
        calls.append((lo, hi, cs))
        if hi - lo > 3:
            raise torch.OutOfMemoryError("out of memory")
        return list(range(lo, hi))

    with pytest.warns(RuntimeWarning):
        parts, size = measure_halving(measure, 10)
    assert sum(parts, []) == list(range(10)) and size == 2
    assert calls[:3] == [(0, 10, None), (0, 5, 5), (0, 2, 2)]
    parts, size = measure_halving(measure, 5, size)  # the smaller size is kept: no new error
    assert sum(parts, []) == list(range(5)) and size == 2 and calls[-1] == (4, 5, 2)


@pytest.mark.parametrize("kind", sorted(ERRORS))
@pytest.mark.parametrize("chunk_size", [None, 8])
def test_local_complexity_halves_the_chunk_on_out_of_memory(kind, chunk_size, monkeypatch):
    """The halving lives in local_complexity's chunk loop: same counts, every point once,
    the model as found, and the smaller size reported for the next call."""
    import lcfast.api as api
    x = torch.randn(19, 20, generator=torch.Generator().manual_seed(2))
    plain = lcfast.local_complexity(zoo.mlp(), x, chunk_size=1, **KW)
    model = OOMAbove(zoo.mlp(), 2 * 6, ERRORS[kind])  # at most 2 points (6 rows each) per forward
    probing = [False]  # forwards of the site-layout probe measure nothing: not counted below
    probe = api.probe_layouts

    def probe_flagged(*a, **k):
        probing[0] = True
        try:
            return probe(*a, **k)
        finally:
            probing[0] = False
    monkeypatch.setattr(api, "probe_layouts", probe_flagged)
    seen = []
    model.register_forward_pre_hook(
        lambda m, a: seen.append(a[0].shape[0]) if a[0].shape[0] <= 12 and not probing[0] else None)
    hooks = dict(model._forward_pre_hooks)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(RuntimeWarning, match="out of memory"):
        res = lcfast.local_complexity(model, x, chunk_size=chunk_size, **KW)
    assert model.raised >= 2  # 8 -> 4 -> 2 (or the probe's size -> ... -> 2)
    assert torch.equal(res.counts, plain.counts) and res.ids.tolist() == list(range(19))
    assert sum(seen) == 19 * 6  # every point measured exactly once by a forward that ran
    assert res.meta["chunk_size_after_oom"] == 2
    assert model.training and dict(model._forward_pre_hooks) == hooks and not model._forward_hooks
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    # no error: no halving reported
    assert "chunk_size_after_oom" not in lcfast.local_complexity(zoo.mlp(), x, chunk_size=4, **KW).meta


def test_cli_measures_an_image_folder_through_workers(tmp_path, capsys):
    """`lcfast measure --data DIR --workers 2`: ImageFiles read by DataLoader workers, the
    counts of the same images stacked and measured in one call."""
    import json
    from lcfast import zoo as lzoo
    from lcfast.cli import main
    (tmp_path / "imgs").mkdir()
    root = _pngs(tmp_path / "imgs")
    (root / "notes.txt").write_text("not an image")
    out = tmp_path / "r.json"
    rc = main(["measure", "--model", "paper-cnn", "--data", str(root), "--size", "32", "--workers", "2",
               "--block-size", "4", "--dirs", "3", "--radius", "0.05", "--backend", "reference", "--no-progress",
               "--out", str(out)])
    assert rc == 0
    assert "11 of 11 files, 2 loader workers" in capsys.readouterr().out
    ds = ImageFiles(root, size=32)
    x = torch.stack([ds[i] for i in range(len(ds))])
    plain = lcfast.local_complexity(lzoo.build_model("paper-cnn"), x, radius=0.05, n_dirs=3, backend="reference")
    d = json.loads(out.read_text())
    assert d["counts"] == plain.counts.tolist() and d["ids"] == list(range(11))
    assert plain.counts.sum() > 0
    rc = main(["measure", "--model", "paper-cnn", "--data", str(root), "--size", "32", "--points", "3",
               "--dirs", "3", "--radius", "0.05", "--backend", "reference", "--no-progress", "--out", str(out)])
    assert rc == 0 and json.loads(out.read_text())["counts"] == plain.counts[:3].tolist()
