"""measure_dataset over 2 gloo processes equals one process, with the same number of
collective calls on every rank (also when one rank resumes and the other starts over);
ranks with different models are refused on every rank."""
import datetime
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import lcfast
from lcfast import scale
from lcfast.scale import measure_dataset
import zoo

KW = dict(radius=0.3, n_dirs=3, backend="reference")
N, BLOCK = 23, 5  # 5 blocks over 2 ranks: 3 rounds, rank 1 idle in the last


def data():
    return torch.randn(N, 20, generator=torch.Generator().manual_seed(0))


class Recorded(torch.utils.data.TensorDataset):
    def __init__(self, x):
        super().__init__(x)
        self.seen = []

    def __getitems__(self, idx):
        self.seen += idx
        return [self[i] for i in idx]


class Flaky(Recorded):
    def __init__(self, x, fail_at):
        super().__init__(x)
        self.fail_at = fail_at

    def __getitems__(self, idx):
        if max(idx) >= self.fail_at:
            raise RuntimeError("disk read failed")
        return super().__getitems__(idx)


def _worker(rank, world, port, tmp):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # a hang (a rank left waiting in a collective) fails the test after 60 s
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        torch.set_num_threads(1)
        calls = []
        real = dist.all_gather_object
        scale.dist.all_gather_object = lambda *a, **k: (calls.append(1), real(*a, **k))[1]
        out = {}
        ck = os.path.join(tmp, "ck")
        ds = Recorded(data())
        out["first"] = measure_dataset(zoo.mlp(), ds, block_size=BLOCK, checkpoint=ck, **KW).counts
        out["first_seen"], out["first_calls"] = list(ds.seen), len(calls)
        dist.barrier()
        if rank == 1:  # rank 1 lost its checkpoint, rank 0 resumes from its own
            os.remove(ck + ".rank1.jsonl")
        dist.barrier()
        ds = Recorded(data())
        out["resumed"] = measure_dataset(zoo.mlp(), ds, block_size=BLOCK, checkpoint=ck, **KW).counts
        out["resumed_seen"], out["resumed_calls"] = list(ds.seen), len(calls) - out["first_calls"]
        try:  # a random init seeded differently on one rank
            measure_dataset(zoo.mlp(seed=rank), data(), block_size=BLOCK, **KW)
        except ValueError as e:
            out["unseeded"] = str(e)
        try:  # rank 1's reads fail in its second block (round 2): every rank stops in round 2
            measure_dataset(zoo.mlp(), Flaky(data(), fail_at=15), block_size=BLOCK, **KW)
        except RuntimeError as e:
            out["failed"] = str(e)
        try:  # rank 0's checkpoint belongs to another measurement: every rank stops at once
            measure_dataset(zoo.mlp(), data(), block_size=BLOCK, checkpoint=ck if rank == 0 else ck + "b",
                            **{**KW, "radius": 0.2})
        except (ValueError, RuntimeError) as e:
            out["stale"] = str(e)
        ddp = torch.nn.parallel.DistributedDataParallel(zoo.mlp())
        out["ddp"] = measure_dataset(ddp, data(), block_size=BLOCK, **KW).counts
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        sharded = fully_shard(zoo.mlp(), mesh=init_device_mesh("cpu", (world,)))
        try:
            measure_dataset(sharded, data(), block_size=BLOCK, **KW)
        except TypeError as e:
            out["fsdp"] = str(e)
        torch.save(out, os.path.join(tmp, f"out.{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: no re-import of torch per rank (spawn took 66 s at load 10 vs 3 s)
    mp.start_processes(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    plain = lcfast.local_complexity(zoo.mlp(), data(), **KW).counts
    outs = [torch.load(tmp_path / f"out.{r}.pt") for r in range(2)]
    for r, out in enumerate(outs):
        for key in ("first", "resumed", "ddp"):
            assert torch.equal(out[key], plain), (r, key)
        # one identity check + one per round, also when idle or resumed
        assert out["first_calls"] == out["resumed_calls"] == 1 + 3
        assert "rank 1 vs rank 0: model weights" in out["unseeded"]
        assert "sharded" in out["fsdp"]
    assert outs[0]["failed"] == "measure_dataset stopped on every rank: rank 1: RuntimeError: disk read failed"
    assert outs[1]["failed"] == "disk read failed"
    assert "another measurement: setting radius=0.3 (now 0.2)" in outs[0]["stale"]
    assert outs[1]["stale"].startswith("measure_dataset stopped on every rank: rank 0: ValueError: checkpoint")
    assert outs[0]["first_seen"] == [*range(0, 5), *range(10, 15), *range(20, 23)]  # blocks 0, 2, 4
    assert outs[1]["first_seen"] == [*range(5, 10), *range(15, 20)]  # blocks 1, 3, then empty work
    assert outs[0]["resumed_seen"] == []
    assert outs[1]["resumed_seen"] == outs[1]["first_seen"]
