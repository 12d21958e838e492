"""The sections of benchmarks/gpu_triton_check.py (see its docstring).

Each section function takes ``(run, sec, dev)`` and records sub-checks with
``run.sub(sec, name, fn)``, which saves the JSON after each.  The crossing rule and
the tolerance rule are lcfast's own (``lcfast.engine.reference.crossing_counts``,
``lcfast.tolerance`` or, before it, ``lcfast.testing``), never retyped here.
"""
from __future__ import annotations

import dataclasses
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import lcfast
from lcfast import _extension as _native  # the compiled extension loader
from lcfast.bench.prepared import median_seconds, sync
from lcfast.engine.reference import crossing_counts
from lcfast.testing import assert_counts_match, float64_oracle

try:  # the forward-error rule of issue 9 item 8 (lcfast/tolerance.py), where merged
    from lcfast.tolerance import ambiguous_counts as _ambiguous_counts
except ImportError:  # this branch's rule (lcfast.testing); remove once lcfast.tolerance is in
    _ambiguous_counts = None
    from lcfast.testing import REL_TOL, ambiguous_neurons

ops = torch.ops.lcfast
DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
EXACT_ACTS = ("relu", "leaky_relu", "identity")
SMOOTH_ACTS = ("gelu", "gelu_tanh", "silu", "tanh", "sigmoid")
#: output tolerance (atol, rtol) of the transcendental activations against torch on the device
ACT_TOL = {torch.float32: (2e-6, 1e-5), torch.bfloat16: (1e-2, 1e-2), torch.float16: (1e-3, 1e-3),
           torch.float64: (1e-12, 1e-12)}


def timeit(fn, dev, reps):
    """Median seconds of ``fn()`` (device-synchronised), after one warm-up call."""
    return median_seconds(fn, dev, reps)


def torch_act(z, act, slope):
    return {"identity": lambda t: t.clone(), "relu": torch.relu, "leaky_relu": lambda t: F.leaky_relu(t, slope),
            "gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"), "silu": F.silu,
            "tanh": torch.tanh, "sigmoid": torch.sigmoid}[act](z)


def same_bits(a, b):
    """Equal values, NaN where the other has NaN, and equal sign bits (-0.0 vs +0.0)."""
    nan = a.isnan()
    if not torch.equal(nan, b.isnan()):
        return False
    return torch.equal(a[~nan], b[~nan]) and torch.equal(torch.signbit(a[~nan]), torch.signbit(b[~nan]))


def ambiguous(z64, scale64, V):
    """lcfast's tolerance rule for float32 arithmetic: ``LongTensor (n,)`` ambiguous
    neurons of ``z64`` ``(n*V, *F)``, whose forward-error scale is ``scale64`` (same shape)."""
    if _ambiguous_counts is not None:
        return _ambiguous_counts(z64, scale64, V, torch.float32)
    return ambiguous_neurons(z64, V, REL_TOL[torch.float32])


def tolerance_ok(counts, z64, scale64, V, max_fraction=0.05):
    """Counts of a kernel that computed ``z64`` (float64 truth of the same rounded
    operands) in float32: equal except the neurons the tolerance rule calls ambiguous."""
    amb = ambiguous(z64, scale64, V)
    frac = float(amb.sum()) / max(1, z64.numel() // V)
    ok = bool(((counts - crossing_counts(z64, V)).abs() <= amb).all()) and frac <= max_fraction
    return ok, frac


# ---------------------------------------------------------------------------
# correctness
# ---------------------------------------------------------------------------

def correctness(run, sec, dev):
    smoke = run.args.smoke
    SM = (lambda full, small: small if smoke else full)  # noqa: E731
    g = torch.Generator(device=dev).manual_seed(0)

    def grid_values(shape, dtype):
        z = torch.randint(-2, 3, shape, generator=g, device=dev).to(torch.float64) * 0.5
        z = torch.where(torch.rand(shape, generator=g, device=dev) < 0.05, -torch.zeros_like(z), z)
        z[:, 0] = 0
        return z.to(dtype)

    for dtype in DTYPES:
        def epilogue(dtype=dtype):
            fails, n = [], 0
            for V in (2, 6, 50):
                for cl in (False, True):
                    pre = grid_values((SM(37, 3) * V, 5, SM(9, 2), SM(11, 3)), dtype)
                    if cl:
                        pre = pre.to(memory_format=torch.channels_last)
                    ref_c = crossing_counts(pre, V)
                    for act in EXACT_ACTS + SMOOTH_ACTS:
                        o, c = ops.triton_crossing_act(pre, V, act, 0.1)
                        ref = torch_act(pre, act, 0.1)
                        if act == "relu" and dev.type == "cpu":
                            # the kernels follow PyTorch's *CUDA* ReLU (-0.0 -> +0.0); its CPU
                            # ReLU keeps -0.0: under --smoke compare with the CUDA result
                            ref = ref + 0.0
                        n += 1
                        if act in EXACT_ACTS:
                            good = same_bits(o, ref)
                        else:
                            atol, rtol = ACT_TOL[dtype]
                            good = torch.allclose(o.double(), ref.double(), atol=atol, rtol=rtol)
                        if not (torch.equal(c, ref_c) and good):
                            fails.append(f"V={V} cl={cl} {act}: counts {torch.equal(c, ref_c)} out {good}")
            return {"ok": not fails, "checks": n, "failures": fails[:30]}
        run.sub(sec, f"epilogue_{str(dtype)[6:]}", epilogue)

    def nan_groups():
        out = {}
        for dtype in DTYPES:
            pre = torch.randn(SM(8, 2) * 6, 33, generator=g, device=dev).abs().to(dtype) + 1
            pre[1, 0] = pre[6, 1] = float("nan")  # a NaN among positives: crossed
            pre[:6, 2] = float("nan")
            c = ops.triton_crossing_count(pre, 6)
            ok = torch.equal(c, crossing_counts(pre, 6)) and int(c[0]) == 2 and int(c[1]) == 1
            if _native.has_kernel("crossing_count", dev.type):
                ok = ok and torch.equal(c, ops.crossing_count(pre, 6))
            out[str(dtype)] = ok
        return {"ok": all(out.values()), "by_dtype": out}
    run.sub(sec, "nan_groups", nan_groups)

    def tanh_accuracy():
        u = torch.logspace(-20, 1.3, SM(20000, 2000), dtype=torch.float64, device=dev)
        u = torch.cat([u, -u])
        out = {}
        for dtype, ulps in ((torch.float32, 8), (torch.float64, 4)):
            pre = u.to(dtype).reshape(2, -1)
            o, _ = ops.triton_crossing_act(pre, 2, "tanh", 0.0)
            ref = torch.tanh(pre.double())
            err = float(((o.double() - ref).abs() / ref.abs()).max()) / torch.finfo(dtype).eps
            out[str(dtype)] = {"max_ulps": err, "ok": err <= ulps}
        return {"ok": all(v["ok"] for v in out.values()), **out}
    run.sub(sec, "tanh_vs_float64", tanh_accuracy)

    def wide_site():
        # 64 x 256 x 256 neurons per row (a ResNet stem at 512 px): 65,536 feature tiles of
        # 64, one more than grid axis y holds
        V = 50
        pre = torch.randn(V, *SM((64, 256, 256), (4, 17, 19)), generator=g, device=dev)
        o, c = ops.triton_crossing_act(pre, V, "relu", 0.0)
        return {"ok": torch.equal(c, crossing_counts(pre, V)) and torch.equal(o, pre.relu()),
                "neurons": pre[0].numel()}
    run.sub(sec, "wide_site_grid", wide_site)

    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        def linear(dtype=dtype):
            fails = []
            for V, T in ((50, 1), (6, 17), (2, 1)):
                npt = SM(64, 2)
                x = torch.randn(npt * V * T, SM(784, 40) if T == 1 else 96, generator=g, device=dev).to(dtype)
                w = (torch.randn(200, x.shape[1], generator=g, device=dev) / x.shape[1] ** 0.5).to(dtype)
                b = (torch.randn(200, generator=g, device=dev) * 0.1).to(dtype)
                o, c = ops.triton_linear_crossing_act(x, w, b, V, T, "relu", 0.0)
                z64 = x.double() @ w.double().T + b.double()
                s64 = x.double().abs() @ w.double().abs().T + b.double().abs()
                ok, frac = tolerance_ok(c, z64.reshape(npt * V, -1), s64.reshape(npt * V, -1), V)
                err = float((o.double() - z64.relu()).abs().max() / z64.abs().max())
                if not ok or err > {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]:
                    fails.append(f"V={V} T={T} counts_ok={ok} ambiguous={frac:.3g} out_err={err:.3g}")
            x = torch.randn(SM(16, 1) * 6 * 17, 96, generator=g, device=dev).to(dtype)
            w1 = (torch.randn(384, 96, generator=g, device=dev) / 10).to(dtype)
            w2 = (torch.randn(96, 384, generator=g, device=dev) / 20).to(dtype)
            _, c = ops.triton_mlp_block(x, w1, None, w2, None, 6, 17, "gelu")
            h64, hs64 = x.double() @ w1.double().T, x.double().abs() @ w1.double().abs().T
            if not tolerance_ok(c, h64.reshape(SM(16, 1) * 6, -1), hs64.reshape(SM(16, 1) * 6, -1), 6)[0]:
                fails.append("mlp_block")
            C = SM(64, 4)
            conv = torch.randn(SM(8, 1) * 50, C, SM(28, 6), SM(28, 6), generator=g, device=dev).to(dtype)
            conv = conv.to(memory_format=torch.channels_last)
            res = torch.randn_like(conv)
            sc = torch.rand(C, generator=g, device=dev) + 0.5
            sh = torch.randn(C, generator=g, device=dev) * 0.1
            _, c = ops.triton_bn_crossing_act(conv, 50, sc, sh, res, "relu", 0.0)
            z64 = conv.double() * sc.double()[:, None, None] + sh.double()[:, None, None] + res.double()
            s64 = ((conv.double() * sc.double()[:, None, None]).abs() + sh.double().abs()[:, None, None]
                   + res.double().abs())
            if not tolerance_ok(c, z64, s64, 50)[0]:
                fails.append("bn")
            return {"ok": not fails, "failures": fails}
        run.sub(sec, f"linear_mlp_bn_{str(dtype)[6:]}", linear)

    def opcheck():
        pre = torch.randn(12, 3, 4, 5, device=dev)
        x, w = torch.randn(12, 8, device=dev), torch.randn(5, 8, device=dev)
        # test_aot_dispatch_dynamic needs compiled kernels: only on the GPU
        kw = {"test_utils": ("test_schema", "test_autograd_registration", "test_faketensor")} if smoke else {}
        torch.library.opcheck(ops.triton_crossing_act.default, (pre, 6, "relu", 0.0), **kw)
        torch.library.opcheck(ops.triton_crossing_count.default, (pre, 6), **kw)
        torch.library.opcheck(ops.triton_linear_crossing_act.default, (x, w, None, 6, 1, "gelu", 0.0), **kw)
        return {"ok": True}
    run.sub(sec, "opcheck", opcheck)

    import zoo
    for name, (factory, kw), shape, smoke_shape, P, n_full, n_smoke in run.backend_cases:
        def backend(factory=factory, kw=kw, shape=SM(shape, smoke_shape), P=P, n=SM(n_full, n_smoke)):
            m = getattr(zoo, factory)(**kw).to(dev)
            x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(1)).to(dev)
            r = lcfast.local_complexity(m, x, radius=0.01, n_dirs=P, backend="triton")
            rep = assert_counts_match(r.counts, float64_oracle(m, x, radius=0.01, n_dirs=P))
            return {"ok": True, "points": n, "P": P, "tolerance": dataclasses.asdict(rep), "total": int(r.counts.sum())}
        run.sub(sec, f"backend_{name}", backend)


# ---------------------------------------------------------------------------
# timing (launcher defaults; the sweeps are in `tune`)
# ---------------------------------------------------------------------------

def _timing_setup(run):
    """``(reps, rows, F, V)`` of the epilogue timings: a ResNet18 layer1 site, 10 points."""
    smoke = run.args.smoke
    return (2, 50, 256, 50) if smoke else (20, 500, 64 * 56 * 56, 50)


def timing(run, sec, dev):
    smoke = run.args.smoke
    reps, rows, F_, V = _timing_setup(run)
    for dtype in (torch.float32, torch.bfloat16):
        def epi(dtype=dtype):
            pre = torch.randn(rows, F_, device=dev, dtype=dtype)
            nbytes = 2 * pre.numel() * pre.element_size()
            t_copy = timeit(lambda: pre.clone(), dev, reps)
            t_epi = timeit(lambda: ops.triton_crossing_act(pre, V, "relu", 0.0), dev, reps)
            t_torch = timeit(lambda: (crossing_counts(pre, V), torch.relu(pre)), dev, reps)
            return {"shape": [rows, F_], "copy_GBps": nbytes / t_copy / 1e9, "epilogue_GBps": nbytes / t_epi / 1e9,
                    "epilogue_vs_copy": t_copy / t_epi, "torch_relu_plus_count_s": t_torch, "epilogue_s": t_epi}
        run.sub(sec, f"epilogue_{str(dtype)[6:]}", epi)
    pts = 4 if smoke else 1024
    for K, N_ in (((24, 16),) if smoke else ((784, 200), (200, 200))):
        for dtype in (torch.float32, torch.bfloat16):
            def lin(K=K, N_=N_, dtype=dtype):
                x = torch.randn(pts * V, K, device=dev, dtype=dtype)
                w = (torch.randn(N_, K, device=dev) / K ** 0.5).to(dtype)
                b = torch.zeros(N_, device=dev, dtype=dtype)
                t_fused = timeit(lambda: ops.triton_linear_crossing_act(x, w, b, V, 1, "relu", 0.0), dev, reps)
                t_two = timeit(lambda: ops.triton_crossing_act(F.linear(x, w, b), V, "relu", 0.0), dev, reps)
                t_lin = timeit(lambda: F.linear(x, w, b), dev, reps)
                return {"K": K, "N": N_, "points": pts, "fused_s": t_fused, "flinear_plus_epilogue_s": t_two,
                        "flinear_only_s": t_lin, "fused_TFLOPs": 2 * x.shape[0] * K * N_ / t_fused / 1e12}
            run.sub(sec, f"linear_{K}x{N_}_{str(dtype)[6:]}", lin)

    def bn():
        C, S = (4, 8) if smoke else (64, 56)
        conv = torch.randn(50 if smoke else 500, C, S, S, device=dev).to(memory_format=torch.channels_last)
        res = torch.randn_like(conv)
        m = nn.BatchNorm2d(C).to(dev).eval()
        from lcfast.ops.triton_bn_crossing_act import fold_bn
        sc, sh = fold_bn(m)
        t_fused = timeit(lambda: ops.triton_bn_crossing_act(conv, V, sc, sh, res, "relu", 0.0), dev, reps)

        def torch_path():
            z = m(conv) + res
            return crossing_counts(z, V), torch.relu(z)
        t_torch = timeit(torch_path, dev, reps)
        return {"shape": list(conv.shape), "fused_s": t_fused, "torch_bn_add_relu_count_s": t_torch,
                "fused_GBps": 3 * conv.numel() * 4 / t_fused / 1e9}
    run.sub(sec, "bn", bn)


# ---------------------------------------------------------------------------
# workloads and the auto-chunked 224 px run
# ---------------------------------------------------------------------------

def _no_tf32():
    prev = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    return prev


def workloads(run, sec, dev):
    from lcfast.neighborhood import vertices
    import zoo
    smoke = run.args.smoke

    def measure(model, x, P, chunk):
        model = model.to(dev).eval()
        x = x.to(dev)
        d = torch.randn(x.shape[0], P, *x.shape[1:], device=dev)
        d = torch.linalg.qr(d.flatten(2).transpose(1, 2))[0].transpose(1, 2).reshape(d.shape)

        def bare():
            with torch.no_grad():
                for lo in range(0, x.shape[0], chunk):
                    model(vertices(x[lo:lo + chunk], d[lo:lo + chunk], 0.005))

        def lc(backend):
            return lambda: lcfast.local_complexity(model, x, radius=0.005, directions=d, backend=backend,
                                                   chunk_size=chunk)
        prev = _no_tf32()
        try:
            reps = 1 if smoke else 3
            t_bare, t_ref, t_tri = (timeit(f, dev, reps) for f in (bare, lc("reference"), lc("triton")))
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev
        a, b = lc("triton")(), lc("reference")()
        return {"points": x.shape[0], "P": P, "chunk": chunk, "bare_forward_s": t_bare, "reference_s": t_ref,
                "triton_s": t_tri, "speedup_vs_reference": t_ref / t_tri, "time_vs_bare_forward": t_tri / t_bare,
                "max_count_diff_vs_reference": int((a.counts - b.counts).abs().max()) if a.counts.numel() else 0}
    if smoke:
        run.sub(sec, "mnist_mlp", lambda: measure(zoo.mlp(d_in=30, width=20, depth=2, d_out=10),
                                                  torch.rand(4, 30), 3, 2))
    else:
        run.sub(sec, "mnist_mlp", lambda: measure(zoo.mlp(d_in=784, width=200, depth=4, d_out=10),
                                                  torch.rand(21000, 784), 25, 1310))
        run.sub(sec, "resnet18_224", lambda: measure(zoo.resnet18(), torch.randn(run.args.resnet_points, 3, 224, 224),
                                                     25, 20))


def auto224(run, sec, dev):
    """ResNet18 at 224 px, chunk_size=None: the chunks the planner picks for users."""
    import zoo
    smoke = run.args.smoke
    px, n = (16, 3) if smoke else (224, 100)  # smoke: 16 px under the interpreter, same code
    model = zoo.resnet18().to(dev).eval()
    x = torch.randn(n, 3, px, px, generator=torch.Generator().manual_seed(0)).to(dev)
    seen = []
    hook = model.conv1.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[0]))
    results = {}
    try:
        backends = ["reference"] + [b for b in ("native", "triton") if b in lcfast.available_backends(dev)]
        for b in backends:
            def one(b=b):
                seen.clear()
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                sync(dev)
                t = time.perf_counter()
                r = lcfast.local_complexity(model, x, radius=0.005, n_dirs=25, backend=b)
                sync(dev)
                results[b] = r
                rec = {"backend_run": r.meta["backend"], "seconds": time.perf_counter() - t,
                       "points_per_chunk": [s // 50 for s in seen],
                       "largest_site_elements": max(seen) * 64 * (px // 2) ** 2,
                       "peak_GiB": torch.cuda.max_memory_allocated() / 2 ** 30 if dev.type == "cuda" else None,
                       **({"fallback": r.meta["fallback"]} if "fallback" in r.meta else {})}
                if b != "reference":
                    diff = (r.counts - results["reference"].counts).abs()
                    rec.update(equal_to_reference=bool(torch.equal(r.counts, results["reference"].counts)),
                               max_count_diff=int(diff.max()), cells_differing=int((diff > 0).sum()))
                return rec  # informational; the float64_oracle sub-check below decides
            run.sub(sec, b, one)

        def oracle():
            k = 2 if not smoke else 1
            o = float64_oracle(model, x[:k], radius=0.005, n_dirs=25)
            return {"ok": True, **{b: dataclasses.asdict(assert_counts_match(r.counts[:k], o))
                                   for b, r in results.items()}}
        run.sub(sec, "float64_oracle", oracle)
    finally:
        hook.remove()


# ---------------------------------------------------------------------------
# tune: tile sweeps (optional)
# ---------------------------------------------------------------------------

def tune(run, sec, dev):
    from lcfast.kernels.triton_crossing import crossing_epilogue_kernel
    from lcfast.kernels.triton_linear_crossing import linear_crossing_kernel
    smoke = run.args.smoke
    reps, rows, F_, V = _timing_setup(run)
    for dtype in (torch.float32, torch.bfloat16):
        pre = torch.randn(rows, F_, device=dev, dtype=dtype)
        o = torch.empty_like(pre)
        nbytes = 2 * pre.numel() * pre.element_size()
        for bf in ((64,) if smoke else (32, 64, 128, 256)):
            for nw in ((4,) if smoke else (4, 8, 16)):
                def point(bf=bf, nw=nw):
                    c = torch.zeros(rows // V, dtype=torch.int64, device=dev)
                    nt = -(-F_ // bf)

                    def go():
                        c.zero_()
                        crossing_epilogue_kernel[((rows // V) * nt,)](
                            pre, o, pre, pre, pre, c, F_, 1, 1, nt, SLOPE=0.0, V=V, VB=64, BLOCK_F=bf, ACT=1,
                            AFFINE=False, RESIDUAL=False, STORE=True, F64=False, num_warps=nw)
                    t = timeit(go, dev, reps)
                    return {"ok": torch.equal(c, crossing_counts(pre, V)), "GBps": nbytes / t / 1e9}
                run.sub(sec, f"epilogue_{str(dtype)[6:]}_BF{bf}_W{nw}", point)
    pts, K, N_ = (4, 24, 16) if smoke else (1024, 784, 200)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(pts * V, K, device=dev, dtype=dtype)
        w = (torch.randn(N_, K, device=dev) / K ** 0.5).to(dtype)
        b = torch.zeros(N_, device=dev, dtype=dtype)
        for G, bn, bk, nw in ([(1, 64, 32, 4)] if smoke else
                              [(1, 64, 32, 4), (2, 64, 32, 4), (1, 128, 32, 4), (1, 64, 64, 4),
                               (2, 128, 32, 8), (1, 128, 64, 8)]):
            def point(G=G, bn=bn, bk=bk, nw=nw):
                o = torch.empty(x.shape[0], N_, device=dev, dtype=dtype)
                c = torch.zeros(pts, dtype=torch.int64, device=dev)

                def go():
                    linear_crossing_kernel[(-(-pts // G), -(-N_ // bn))](
                        x, w, b, o, c, pts, K, N_, 1, x.stride(0), x.stride(1), w.stride(0), w.stride(1), 0.0,
                        V=V, VP=64, G=G, BLOCK_N=bn, BLOCK_K=bk, ACT=1, HAS_BIAS=True, COUNT=True,
                        PRECISION="ieee" if dtype == torch.float32 else "tf32",
                        UPCAST=smoke and dtype == torch.bfloat16, num_warps=nw)
                return {"median_s": timeit(go, dev, reps)}
            run.sub(sec, f"linear_{str(dtype)[6:]}_G{G}_N{bn}_K{bk}_W{nw}", point)


SECTION_FUNCS = {"correctness": correctness, "timing": timing, "workloads": workloads, "auto224": auto224,
                 "tune": tune}
