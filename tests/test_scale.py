"""measure_dataset: resumable blocks and torch.distributed ranks give the plain result."""
import json

import pytest
import torch

import lcfast
from lcfast.scale import measure_dataset
import zoo

KW = dict(radius=0.3, n_dirs=3, backend="reference")


def data():
    return torch.randn(23, 20, generator=torch.Generator().manual_seed(0))


def test_matches_single_call_and_dataset_items():
    model, x = zoo.mlp(), data()
    plain = lcfast.local_complexity(model, x, **KW)
    res = measure_dataset(model, x, block_size=5, **KW)
    assert torch.equal(res.counts, plain.counts) and res.ids.tolist() == list(range(23))
    ds = torch.utils.data.TensorDataset(x, torch.zeros(23))
    res2 = measure_dataset(model, ds, block_size=7, progress=True, id_offset=100, **KW)
    assert res2.ids.tolist() == list(range(100, 123))
    assert torch.equal(res2.counts, lcfast.local_complexity(model, x, ids=range(100, 123), **KW).counts)


class Flaky(torch.utils.data.Dataset):
    """Loader reads (batched ``__getitems__``) crash from index ``fail_at`` on; single
    items (the checkpoint fingerprint's probes) always work."""

    def __init__(self, x, fail_at=None):
        self.x, self.fail_at, self.seen = x, fail_at, []

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]

    def __getitems__(self, idx):
        if self.fail_at is not None and max(idx) >= self.fail_at:
            raise RuntimeError("crash")
        self.seen += idx
        return [self.x[i] for i in idx]


def _records(path):
    return [json.loads(l) for l in open(path).read().splitlines()]


def test_resume_after_crash(tmp_path):
    model, x = zoo.mlp(), data()
    ck = str(tmp_path / "ck")
    with pytest.raises(RuntimeError, match="crash"):
        measure_dataset(model, Flaky(x, fail_at=12), block_size=5, checkpoint=ck, **KW)
    assert [r.get("lo") for r in _records(ck + ".rank0.jsonl")] == [None, 0, 5]  # header, 2 blocks
    resumed = Flaky(x)
    res = measure_dataset(model, resumed, block_size=5, checkpoint=ck, **KW)
    assert resumed.seen == list(range(10, 23))  # finished blocks were not read again
    plain = lcfast.local_complexity(model, x, **KW)
    assert torch.equal(res.counts, plain.counts) and res.ids.tolist() == list(range(23))


def test_torn_line_repaired_and_file_bounded(tmp_path):
    """A crash mid-write tears the last line: resuming redoes that block only, and the
    file keeps one line per block over repeated tears and resumes."""
    model, x = zoo.mlp(), data()
    ck = str(tmp_path / "ck")
    path = ck + ".rank0.jsonl"
    plain = lcfast.local_complexity(model, x, **KW)
    measure_dataset(model, x, block_size=5, checkpoint=ck, **KW)
    whole = open(path, "rb").read()
    assert whole.count(b"\n") == 1 + 5
    for k in range(3):
        lines = whole.split(b"\n")
        with open(path, "wb") as f:  # blocks 0, 1 whole, block 2 torn, blocks 3, 4 never written
            f.write(b"\n".join(lines[:3]) + b"\n" + lines[3][: len(lines[3]) // 2])
        ds = Flaky(x)
        res = measure_dataset(model, ds, block_size=5, checkpoint=ck, **KW)
        assert ds.seen == list(range(10, 23))
        assert torch.equal(res.counts, plain.counts)
        again = Flaky(x)
        measure_dataset(model, again, block_size=5, checkpoint=ck, **KW)
        assert again.seen == []  # nothing redone
        recs = _records(path)
        assert [r.get("lo") for r in recs] == [None, 0, 5, 10, 15, 20]


def test_bad_arguments():
    with pytest.raises(ValueError, match="block_size"):
        measure_dataset(zoo.mlp(), data(), block_size=0, **KW)
    with pytest.raises(TypeError, match="ids"):
        measure_dataset(zoo.mlp(), data(), ids=[1], **KW)
