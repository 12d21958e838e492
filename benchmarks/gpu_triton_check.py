"""GPU correctness and throughput of lcfast's Triton kernels, section by section.

    python benchmarks/gpu_triton_check.py --out benchmarks/results/triton-h200.json \
        --sections correctness,timing,workloads,auto224 [--copy-to $OUT]

Installs nothing, needs no network.  Every *sub-check* is written to ``--out`` (and
``--copy-to``) as soon as it ends, so a run killed at any point keeps what finished;
several invocations with other ``--sections`` add to the same file (``--fresh``
starts it over).  Sections:

``correctness``  every op against torch on the device: epilogue counts *exact* vs the
    crossing rule (float32/bf16/fp16/float64, NCHW and channels-last, V in {2, 6, 50}),
    ReLU/LeakyReLU outputs bit-exact including sign bits, NaN groups crossed, tanh
    against float64, a site wider than grid axis y allows; the fused BN, linear and
    MLP-block ops against float64 with the tolerance rule; ``torch.library.opcheck``
    (``test_aot_dispatch_dynamic`` needs compiled kernels); ``backend="triton"`` against
    the float64 oracle on an MLP, a CNN and a ResNet18 at 64x64.
``timing``       achieved GB/s of the epilogue vs a device copy; fused GEMM vs ``F.linear``
    + epilogue; folded BN vs torch (launcher defaults only).
``workloads``    ``local_complexity`` triton vs reference vs the bare forward of the same
    vertices: MNIST MLP 784-200x4-10 (21,000 points), ResNet18 224 px.
``auto224``      ResNet18 at 224 px with ``chunk_size=None``: the chunk planner's own
    chunk (~90 points on an H200: a stem output of ~3.6e9 elements, over 2^31), every
    backend, counts against the reference and 2 points against the float64 oracle.
``tune``         tile sweeps of the epilogue and the fused GEMM (optional: many compiles).

``--smoke`` runs the same code (the same models, P and code paths; fewer points and
smaller maps) on the CPU under ``TRITON_INTERPRET=1``: it checks the script, its
timings mean nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

T0 = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("correctness", "timing", "workloads", "auto224", "tune")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="JSON file (sections are added to it)")
    p.add_argument("--copy-to", default=None, help="directory that gets a copy after every save (e.g. $OUT)")
    p.add_argument("--sections", default="correctness,timing,workloads", help=f"comma list of {SECTIONS}")
    p.add_argument("--smoke", action="store_true", help="same checks, toy sizes, CPU under TRITON_INTERPRET=1")
    p.add_argument("--fresh", action="store_true", help="start the JSON over instead of adding to it")
    p.add_argument("--budget", type=float, default=170.0, help="seconds; later sub-checks are skipped past it")
    p.add_argument("--resnet-points", type=int, default=100)
    a = p.parse_args(argv)
    a.sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    bad = [s for s in a.sections if s not in SECTIONS]
    if bad:
        p.error(f"unknown sections {bad}; choose from {SECTIONS}")
    return a


# The backend cases of the correctness section: (name, zoo factory and kwargs, point
# shape, point shape under --smoke, P, points on the GPU, points under --smoke).  One
# table for both runs, so the smoke run takes the real code paths: the same models
# and P, fewer points and (ResNet) smaller maps, which the interpreter needs (ResNet18
# at 64 px, one point: 207 s under the interpreter at load 18 on 2 cores).
# tests/test_gpu_check.py checks P <= D for both shapes (the old mlp case asked for
# P = 25 on D = 20 and always failed with a ValueError; the smoke run hid it with P = 2).
BACKEND_CASES = (
    ("mlp", ("mlp", {"d_in": 32}), (32,), (32,), 25, 16, 2),
    ("cnn", ("cnn", {}), (3, 16, 16), (3, 16, 16), 25, 8, 1),
    ("resnet18_64px", ("resnet18", {}), (3, 64, 64), (3, 32, 32), 25, 2, 1),
)


class Run:
    """The JSON result of one invocation and its saving; ``sub`` runs one sub-check."""

    def __init__(self, args):
        self.args = args
        self.path = Path(args.out)
        self.data = {}
        if self.path.exists() and not args.fresh:
            try:
                self.data = json.loads(self.path.read_text())
            except ValueError:
                self.data = {}
        self.data.setdefault("script", "benchmarks/gpu_triton_check.py")
        self.data.setdefault("sections", {})
        self.data["smoke"] = args.smoke

    def save(self):
        self.data["elapsed_s"] = round(time.perf_counter() - T0, 2)
        text = json.dumps(self.data, indent=1, default=str)
        targets = [self.path] + ([Path(self.args.copy_to) / self.path.name] if self.args.copy_to else [])
        for p in targets:
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(p.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, p)  # never a torn file, also when killed mid-write

    def over_budget(self) -> bool:
        return time.perf_counter() - T0 > self.args.budget

    def section(self, name) -> dict:
        sec = self.data["sections"][name] = {"subchecks": {}, "started": time.strftime("%H:%M:%S")}
        self.save()
        return sec

    def sub(self, sec: dict, name: str, fn):
        """Run ``fn() -> dict`` (``ok`` False or an exception marks a failure), record, save."""
        if self.over_budget():
            sec["subchecks"][name] = {"skipped": "time budget spent"}
        else:
            t = time.perf_counter()
            try:
                rec = fn()
            except Exception as e:  # a result, not a crash
                rec = {"ok": False, "error": repr(e)[:2000], "traceback": traceback.format_exc()[-3000:]}
            rec["s"] = round(time.perf_counter() - t, 2)
            sec["subchecks"][name] = rec
        self.save()
        print(f"[gpu_triton_check] {name}: {_verdict(sec['subchecks'][name])}", flush=True)


def _verdict(rec: dict) -> str:
    if "skipped" in rec:
        return "skipped"
    if "error" in rec:
        return "ERROR " + rec["error"][:200]
    return {True: "ok", False: "FAILED"}.get(rec.get("ok"), "done")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before lcfast's kernels are imported
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch
    import lcfast
    from lcfast.ops import (triton_bn_crossing_act, triton_crossing_act, triton_crossing_count,  # noqa: F401
                            triton_linear_crossing_act, triton_mlp_block)

    run = Run(args)
    run.backend_cases = BACKEND_CASES
    dev = torch.device("cpu" if args.smoke else "cuda")
    run.data["conditions"] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "triton": __import__("triton").__version__, "lcfast": lcfast.__version__,
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu (interpreter)",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "load": os.getloadavg(),
    }
    run.save()
    from gpu_triton_sections import SECTION_FUNCS  # noqa: E402  (beside this file)
    for name in args.sections:
        sec = run.section(name)
        try:
            SECTION_FUNCS[name](run, sec, dev)
        except Exception as e:  # a section-level failure is recorded, the next section runs
            sec["error"] = repr(e)[:2000]
            sec["traceback"] = traceback.format_exc()[-3000:]
        sec["section_s"] = round(time.perf_counter() - T0, 2)
        run.save()
    subs = {f"{s}/{k}": v for s, d in run.data["sections"].items() for k, v in d.get("subchecks", {}).items()}
    failed = [k for k, v in subs.items() if v.get("ok") is False]
    run.data["failures"] = failed
    run.data["passed"] = not failed and "correctness" in run.data["sections"]
    run.save()
    print(json.dumps({"sections": list(run.data["sections"]), "failures": failed,
                      "elapsed_s": run.data["elapsed_s"]}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
