"""Out-of-memory recovery: halve the chunk and measure the same points again.

:func:`measure_halving` is the one place the rule lives; the chunk loop of
:func:`lcfast.local_complexity` (``lcfast.api._run``) runs every chunk through it.  Recognised as out of memory (:func:`is_out_of_memory`): a CUDA or
other accelerator ``OutOfMemoryError``, Python's ``MemoryError``, and a ``RuntimeError``
from an allocator ("DefaultCPUAllocator: not enough memory", "... out of memory").
The kernel's OOM killer cannot be caught: CPU chunks must be sized to stay clear of it.
"""
from __future__ import annotations

import warnings
from typing import Callable, TypeVar

import torch

__all__ = ["is_out_of_memory", "measure_halving"]

T = TypeVar("T")

_ALLOCATOR_MESSAGES = ("out of memory", "not enough memory", "DefaultCPUAllocator")


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure that a smaller chunk may avoid."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err) for m in _ALLOCATOR_MESSAGES)


def measure_halving(measure: Callable[[int, int, int | None], T], n: int,
                    size: int | None = None) -> tuple[list[T], int | None]:
    """Measure points ``[0, n)`` in spans, halving the span after an out-of-memory error.

    Args:
        measure: ``measure(lo, hi, chunk_size)`` measures points ``[lo, hi)`` with at
            most ``chunk_size`` points per forward (``None``: its own choice).
        n: number of points.
        size: points per span and per forward (``None``: one span, ``measure``'s own
            chunking, until the first out-of-memory error).

    Returns:
        ``(parts, size)``: the results of consecutive spans covering ``[0, n)`` in
        order, and the span size to start the next call with (smaller after an error,
        so that later calls do not fail again).

    Raises:
        RuntimeError: out of memory with a single point per forward (the cause chained).
        Any other error of ``measure`` unchanged.

    Example:
        >>> parts, size = measure_halving(lambda lo, hi, cs: list(range(lo, hi)), 5, 2)
        >>> parts, size
        ([[0, 1], [2, 3], [4]], 2)
    """
    parts: list[T] = []
    lo = 0
    while lo < n:
        hi = n if size is None else min(n, lo + size)
        failed = False
        try:
            parts.append(measure(lo, hi, size))
        except Exception as e:  # noqa: BLE001 - filtered just below
            if not is_out_of_memory(e):
                raise
            if hi - lo <= 1:
                raise RuntimeError("out of memory with one point per forward: the model does not "
                                   "fit this device at this input size") from e
            failed = True
        # the error (and the tensors its traceback holds) is gone here
        if failed:
            size = (hi - lo) // 2
            torch.cuda.empty_cache()  # no-op unless CUDA is initialised
            warnings.warn(f"out of memory with {hi - lo} points per forward; retrying the same points "
                          f"with {size}", RuntimeWarning, stacklevel=2)
            continue
        lo = hi
    return parts, size
