"""Offsets engine against the bare forward of the vertex batch and the reference backend
(issue 10 workloads), and the low-precision accuracy table.

Timing (pytest-benchmark; each method's ratio to the bare float32 forward of the same
``N * 2P`` vertices, measured in the same test, is in ``extra_info``)::

    pytest benchmarks/test_bench_offsets.py --benchmark-only --benchmark-json=out.json

``LCFAST_OFFSETS_BENCH=small`` shrinks the workloads (200 MLP points, ResNet18 at
112x112) for a loaded machine.  Accuracy table (model x radius x dtype, LC and error
against float64)::

    python benchmarks/test_bench_offsets.py --accuracy

Ratios in process CPU time, one thread (for a shared, loaded machine)::

    python benchmarks/test_bench_offsets.py --cpu-time

The bf16 workloads of issue 10 (ResNet18 224 px, on a CPU with native bf16: avx512_bf16
or AMX), same measure: ``--cpu-time-bf16``.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import lcfast  # noqa: E402
from lcfast.api import naive_low_precision  # noqa: E402
import zoo  # noqa: E402
from lcfast.engine.offsets import offsets_local_complexity  # noqa: E402
from lcfast import frames  # noqa: E402
from lcfast.neighborhood import vertices  # noqa: E402

SMALL = os.environ.get("LCFAST_OFFSETS_BENCH") == "small"


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _workloads():
    n_mlp, hw = (200, 112) if SMALL else (1000, 224)
    g = torch.Generator().manual_seed(0)
    mlp = zoo.mlp(784, 200, 4, 10)
    xm = torch.rand(n_mlp, 784, generator=g)
    r18 = zoo.resnet18(n_cls=1000)
    xr = torch.randn(2, 3, hw, hw, generator=g)
    return {
        "mlp-784-200x4-10": (mlp, xm, 0.005),
        f"resnet18-{hw}-r1e-4": (r18, xr, 1e-4),
        f"resnet18-{hw}-r5e-3": (r18, xr, 5e-3),
    }


WORKLOADS = _workloads()
METHODS = ("bare", "reference", "offsets-f32", "offsets-bf16")


def _median_time(fn, rounds=3) -> float:
    ts = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def _runner(method, model, x, dirs, r):
    model.eval()
    if method == "bare":
        def run():
            with torch.no_grad():
                model(vertices(x, dirs, r))
        return run
    if method == "reference":
        return lambda: lcfast.local_complexity(model, x, radius=r, directions=dirs, backend="reference")
    dtype = torch.float32 if method == "offsets-f32" else torch.bfloat16
    return lambda: offsets_local_complexity(model, x, radius=r, directions=dirs, dtype=dtype)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_offsets_bench(benchmark, workload, method):
    model, x, r = WORKLOADS[workload]
    dirs = frames.random_frames(x.shape[1:], 25, 0, torch.arange(x.shape[0]), dtype=torch.float32)
    bare = _median_time(_runner("bare", model, x, dirs, r), rounds=2)
    fn = _runner(method, model, x, dirs, r)
    out = fn()
    info = {"load_start": _load(), "bare_s": bare}
    if method.startswith("offsets"):
        ref = lcfast.local_complexity(model, x, radius=r, directions=dirs, backend="reference")
        info.update(total=int(out.counts.sum()), reference_total=int(ref.counts.sum()),
                    equal_to_reference=bool(torch.equal(out.counts, ref.counts)),
                    rows_per_point=out.meta["rows_per_point"], antisymmetric_points=out.meta["antisymmetric_points"],
                    breaks=out.meta["breaks"])
    benchmark.group = workload
    benchmark.pedantic(fn, rounds=2, iterations=1)
    info["ratio_vs_bare"] = benchmark.stats.stats.median / bare
    info["load_end"] = _load()
    benchmark.extra_info.update(info)


@pytest.mark.parametrize("method", ["random_frames", "gaussian_frames", "orthonormal_rows", "factored_frames",
                                    "random_frames[torch-fallback]"])
def test_frames_bench(benchmark, method, monkeypatch):
    """1,000 x 25 x 784 per-point frames (issue target: <= 50 ms on the 2-core CPU): the
    whole default generator, its two stages, the factors the offsets engine draws instead
    (:func:`lcfast.frames.factored_frames`: no ``mix @ gauss`` product), and the whole
    without the native kernel."""
    ids = torch.arange(200 if SMALL else 1000)
    if method.endswith("[torch-fallback]"):
        monkeypatch.setattr(frames._extension, "has_kernel", lambda op, dev: False)
    if method == "orthonormal_rows":
        g = frames.gaussian_frames(0, ids, 784, 25)
        fn = lambda: frames.orthonormal_rows(g)  # noqa: E731
    elif method == "factored_frames":
        fn = lambda: frames.factored_frames((784,), 25, 0, ids)  # noqa: E731
    elif method == "gaussian_frames":
        fn = lambda: frames.gaussian_frames(0, ids, 784, 25)  # noqa: E731
    else:
        fn = lambda: frames.random_frames((784,), 25, 0, ids, dtype=torch.float32)  # noqa: E731
    benchmark.group = "frames"
    benchmark.extra_info["load_start"] = _load()
    benchmark.pedantic(fn, rounds=3, iterations=1)
    benchmark.extra_info["load_end"] = _load()


# ---------------------------------------------------------------------------
# accuracy table
# ---------------------------------------------------------------------------


def accuracy_table(radii=(1e-4, 1e-3, 5e-3), models=None) -> str:
    """Markdown table: total LC of float64, and per offsets dtype / naive push the total
    and its error against float64 (on the models of tests/test_offsets_lowp.py); the
    certified bf16 cell adds the points recomputed in float64 (FAIL: a point's counts
    differ from float64's; the other cells: outside the low-precision criterion).
    ``models``: a subset of those models (default all)."""
    from lcfast.testing import float64_oracle
    from lcfast.testing import low_precision_criterion as within
    from test_offsets_lowp import CASES, _oracle

    cols = [("offsets f32", "off", torch.float32), ("offsets bf16", "off", torch.bfloat16),
            ("offsets f16", "off", torch.float16), ("naive f32", "ref", torch.float32),
            ("naive bf16", "ref", torch.bfloat16), ("certified bf16", "cert", torch.bfloat16)]
    lines = ["| model | r | float64 | " + " | ".join(c[0] for c in cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    for name in models or CASES:
        model, x, dirs = _oracle(name)
        for r in radii:
            ref = float64_oracle(model, x, radius=r, directions=dirs, dtype=torch.float64).counts
            cells = []
            for _, kind, dt in cols:
                extra = ""
                if kind == "off":
                    got = offsets_local_complexity(model, x, radius=r, directions=dirs, dtype=dt).counts
                    ok = within(got, ref) is None
                elif kind == "cert":  # certified: every point's counts equal float64's, points recomputed
                    res = offsets_local_complexity(model, x, radius=r, directions=dirs, dtype=dt, certified=True)
                    got, ok = res.counts, torch.equal(res.counts, ref)
                    extra = f"; {res.meta['certified_recomputed']} pts"
                else:
                    with naive_low_precision():  # the naive push is refused outside this block
                        got = lcfast.local_complexity(model, x, radius=r, directions=dirs, backend="reference",
                                                      dtype=dt).counts
                    ok = within(got, ref) is None
                cells.append(f"{int(got.sum())} ({int(got.sum()) - int(ref.sum()):+d}{extra}{'' if ok else ', FAIL'})")
            lines.append(f"| {name} (N={x.shape[0]}, P={dirs.shape[1]}) | {r:g} | {int(ref.sum())} | "
                         + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    return "\n".join(lines)


def _cpu_time(fn, rounds):
    ts, out = [], None
    for _ in range(rounds):
        t = time.process_time()
        out = fn()
        ts.append(time.process_time() - t)
    return statistics.median(ts), out


def cpu_time_table(rounds: int = 3) -> str:
    """Markdown rows: the issue-10 workloads, one thread, median process CPU time of the
    offsets engine (float32, frames given) and of the bare float32 forward of the same
    vertices, and their ratio: a measure that other processes on a shared machine do not
    inflate the way they inflate wall time."""
    torch.set_num_threads(1)
    lines = ["| workload | bare s | offsets s | offsets / bare | user call s (frames drawn) | call / bare | "
             "rows per point | symmetric part (ops) | total LC |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, (model, x, r) in WORKLOADS.items():
        model.eval()
        dirs = frames.random_frames(x.shape[1:], 25, 0, torch.arange(x.shape[0]), dtype=torch.float32)
        cpu = lambda fn: _cpu_time(fn, rounds)  # noqa: E731
        tb, _ = cpu(_runner("bare", model, x, dirs, r))
        to, res = cpu(_runner("offsets-f32", model, x, dirs, r))
        # what a user's default-frames call costs: frames drawn by the call, validation, planning
        tc, _ = cpu(lambda: lcfast.local_complexity(model, x, radius=r, n_dirs=25, backend="offsets"))
        lines.append(f"| {name} (N={x.shape[0]}) | {tb:.3f} | {to:.3f} | {to / tb:.2f}x | {tc:.3f} | {tc / tb:.2f}x | "
                     f"{res.meta['rows_per_point']:.1f} | {res.meta['symmetric_part']} | {int(res.counts.sum())} |")
        print(lines[-1], f"(load {_load()})", flush=True)
    return "\n".join(lines)


def cpu_time_table_bf16(rounds: int = 3) -> str:
    """Markdown rows: the ResNet18 workloads with bf16 offsets (issue 10's CPU bf16
    targets: <= 0.6x the bare float32 forward at r = 5e-3, <= 0.35x at r = 1e-4), one
    thread, median process CPU time: the bare float32 and bf16 forwards of the vertices,
    the engine with frames given around a float32 and a float64 centre, and the user's
    default call ``local_complexity(dtype=torch.bfloat16)`` (frames drawn, float64
    centre: ``lcfast.engine.low_precision_route``); totals against float64 on the same
    frames (``lcfast.testing.low_precision_criterion``)."""
    import copy
    from lcfast.testing import low_precision_criterion
    torch.set_num_threads(1)
    lines = [f"bf16 on this CPU: oneDNN bf16 {torch.ops.mkldnn._is_mkldnn_bf16_supported()}, "
             f"ATen CPU capability {torch.backends.cpu.get_cpu_capability()}", "",
             "| workload | bare f32 s | bare bf16 s (/ f32) | offsets bf16, f32 centre s (/ bare f32) | "
             "offsets bf16, f64 centre s (/ bare f32) | user call s (/ bare f32) | total: f32 centre / f64 centre "
             "/ call / float64 |",
             "|---|---|---|---|---|---|---|"]
    for name, (model, x, r) in WORKLOADS.items():
        if not name.startswith("resnet18"):
            continue
        model.eval()
        n = x.shape[0]
        dirs = frames.random_frames(x.shape[1:], 25, 0, torch.arange(n), dtype=torch.float32)
        mb = copy.deepcopy(model).to(torch.bfloat16)  # the user's model is not touched
        v = vertices(x, dirs, r)
        tb, _ = _cpu_time(_runner("bare", model, x, dirs, r), rounds)
        with torch.no_grad():
            tbb, _ = _cpu_time(lambda: mb(v.to(torch.bfloat16)), rounds)
        t32, o32 = _cpu_time(lambda: offsets_local_complexity(model, x, radius=r, directions=dirs,
                                                              dtype=torch.bfloat16, centre_dtype=torch.float32), rounds)
        t64, o64 = _cpu_time(lambda: offsets_local_complexity(model, x, radius=r, directions=dirs,
                                                              dtype=torch.bfloat16, centre_dtype=torch.float64), rounds)
        tc, oc = _cpu_time(lambda: lcfast.local_complexity(model, x, radius=r, n_dirs=25, dtype=torch.bfloat16), rounds)
        ref = lcfast.local_complexity(model, x, radius=r, directions=dirs, dtype=torch.float64, backend="reference")
        refc = lcfast.local_complexity(model, x, radius=r, n_dirs=25, dtype=torch.float64, backend="reference")
        ok = [low_precision_criterion(o.counts, f.counts) is None for o, f in ((o32, ref), (o64, ref), (oc, refc))]
        tot = " / ".join(f"{int(o.counts.sum())}{'' if k else ' FAIL'}" for o, k in zip((o32, o64, oc), ok))
        lines.append(f"| {name} (N={n}) | {tb:.3f} | {tbb:.3f} ({tbb / tb:.2f}x) | {t32:.3f} (**{t32 / tb:.2f}x**) | "
                     f"{t64:.3f} (**{t64 / tb:.2f}x**) | {tc:.3f} (**{tc / tb:.2f}x**) | {tot} / "
                     f"{int(ref.counts.sum())} (call's frames: {int(refc.counts.sum())}) |")
        print(lines[-1], f"(load {_load()})", flush=True)
    return "\n".join(lines)


if __name__ == "__main__":
    if "--cpu-time-bf16" in sys.argv:
        print(f"load at start: {_load()}")
        print(cpu_time_table_bf16())
        print(f"load at end: {_load()}")
    if "--cpu-time" in sys.argv:
        print(f"load at start: {_load()}")
        print(cpu_time_table())
        print(f"load at end: {_load()}")
    if "--accuracy" in sys.argv:
        print(f"load at start: {_load()}")
        # --models mlp,cnn: a subset of tests/test_offsets_lowp.py's models (default all)
        names = sys.argv[sys.argv.index("--models") + 1].split(",") if "--models" in sys.argv else None
        print(accuracy_table(models=names))
        print(f"load at end: {_load()}")
