"""Centre + offsets engine (see :mod:`.tensor` for the representation, :mod:`.rules`
and :mod:`.nonlinear` for the op rules, :mod:`.site` for the site adapter)."""
from .runner import OffsetsBackend, OffsetsChunkResult, offsets_local_complexity, run_offsets
from .tensor import Layout, OffsetContext, OffsetTensor, OffsetsError

__all__ = ["OffsetsBackend", "OffsetsChunkResult", "offsets_local_complexity", "run_offsets",
           "Layout", "OffsetContext", "OffsetTensor", "OffsetsError"]
