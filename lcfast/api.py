"""``lcfast.local_complexity``: validation (:mod:`lcfast.request`), planning (device,
dtype, backend, sites, chunk plan) and the chunk loop, as three functions."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn

from .engine import check_compute_dtype, low_precision_route, naive_low_precision, warn_if_offsets_unresolved
from .engine.policy import FallbackEngine, engine_for  # the auto choice and first-chunk fallback (lcfast/engine/policy.py)
from .engine.base import Backend, ChunkResult, merge_chunk_meta, model_device, model_guard, _model_dtype
from .engine.chunking import ChunkPlan, FrameBlocks, SizeProbe
from .engine.intercept import ModelCall, probe_layouts
from .engine.layout_cache import cached_layouts
from .frames import FRAMES_VERSION, FactoredFrames, factorable, factored_frames, random_frames, shared_frame
from .neighborhood import vertices
from .oom import is_out_of_memory, measure_halving
from .request import _Request, _validate
from .result import LCResult
from .sites import SiteSpec

__all__ = ["local_complexity", "naive_low_precision"]


def local_complexity(
    model: nn.Module,
    x: torch.Tensor,
    radius: float | Sequence[float] = 0.005,
    n_dirs: int = 25,
    seed: int = 0,
    ids: torch.Tensor | Sequence[int] | None = None,
    directions: torch.Tensor | None = None,
    sites="activations",
    backend: str = "auto",
    dtype: torch.dtype | None = None,
    chunk_size: int | None = None,
    progress: bool = False,
    shared_directions: bool = False,
    check_directions: bool = True,
    forward: Callable | None = None,
    extra: Mapping[str, Any] | None = None,
    certified: bool = False,
) -> LCResult | list[LCResult]:
    """Local complexity of ``model`` around each point of ``x``.

    For every point, the ``2P`` vertices ``x +- r v_p`` of a cross-polytope (``v``
    orthonormal) are pushed through the model; at each site a neuron is *crossed*
    when the signs of its values over the vertices are not all equal
    (docs/design.md#definition).  The model is left exactly as found.

    Args:
        model: any ``nn.Module``; measured in eval mode.
        x: ``(N, *S)`` floating points (any layout; not modified).
        radius: ``r > 0``, the cross-polytope radius, or a list of radii: then a list of
            results, one per radius in the order given, on the same frames (the offsets
            engine derives every radius from one propagation where the points stay
            antisymmetric and reruns the others; the vertex-pushing backends run once
            per radius; no accuracy report, and not with ``certified``).
        n_dirs: ``P``, directions per point, ``1 <= P <= D = prod(S)``; ignored when
            ``directions`` is given.
        seed: the frame of point ``i`` depends only on ``(seed, ids[i])``.
        ids: ``(N,)`` global sample ids (default ``arange(N)``).
        directions: ``(P, *S)`` shared or ``(N, P, *S)`` per point, or flat
            ``(P, D)`` / ``(N, P, D)`` with ``D = prod(S)`` (the paper's frame matrix).
            Directions are unit vectors and the radius scales them: they are used as
            given (not normalised), and a warning names the worst deviation when they
            are far from orthonormal (see ``check_directions``).
        sites: ``"activations"`` (inputs of every nonlinearity call) or a list of
            module names / ``nn.Module`` types whose outputs are sites.  Names: an
            activation site is ``"<owner>#k"`` (``"layer1.0.relu#2"``: the second call
            of that module; a functional call is owned by the running module plus the
            function, ``"block.relu#1"``); a module-output site is the module's name
            (``"fc1"``), or ``"fc1#k"`` when the module runs more than once.
        backend: ``"reference"``, ``"native"``, ``"triton"`` or ``"auto"``.
        dtype: compute dtype (``None``: the model's).
        chunk_size: points per forward (``None``: fit memory).  Never changes a result.
        progress: show a tqdm progress bar.
        shared_directions: one random frame (from ``seed``) for all points, as the
            paper's code does, instead of one per point.
        check_directions: warn (once per call) when given ``directions`` have a norm
            or a pairwise inner product off by more than ``1e-3`` from orthonormal;
            ``False`` skips the check.
        forward: how to call the model on a vertex batch: ``forward(model, batch,
            **extra) -> output`` with ``batch`` ``(rows, *S)`` (default
            ``model(batch, **extra)``), e.g. ``lambda m, v, **e: m(pixel_values=v, **e)``
            for a model whose forward takes keyword inputs.
        extra: per-point extra inputs ``{name: (N, ...) tensor}`` (e.g.
            ``{"attention_mask": mask}``), handed to ``forward`` with each point's row
            repeated for every batch row lcfast propagates for that point (so a
            ``(N, T)`` mask arrives as ``(rows, T)``); floating ones in the compute
            dtype, all on the model's device.  Values that are not tensors are passed
            unchanged.
        certified: counts equal to float64's from the centre + offsets engine
            (docs/design.md, "The offsets engine's own accuracy report, and the certified
            mode").  The engine carries a rounding band per neuron; every point with a
            neuron inside its band at some site (or reaching a site without a band) is
            measured again in float64 on a float64 copy of the model (the user's model
            is untouched).  It is a mode of the offsets engine: with ``backend="auto"``
            it runs the offsets engine whatever the dtype (bfloat16/float16: centre in
            float64, offsets in that dtype, as without ``certified``; float32/float64:
            centre and offsets in that dtype); ``backend="reference"``, ``"native"``,
            ``"triton"`` and ``forward=``/``extra=`` raise ``ValueError``.  Cost: the
            band (one extra product on absolute values per layer: +4% to +7% CPU time
            measured on the MNIST MLP and ResNet18, docs/design.md) plus a float64
            measurement of every flagged point; on a large CNN (ResNet18 at 224 px)
            every point is flagged, so it costs a float64 measurement of every point.
            ``meta["certified_recomputed"]``: how many points were recomputed.

    Returns:
        :class:`LCResult` with ``counts`` ``(N, L)``, ``sites`` (L names),
        ``neurons`` ``(L,)``, ``total`` ``(N,)``; ``meta["certified"]`` (bool).

    Raises:
        TypeError / ValueError: bad arguments (the message names the argument).
        RuntimeError: the requested backend is not available here.

    Example:
        >>> mlp = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        >>> res = local_complexity(mlp, torch.randn(5, 2), radius=0.1, n_dirs=2)
        >>> res.counts.shape, res.sites
        (torch.Size([5, 1]), ['1#1'])
    """
    request = _validate(model, x, radius, n_dirs, seed, ids, directions, sites, backend, dtype, chunk_size,
                        shared_directions, check_directions, forward, extra, certified)
    plan = _plan(request)
    t0 = time.perf_counter()
    if request.radii is None:
        runs = [(request.radius, *_run(request, plan, progress))]
    elif plan.engine.name == "offsets":  # one propagation for every radius (engine.offsets.run_offsets_radii)
        counts, names, neurons, engine_meta = _run(request, plan, progress)
        runs = [(r, counts[:, i] if counts.dim() == 3 else counts, names, neurons, engine_meta)
                for i, r in enumerate(request.radii)]
    else:  # a vertex push per radius, on the same frames
        runs = [(r, *_run(dataclasses.replace(request, radius=r, radii=None), plan, progress)) for r in request.radii]
    out = [_result(request, plan, directions, shared_directions, time.perf_counter() - t0, *run) for run in runs]
    return out if request.radii is not None else out[0]


def _result(request: _Request, plan: "_Plan", directions, shared_directions: bool, seconds: float, radius: float,
            counts: torch.Tensor, names: list[str], neurons: list[int], engine_meta: dict) -> LCResult:
    """The :class:`LCResult` of one radius: counts ``(N, L)`` and the call's meta."""
    meta = dict(backend=plan.engine.name, dtype=str(request.dtype or plan.dtype).replace("torch.", ""), seed=request.seed,
                device=str(plan.device), seconds=seconds, **plan.engine.meta,
                certified=request.certified,
                # points recomputed in float64, summed over chunks (0 when N = 0: no chunk ran)
                **({"certified_recomputed": engine_meta.get("certified_recomputed", 0)} if request.certified else {}),
                directions="given" if directions is not None else ("shared" if shared_directions else "per_point"),
                # the generator of drawn frames (issue 10 item 5: frames may change between versions)
                **({} if directions is not None else {"frames_version": FRAMES_VERSION}),
                **({"compiled_model": "measured its _orig_mod"} if request.compiled else {}),
                **({"chunk_size_after_oom": plan.chunks.after_oom} if plan.chunks.after_oom else {}),
                **{k: v for k, v in engine_meta.items() if k not in ("_points", "certified_recomputed")})
    return LCResult(counts=counts, sites=names, neurons=torch.tensor(neurons, dtype=torch.long),
                    ids=request.ids, radius=radius, n_dirs=request.P, meta=meta)


# ---------------------------------------------------------------------------
# Planning: where, in which dtype, with which backend, which sites, what chunks
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Plan:
    device: torch.device
    dtype: torch.dtype
    engine: Backend
    spec: SiteSpec
    chunks: ChunkPlan


def _plan(request: _Request) -> _Plan:
    model = request.model
    spec = SiteSpec.resolve(model, request.sites)
    device = model_device(model, request.x.device)
    dtype = request.dtype or _model_dtype(model)
    dtype, offsets_dtype = low_precision_route(dtype, request.backend)
    if offsets_dtype is None and request.certified:  # certified is the offsets engine's (auto too): offsets in dtype
        offsets_dtype = dtype
    if offsets_dtype is not None:  # centre in `dtype` (float64 for bf16/fp16), offsets in `offsets_dtype`
        from .engine.offsets import OffsetsBackend
        engine = FallbackEngine([OffsetsBackend(offsets_dtype, certified=request.certified)], device)
    else:
        check_compute_dtype(dtype, "dtype" if request.dtype is not None else "model")
        engine = engine_for(request.backend, device)
        if request.backend != "offsets":  # a vertex push: can dtype resolve the offsets?
            warn_if_offsets_unresolved(request.x, min(request.radii or [request.radius]), dtype, stacklevel=3)
    V = 2 * request.P
    point_bytes = math.prod(request.S) * torch.finfo(dtype).bits // 8
    return _Plan(device, dtype, engine, spec, ChunkPlan(request.N, V, point_bytes, device, request.chunk_size))


# ---------------------------------------------------------------------------
# The chunk loop
# ---------------------------------------------------------------------------


def _with_layouts(calls: Callable[[int], nn.Module], spec: SiteSpec, x1: torch.Tensor, dirs1: torch.Tensor,
                  radius: float, model: nn.Module, cache_for: nn.Module | None = None) -> tuple[SiteSpec, dict, bool]:
    """``(spec, entry, cached)``: ``spec`` with the batch dimension of every site found
    by provenance (:func:`lcfast.engine.intercept.probe_layouts`) on ``k`` copies of the
    first point's vertices ``(V, *S)`` (``x1`` ``(1, *S)``, ``dirs1`` ``(1, P, *S)`` or
    ``(P, *S)``), run through ``calls(k)`` (the model, called for ``k`` copies of the
    first point); from :mod:`lcfast.engine.layout_cache` when ``cache_for`` (the user's
    model) was probed before with the same structure and call (``cached`` is then True).
    ``entry`` is the cache entry (a fresh dict when not cached) for other facts of the call."""
    v1 = vertices(x1, dirs1, radius)
    ones = (1,) * (v1.dim() - 1)

    def probe() -> dict:
        try:
            return probe_layouts(model, spec, v1.shape[0], lambda k: calls(k)(v1.repeat(k, *ones)))
        except Exception as e:  # noqa: BLE001 - only out of memory is rephrased
            if not is_out_of_memory(e):
                raise
            raise RuntimeError("out of memory with two points per forward (the site-layout probe runs the model "
                               "for 1 and 2 points when fake tensors cannot): the model does not fit this device at "
                               "this input size") from e
    if cache_for is None:
        return dataclasses.replace(spec, layouts=probe()), {}, False
    call_key = (tuple(v1.shape), v1.dtype, v1.device, spec.activations, tuple(spec.modules.values()))
    entry, hit = cached_layouts(cache_for, call_key, probe)
    return dataclasses.replace(spec, layouts=dict(entry["layouts"])), entry, hit


def _run(request: _Request, plan: _Plan, progress: bool) -> tuple[torch.Tensor, list[str], list[int], dict]:
    """Counts ``(N, L)``, site names, neurons per site and the engine's merged chunk
    reports (:func:`lcfast.engine.base.merge_chunk_meta`), chunk by chunk."""
    N, S, P = request.N, request.S, request.P
    device, dtype, engine, spec = plan.device, plan.dtype, plan.engine, plan.spec
    names: list[str] | None = None
    neurons: list[int] = []
    engine_meta: dict = {}  # what an engine reports per chunk (the offsets engine: rows per point, breaks)

    def check_sites(res: ChunkResult) -> torch.Tensor:
        nonlocal names, neurons
        if names is None:
            if not res.names:
                raise ValueError(
                    "model has no site: no nonlinearity call (ReLU, GELU, ...) acts on the batch; "
                    "pass sites=[module names or types] to count at module outputs")
            names, neurons = list(res.names), list(res.neurons)
        elif res.names != names:
            raise RuntimeError(
                "the model called different sites for different chunks (data-dependent control "
                f"flow?): {names[:5]}... vs {res.names[:5]}...")
        if getattr(res, "meta", None):
            merge_chunk_meta(engine_meta, res.meta, res.counts.shape[0])
        return res.counts.cpu()

    with model_guard(request.model, device, dtype) as model:
        if request.directions is not None:
            all_dirs = request.directions.to(device=device, dtype=dtype)
        elif request.shared:
            all_dirs = shared_frame(S, P, request.seed, device=device, dtype=dtype)
        else:
            all_dirs = None

        # per-point frames drawn in blocks into one buffer for the call (issue 11 item 9)
        drawn = FrameBlocks(lambda ids: random_frames(S, P, request.seed, ids, device=device, dtype=dtype),
                            S, P, device, dtype)
        # an engine that applies the frames' P x P factor after its first linear op gets them
        # as factors: the N x P x D frame is never written (issue 10 item 5)
        factored = all_dirs is None and dtype == torch.float32 and engine.factored_frames and factorable(S, P)

        def frames(lo: int, hi: int, dense: bool = False) -> torch.Tensor | FactoredFrames:
            if all_dirs is None:
                ids = request.ids[lo:hi]
                f = factored_frames(S, P, request.seed, ids, device) if factored and not dense else None
                return drawn(ids) if f is None else f
            return all_dirs if request.shared else all_dirs[lo:hi]

        def called(points: torch.Tensor) -> nn.Module:
            """The model, or the model called through forward=/extra= for ``points`` (indices)."""
            if request.forward is None and request.extra is None:
                return model
            extra = {k: (v[points.to(v.device)].to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
                         if isinstance(v, torch.Tensor) else v) for k, v in (request.extra or {}).items()}
            return ModelCall(model, request.forward, extra, points.numel())

        def run(lo: int, hi: int, probe: SizeProbe | None = None) -> ChunkResult:
            xc = request.x[lo:hi].to(device=device, dtype=dtype)
            with probe or contextlib.nullcontext():
                return engine.run_chunk(called(torch.arange(lo, hi)), xc, frames(lo, hi), request.radii or request.radius,
                                        spec)

        if N == 0:
            # no point: one zero point (zero directions, zero extras) discovers the sites so that
            # counts is (0, L)
            zero = torch.zeros(1, *S, device=device, dtype=dtype)
            zero_dirs = torch.zeros(1, P, *S, device=device, dtype=dtype)
            if request.extra:
                request.extra = {k: (v.new_zeros((1, *v.shape[1:])) if isinstance(v, torch.Tensor) else v)
                                 for k, v in request.extra.items()}
            zero_call = called(torch.zeros(1, dtype=torch.long))
            spec, _, _ = _with_layouts(lambda k: called(torch.zeros(k, dtype=torch.long)), spec, zero, zero_dirs,
                                       request.radius, model)
            check_sites(engine.run_chunk(zero_call, zero, zero_dirs, request.radius, spec))
            return torch.zeros(0, len(names), dtype=torch.long), names, neurons, {}
        plain = request.forward is None and request.extra is None  # forward=/extra= callables: never cached
        spec, entry, cached = _with_layouts(lambda k: called(torch.zeros(k, dtype=torch.long)), spec,
                                            request.x[:1].to(device=device, dtype=dtype), frames(0, 1, dense=True),
                                            request.radius, model, cache_for=request.model if plain else None)
        engine_meta["layout_probe"] = "cached" if cached else "run"
        # the chunk probe's bytes per row of an earlier call of this model and call (same cache
        # entry): the chunk size without the separate one-point probe chunk
        size_key = f"bytes_per_row/{engine.name}"
        if plan.chunks.needs_probe and size_key in entry:
            plan.chunks.calibrate_bytes(entry[size_key])
            engine_meta["chunk_probe"] = "cached"
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=N, desc="lcfast", unit="pt")

        def measure(lo: int, hi: int, probe: SizeProbe | None = None) -> torch.Tensor:
            counts = check_sites(run(lo, hi, probe))
            if bar is not None:
                bar.update(hi - lo)
            return counts

        try:
            start, first = 0, plan.chunks.size
            parts: list[torch.Tensor] = []
            if plan.chunks.needs_probe:
                start = plan.chunks.probe_points
                probe = SizeProbe()
                parts, _ = measure_halving(lambda lo, hi, _: measure(lo, hi, probe), start, start)
                plan.chunks.calibrate(probe, start)
                entry[size_key] = probe.max_bytes / max(1, start * plan.chunks.rows_per_point)
                first = plan.chunks.size
            # out of memory: the same points again with half the chunk (lcfast.oom, the one rule)
            rest, plan.chunks.size = measure_halving(lambda lo, hi, _: measure(start + lo, start + hi),
                                                     N - start, plan.chunks.size)
            parts += rest
        finally:
            if bar is not None:
                bar.close()
        if plan.chunks.size != first:
            plan.chunks.after_oom = plan.chunks.size
        return torch.cat(parts, 0), names, neurons, engine_meta
