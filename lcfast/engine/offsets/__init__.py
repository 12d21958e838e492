"""Centre + offsets engine (issue 10): LC by propagating, per point, the centre and the
offsets of its ``2P`` vertices, through the model's own unmodified ``forward``.

Design, and why:

* **An aten-level tensor subclass** (:class:`~.tensor.OffsetTensor`,
  ``__torch_dispatch__``), not a ``TorchFunctionMode`` nor FX.  It presents itself as the
  vertex batch (so ``x.view(x.size(0), -1)``, ``torch._assert(h == 224)`` and the like
  work unchanged), and at the aten level the op set is small and stable (``F.linear``,
  ``nn.MultiheadAttention``, ``F.adaptive_avg_pool2d``, ``flatten`` ... decompose into
  ``addmm``/``mm``/``view``/``mean``/``_softmax`` ...), so ~100 rules cover the zoo,
  torchvision ResNets and ViTs.  FX would fail on data-dependent Python in ``forward``;
  a function mode sees hundreds of Python-level spellings.  Sites stay with the
  interceptor (a function mode), which hands the subclass to :mod:`.site`.
* **Where the batch is** is tracked by provenance (:class:`~.tensor.Layout`), also
  through batch merges (``view(L * B, E)``, ``view(L, B * heads, e)``); an op whose
  output layout cannot be derived raises :class:`OffsetsError`.
* **Per-point antisymmetry**: every point carries ``a`` (``P`` rows, vertex ``+-v_p``
  = ``c + s_p +- a_p``); only points that broke (a crossed or centre-sign-mixed ReLU
  neuron, a max-pool argmax switch, a smooth op, a product) carry ``s``: after a ReLU
  or max pool in *low-rank* form (one unit basis row per bad neuron, coefficients per
  point; ``K`` rows while ``K <= P``), else dense (``P`` more rows).  On ResNet18-224 at
  r = 1e-4 a point that crossed one neuron costs ``1 + P + 1`` rows, not ``1 + 2P``.
  Linear ops act on ``a`` and ``s`` without the bias.
* **The screen** (:mod:`.screen`): ReLU, crossing counts and max pooling bound every
  vertex's offset per neuron by one row (``max_p |a_p|`` plus the basis bound) and
  evaluate the ``2P`` vertex values only at the neurons (windows) the bound cannot
  clear, gathered; everywhere else the op is exact and linear on the parts.  A max-pool
  window whose ties are among exact elements (bound 0) is cleared too: pooling breaks
  ties by scan order at every vertex as at the centre.
  ``LCResult.meta``-ready figures are in ``OffsetsChunkResult.meta``
  (``rows_per_point``, ``symmetric_part`` etc.).
* **Precision**: ``c`` in float32/float64, ``a``/``s`` in the compute dtype (bf16,
  fp16, fp32, fp64); nonlinear rules evaluate ``f(c + d) - f(c)`` in the centre dtype
  and keep exact cases exact (ReLU both sides, max-pool argmax unchanged); products with
  a 16-bit offset operand run in float32 (:func:`.tensor.product_dtype`), and the rounding
  band (:mod:`.band`) is a float32 scale whatever the centre dtype.

Modules: :mod:`.tensor` (representation), :mod:`.layout` (batch tracking),
:mod:`.rules` (structural and linear ops), :mod:`.nonlinear` (ReLU, max pool,
products, general rule, verified fallback), :mod:`.screen` (candidate neurons, the
low-rank update), :mod:`.site` (the interceptor adapter),
:mod:`.runner` (entry points and :class:`OffsetsBackend`).
"""
from .runner import OffsetsBackend, OffsetsChunkResult, offsets_local_complexity, run_offsets, run_offsets_radii
from .tensor import Layout, OffsetContext, OffsetTensor, OffsetsError

__all__ = ["OffsetsBackend", "OffsetsChunkResult", "offsets_local_complexity", "run_offsets", "run_offsets_radii",
           "Layout", "OffsetContext", "OffsetTensor", "OffsetsError"]
