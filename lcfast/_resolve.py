"""``package.module:attr`` specs given on the command line (``--model``).

``python -m lcfast`` puts the current folder on ``sys.path``; the ``lcfast`` console
script does not (its ``sys.path[0]`` is the script's folder), so a user's
``--model mypkg.models:build`` was found by one and not the other (issue 11 item 10).
:func:`load_object` makes both look in the current folder too.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Any

__all__ = ["load_object"]


def _is_missing(e: ModuleNotFoundError, mod: str) -> bool:
    """Whether ``e`` says ``mod`` itself (or a package above it) was not found, rather
    than something the user's module imports."""
    return bool(e.name) and (mod == e.name or mod.startswith(e.name + "."))


def _import(mod: str):
    try:
        return importlib.import_module(mod)
    except ModuleNotFoundError as e:
        if not _is_missing(e, mod):
            raise
        cwd = os.getcwd()
        if cwd in sys.path or "" in sys.path:
            raise
        # as `python -m` would have found it (appended, so nothing installed is shadowed)
        sys.path.append(cwd)
        return importlib.import_module(mod)


def load_object(spec: str, arg: str = "--model") -> Any:
    """The object named by ``spec`` = ``"package.module:attr[.attr...]"``.

    The module is imported from ``sys.path`` and, failing that, from the current
    folder (as ``python -m`` does).

    Args:
        spec: ``"module:attr"``.
        arg: the option name used in error messages.

    Raises:
        ValueError: malformed spec, module not found, or no such attribute.
    """
    mod, sep, attr = spec.partition(":")
    if not sep or not mod or not attr:
        raise ValueError(f"{arg} {spec!r}: expected package.module:attr")
    try:
        obj = _import(mod)
    except ModuleNotFoundError as e:
        if _is_missing(e, mod):
            raise ValueError(f"{arg} {spec!r}: no module named {e.name!r} on sys.path or in the current "
                             f"folder {os.getcwd()}") from e
        raise
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{arg} {spec!r}: {mod} has no attribute {attr!r}") from None
    return obj
