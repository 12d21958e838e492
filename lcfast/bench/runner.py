"""Running workloads without pytest (``lcfast bench``): build, check, time each
method; the result has the shape of a pytest-benchmark JSON, so
:func:`~lcfast.bench.report.format_report` and ``benchmarks/report.py`` read both."""
from __future__ import annotations

import dataclasses
import statistics
import time

import torch

from .baselines import BASELINES
from .methods import available_methods, excluded_backends, prepare_method
from .prepared import Prepared, prepare
from .report import compute_ratios, conditions, load_average
from .workloads import COMPILE_OFF, default_size, load_workloads

__all__ = ["run_workloads", "base_extra_info"]


def base_extra_info(p: Prepared, method: str, order: tuple[int, int]) -> dict:
    w = p.workload
    c = {"device": p.device.type, "torch": torch.__version__}
    try:
        import triton
        c["triton"] = triton.__version__
    except ImportError:
        c["triton"] = None
    if p.device.type == "cuda":
        c["device_name"] = torch.cuda.get_device_name(p.device)
    return {"workload": w.name, "method": method, "n": w.n, "n_dirs": w.n_dirs, "radius": w.radius,
            "chunk": w.chunk, "size": w.size, "dtype": w.dtype, "model": w.model, "data": p.data,
            "workload_order": order[0], "method_order": order[1], **c}


def run_workloads(names, device, size=None, backends=None, baselines=BASELINES, rounds=None, n=None,
                  config=None, check_only=False, log=print) -> dict:
    """Run workloads without pytest; returns a pytest-benchmark-shaped dict
    (``benchmarks``, ``machine_info.lcfast``, ``lcfast_failures``) that
    :func:`format_report` prints."""
    device = torch.device(device)
    size = size or default_size(device)
    all_w = load_workloads(config, size)
    if names in (None, "all") or names == ["all"]:
        names = list(all_w)
    unknown = [x for x in names if x not in all_w]
    if unknown:
        raise ValueError(f"--workload: unknown {unknown}; known: {list(all_w)}")
    cond = conditions(device, size)
    methods = available_methods(device, backends, baselines)
    benches, failures = [], []
    skipped = [{"workload": "all", "method": b, "reason": why} for b, why in excluded_backends(device).items()]
    for wi, name in enumerate(names):
        w = all_w[name]
        if n is not None:
            w = dataclasses.replace(w, n=n, chunk=min(w.chunk, n), verify=min(w.verify, n), skip=None)
        if w.n == 0:
            skipped.append({"workload": name, "reason": w.skip})
            log(f"[{name}] skipped: {w.skip}")
            continue
        p = prepare(w, device)
        log(f"[{name}] N={w.n} P={w.n_dirs} chunk={w.chunk} on {device} ({p.data}); built in {p.build_s:.1f} s")
        recs = []
        for mi, mname in enumerate(methods):
            if mname == "torch.compile" and not w.compile:
                skipped.append({"workload": name, "method": mname, "reason": COMPILE_OFF})
                log(f"[{name}] {mname}: not run ({COMPILE_OFF})")
                continue
            info = base_extra_info(p, mname, (wi, mi))
            try:
                m = prepare_method(p, mname)
            except Exception as e:  # noqa: BLE001 - record and go on with the other methods
                msg = f"{type(e).__name__}: {e}"
                failures.append({"workload": name, "method": mname, "error": msg[:500]})
                log(f"[{name}] {mname}: FAILED before timing: {msg[:300]}")
                continue
            fin = m.info.pop("finalizer", None)
            info.update(m.info)
            times = []
            if not check_only:
                for _ in range(rounds or w.rounds):
                    t0 = time.perf_counter()
                    m.timed()
                    times.append(time.perf_counter() - t0)
            if fin:
                fin()
            med = statistics.median(times) if times else info.get("first_call_s", float("nan"))
            log(f"[{name}] {mname}: {info.get('check')}; " +
                (f"median {med:.4f} s over {len(times)} rounds" if times else "checked (not timed)"))
            recs.append({"workload": name, "method": mname, "median": med, "extra_info": info,
                         "stats": {"median": med, "min": min(times) if times else med,
                                   "max": max(times) if times else med, "rounds": len(times),
                                   "data": times}})
        compute_ratios(recs)
        for r in recs:
            benches.append({"group": r["workload"], "name": f"{r['workload']}[{r['method']}]",
                            "stats": r["stats"], "extra_info": r["extra_info"]})
        del p
        if device.type == "cuda":
            torch.cuda.empty_cache()
    cond["load_end"] = load_average()
    return {"machine_info": {"lcfast": cond}, "benchmarks": benches, "lcfast_failures": failures,
            "lcfast_skipped": skipped, "check_only": check_only}
