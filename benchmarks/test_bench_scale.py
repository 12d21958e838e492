"""Throughput of :func:`lcfast.measure_dataset`: points per second with 1 and 2 CPU processes.

    python -m pytest benchmarks/test_bench_scale.py --benchmark-only --benchmark-json=scale.json

Workload: the README's ``mnist-mlp`` (784-200x4-10, ReLU, random init) over ``N``
MNIST training images (uniform random points when MNIST is not installed), P = 25,
r = 0.005, blocks of 125 points, backend ``auto``.  Two layouts of the same 2 cores:

* ``procs=1``: one process with 2 threads (torch's default here), and with 1 thread;
* ``procs=2``: two gloo ranks (forked, as ``torchrun`` would start them) with one
  thread each, blocks dealt in rounds.

Every process first measures 4 points untimed (warm-up: lazy imports, first calls).

pytest-benchmark times the whole call (process start and rendezvous included, one
round).  ``extra_info`` carries ``points_per_s``: ``N`` over the slowest rank's time
from a barrier to its returned result (the steady measuring rate), the threads per
process and the load average before and after.  Not a test of timing: the counts of
the 2-process run are checked equal to the 1-process run's.
"""
from __future__ import annotations

import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lcfast import bench, zoo
from lcfast.scale import measure_dataset

N, P, RADIUS, BLOCK = 500, 25, 0.005, 125
_COUNTS: dict[tuple[int, int], torch.Tensor] = {}


def _measure(rank: int, world: int, port: int, threads: int, out: str) -> None:
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(threads)
        model = zoo.build_model("mnist-mlp")
        x, _ = zoo.build_points("mnist", N, (784,), fallback=True)
        measure_dataset(model, x[:4], block_size=BLOCK, n_dirs=P, radius=RADIUS, distributed=False)  # warm-up
        if world > 1:
            dist.barrier()
        t0 = time.perf_counter()
        res = measure_dataset(model, x, block_size=BLOCK, n_dirs=P, radius=RADIUS)
        seconds = time.perf_counter() - t0
        torch.save(dict(counts=res.counts, seconds=seconds, backend=res.meta.get("backend")), f"{out}.{rank}.pt")
    finally:
        if world > 1:
            dist.destroy_process_group()


@pytest.mark.parametrize("procs, threads", [(1, 2), (1, 1), (2, 1)])
def test_bench_scale(benchmark, procs, threads, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "res")

    def run():
        if procs == 1:
            _measure(0, 1, port, threads, out)
        else:
            mp.start_processes(_measure, args=(procs, port, threads, out), nprocs=procs, join=True,
                               start_method="fork")

    load_before = bench.load_average()
    benchmark.pedantic(run, rounds=1, iterations=1)
    ranks = [torch.load(f"{out}.{r}.pt") for r in range(procs)]
    for r in ranks[1:]:
        assert torch.equal(r["counts"], ranks[0]["counts"])
    _COUNTS[procs, threads] = ranks[0]["counts"]
    for other in _COUNTS.values():
        assert torch.equal(other, ranks[0]["counts"])
    seconds = max(r["seconds"] for r in ranks)
    benchmark.extra_info.update(procs=procs, threads_per_proc=threads, n=N, n_dirs=P, radius=RADIUS,
                                block_size=BLOCK, backend=ranks[0]["backend"], measure_seconds=seconds,
                                points_per_s=N / seconds, load_before=load_before,
                                load_after=bench.load_average())
