"""measure_dataset: resumable blocks and torch.distributed ranks give the plain result."""
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

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
    res2 = measure_dataset(model, ds, block_size=7, **KW)
    assert torch.equal(res2.counts, plain.counts)


class Flaky(torch.utils.data.Dataset):
    def __init__(self, x, fail_at):
        self.x, self.fail_at, self.seen = x, fail_at, []

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if self.fail_at is not None and i >= self.fail_at:
            raise RuntimeError("crash")
        self.seen.append(i)
        return self.x[i]


def test_resume_after_crash(tmp_path):
    model, x = zoo.mlp(), data()
    ck = str(tmp_path / "ck")
    with pytest.raises(RuntimeError, match="crash"):
        measure_dataset(model, Flaky(x, fail_at=12), block_size=5, checkpoint=ck, **KW)
    lines = open(ck + ".rank0.jsonl").read().splitlines()
    assert [json.loads(l)["lo"] for l in lines] == [0, 5]
    with open(ck + ".rank0.jsonl", "a") as f:
        f.write('{"fingerprint": "torn')  # a torn line from the crash is redone, not fatal
    resumed = Flaky(x, fail_at=None)
    res = measure_dataset(model, resumed, block_size=5, checkpoint=ck, **KW)
    assert min(resumed.seen) == 10  # finished blocks were not measured again
    plain = lcfast.local_complexity(model, x, **KW)
    assert torch.equal(res.counts, plain.counts)
    with pytest.raises(ValueError, match="other settings"):
        measure_dataset(model, x, block_size=5, checkpoint=ck, **{**KW, "radius": 0.1})


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        res = measure_dataset(zoo.mlp(), data(), block_size=4, **KW)
        torch.save(res.counts, f"{out}.{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "counts")
    mp.spawn(_worker, args=(2, port, out), nprocs=2, join=True)
    plain = lcfast.local_complexity(zoo.mlp(), data(), **KW)
    for r in range(2):
        assert torch.equal(torch.load(f"{out}.{r}.pt"), plain.counts)


def test_bad_arguments():
    with pytest.raises(ValueError, match="block_size"):
        measure_dataset(zoo.mlp(), data(), block_size=0, **KW)
    with pytest.raises(TypeError, match="ids"):
        measure_dataset(zoo.mlp(), data(), ids=[1], **KW)
