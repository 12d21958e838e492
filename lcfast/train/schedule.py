"""When the tracker measures: log-spaced steps (dense early, sparse late, like the
paper), an explicit list of steps, or a predicate."""
from __future__ import annotations

import numbers
from typing import Callable, Iterable

import numpy as np

__all__ = ["log_schedule", "resolve_schedule"]


def log_schedule(total_steps: int, n_logs: int = 100) -> list[int]:
    """Log-spaced steps in ``[0, total_steps]``: dense early, sparse late (like the paper).

    Returns:
        sorted unique ints, always including ``0`` and ``total_steps``; about
        ``n_logs`` of them (fewer when rounding merges early steps).

    Example:
        >>> log_schedule(1000, 8)
        [0, 1, 3, 7, 19, 51, 138, 372, 1000]
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, numbers.Integral) or total_steps < 0:
        raise ValueError(f"total_steps must be an int >= 0, got {total_steps!r}")
    if isinstance(n_logs, bool) or not isinstance(n_logs, numbers.Integral) or n_logs < 2:
        raise ValueError(f"n_logs must be an int >= 2, got {n_logs!r}")
    if total_steps == 0:
        return [0]
    pts = np.geomspace(1, total_steps, int(n_logs) - 1)
    return sorted({0, int(total_steps)} | {int(round(p)) for p in pts})


def resolve_schedule(schedule: str | Iterable[int] | Callable[[int], bool], total_steps: int | None = None,
                     n_logs: int = 100) -> tuple[Callable[[int], bool], list[int] | None]:
    """``(should_log, steps)`` of a schedule given as :class:`~lcfast.train.LCTracker` takes it.

    Args:
        schedule: ``"log"`` (:func:`log_schedule` of ``total_steps``, ``n_logs``), an
            iterable of steps, or a callable ``step -> bool``.
        total_steps, n_logs: for ``"log"``.

    Returns:
        a predicate ``step -> bool`` and the sorted steps (``None`` for a callable).
    """
    if isinstance(schedule, str):
        if schedule != "log":
            raise ValueError(f"schedule must be 'log', an iterable of steps or a callable, got {schedule!r}")
        if total_steps is None:
            raise ValueError("schedule='log' needs total_steps")
        steps = log_schedule(total_steps, n_logs)
        return set(steps).__contains__, steps
    if callable(schedule):
        return schedule, None
    if isinstance(schedule, Iterable):
        steps = sorted({int(s) for s in schedule})
        return set(steps).__contains__, steps
    raise ValueError(f"schedule must be 'log', an iterable of steps or a callable, got {schedule!r}")
