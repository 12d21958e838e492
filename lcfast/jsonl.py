"""Crash-safe JSON-lines files: one JSON object per line, the one place torn lines are handled.

A process killed while appending can leave a *torn* last line: bytes after the final
newline that are not a complete JSON object.  The rules, written only here:

* :func:`read` returns the complete objects and stops at a torn last line (it is not
  an error; with ``repair=True`` the file is fixed in place).  A malformed line that is
  *not* the last one is an error (``ValueError`` naming the line): the file was damaged
  in another way, and silently dropping records would lose data.
* :func:`append` repairs the tail before writing, so a new record never merges into a
  torn one and a file stays bounded however often a run is resumed.  Each call is one
  ``write`` of whole lines, flushed and fsynced.
* :func:`start` begins a file afresh (truncating any old content).

An unterminated last line that *is* a complete JSON object (torn just before its
newline) is kept, and repairing adds the missing newline.  One writer per file is
assumed (``measure_dataset`` writes one file per rank).

Example:
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "log.jsonl")
    >>> start(p, {"meta": 1}); append(p, {"step": 0})
    >>> with open(p, "a") as f: _ = f.write('{"step": 1, "lo')   # a crash mid-write
    >>> read(p)
    [{'meta': 1}, {'step': 0}]
    >>> append(p, {"step": 1}); read(p)
    [{'meta': 1}, {'step': 0}, {'step': 1}]
"""
from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["read", "append", "start", "repair"]

# bytes read per step when searching backwards for the last newline (unmeasured; a
# record of a 1,024-point block of a 20-site model is ~60 kB, read in a few steps)
_TAIL_STEP = 1 << 16


def _parse(raw: bytes) -> dict[str, Any] | None:
    """The object on a line, or ``None`` when the line is not a complete JSON object."""
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def read(path: str | os.PathLike, *, repair: bool = False) -> list[dict[str, Any]]:
    """The records of a JSON-lines file, in file order (blank lines skipped).

    Args:
        path: the file (must exist).
        repair: also fix a torn tail in place (see :func:`repair`).

    Returns:
        one dict per complete line; a torn last line is left out.

    Raises:
        ValueError: a line other than the unterminated last one is not a JSON object.
    """
    records: list[dict[str, Any]] = []
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            obj = _parse(raw)
            if obj is None:
                if raw.endswith(b"\n"):
                    raise ValueError(f"{os.fspath(path)}: line {i} is not a JSON object "
                                     "(the file is damaged; only a torn last line is tolerated)")
                break  # the torn last line
            records.append(obj)
    if repair:
        _repair_file(path)
    return records


def repair(path: str | os.PathLike) -> int:
    """Fix a torn tail in place: drop an incomplete last line, or end a complete one.

    Args:
        path: the file (a missing or empty file is left alone).

    Returns:
        the number of bytes dropped (``0`` when the file was whole or only lacked its
        final newline).
    """
    if not os.path.exists(path):
        return 0
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        # find the start of the unterminated last line
        start, pos = 0, size
        while pos > 0:
            lo = max(0, pos - _TAIL_STEP)
            f.seek(lo)
            nl = f.read(pos - lo).rfind(b"\n")
            if nl >= 0:
                start = lo + nl + 1
                break
            pos = lo
        f.seek(start)
        tail = f.read()
        if tail.strip() and _parse(tail) is not None:
            f.write(b"\n")  # complete object torn just before its newline: keep it
            dropped = 0
        else:
            f.truncate(start)
            dropped = size - start
        f.flush()
        os.fsync(f.fileno())
    return dropped


_repair_file = repair  # read() has a parameter of the same name


def _write(path, mode: str, records: tuple[dict[str, Any], ...]) -> None:
    for r in records:
        if not isinstance(r, dict):
            raise TypeError(f"records must be dicts (JSON objects), got {type(r).__name__}")
    data = "".join(json.dumps(r, allow_nan=True) + "\n" for r in records).encode()
    with open(path, mode) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def append(path: str | os.PathLike, *records: dict[str, Any]) -> None:
    """Append records (one line each) after repairing a torn tail.

    Args:
        path: the file (created when missing).
        *records: JSON-serialisable dicts (NaN and infinities are written as
            ``NaN``/``Infinity``, which :func:`read` accepts).
    """
    repair(path)
    _write(path, "ab", records)


def start(path: str | os.PathLike, *records: dict[str, Any]) -> None:
    """Begin ``path`` afresh (old content dropped) with ``records`` as its first lines."""
    _write(path, "wb", records)
