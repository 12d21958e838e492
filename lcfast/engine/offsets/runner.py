"""Entry points of the offsets engine: one chunk, and a :class:`Backend`."""
from __future__ import annotations

import math
import weakref

import torch
import torch.nn as nn

from ...frames import FactoredFrames
from ...sites import SiteSpec
from ...tolerance import K
from ..base import Backend, ChunkResult, cast_copy, model_device, model_guard, _model_dtype
from ..intercept import ModelCall
from .band import offsets_unit_roundoff
from .site import OffsetsSiteHandler, make_interceptor
from .tensor import Layout, OffsetContext, OffsetTensor, RowMix, rows_per_point

__all__ = ["OffsetsBackend", "OffsetsChunkResult", "offsets_local_complexity", "run_offsets", "run_offsets_radii"]

OFFSET_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


class OffsetsChunkResult(ChunkResult):
    """:class:`ChunkResult` plus ``meta``: rows per point and where antisymmetry broke."""

    __slots__ = ("meta",)

    def __init__(self, counts, names, neurons, meta):
        super().__init__(counts, names, neurons)
        self.meta = meta


def input_tensor(x: torch.Tensor, directions: torch.Tensor, radius: float, dtype: torch.dtype,
                 ctx: OffsetContext) -> OffsetTensor:
    """The model's input as centre ``x`` and antisymmetric offsets ``r v_p`` (the one row
    stored twice when ``P = 1``).  When the directions are already in the centre and
    offsets dtype, ``r`` stays a pending scale (:attr:`OffsetTensor.scale`) that the
    first linear op folds into its weight: no ``N * P * D`` multiply (MNIST MLP, 1,000
    points, P = 25, one thread: 161 ms of a 1.04 s call, profiled).  Frames given as
    :class:`lcfast.frames.FactoredFrames` (float32 centre and offsets, ``P >= 2``) enter
    as their Gaussian rows with the mix pending (:class:`RowMix`); otherwise they are
    multiplied out here."""
    n = x.shape[0]
    S = x.shape[1:]
    if isinstance(directions, FactoredFrames):
        if ctx.R == ctx.P and x.dtype == dtype == torch.float32:
            # frames as factors: the first linear op applies ``r * mix`` to its output (RowMix)
            f = directions
            mix = RowMix((f.mix * float(radius)).to(dtype), (f.row_norms.amax(1) * radius).to(x.dtype),
                         (f.mix_l1.amax(1) * radius).to(x.dtype))
            return OffsetTensor(x, f.gauss.reshape(-1, *S).to(dtype), None, None, Layout(0), ctx, scale=mix)
        directions = directions.dense()
    if directions.dim() == x.dim():  # shared (P, *S)
        directions = directions.unsqueeze(0).expand(n, *directions.shape)
    if ctx.R == ctx.P and (directions.dtype == x.dtype == dtype or (dtype.itemsize < 4 <= directions.dtype.itemsize)):
        # bf16/fp16 offsets: the directions rounded once, r folded into the first weight
        # (ResNet18 224 px, 2 points, bf16 around a float64 centre: the float64 multiply and
        # two casts of the 2 x 25 x 150,528 offsets took ~60 ms of a 1.2 s call, one thread)
        return OffsetTensor(x, directions.reshape(-1, *S).to(dtype), None, None, Layout(0), ctx, scale=float(radius))
    rd = (directions.to(x.dtype) * radius).to(dtype)
    if ctx.R != ctx.P:
        rd = torch.cat([rd, rd], 1)
    return OffsetTensor(x, rd.reshape(-1, *S), None, None, Layout(0), ctx)


class Float64Model:
    """The measured model in float64 for the certified mode's recomputation: the model
    itself when it already is, else a copy made on first use and kept while the same
    model is measured (the user's model is never changed)."""

    def __init__(self):
        self._src = None
        self._copy = None

    def __call__(self, model: nn.Module) -> nn.Module:
        if isinstance(model, ModelCall):
            raise ValueError("certified=True does not support forward=/extra= (the recomputation of a "
                             "chunk's flagged points would need their extra inputs)")
        if _model_dtype(model) == torch.float64:
            return model
        if self._src is None or self._src() is not model:
            self._copy = cast_copy(model, torch.float64).eval()
            self._src = weakref.ref(model)
        return self._copy


def _accuracy_report(handler: OffsetsSiteHandler, names: list[str], n: int):
    """``(meta, flagged)``: the accuracy report of one chunk and the points ``(n,)`` bool
    that have an ambiguous neuron at some site, or reach a site without a band."""
    per_site, unbounded = {}, {}
    flagged = torch.zeros(n, dtype=torch.bool)
    total = 0
    for name, amb in zip(names, handler.ambiguous):
        if amb is None:
            unbounded[name] = n
            flagged[:] = True
            continue
        amb = amb.cpu()
        per_site[name] = int(amb.sum())
        total += per_site[name]
        flagged |= amb > 0
    meta = dict(accuracy_rule=f"band K*(u_c*S_c + u_d*S_d), K={K:g} (lcfast.tolerance)",
                ambiguous_neurons=total, ambiguous_per_site=per_site, ambiguous_points=int(flagged.sum()),
                unbounded_sites=unbounded)
    return meta, flagged


def run_offsets(model: nn.Module, x: torch.Tensor, directions: torch.Tensor, radius: float, spec: SiteSpec,
                dtype: torch.dtype, handler: OffsetsSiteHandler | None = None, tf32: bool = False,
                accuracy: bool = True, certify: Float64Model | None = None) -> OffsetsChunkResult:
    """One chunk through a prepared model (eval mode, no grad, centre dtype = model's).

    Args:
        model: the model, as measured (its dtype is the centre dtype).
        x: ``(n, *S)`` centres, in the model's dtype.
        directions: ``(n, P, *S)`` or ``(P, *S)``, or :class:`lcfast.frames.FactoredFrames`.
        radius: ``r``.
        spec: resolved sites.
        dtype: offsets dtype.
        handler: the site handler (default: a plain :class:`OffsetsSiteHandler`).
        tf32: allow TF32 in the offsets' linear ops (float32 offsets on CUDA; the centre
            stays strict float32).
        accuracy: carry the rounding band (:mod:`.band`) and report the ambiguous neurons
            in ``meta`` (``ambiguous_per_site``, ``ambiguous_points``, ``unbounded_sites``).
        certify: recompute the points with an ambiguous neuron (or that reached a site
            without a band) in float64 on this float64 model (needs ``accuracy``); their
            count is in ``meta["certified_recomputed"]``.

    Returns:
        :class:`OffsetsChunkResult`, counts ``(n, L)``.
    """
    n = x.shape[0]
    factored = isinstance(directions, FactoredFrames)
    P = directions.n_dirs if factored else directions.shape[-x.dim()]
    on_cuda_tf32 = tf32 and x.device.type == "cuda"
    ctx = OffsetContext(n, P, dtype, tf32=tf32, track_band=accuracy or certify is not None,
                        u_offsets=offsets_unit_roundoff(dtype, on_cuda_tf32))
    handler = handler or OffsetsSiteHandler()
    icpt = make_interceptor(model, spec, n * 2 * P, 2 * P, handler)
    with icpt:
        model(input_tensor(x, directions, radius, dtype, ctx))
    res = ChunkResult.of(icpt, n)
    report = {}
    counts = res.counts
    if ctx.track_band:
        report, flagged = _accuracy_report(handler, res.names, n)
        if certify is not None:
            idx = torch.nonzero(flagged).flatten().to(x.device)
            report["certified_recomputed"] = int(idx.numel())
            if idx.numel():
                if factored:
                    d = directions.select(idx).dense()
                else:
                    d = directions if directions.dim() == x.dim() else directions[idx]
                exact = run_offsets(certify(model), x[idx].to(torch.float64), d.to(torch.float64), radius, spec,
                                    torch.float64, accuracy=False)
                counts = counts.clone()
                counts[idx.to(counts.device)] = exact.counts.to(counts.device)
    antisym = ctx.first_break < 0
    meta = dict(
        offsets_dtype=str(dtype).replace("torch.", ""),
        centre_dtype=str(x.dtype).replace("torch.", ""),
        tf32_offsets=bool(on_cuda_tf32),
        rows_per_point=rows_per_point(ctx),
        vertex_rows_per_point=2 * P,
        symmetric_part=dict(ctx.symmetric),
        antisymmetric_points=int(antisym.sum()),
        breaks=dict(ctx.breaks),
        first_break_op=ctx.first_break.tolist(),
        offset_ops=ctx.ops,
        **({"frames_mix": ctx.frames_mix or "unused"} if factored else {}),
        **report,
    )
    return OffsetsChunkResult(counts, res.names, res.neurons, meta)


def run_offsets_radii(model: nn.Module, x: torch.Tensor, directions: torch.Tensor, radii, spec: SiteSpec,
                      dtype: torch.dtype, tf32: bool = False) -> list[OffsetsChunkResult]:
    """Several radii from one propagation where antisymmetry allows (issue 10, item 4).

    One pass at ``r0 = max(radii)``.  A point that stays antisymmetric through every
    site there stays so at every smaller radius (the keep tests and max-pool argmax
    tests are monotone in the offsets' scale), and its vertex values at radius ``r``
    are ``c +- (r / r0) a``: its counts follow from the same pass.  The other points
    are measured again at each smaller radius.

    Returns:
        one :class:`OffsetsChunkResult` per radius, in the order given; ``meta`` says how
        many points were derived (``scaled_points``) and how many rerun.
    """
    radii = [float(r) for r in radii]
    r0 = max(radii)
    if isinstance(directions, FactoredFrames):
        directions = directions.dense()
    handler = OffsetsSiteHandler(scales=[r / r0 for r in radii])
    # no accuracy report: the band of the one pass would describe r0 only
    base = run_offsets(model, x, directions, r0, spec, dtype, handler, tf32, accuracy=False)
    n = x.shape[0]
    scaled = torch.stack(handler.scaled, 1) if handler.scaled else torch.zeros(n, 0, len(radii), dtype=torch.long)
    redo = torch.zeros(n, dtype=torch.bool, device=scaled.device)
    for b in handler.broken:
        if b is not None:
            redo[b] = True
    idx = torch.nonzero(redo).flatten()
    out = []
    for k, r in enumerate(radii):
        if r == r0:
            counts = base.counts
        else:
            counts = scaled[:, :, k].clone()
            if idx.numel():
                d = directions if directions.dim() == x.dim() else directions[idx]
                counts[idx] = run_offsets(model, x[idx], d, r, spec, dtype, tf32=tf32, accuracy=False).counts
        meta = dict(base.meta, radius=r, scaled_points=int(n - idx.numel()) if r != r0 else 0,
                    rerun_points=int(idx.numel()) if r != r0 else 0)
        out.append(OffsetsChunkResult(counts, base.names, base.neurons, meta))
    return out


def offsets_local_complexity(model: nn.Module, x: torch.Tensor, *, radius, directions: torch.Tensor,
                             dtype: torch.dtype | None = None, centre_dtype: torch.dtype | None = None,
                             sites="activations", tf32: bool = False, certified: bool = False):
    """Crossing counts of ``n`` points by centre + offsets propagation.

    The model's own ``forward`` runs once on an :class:`OffsetTensor` holding the
    centres in ``centre_dtype`` and the vertex offsets in ``dtype``.  The model is left
    as found (eval mode and no grad during the call, flags restored).

    Args:
        model: any ``nn.Module``.
        x: ``(n, *S)`` points.
        radius: ``r > 0``, or a list of radii (then a list of results, one per radius,
            from one propagation where antisymmetry allows: :func:`run_offsets_radii`).
        directions: ``(P, *S)`` shared or ``(n, P, *S)`` per point.
        dtype: offsets dtype (default: the model's); float64/32, bfloat16, float16.
        centre_dtype: centre dtype (default: float64 when ``dtype`` is float64, else
            float32); the model runs in it (a cast copy if it differs).
        sites: as :func:`lcfast.local_complexity`.
        tf32: allow TF32 in the offsets' convolutions and matmuls on CUDA (float32
            offsets only; the centre stays strict float32; no effect on the CPU).
        certified: recompute in float64 every point the engine's rounding band cannot
            resolve (an ambiguous neuron, :mod:`.band`), so that the counts are
            float64's; one radius only.

    Returns:
        :class:`OffsetsChunkResult`: ``counts`` ``(n, L)``, ``names``, ``neurons``, ``meta``
        (``rows_per_point``: mean ``1 + R`` over the offset ops, against ``2P`` for the
        vertex push; ``antisymmetric_points``; ``breaks``: points per reason; the
        accuracy report for one radius: ``ambiguous_per_site`` ``{site: neurons}``,
        ``ambiguous_neurons``, ``ambiguous_points``, ``unbounded_sites`` ``{site: points}``;
        with ``certified``, ``certified_recomputed`` points).

    Example:
        >>> mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> res = offsets_local_complexity(mlp, torch.randn(3, 4), radius=0.1, directions=torch.eye(4)[:2])
        >>> res.counts.shape
        torch.Size([3, 1])
    """
    many = isinstance(radius, (list, tuple))
    for r in (radius if many else [radius]):
        if not isinstance(r, (int, float)) or isinstance(r, bool) or not math.isfinite(r) or r <= 0:
            raise ValueError(f"radius must be a finite number > 0 (or a non-empty list of them), got {radius!r}")
    if many and not radius:
        raise ValueError("radius must be a finite number > 0 (or a non-empty list of them), got []")
    dtype = dtype or _model_dtype(model)
    if dtype not in OFFSET_DTYPES:
        raise TypeError(f"dtype must be one of {OFFSET_DTYPES}, got {dtype!r}")
    if not isinstance(tf32, bool) or (tf32 and dtype != torch.float32):
        raise ValueError(f"tf32 must be a bool and needs dtype=torch.float32, got tf32={tf32!r}, dtype={dtype}")
    if not isinstance(certified, bool) or (certified and many):
        raise ValueError(f"certified must be a bool and takes one radius, got certified={certified!r}, "
                         f"radius={radius!r}")
    centre_dtype = centre_dtype or (torch.float64 if dtype == torch.float64 else torch.float32)
    if centre_dtype not in (torch.float32, torch.float64):
        raise TypeError(f"centre_dtype must be float32 or float64, got {centre_dtype!r}")
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError("x must be a tensor of shape (n, *S)")
    if not isinstance(directions, torch.Tensor) or directions.shape[-(x.dim() - 1):] != x.shape[1:] \
            or directions.dim() not in (x.dim(), x.dim() + 1) \
            or (directions.dim() == x.dim() + 1 and directions.shape[0] != x.shape[0]):
        raise ValueError(f"directions must have shape (P, *S) or (n, P, *S) for x of shape {tuple(x.shape)}")
    spec = SiteSpec.resolve(model, sites)
    device = model_device(model, x.device)
    with model_guard(model, device, centre_dtype) as m:
        xc, dirs = x.to(device=device, dtype=centre_dtype), directions.to(device)
        if many:
            return run_offsets_radii(m, xc, dirs, radius, spec, dtype, tf32)
        return run_offsets(m, xc, dirs, float(radius), spec, dtype, tf32=tf32,
                           certify=Float64Model() if certified else None)


class OffsetsBackend(Backend):
    """Backend ``"offsets"``: centre in the model's dtype, offsets in ``dtype``
    (default: the model's); ``tf32``: TF32 in the offsets' linear ops on CUDA;
    ``certified``: points the rounding band cannot resolve are recomputed in float64."""

    name = "offsets"
    factored_frames = True

    def __init__(self, dtype: torch.dtype | None = None, tf32: bool = False, certified: bool = False):
        self.dtype, self.tf32 = dtype, tf32
        self.certify = Float64Model() if certified else None

    def run_chunk(self, model, x, directions, radius, spec):
        """As :meth:`Backend.run_chunk`; ``radius`` a tuple of radii gives counts
        ``(n, k, L)``, one slice per radius (:func:`run_offsets_radii`)."""
        if isinstance(radius, tuple):
            parts = run_offsets_radii(model, x, directions, radius, spec, self.dtype or x.dtype, tf32=self.tf32)
            meta = {k: v for k, v in parts[0].meta.items() if k not in ("radius", "scaled_points", "rerun_points")}
            meta["rerun_points_per_radius"] = {f"{p.meta['radius']:g}": p.meta["rerun_points"] for p in parts}
            return OffsetsChunkResult(torch.stack([p.counts for p in parts], 1), parts[0].names, parts[0].neurons,
                                      meta)
        return run_offsets(model, x, directions, radius, spec, self.dtype or x.dtype, tf32=self.tf32,
                           certify=self.certify)
