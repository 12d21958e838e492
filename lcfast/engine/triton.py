"""The ``"triton"`` backend: Triton kernels for every site, fused blocks where the
model has them.

* Every activation site goes through the crossing epilogue
  (``lcfast::triton_crossing_act``: count + activation in one read and one write);
  activations the kernels do not implement (ELU, Mish, SELU, ...) and module-output
  sites use the read-only count (``lcfast::triton_crossing_count``) and then the
  model's own call.
* ``nn.Sequential`` MLPs, Conv-BN-act chains, torchvision ResNet blocks and ViT
  ``MLPBlock`` run through fused block kernels (:mod:`lcfast.engine.blocks`).
* float32 runs with TF32 off (:func:`lcfast.engine.base.model_guard`), and the
  fused GEMM uses ``input_precision="ieee"`` for float32.

On CUDA it needs Triton; on CPU it runs only under the Triton interpreter
(``TRITON_INTERPRET=1`` set before lcfast's kernels are first imported), which is
how tests check it.  ``backend="auto"`` never picks it on CPU.
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn as nn

from ..neighborhood import vertices
from ..sites import SiteSpec
from .base import Backend, ChunkResult
from .intercept import ActCall, Site, SiteHandler

__all__ = ["TritonBackend"]

_KERNEL_MODULES = ("lcfast.kernels.triton_crossing", "lcfast.kernels.triton_linear_crossing")


def _load_ops():
    from ..ops import (triton_bn_crossing_act, triton_crossing_act, triton_crossing_count,  # noqa: F401
                       triton_linear_crossing_act, triton_mlp_block)
    from ..ops.triton_util import ACT_CODES, SUPPORTED_DTYPES
    return ACT_CODES, SUPPORTED_DTYPES


class _TritonHandler(SiteHandler):
    def __init__(self):
        self.act_codes, self.dtypes = _load_ops()

    def count(self, pre: torch.Tensor, V: int) -> torch.Tensor:
        if pre.dtype not in self.dtypes:
            pre = pre.float()
        return torch.ops.lcfast.triton_crossing_count(pre, V)

    def handle(self, site: Site, call: ActCall | None):
        pre = site.value
        if (call is None or call.kind not in self.act_codes or site.batch_dim != 0
                or pre.dtype not in self.dtypes):
            return super().handle(site, call)
        out, counts = torch.ops.lcfast.triton_crossing_act(pre, site.V, call.kind, call.slope)
        if call.inplace:
            # in-place semantics: the caller may keep using its input tensor
            pre.copy_(out)
            return pre, counts
        return out, counts


class TritonBackend(Backend):
    """Triton kernels (GPU; CPU under ``TRITON_INTERPRET=1``).

    Args:
        fuse_blocks: use the fused block kernels where the model has those patterns
            (default ``True``); ``False`` runs the per-site epilogue only.
    """

    name = "triton"

    def __init__(self, fuse_blocks: bool = True):
        self.fuse_blocks = fuse_blocks
        #: fused steps of the last chunk, by kind (diagnostics; empty when none ran)
        self.last_fused: dict[str, int] = {}
        self._bn_cache: dict = {}

    @classmethod
    def unavailable(cls, device: torch.device) -> str | None:
        try:
            import triton  # noqa: F401
        except Exception as e:  # ImportError, or a broken install
            return f"triton is not importable ({e}); install it with `pip install triton`"
        device = torch.device(device)
        if device.type == "cuda":
            return None if torch.cuda.is_available() else "CUDA is not available"
        if device.type == "cpu":
            if os.environ.get("TRITON_INTERPRET") != "1":
                return ("Triton kernels run on CUDA; on CPU only under the Triton interpreter "
                        "(set TRITON_INTERPRET=1, for testing)")
            from triton.runtime.interpreter import InterpretedFunction
            for name in _KERNEL_MODULES:
                mod = sys.modules.get(name)
                if mod is not None and not any(isinstance(v, InterpretedFunction) for v in vars(mod).values()):
                    return (f"{name} was imported before TRITON_INTERPRET=1 was set; set it before "
                            "lcfast's Triton kernels are first imported")
            return None
        return f"Triton kernels do not run on device type {device.type!r}"

    def handler(self) -> SiteHandler:
        return _TritonHandler()

    def run_chunk(self, model: nn.Module, x: torch.Tensor, directions: torch.Tensor, radius: float,
                  spec: SiteSpec) -> ChunkResult:
        """Measure ``n`` points: ``x`` ``(n, *S)``, ``directions`` ``(n, P, *S)`` or
        ``(P, *S)``.  Returns counts ``(n, L)``."""
        from .blocks import FuseContext, fused_forwards
        n = x.shape[0]
        V = 2 * directions.shape[-x.dim()]
        v = vertices(x, directions, radius)
        interceptor = self.interceptor(model, spec, n * V, V)
        with interceptor:
            if self.fuse_blocks and spec.activations:
                ctx = FuseContext(interceptor, V, self._bn_cache)
                with fused_forwards(model, ctx):
                    model(v)
                self.last_fused = dict(ctx.stats)
            else:
                model(v)
        return ChunkResult.of(interceptor, n)
