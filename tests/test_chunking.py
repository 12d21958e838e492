"""Chunk planning (lcfast.engine.chunking) and the one vertex builder (neighborhood.vertices)."""
import pytest
import torch

from lcfast.engine.chunking import ChunkPlan, SizeProbe, points_per_chunk
from lcfast.neighborhood import vertices


def test_calibrate_from_probe(monkeypatch):
    monkeypatch.setenv("LCFAST_CHUNK_BYTES", str(10_000))
    plan = ChunkPlan(100, 4, 40, torch.device("cpu"))
    assert plan.needs_probe
    probe = SizeProbe()
    with probe:
        torch.ones(4, 25) * 2  # 400 bytes over 4 rows (1 point): 100 bytes per row
    assert probe.max_bytes == 400
    # per point: 4 rows * (4 * 100 + 2 * 40 / 4) + 1 = 1681 bytes -> 5 points in 10,000
    assert plan.calibrate(probe, 1) == 5 == plan.size
    assert points_per_chunk(100.0, 40, 4, torch.device("cpu"), max_rows=8) == 2  # row cap


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_vertices_out_and_work_buffers_give_the_same_bits(shared, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 5, generator=g, dtype=dtype)
    d = torch.randn(*(() if shared else (3,)), 4, 2, 5, generator=g, dtype=dtype)
    if not shared:
        d = d.transpose(-1, -2).contiguous().transpose(-1, -2)  # strided directions
    r = 0.37
    # independent formula: fl(x + fl(r v)) and fl(x - fl(r v)), +v block then -v block
    dd = (d * r).expand(3, 4, 2, 5) if shared else d * r
    expect = torch.stack([x.unsqueeze(1) + dd, x.unsqueeze(1) - dd], 1).reshape(24, 2, 5)
    plain = vertices(x, d, r)
    buf = torch.full((24 * 10 + 7,), float("nan"), dtype=dtype)
    work = torch.full((d.numel() + 3,), float("nan"), dtype=dtype)
    into = vertices(x, d, r, out=buf[:240], work=work[:d.numel()])
    assert torch.equal(plain, expect) and torch.equal(into, expect)
    assert into.data_ptr() == buf.data_ptr()
    assert torch.isnan(buf[240:]).all()  # nothing written past the vertices


def test_cpu_budget_follows_the_cgroup_limit_and_local_ranks(tmp_path, monkeypatch):
    from lcfast.engine import chunking
    monkeypatch.delenv("LCFAST_CHUNK_BYTES", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    limit, usage = tmp_path / "limit", tmp_path / "usage"
    limit.write_text(str(3 << 30))
    usage.write_text(str(1 << 30))  # 2 GiB left in the cgroup, whatever MemAvailable says
    monkeypatch.setattr(chunking, "_CGROUP_FILES", ((str(limit), str(usage)),))
    assert chunking.available_ram() <= 2 << 30
    cpu = torch.device("cpu")
    assert chunking.memory_budget(cpu) == chunking.available_ram() // 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two torchrun ranks on this machine share it
    assert chunking.memory_budget(cpu) == chunking.available_ram() // 8
    limit.write_text("max")  # cgroup v2 without a limit: MemAvailable alone
    assert chunking.available_ram() > 0
