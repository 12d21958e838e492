"""The benchmark workloads: the TOML file that defines them (package data,
``lcfast/bench/workloads.toml``) and its reading at one size (``cpu`` or ``gpu``)."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

__all__ = ["SIZES", "CONFIG_ENV", "SIZE_ENV", "COMPILE_OFF", "DEFAULT_CONFIG", "Workload", "find_config",
           "load_workloads", "default_size"]

SIZES = ("cpu", "gpu")
COMPILE_OFF = "compile = false for this workload at this size (workloads.toml)"
CONFIG_ENV = "LCFAST_BENCH_CONFIG"
SIZE_ENV = "LCFAST_BENCH_SIZE"
#: the workload file shipped inside the package (the only copy; benchmarks/ reads it too)
DEFAULT_CONFIG = Path(__file__).resolve().with_name("workloads.toml")


def find_config(path: str | os.PathLike | None = None) -> Path:
    """The workload file: ``path``, else ``$LCFAST_BENCH_CONFIG``, else
    :data:`DEFAULT_CONFIG` (package data, present in a source tree and in an
    installed wheel).  A given path that does not exist is an error, never replaced
    by the default."""
    for given, what in ((path, "--config"), (os.environ.get(CONFIG_ENV), f"${CONFIG_ENV}")):
        if given:
            if not Path(given).is_file():
                raise FileNotFoundError(f"{what}: no workload file {str(given)!r}")
            return Path(given)
    if not DEFAULT_CONFIG.is_file():  # a broken install: the package data is missing
        raise FileNotFoundError(f"the packaged workload file {DEFAULT_CONFIG} is missing: reinstall lcfast "
                                "or pass --config PATH")
    return DEFAULT_CONFIG


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
