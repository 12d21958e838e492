"""GPU correctness + throughput of lcfast's Triton kernels (one command, < 3 min on an H200).

    python benchmarks/gpu_triton_check.py --out benchmarks/results/triton-h200.json

Installs nothing, needs no network.  Sections (each recorded, errors included, and
the JSON rewritten after each so a timeout keeps what ran):

1. ``correctness``: every op against torch on the GPU -- epilogue counts *exact*
   vs the docs/design.md#definition rule on the same tensor (fp32/bf16/fp16, NCHW and
   channels-last, V in {2, 6, 50}), activations within a per-dtype tolerance; the
   fused BN, linear and MLP-block ops vs float64 with the tolerance rule;
   ``torch.library.opcheck`` including ``test_aot_dispatch_dynamic`` (which the CPU
   interpreter cannot run); ``backend="triton"`` vs the float64 oracle on an MLP,
   a CNN and a ResNet18 at 64x64.
2. ``epilogue``: achieved GB/s of the crossing epilogue (read + write) against a
   device copy (``clone``) of the same tensor, and a sweep of ``BLOCK_F`` /
   ``num_warps`` (the launcher defaults are reasoned, not measured: this sweep is
   where they get tuned).
3. ``linear``: fused GEMM+crossing vs ``F.linear`` + epilogue vs ``F.linear`` +
   relu + torch counting, on MNIST-MLP layer shapes (P = 25, V = 50), fp32 (no
   TF32) and bf16, with a small tile sweep.
4. ``bn``: folded BN + residual + crossing + ReLU vs torch ``bn -> add -> relu`` +
   counting on a ResNet18 layer1 shape.
5. ``workloads``: ``local_complexity`` with backend triton vs reference vs the bare
   forward of the same vertices (same chunks): MNIST MLP 784-200x4-10 with 21,000
   points, P = 25; ResNet18 224x224, float32 without TF32, on ``--resnet-points``
   points.  (``torch.compile(reference)`` is in benchmarks/test_bench_workloads.py.)

``--smoke`` runs every section at toy sizes on CPU under ``TRITON_INTERPRET=1``
(checks the script, times nothing meaningful).
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


def _args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--smoke", action="store_true", help="toy sizes on CPU under TRITON_INTERPRET=1")
    p.add_argument("--budget", type=float, default=170.0, help="seconds; later sections are skipped past it")
    p.add_argument("--resnet-points", type=int, default=100)
    return p.parse_args()


ARGS = _args()
if ARGS.smoke:
    os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import lcfast  # noqa: E402
from lcfast.ops import (triton_bn_crossing_act, triton_crossing_act, triton_crossing_count,  # noqa: E402,F401
                        triton_linear_crossing_act, triton_mlp_block)
from lcfast.ops.triton_crossing_act import launch_epilogue  # noqa: E402
from lcfast.ops.triton_linear_crossing_act import launch_linear  # noqa: E402

ops = torch.ops.lcfast
DEV = torch.device("cpu" if ARGS.smoke else "cuda")
def SM(full, smoke):
    """Size: ``full`` on the GPU, ``smoke`` under --smoke."""
    return smoke if ARGS.smoke else full


RESULT: dict = {"script": "benchmarks/gpu_triton_check.py", "smoke": ARGS.smoke, "sections": {}}


def save():
    RESULT["elapsed_s"] = round(time.perf_counter() - T0, 2)
    Path(ARGS.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ARGS.out).write_text(json.dumps(RESULT, indent=1, default=str))


def section(name):
    def deco(fn):
        if time.perf_counter() - T0 > ARGS.budget:
            RESULT["sections"][name] = {"skipped": "time budget spent"}
        else:
            t = time.perf_counter()
            try:
                RESULT["sections"][name] = fn()
            except Exception as e:  # record and go on
                RESULT["sections"][name] = {"error": repr(e), "traceback": traceback.format_exc()[-3000:]}
            RESULT["sections"][name]["section_s"] = round(time.perf_counter() - t, 2)
        save()
        return fn
    return deco


def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, reps=None):
    """Median seconds of ``fn()`` (device-synchronised), after a warm-up."""
    reps = reps or (2 if ARGS.smoke else 20)
    fn()
    sync()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def rule_counts(pre, V):
    n = pre.shape[0] // V
    z = pre.reshape(n, V, -1)
    mn, mx = z.amin(1), z.amax(1)
    return (~((mn > 0) | (mx < 0) | ((mn == 0) & (mx == 0)))).sum(1)


def amb_ok(counts, z64, V, rel=1e-4):
    n = z64.shape[0] // V
    z = z64.reshape(n, V, -1)
    scale = z.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1.0)
    amb = (z.abs() <= rel * scale).any(1).sum(1)
    ok = bool(((counts - rule_counts(z64, V)).abs() <= amb).all())
    return ok, float(amb.sum()) / max(1, z.shape[0] * z.shape[2])


RESULT["conditions"] = {
    "python": platform.python_version(), "torch": torch.__version__,
    "triton": __import__("triton").__version__, "lcfast": lcfast.__version__,
    "device": torch.cuda.get_device_name() if DEV.type == "cuda" else "cpu (interpreter)",
    "tf32": [torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32],
    "date": time.strftime("%Y-%m-%d %H:%M:%S"),
}
save()


def _sweep_point(config: dict, key: str, measure) -> dict:
    """One tile configuration of a sweep: its measurement, or the error that made it
    fail to compile or launch (a result, not a crash)."""
    try:
        return {**config, key: measure()}
    except Exception as e:  # noqa: BLE001
        return {**config, "error": repr(e)[:300]}


@section("correctness")
def _correctness():
    out = {"failures": []}
    g = torch.Generator(device=DEV).manual_seed(0)
    n_checks = 0
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for V in (2, 6, 50):
            for cl in (False, True):
                pre = (torch.randint(-2, 3, (SM(37, 3) * V, 5, SM(9, 2), SM(11, 3)), generator=g, device=DEV) * 0.5).to(dtype)
                pre[:, 0] = 0
                if cl:
                    pre = pre.to(memory_format=torch.channels_last)
                for act in ("relu", "gelu", "leaky_relu"):
                    o, c = ops.triton_crossing_act(pre, V, act, 0.1)
                    ref = {"relu": torch.relu, "gelu": F.gelu, "leaky_relu": lambda t: F.leaky_relu(t, 0.1)}[act](pre)
                    n_checks += 1
                    exact_out = act != "gelu"
                    good = torch.equal(c, rule_counts(pre, V)) and (
                        torch.equal(o, ref) if exact_out else
                        torch.allclose(o.float(), ref.float(), atol=1e-2 if dtype != torch.float32 else 1e-6, rtol=1e-2))
                    if not good:
                        out["failures"].append(f"epilogue {dtype} V={V} cl={cl} {act}")
    # fused linear / mlp / bn vs float64 (same rounded operands)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for V, T in ((50, 1), (6, 17), (2, 1)):
            npt = SM(64, 2)
            x = torch.randn(npt * V * T, SM(784, 40) if T == 1 else 96, generator=g, device=DEV).to(dtype)
            w = (torch.randn(200, x.shape[1], generator=g, device=DEV) / x.shape[1] ** 0.5).to(dtype)
            b = (torch.randn(200, generator=g, device=DEV) * 0.1).to(dtype)
            o, c = ops.triton_linear_crossing_act(x, w, b, V, T, "relu", 0.0)
            z64 = x.double() @ w.double().T + b.double()
            ok, frac = amb_ok(c, z64.reshape(npt * V, -1), V)
            err = float((o.double() - z64.relu()).abs().max() / z64.abs().max())
            n_checks += 1
            if not ok or frac > 0.05 or err > {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]:
                out["failures"].append(f"linear {dtype} V={V} T={T} ok={ok} amb={frac:.3g} err={err:.3g}")
        x = torch.randn(SM(16, 1) * 6 * 17, 96, generator=g, device=DEV).to(dtype)
        w1 = (torch.randn(384, 96, generator=g, device=DEV) / 10).to(dtype)
        w2 = (torch.randn(96, 384, generator=g, device=DEV) / 20).to(dtype)
        o, c = ops.triton_mlp_block(x, w1, None, w2, None, 6, 17, "gelu")
        ok, frac = amb_ok(c, (x.double() @ w1.double().T).reshape(SM(16, 1) * 6, -1), 6)
        n_checks += 1
        if not ok:
            out["failures"].append(f"mlp_block {dtype}")
        conv = torch.randn(SM(8, 1) * 50, SM(64, 4), SM(28, 3), SM(28, 3), generator=g, device=DEV).to(dtype).to(memory_format=torch.channels_last)
        res = torch.randn_like(conv)
        sc, sh = torch.rand(SM(64, 4), device=DEV) + 0.5, torch.randn(SM(64, 4), device=DEV) * 0.1
        o, c = ops.triton_bn_crossing_act(conv, 50, sc, sh, res, "relu", 0.0)
        z64 = conv.double() * sc.double()[:, None, None] + sh.double()[:, None, None] + res.double()
        ok, frac = amb_ok(c, z64, 50)
        n_checks += 1
        if not ok:
            out["failures"].append(f"bn {dtype}")
    # opcheck with every default test (aot_dispatch_dynamic needs compiled kernels)
    try:
        pre = torch.randn(12, 3, 4, 5, device=DEV)
        x, w = torch.randn(12, 8, device=DEV), torch.randn(5, 8, device=DEV)
        utils = ("test_schema", "test_autograd_registration", "test_faketensor") if ARGS.smoke else None
        kw = {} if utils is None else {"test_utils": utils}
        torch.library.opcheck(ops.triton_crossing_act.default, (pre, 6, "relu", 0.0), **kw)
        torch.library.opcheck(ops.triton_crossing_count.default, (pre, 6), **kw)
        torch.library.opcheck(ops.triton_linear_crossing_act.default, (x, w, None, 6, 1, "gelu", 0.0), **kw)
        out["opcheck"] = "passed"
    except Exception as e:
        out["opcheck"] = repr(e)[:2000]
        out["failures"].append("opcheck")
    # backend vs float64 oracle
    import zoo
    from lcfast.testing import assert_counts_match, float64_oracle
    cases = [("mlp", zoo.mlp(), torch.randn(16, 20), 25), ("cnn", zoo.cnn(), torch.randn(8, 3, 16, 16), 25),
             ("resnet18_64px", zoo.resnet18(), torch.randn(2, 3, 64, 64), 25)]
    if ARGS.smoke:
        cases = [(n, m, x[:1], 2) for n, m, x, _ in cases[:2]]
    out["backend"] = {}
    for name, m, xx, P in cases:
        m = m.to(DEV)
        xx = xx.to(DEV)
        try:
            r = lcfast.local_complexity(m, xx, radius=0.01, n_dirs=P, backend="triton")
            rep = assert_counts_match(r.counts, float64_oracle(m, xx, radius=0.01, n_dirs=P))
            out["backend"][name] = {"ok": True, "tolerance": rep.to_dict(), "total": int(r.counts.sum())}
        except Exception as e:
            out["backend"][name] = {"ok": False, "error": repr(e)[:1000]}
            out["failures"].append(f"backend {name}")
    out["checks"] = n_checks
    out["passed"] = not out["failures"]
    return out


@section("epilogue")
def _epilogue():
    rows, F_ = (50, 256) if ARGS.smoke else (500, 64 * 56 * 56)  # ResNet18 layer1 site, 10 points
    V = 50
    out = {"shape": [rows, F_], "V": V, "runs": []}
    for dtype in (torch.float32, torch.bfloat16):
        pre = torch.randn(rows, F_, device=DEV, dtype=dtype)
        nbytes = 2 * pre.numel() * pre.element_size()
        t_copy = timeit(lambda: pre.clone())
        t_epi = timeit(lambda: ops.triton_crossing_act(pre, V, "relu", 0.0))
        t_torch = timeit(lambda: (rule_counts(pre, V), torch.relu(pre)))
        rec = {"dtype": str(dtype), "copy_GBps": nbytes / t_copy / 1e9, "epilogue_GBps": nbytes / t_epi / 1e9,
               "epilogue_vs_copy": t_copy / t_epi, "torch_relu_plus_count_s": t_torch, "epilogue_s": t_epi}
        # sweep: BLOCK_F x num_warps at VB = 64 (launcher default: 64 and 8)
        sweep = []
        from lcfast.kernels.triton_crossing import crossing_epilogue_kernel
        o = torch.empty_like(pre)
        for bf in ((64,) if ARGS.smoke else (32, 64, 128, 256)):
            for nw in ((4,) if ARGS.smoke else (4, 8, 16)):
                c = torch.zeros(rows // V, dtype=torch.int64, device=DEV)

                def run(bf=bf, nw=nw, c=c):
                    c.zero_()
                    crossing_epilogue_kernel[(rows // V, -(-F_ // bf))](
                        pre, o, pre, pre, pre, c, F_, 1, 1, 0.0, V=V, VB=64, BLOCK_F=bf, ACT=1,
                        AFFINE=False, RESIDUAL=False, STORE=True, F64=False, num_warps=nw)
                sweep.append(_sweep_point({"BLOCK_F": bf, "num_warps": nw}, "GBps",
                                          lambda: nbytes / timeit(run) / 1e9))
        rec["sweep"] = sweep
        out["runs"].append(rec)
    return out


@section("linear")
def _linear():
    V = 50
    pts = 4 if ARGS.smoke else 1024
    out = {"V": V, "points": pts, "runs": []}
    for K, N_ in (((784, 200), (200, 200)) if not ARGS.smoke else ((24, 16),)):
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(pts * V, K, device=DEV, dtype=dtype)
            w = (torch.randn(N_, K, device=DEV) / K ** 0.5).to(dtype)
            b = torch.zeros(N_, device=DEV, dtype=dtype)
            t_fused = timeit(lambda: ops.triton_linear_crossing_act(x, w, b, V, 1, "relu", 0.0))
            t_two = timeit(lambda: ops.triton_crossing_act(F.linear(x, w, b), V, "relu", 0.0))
            t_torch = timeit(lambda: (lambda z: (rule_counts(z, V), torch.relu(z)))(F.linear(x, w, b)))
            t_lin = timeit(lambda: F.linear(x, w, b))
            rec = {"K": K, "N": N_, "dtype": str(dtype), "fused_s": t_fused, "flinear_plus_epilogue_s": t_two,
                   "flinear_plus_torch_count_s": t_torch, "flinear_only_s": t_lin,
                   "fused_TFLOPs": 2 * x.shape[0] * K * N_ / t_fused / 1e12}
            sweep = []
            from lcfast.kernels.triton_linear_crossing import linear_crossing_kernel
            for G, bn, bk, nw in ([(1, 64, 32, 4)] if ARGS.smoke else
                                  [(1, 64, 32, 4), (2, 64, 32, 4), (1, 128, 32, 4), (1, 64, 64, 4),
                                   (2, 128, 32, 8), (1, 128, 64, 8)]):
                o = torch.empty(x.shape[0], N_, device=DEV, dtype=dtype)
                c = torch.zeros(pts, dtype=torch.int64, device=DEV)

                def run(G=G, bn=bn, bk=bk, nw=nw):
                    linear_crossing_kernel[(-(-pts // G), -(-N_ // bn))](
                        x, w, b, o, c, pts, K, N_, 1, x.stride(0), x.stride(1), w.stride(0), w.stride(1), 0.0,
                        V=V, VP=64, G=G, BLOCK_N=bn, BLOCK_K=bk, ACT=1, HAS_BIAS=True, COUNT=True,
                        PRECISION="ieee" if dtype == torch.float32 else "tf32",
                        UPCAST=ARGS.smoke and dtype == torch.bfloat16, num_warps=nw)
                sweep.append(_sweep_point({"G": G, "BLOCK_N": bn, "BLOCK_K": bk, "num_warps": nw}, "s",
                                          lambda: timeit(run)))
            rec["sweep"] = sweep
            out["runs"].append(rec)
    return out


@section("bn")
def _bn():
    V = 50
    rows = 50 if ARGS.smoke else 500
    conv = torch.randn(rows, SM(64, 4), 56 if not ARGS.smoke else 8, 56 if not ARGS.smoke else 8,
                       device=DEV).to(memory_format=torch.channels_last)
    res = torch.randn_like(conv)
    bn = nn.BatchNorm2d(SM(64, 4)).to(DEV).eval()
    from lcfast.ops.triton_bn_crossing_act import fold_bn
    sc, sh = fold_bn(bn)
    t_fused = timeit(lambda: ops.triton_bn_crossing_act(conv, V, sc, sh, res, "relu", 0.0))

    def torch_path():
        z = bn(conv) + res
        return rule_counts(z, V), torch.relu(z)
    t_torch = timeit(torch_path)
    nbytes = 3 * conv.numel() * 4
    return {"shape": list(conv.shape), "fused_s": t_fused, "torch_bn_add_relu_count_s": t_torch,
            "fused_GBps": nbytes / t_fused / 1e9}


@section("workloads")
def _workloads():
    from lcfast.neighborhood import vertices
    import zoo
    out = {}

    def measure(name, model, x, P, chunk):
        model = model.to(DEV).eval()
        x = x.to(DEV)
        d = torch.randn(x.shape[0], P, *x.shape[1:], device=DEV)
        d = torch.linalg.qr(d.flatten(2).transpose(1, 2))[0].transpose(1, 2).reshape(d.shape)

        def bare():
            with torch.no_grad():
                for lo in range(0, x.shape[0], chunk):
                    model(vertices(x[lo:lo + chunk], d[lo:lo + chunk], 0.005))

        def lc(backend):
            return lambda: lcfast.local_complexity(model, x, radius=0.005, directions=d, backend=backend,
                                                   chunk_size=chunk)
        prev = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            reps = 1 if ARGS.smoke else 3
            t_bare = timeit(bare, reps)
            t_ref = timeit(lc("reference"), reps)
            t_tri = timeit(lc("triton"), reps)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev
        a, b = lc("triton")(), lc("reference")()
        out[name] = {"points": x.shape[0], "P": P, "chunk": chunk, "bare_forward_s": t_bare, "reference_s": t_ref,
                     "triton_s": t_tri, "speedup_vs_reference": t_ref / t_tri, "time_vs_bare_forward": t_tri / t_bare,
                     "max_count_diff_vs_reference": int((a.counts - b.counts).abs().max()) if a.counts.numel() else 0}
        save()

    mlp = zoo.mlp(d_in=784, width=200, depth=4, d_out=10)
    if ARGS.smoke:
        measure("mnist_mlp", zoo.mlp(d_in=30, width=20, depth=2, d_out=10), torch.rand(4, 30), 3, 2)
    else:
        measure("mnist_mlp", mlp, torch.rand(21000, 784), 25, 1310)
        measure("resnet18_224", zoo.resnet18(), torch.randn(ARGS.resnet_points, 3, 224, 224), 25, 20)
    return out


RESULT["total_s"] = round(time.perf_counter() - T0, 2)
RESULT["passed"] = RESULT["sections"].get("correctness", {}).get("passed", False)
save()
print(json.dumps({k: v for k, v in RESULT.items() if k != "sections"}, indent=1))
print("correctness failures:", RESULT["sections"].get("correctness", {}).get("failures"))
