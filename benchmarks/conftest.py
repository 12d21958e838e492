"""pytest-benchmark plumbing of the workload suite (benchmarks/test_bench_workloads.py).

Options (all optional):
  --lc-device cpu|cuda     device (default: $LCFAST_BENCH_DEVICE, else cuda when available)
  --lc-size cpu|gpu        size column of lcfast/bench/workloads.toml, the ONE switch between CPU and
                           GPU sizes (default: $LCFAST_BENCH_SIZE, else from the device)
  --lc-workloads a,b       only these workloads
  --lc-backends a,b        only these lcfast backends (default: every available one)
  --lc-no-compile          leave the torch.compile baseline out

The JSON written by --benchmark-json carries, besides pytest-benchmark's fields,
``machine_info.lcfast`` (the conditions line: device, versions, date, load average at
start and end), ``lcfast_failures`` (methods whose counts failed the check, or that
could not run: never timed) and ``lcfast_skipped``; benchmarks/report.py turns it into
the README table.
"""
from __future__ import annotations

import os

import pytest
import torch

from lcfast import bench

_STATE: dict = {"prepared": None, "records": [], "failures": [], "skipped": [], "conditions": None}


def pytest_addoption(parser):
    g = parser.getgroup("lcfast benchmarks")
    g.addoption("--lc-device", default=None, help="device of the workload suite (cpu, cuda, cuda:1, ...)")
    g.addoption("--lc-size", default=None, choices=bench.SIZES, help="size column of lcfast/bench/workloads.toml")
    g.addoption("--lc-workloads", default=None, help="comma-separated workload names (default: all)")
    g.addoption("--lc-backends", default=None, help="comma-separated lcfast backends (default: all available)")
    g.addoption("--lc-no-compile", action="store_true", help="leave the torch.compile baseline out")


def _device(config) -> torch.device:
    d = config.getoption("--lc-device") or os.environ.get("LCFAST_BENCH_DEVICE")
    return torch.device(d or ("cuda" if torch.cuda.is_available() else "cpu"))


def _size(config) -> str:
    return config.getoption("--lc-size") or bench.default_size(_device(config))


def pytest_configure(config):
    _STATE["conditions"] = bench.conditions(_device(config), _size(config))


def pytest_generate_tests(metafunc):
    if "lc_case" not in metafunc.fixturenames:
        return
    config = metafunc.config
    device, size = _device(config), _size(config)
    workloads = bench.load_workloads(None, size)
    order = {name: i for i, name in enumerate(workloads)}  # file order, also when filtered
    only = config.getoption("--lc-workloads")
    if only:
        names = [s.strip() for s in only.split(",") if s.strip()]
        unknown = [s for s in names if s not in workloads]
        if unknown:
            raise pytest.UsageError(f"--lc-workloads: unknown {unknown}; known: {list(workloads)}")
        workloads = {k: v for k, v in workloads.items() if k in names}
    backends = config.getoption("--lc-backends")
    backends = [s.strip() for s in backends.split(",") if s.strip()] if backends else None
    baselines = tuple(b for b in bench.BASELINES if not (b == "torch.compile" and config.getoption("--lc-no-compile")))
    # discovered now, at run time: a backend that landed since the last run is included
    methods = bench.available_methods(device, backends, baselines)
    for b, why in bench.excluded_backends(device).items():
        _STATE["skipped"].append({"workload": "all", "method": b, "reason": why})
    cases, ids = [], []
    for name, w in workloads.items():
        wi = order[name]
        if w.n == 0:
            _STATE["skipped"].append({"workload": name, "reason": w.skip})
            cases.append(pytest.param((w, None, (wi, 0)), marks=pytest.mark.skip(reason=f"{name}: {w.skip}")))
            ids.append(f"{name}-skipped")
            continue
        for mi, m in enumerate(methods):
            ids.append(f"{name}-{m}")
            if m == "torch.compile" and not w.compile:
                _STATE["skipped"].append({"workload": name, "method": m, "reason": bench.COMPILE_OFF})
                cases.append(pytest.param((w, m, (wi, mi)), marks=pytest.mark.skip(reason=bench.COMPILE_OFF)))
                continue
            cases.append((w, m, (wi, mi)))
    metafunc.parametrize("lc_case", cases, ids=ids)


def _prepared(w, device) -> bench.Prepared:
    """One workload built at a time (a GPU ResNet set holds 15 GB of frames)."""
    cur = _STATE["prepared"]
    if cur is not None and cur.workload == w and cur.device == device:
        return cur
    _STATE["prepared"] = None
    del cur
    if device.type == "cuda":
        torch.cuda.empty_cache()
    _STATE["prepared"] = bench.prepare(w, device)
    return _STATE["prepared"]


@pytest.fixture
def lc_run(request):
    """``lc_run(benchmark, lc_case)``: build (cached), check, then time one method."""
    device = _device(request.config)

    def run(benchmark, case):
        w, method, order = case
        p = _prepared(w, device)
        benchmark.group = w.name
        info = bench.base_extra_info(p, method, order)
        try:
            m = bench.prepare_method(p, method)
        except Exception as e:  # noqa: BLE001 - a wrong or failing method is recorded, never timed
            _STATE["failures"].append({"workload": w.name, "method": method, "error": f"{type(e).__name__}: {e}"[:500]})
            pytest.fail(f"{w.name}/{method} not timed: {type(e).__name__}: {e}", pytrace=False)
        fin = m.info.pop("finalizer", None)
        info.update(m.info)
        info["build_s"] = p.build_s
        benchmark.extra_info.update(info)
        try:
            benchmark.pedantic(m.timed, rounds=w.rounds, iterations=1, warmup_rounds=0)
        finally:
            if fin:
                fin()
        stats = getattr(benchmark, "stats", None)
        if stats is not None:  # None under --benchmark-disable
            _STATE["records"].append({"workload": w.name, "method": method, "median": stats.stats.median,
                                      "extra_info": benchmark.extra_info})
            # ratios of every record so far (dicts are serialised at the end of the run, so a
            # method timed before the reference gets its ratio filled in later)
            bench.compute_ratios(_STATE["records"])
    return run


def pytest_benchmark_update_machine_info(config, machine_info):
    c = dict(_STATE["conditions"] or bench.conditions(_device(config), _size(config)))
    c["load_end"] = bench.load_average()
    machine_info["lcfast"] = c


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["lcfast_failures"] = list(_STATE["failures"])
    output_json["lcfast_skipped"] = list(_STATE["skipped"])
