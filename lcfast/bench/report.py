"""Conditions of a run (device, versions, load), ratios between methods, and the
markdown table that ``lcfast bench`` and ``benchmarks/report.py`` print.

Ratios: ``speedup_vs_reference = t_reference / t``, ``speedup_vs_compile = t_compile /
t``, ``time_vs_bare_forward = t / t_bare`` (all medians of the same run).
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path

import torch

__all__ = ["conditions", "conditions_line", "compute_ratios", "format_report", "load_average"]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        head = out.stdout.strip()
        if not head:
            return None
        # a tree that differs from HEAD says so (the H200 runs copied a working tree ahead
        # of the copied .git's HEAD, and the tables named the older commit)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{head}+dirty" if dirty else head
    except (OSError, subprocess.SubprocessError):
        return None


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def conditions(device: torch.device | str, size: str, dtype: str = "float32") -> dict:
    """Where and with what a run was measured (the table's conditions line)."""
    from .. import __version__
    device = torch.device(device)
    try:
        import triton
        triton_v = triton.__version__
    except ImportError:
        triton_v = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{_cpu_name()}, {torch.get_num_threads()} threads"
    return {
        "device": device.type, "device_name": name, "cpu_count": os.cpu_count(), "size": size, "dtype": dtype,
        "torch": torch.__version__, "triton": triton_v, "python": platform.python_version(),
        "cuda": torch.version.cuda if device.type == "cuda" else None, "lcfast": __version__,
        "commit": _git_commit(), "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_start": load_average(), "load_end": None,
    }


def conditions_line(c: dict) -> str:
    def load(v):
        return "/".join(f"{x:.2f}" for x in v) if v else "n/a"
    parts = [f"Device: {c.get('device_name')} ({c.get('device')}, {c.get('cpu_count')} cores visible)",
             f"sizes: {c.get('size')}", f"dtype {c.get('dtype')}",
             f"torch {c.get('torch')}", f"triton {c.get('triton') or 'absent'}",
             f"Python {c.get('python')}", f"lcfast {c.get('lcfast')} ({c.get('commit') or 'no git'})",
             f"{c.get('date')}",
             f"load average (1/5/15 min) {load(c.get('load_start'))} at start, {load(c.get('load_end'))} at end"]
    if c.get("cuda"):
        parts.insert(5, f"CUDA {c['cuda']}")
    return "; ".join(parts) + "."


def compute_ratios(records: list[dict]) -> None:
    """Fill the ratio fields of each record's ``extra_info`` from the medians of the
    same run (records: dicts with ``workload``, ``method``, ``median``, ``extra_info``)."""
    by_w: dict[str, dict[str, float]] = {}
    for r in records:
        by_w.setdefault(r["workload"], {})[r["method"]] = r["median"]
    for r in records:
        t = r["median"]
        base = by_w[r["workload"]]
        e = r["extra_info"]
        e["points_per_s"] = e["n"] / t if t > 0 else None
        for key, other in (("speedup_vs_reference", "reference"), ("speedup_vs_compile", "torch.compile")):
            e[key] = base[other] / t if other in base and t > 0 else None
        e["time_vs_bare_forward"] = t / base["bare-forward"] if base.get("bare-forward") else None


def _fmt_x(v, digits=2):
    if v is None:
        return "-"
    return f"{v:.{digits}f}x" if v < 100 else f"{v:.0f}x"


def _fmt_s(v):
    if v is None:
        return "-"
    return f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.2f} s"


def _fmt_rate(v):
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 10 else f"{v:.2f}"


def format_report(data: dict) -> str:
    """A markdown table (one row per workload x method), its conditions line and notes,
    from a pytest-benchmark JSON (``--benchmark-json``) or ``lcfast bench --json``."""
    rows = []
    for b in data.get("benchmarks", []):
        e = b.get("extra_info") or {}
        if "workload" not in e:
            continue  # other benchmark files (op-level) in the same run
        rows.append((e.get("workload_order", 0), e.get("method_order", 0), b, e))
    rows.sort(key=lambda t: (t[0], t[1]))
    if rows and any(e.get("speedup_vs_reference") is None and e["method"] != "reference" for *_, e in rows):
        # a run whose extra_info lacks ratios (e.g. partial selection): recompute from stats
        recs = [{"workload": e["workload"], "method": e["method"], "median": b["stats"]["median"],
                 "extra_info": e} for _, _, b, e in rows]
        compute_ratios(recs)
    head = ("| workload | N | method | median time | points/s | vs reference | vs torch.compile "
            "| time / bare forward | check |")
    lines = [head, "|" + "---|" * 9]
    notes = []
    for _, _, b, e in rows:
        med = b["stats"]["median"]
        rounds = b["stats"].get("rounds")
        check = e.get("check", "")
        if e.get("ambiguous_fraction") is not None:
            check += f" (ambiguous {e['ambiguous_fraction']:.2%})"
        if rounds == 0:  # --check-only: nothing was timed
            lines.append(f"| {e['workload']} | {e['n']} | {e['method']} | not timed | - | - | - | - | {check} |")
            continue
        lines.append(
            f"| {e['workload']} | {e['n']} | {e['method']} | {_fmt_s(med)} ({rounds}r) | "
            f"{_fmt_rate(e.get('points_per_s'))} | {_fmt_x(e.get('speedup_vs_reference'))} | "
            f"{_fmt_x(e.get('speedup_vs_compile'))} | {_fmt_x(e.get('time_vs_bare_forward'))} | {check} |")
        if e["method"] == "torch.compile" and e.get("variant"):
            variant = e["variant"] if len(e["variant"]) <= 170 else e["variant"][:167] + "..."
            notes.append(f"{e['workload']}: torch.compile = {variant}; first call (compile) "
                         f"{e.get('first_call_s', float('nan')):.1f} s.")
    c = data.get("machine_info", {}).get("lcfast") or data.get("conditions") or {}
    data_notes = sorted({f"{e['workload']}: {e.get('data')}" for *_, e in rows if e.get("data")})
    out = ["\n".join(lines), "", conditions_line(c) if c else "(no conditions recorded)"]
    if rows:
        e0 = rows[0][3]
        out.append(f"P = {e0.get('n_dirs')}, r = {e0.get('radius')}; medians of the timed rounds (r); "
                   "'vs X' = time(X) / time(method); 'time / bare forward' = time(method) / time(forward of "
                   "the same vertex batch).")
    if data_notes:
        out.append("Data: " + "; ".join(data_notes) + ".")
    fails = data.get("lcfast_failures") or []
    for f in fails:
        notes.append(f"{f['workload']}/{f['method']}: not in the table: {f['error']}")
    for s in data.get("lcfast_skipped") or []:
        what = f"{s['workload']}/{s['method']}" if s.get("method") else s["workload"]
        notes.append(f"{what}: not run: {s['reason']}")
    if notes:
        out += ["", "Notes:"] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"
