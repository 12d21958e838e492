"""Benchmark workloads, baselines and ratios (``lcfast bench`` and ``benchmarks/``).

One workload = a model, ``N`` points, their frames (``P = 25`` per point, ``r =
0.005``) and a chunk size, defined once in ``benchmarks/workloads.toml``.  Every
method measures the same points with the same frames and the same chunks:

* ``bare-forward``: the model's forward of the ``N * 2P`` vertex batch, building the
  vertices included, no counting (the physical floor, docs/design.md#performance);
* ``reference``: ``lcfast.local_complexity(..., backend="reference")``;
* ``torch.compile``: what a user writes to speed the reference up: the vertex
  forward plus the reference's counting in forward pre-hooks of the activation
  modules, ``torch.compile``-d as one function (``local_complexity(torch.compile(
  model))`` measures the uncompiled ``_orig_mod``: call interception cannot see
  inside a compiled graph);
* ``paper``: the published method re-implemented (Humayun et al.'s
  ``local_complexity.py``): hooks keep each site's full pre-activation for the
  whole chunk, then per site ``sign`` of every vertex is compared with the first
  vertex's, reduced per point and gathered on the host;
* every lcfast backend :func:`lcfast.available_backends` lists for the device.

Before anything is timed, each method's counts are checked against the
reference: bit-identical where it sees the same pre-activations (the paper
method), else the float64 tolerance rule (:mod:`lcfast.testing`).  A method
that fails the check is never timed.

Timed callables synchronise the device.  Ratios: ``speedup_vs_reference =
t_reference / t``, ``speedup_vs_compile = t_compile / t``, ``time_vs_bare_forward
= t / t_bare`` (all medians of the same run).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

__all__ = [
    "BASELINES", "CheckFailed", "Method", "Prepared", "Workload", "add_parser", "available_methods",
    "compute_ratios", "conditions", "conditions_line", "find_config", "format_report", "load_workloads",
    "main", "prepare", "prepare_method", "run_workloads",
]

#: baselines, in the order they run (the reference first among the counting methods,
#: so that every later method can be checked against it)
BASELINES = ("bare-forward", "reference", "torch.compile", "paper")
SIZES = ("cpu", "gpu")
COMPILE_OFF = "compile = false for this workload at this size (workloads.toml)"
CONFIG_ENV = "LCFAST_BENCH_CONFIG"
SIZE_ENV = "LCFAST_BENCH_SIZE"


class CheckFailed(AssertionError):
    """A method's counts disagree with the reference beyond the tolerance rule."""


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


def find_config(path: str | os.PathLike | None = None) -> Path:
    """The workload file: ``path``, else ``$LCFAST_BENCH_CONFIG``, else
    ``benchmarks/workloads.toml`` of the source tree this module lives in."""
    cands = [path, os.environ.get(CONFIG_ENV), Path(__file__).resolve().parents[1] / "benchmarks" / "workloads.toml"]
    for c in cands:
        if c and Path(c).is_file():
            return Path(c)
    raise FileNotFoundError(
        "no benchmark workload file: pass --config PATH (benchmarks/workloads.toml of the lcfast source tree) "
        f"or set {CONFIG_ENV}")


@dataclasses.dataclass
class Workload:
    """One workload at one size (``cpu`` or ``gpu``)."""

    name: str
    model: str
    data: str
    shape: tuple[int, ...]
    n: int
    chunk: int
    rounds: int
    verify: int
    radius: float
    n_dirs: int
    seed: int
    dtype: str
    size: str
    warmup: bool = True
    compile: bool = True
    skip: str | None = None


def _pick(value, size: str, key: str, name: str):
    if isinstance(value, dict):
        if size not in value:
            raise ValueError(f"workload {name!r}: {key} has no value for size {size!r}")
        return value[size]
    return value


def load_workloads(path=None, size: str = "cpu") -> dict[str, Workload]:
    """All workloads of the config file at ``size`` (``"cpu"`` or ``"gpu"``), in file order."""
    import tomllib

    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    with open(find_config(path), "rb") as f:
        cfg = tomllib.load(f)
    d = cfg.get("defaults", {})
    out: dict[str, Workload] = {}
    for name, w in cfg.get("workloads", {}).items():
        def get(key, default=None, _w=w, _name=name):
            v = _w.get(key, d.get(key, default))
            if v is None:
                raise ValueError(f"workload {_name!r}: missing {key!r}")
            return _pick(v, size, key, _name)
        n = int(get("n"))
        out[name] = Workload(
            name=name, model=str(get("model")), data=str(get("data", "random")),
            shape=tuple(int(s) for s in get("shape")), n=n, chunk=max(1, int(get("chunk", n or 1))),
            rounds=max(1, int(get("rounds", 3))), verify=int(get("verify", n)), radius=float(get("radius")),
            n_dirs=int(get("n_dirs")), seed=int(get("seed", 0)), dtype=str(get("dtype", "float32")), size=size,
            warmup=bool(get("warmup", True)), compile=bool(get("compile", True)),
            skip=(w.get("skip") or f"n = 0 at size {size}") if n == 0 else None)
    return out


def default_size(device: torch.device | str) -> str:
    env = os.environ.get(SIZE_ENV)
    if env:
        if env not in SIZES:
            raise ValueError(f"{SIZE_ENV} must be one of {SIZES}, got {env!r}")
        return env
    return "gpu" if torch.device(device).type == "cuda" else "cpu"


# ---------------------------------------------------------------------------
# Models, data, frames
# ---------------------------------------------------------------------------


def build_model(spec: str, seed: int = 0) -> nn.Module:
    """``mnist-mlp`` / ``paper-cnn`` (the paper's models, :mod:`lcfast.train.models`) or a
    torchvision model name (random init, seeded; nothing is downloaded)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if spec == "mnist-mlp":
            from .train.models import mlp
            return mlp(in_dim=784, width=200, depth=4, out_dim=10, act="relu", init_scale=1.0)
        if spec == "paper-cnn":
            from .train.models import paper_cnn
            return paper_cnn(in_channels=3, num_classes=10, batchnorm=False)
        import torchvision
        return torchvision.models.get_model(spec, weights=None)


def build_data(kind: str, n: int, shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, str]:
    """``(x, description)``: ``x`` is ``(n, *shape)`` float32 on the CPU."""
    D = math.prod(shape)
    if kind == "mnist":
        try:
            from .train.data import load_mnist
            import warnings
            with warnings.catch_warnings(record=True):
                warnings.simplefilter("always")
                x, _ = load_mnist(train=True, n=n)
            if x.shape[0] >= n and math.prod(x.shape[1:]) == D:
                return x[:n].reshape(n, *shape).float().contiguous(), "MNIST train images"
            why = f"only {x.shape[0]} MNIST images installed"
        except (ImportError, FileNotFoundError, RuntimeError) as e:
            why = f"no MNIST installed ({type(e).__name__})"
        g = torch.Generator().manual_seed(seed)
        return torch.rand(n, *shape, generator=g), f"uniform random [0,1] ({why})"
    if kind == "images":
        if len(shape) == 3 and shape[0] == 3 and shape[1] == shape[2]:
            try:
                from .datasets import natural_images
                return natural_images(n, size=shape[1], seed=seed), "scikit-image photos (ImageNet-normalised)"
            except (ImportError, RuntimeError) as e:
                why = f"no scikit-image photos ({e})"
        else:
            why = f"shape {shape} is not an image"
        g = torch.Generator().manual_seed(seed)
        return torch.randn(n, *shape, generator=g), f"standard normal random ({why})"
    if kind == "random":
        g = torch.Generator().manual_seed(seed)
        return torch.rand(n, *shape, generator=g), "uniform random [0,1]"
    raise ValueError(f"unknown data kind {kind!r} (mnist | images | random)")


def build_frames(shape, P: int, seed: int, n: int, device: torch.device, dtype: torch.dtype,
                 block: int = 64) -> torch.Tensor:
    """The per-point frames ``(n, P, *S)`` that ``local_complexity`` would draw for ids
    ``0..n-1``, built ``block`` points at a time (a 1,000-point ResNet set would need
    60 GB of float64 scratch in one call)."""
    from .neighborhood import random_frames
    out = torch.empty(n, P, *shape, device=device, dtype=dtype)
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        out[lo:hi] = random_frames(shape, P, seed, torch.arange(lo, hi), device=device, dtype=dtype)
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclasses.dataclass
class Prepared:
    """A workload built on a device: model, points, frames, and (lazily) the
    reference counts and the float64 oracle on the first ``verify`` points."""

    workload: Workload
    device: torch.device
    dtype: torch.dtype
    model: nn.Module
    x: torch.Tensor
    frames: torch.Tensor
    data: str
    build_s: float
    _ref: tuple[torch.Tensor, list[str]] | None = None
    _oracle: Any = None

    @property
    def V(self) -> int:
        return 2 * self.workload.n_dirs

    def chunks(self):
        n, c = self.workload.n, self.workload.chunk
        return [(lo, min(n, lo + c)) for lo in range(0, n, c)]

    def lc(self, model: nn.Module, backend: str):
        from .api import local_complexity
        w = self.workload
        return local_complexity(model, self.x, radius=w.radius, directions=self.frames, backend=backend,
                                dtype=self.dtype, chunk_size=w.chunk)

    def reference(self) -> tuple[torch.Tensor, list[str]]:
        if self._ref is None:
            r = self.lc(self.model, "reference")
            self._ref = (r.counts.cpu(), list(r.sites))
        return self._ref

    def oracle(self):
        if self._oracle is None:
            from .testing import float64_oracle
            k = max(1, min(self.workload.verify, self.workload.n))
            self._oracle = float64_oracle(self.model, self.x[:k], radius=self.workload.radius,
                                          directions=self.frames[:k], dtype=self.dtype)
        return self._oracle


def prepare(w: Workload, device: torch.device | str) -> Prepared:
    """Build model, points and frames of ``w`` on ``device`` (not timed)."""
    device = torch.device(device)
    if w.n == 0:
        raise ValueError(f"workload {w.name!r} is not run at size {w.size!r}: {w.skip}")
    t0 = time.perf_counter()
    dtype = getattr(torch, w.dtype)
    model = build_model(w.model, w.seed).to(device=device, dtype=dtype).eval()
    x, data = build_data(w.data, w.n, w.shape, w.seed)
    x = x.to(device=device, dtype=dtype)
    frames = build_frames(w.shape, w.n_dirs, w.seed, w.n, device, dtype)
    sync(device)
    return Prepared(w, device, dtype, model, x, frames, data, time.perf_counter() - t0)


# ---------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Method:
    """A prepared, checked method.  ``timed()`` runs it once and synchronises the
    device.  ``info`` goes into the results (variant, check, first-call time)."""

    name: str
    run: Callable[[], Any]
    device: torch.device
    info: dict

    def timed(self):
        out = self.run()
        sync(self.device)
        return out


INTERPRETER_ONLY = ("available on the CPU only through the Triton interpreter (TRITON_INTERPRET=1), "
                    "a correctness tool: not timed")


def excluded_backends(device: torch.device | str) -> dict[str, str]:
    """Backends that report available on ``device`` but are not benchmarked, with why."""
    if torch.device(device).type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return {"triton": INTERPRETER_ONLY}
    return {}


def available_methods(device: torch.device | str, backends=None, baselines=BASELINES) -> list[str]:
    """The baselines, then every lcfast backend available on ``device`` (other than the
    reference, which is a baseline, and :func:`excluded_backends`), optionally
    restricted to ``backends``."""
    from .engine import available_backends
    skip = excluded_backends(device)
    avail = [b for b in available_backends(torch.device(device)) if b != "reference" and b not in skip]
    if backends is not None:
        unknown = [b for b in backends if b not in avail and b != "reference"]
        if unknown:
            from .engine import why_unavailable
            raise ValueError("backends not available on {}: {}".format(
                device, "; ".join(f"{b}: {why_unavailable(b, torch.device(device)) if b in _all_backends() else 'unknown backend'}"
                                  for b in unknown)))
        avail = [b for b in avail if b in backends]
    return [*baselines, *avail]


def _all_backends():
    from .engine import BACKENDS
    return BACKENDS


def _bare_forward(p: Prepared) -> Callable[[], None]:
    from .engine.base import model_guard
    from .neighborhood import vertices
    w = p.workload

    def run():
        # model_guard: eval mode, no_grad and (CUDA float32) TF32 off, exactly as the
        # engines measure -- the floor must compute what they compute.
        with model_guard(p.model, p.device, p.dtype) as m:
            for lo, hi in p.chunks():
                m(vertices(p.x[lo:hi], p.frames[lo:hi], w.radius))
    return run


def _activation_modules(model: nn.Module):
    from .sites import ACTIVATION_MODULES
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ACTIVATION_MODULES)]


def _paper_method(p: Prepared) -> Callable[[], tuple[torch.Tensor, list[str]]]:
    """The published method (grok-adversarial ``local_complexity.py``), re-implemented:
    forward hooks fill an activation buffer with each site's full tensor, then
    ``sign`` per vertex, ``!=`` the first vertex, ``any`` over vertices, ``sum`` over
    neurons, ``.cpu()`` per site into a host table.  The hooks sit on the activation
    modules' inputs (the paper hooked ``nn.Linear`` outputs of its MLP: the same
    tensors); an in-place activation's input is cloned, else the buffer would hold
    its output; a module called twice fills two entries."""
    from .engine.base import model_guard
    from .neighborhood import vertices
    w, V = p.workload, p.V
    acts = _activation_modules(p.model)

    def run():
        buffer: dict[str, torch.Tensor] = {}
        calls: dict[str, int] = {}

        def hook_for(name, inplace):
            def hook(module, args):
                k = calls[name] = calls.get(name, 0) + 1
                buffer[f"{name}#{k}"] = args[0].clone() if inplace else args[0]
            return hook

        handles = [m.register_forward_pre_hook(hook_for(n, bool(getattr(m, "inplace", False)))) for n, m in acts]
        try:
            parts, names = [], None
            with model_guard(p.model, p.device, p.dtype) as m:
                for lo, hi in p.chunks():
                    buffer.clear()
                    calls.clear()
                    m(vertices(p.x[lo:hi], p.frames[lo:hi], w.radius))
                    n = hi - lo
                    table = torch.zeros(n, len(buffer), dtype=torch.long)  # on the host
                    for i, act in enumerate(buffer.values()):
                        s = torch.sign(act).reshape(n, V, -1)
                        match = (s[:, 1:] != s[:, :1]).any(dim=1)
                        table[:, i] = match.sum(dim=-1).cpu()
                    names = list(buffer)
                    parts.append(table)
            buffer.clear()
            return torch.cat(parts), names or []
        finally:
            for h in handles:
                h.remove()
    return run


class _HookCountingForward(nn.Module):
    """Vertex forward + the reference's crossing count in forward pre-hooks of the
    activation modules, as one module a user can ``torch.compile``:
    ``(n*V, *S) -> (n, L)`` counts."""

    def __init__(self, model: nn.Module, V: int):
        super().__init__()
        from .engine.reference import crossing_counts
        self.model, self.V = model, V
        self._counts: list[torch.Tensor] = []
        self._names = [n for n, _ in _activation_modules(model)]
        self._handles = [m.register_forward_pre_hook(self._hook) for _, m in _activation_modules(model)]
        self._crossing = crossing_counts

    def _hook(self, module, args):
        self._counts.append(self._crossing(args[0], self.V))

    def forward(self, v):
        self._counts.clear()
        self.model(v)
        out = torch.stack(self._counts, dim=1)
        self._counts.clear()
        return out

    def close(self):
        for h in self._handles:
            h.remove()


def _compiled_counting(p: Prepared, info: dict) -> Callable[[], tuple[torch.Tensor, list[str]]]:
    from .engine.base import model_guard
    from .neighborhood import vertices
    w = p.workload
    wrapper = _HookCountingForward(p.model, p.V)
    compiled = torch.compile(wrapper)
    # the names the engine would give (every activation module, per call)
    _, ref_names = p.reference()

    def run():
        parts = []
        with model_guard(p.model, p.device, p.dtype):
            for lo, hi in p.chunks():
                parts.append(compiled(vertices(p.x[lo:hi], p.frames[lo:hi], w.radius)).cpu())
        counts = torch.cat(parts)
        # module pre-hooks see each call, in call order: same order as the engine's sites
        return counts, list(ref_names) if counts.shape[1] == len(ref_names) else [f"site{i}" for i in range(counts.shape[1])]
    info["finalizer"] = wrapper.close
    return run


def _torch_compile(p: Prepared, info: dict):
    """The compiled baseline: the vertex forward plus the reference's crossing count in
    activation pre-hooks, ``torch.compile``-d as one module.  (``local_complexity(
    torch.compile(model))`` is no compile baseline: sites are found by intercepting
    calls, which a compiled graph hides, so the engine measures ``model._orig_mod``.)"""
    run = _compiled_counting(p, info)
    t0 = time.perf_counter()
    try:
        first = run()
    except BaseException:
        info.pop("finalizer")()
        raise
    info["variant"] = "torch.compile(vertex forward + reference crossing count in activation pre-hooks)"
    info["first_call_s"] = time.perf_counter() - t0
    return run, first


def check_counts(p: Prepared, name: str, counts: torch.Tensor, sites: list[str], exact: bool) -> dict:
    """Check a method's counts against the reference (docs/design.md#testing).

    Bit-identical counts pass.  Otherwise a method that sees the reference's own
    pre-activations (``exact``) fails; any other passes when it matches the float64
    oracle within :func:`lcfast.testing.assert_counts_match` on the first ``verify``
    points.  Returns what the check established; raises :class:`CheckFailed`.
    """
    from .testing import assert_counts_match
    ref, ref_sites = p.reference()
    if list(sites) != list(ref_sites):
        raise CheckFailed(f"{p.workload.name}/{name}: sites differ from the reference's "
                          f"({len(sites)} vs {len(ref_sites)}; first: {sites[:3]} vs {ref_sites[:3]})")
    counts = counts.cpu()
    if counts.shape == ref.shape and torch.equal(counts, ref):
        return {"check": "identical to reference", "points_checked": int(ref.shape[0])}
    if counts.shape != ref.shape:
        raise CheckFailed(f"{p.workload.name}/{name}: counts shape {tuple(counts.shape)} != {tuple(ref.shape)}")
    diff = (counts - ref).abs()
    summary = {"points_differing_from_reference": int((diff.sum(1) > 0).sum()),
               "max_abs_diff_vs_reference": int(diff.max())}
    if exact:
        raise CheckFailed(f"{p.workload.name}/{name}: counts differ from the reference although it sees the same "
                          f"pre-activations: {summary}")
    oracle = p.oracle()
    k = oracle.counts.shape[0]
    try:
        frac = float(oracle.ambiguous.sum()) / max(1, k * int(oracle.neurons.sum()))
        assert_counts_match(counts[:k], oracle)
    except AssertionError as e:
        raise CheckFailed(f"{p.workload.name}/{name}: float64 tolerance rule failed on the first {k} points: {e}") \
            from None
    return {"check": f"float64 rule on {k} of {ref.shape[0]} points", "points_checked": k,
            "ambiguous_fraction": frac, **summary}


def _warmed(m: "Method", warm: bool) -> "Method":
    """One untimed run of an unchecked method (or record that there was none)."""
    if warm:
        t0 = time.perf_counter()
        m.run()
        sync(m.device)
        m.info["first_call_s"] = time.perf_counter() - t0
    else:
        m.info["warmup"] = "none"
    return m


def prepare_method(p: Prepared, name: str) -> Method:
    """Set up method ``name`` on ``p``, run it once (warm-up; compile happens here) and
    check its counts.  Raises :class:`CheckFailed` when the counts are wrong.

    When the workload has ``warmup = false`` (runs of several seconds, where a warm-up
    changes nothing measurable but costs the CPU budget), the bare forward and the
    reference get no untimed run: the reference's timed run provides the counts the
    later methods are checked against.  Methods that are checked always run once
    before timing."""
    info: dict = {}
    exact = False
    warm = p.workload.warmup
    if name == "bare-forward":
        run = _bare_forward(p)
        info["check"] = "no counts (floor)"
        return _warmed(Method(name, run, p.device, info), warm)
    if name == "reference":
        def run():
            r = p.lc(p.model, "reference")
            p._ref = (r.counts.cpu(), list(r.sites))
            return p._ref
        info["check"] = "is the reference"
        return _warmed(Method(name, run, p.device, info), warm)
    if name == "torch.compile":
        run, first = _torch_compile(p, info)
    elif name == "paper":
        run = _paper_method(p)
        # Same model, same vertex batch per chunk: the same pre-activations, so the
        # counts must be bit-identical -- except where a module picks another kernel
        # under the engine's TorchFunctionMode: nn.MultiheadAttention takes its fused
        # fast path only when no mode is active (measured on a 2-layer torchvision ViT:
        # GELU inputs differ by up to 1.3e-6), so there the float64 rule applies.
        mha = any(isinstance(m, nn.MultiheadAttention) for m in p.model.modules())
        exact = not mha
        if mha:
            info["exact_waived"] = "nn.MultiheadAttention fast path runs only outside the engine's TorchFunctionMode"
        t0 = time.perf_counter()
        first = run()
        info["first_call_s"] = time.perf_counter() - t0
    else:
        def run(_b=name):
            r = p.lc(p.model, _b)
            return r.counts.cpu(), list(r.sites)
        t0 = time.perf_counter()
        first = run()
        sync(p.device)
        info["first_call_s"] = time.perf_counter() - t0
    try:
        info.update(check_counts(p, name, first[0], first[1], exact))
    except BaseException:
        fin = info.pop("finalizer", None)
        if fin:  # e.g. the compile baseline's hooks: never leave them on the model
            fin()
        raise
    return Method(name, run, p.device, info)


# ---------------------------------------------------------------------------
# Conditions, ratios, tables
# ---------------------------------------------------------------------------


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
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def conditions(device: torch.device | str, size: str, dtype: str = "float32") -> dict:
    """Where and with what a run was measured (the table's conditions line)."""
    from . import __version__
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


# ---------------------------------------------------------------------------
# Running without pytest
# ---------------------------------------------------------------------------


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


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "bench", help="time LC backends against the baselines on a benchmark workload",
        description="Run benchmark workloads (benchmarks/workloads.toml) without pytest: bare forward, "
                    "reference, torch.compile, the paper's method and every available lcfast backend, "
                    "checked against the reference, then timed; prints the same table as benchmarks/report.py.")
    p.add_argument("--workload", nargs="+", default=["mnist-mlp"],
                   help="workload name(s), or 'all' (default: mnist-mlp)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--backends", nargs="*", default=None,
                   help="lcfast backends to time besides the reference (default: all available here)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument("--no-paper", action="store_true", help="skip the paper-method baseline")
    p.add_argument("--size", choices=SIZES, default=None,
                   help=f"size column of the workload file (default: ${SIZE_ENV} or from the device)")
    p.add_argument("--n", type=int, default=None, help="override the number of points")
    p.add_argument("--rounds", type=int, default=None, help="override the timed rounds")
    p.add_argument("--check-only", action="store_true", help="check every method against the reference, no timing")
    p.add_argument("--config", default=None, help="workload file (default: benchmarks/workloads.toml)")
    p.add_argument("--json", default=None, help="also write the results as JSON (readable by benchmarks/report.py)")
    p.add_argument("--list", action="store_true", help="list the workloads at the chosen size and exit")
    p.set_defaults(func=_cmd_bench)
    return p


def _cmd_bench(args) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    size = args.size or default_size(device)
    if args.list:
        for w in load_workloads(args.config, size).values():
            print(f"{w.name:16s} model={w.model:10s} N={w.n:<6d} chunk={w.chunk:<5d} data={w.data}"
                  + (f"  (skipped: {w.skip})" if w.skip else ""))
        return 0
    if args.n is not None and args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.rounds is not None and args.rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {args.rounds}")
    baselines = tuple(b for b in BASELINES if not ((b == "torch.compile" and args.no_compile)
                                                   or (b == "paper" and args.no_paper)))
    data = run_workloads(args.workload, device, size=size, backends=args.backends, baselines=baselines,
                         rounds=args.rounds, n=args.n, config=args.config, check_only=args.check_only,
                         log=lambda s: print(s, file=sys.stderr, flush=True))
    print(format_report(data))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1, default=str)
        print(f"wrote {args.json}")
    return 1 if data["lcfast_failures"] else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lcfast.bench")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "bench":
        argv = ["bench", *argv]
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, RuntimeError, FileNotFoundError) as e:
        print(f"lcfast bench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
